"""Many models in one process (paper B's hidden-layer parallel framework) and its baselines.

Each model instance arrives cut into *jobs* (:mod:`headway.runtime.jobs`). In the multi-thread
(MT) runner every model instance has a driver thread that pushes its next job into one shared
FIFO queue; a pool worker (owning a CUDA stream on GPU) runs it; when it completes the driver
is signalled and pushes the next job. Baselines: one OS process per model instance (MP),
everything one after another in one thread (sequential), and — beyond the paper — same-model
requests batched together, either all of them in lockstep (``run_batched``) or, inside MT,
whichever requests happen to wait for the same job at the same time (``coalesce`` > 1,
:class:`JobCoalescer`). Nothing here knows a model family: building models is the workload's
job (:mod:`headway.vision.serving`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.jobs import ModelInstance
from headway.runtime.pool import StreamWorkerPool

# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """Per instance: request latencies (ms), the answer of its last request (so a caller can
    check it against the model's own), errors by instance; the wall time of the run."""

    mode: str
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    last_outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        rows = {}
        for name, values in self.latencies_ms.items():
            if values:
                rows[name] = {
                    "mean_ms": float(np.mean(values)),
                    "p95_ms": float(np.percentile(values, 95)),
                    "requests": len(values),
                }
        return rows

    @property
    def throughput(self) -> float:
        done = sum(len(v) for v in self.latencies_ms.values())
        return done / self.wall_s if self.wall_s else 0.0


def _arrivals(requests: int, rate: float | None, start: float) -> list[float]:
    """Scheduled arrival times: back to back (closed loop) or every 1/rate seconds."""
    if rate is None:
        return []
    return [start + i / rate for i in range(requests)]


class JobCoalescer:
    """Beyond the paper: a FIFO of (job, input) requests in front of the worker pool in which a
    worker serving the oldest request also takes every other waiting request for the *same job
    module* (copies of one model share their jobs), up to ``limit`` of them, and runs them as
    one batch. Nothing waits for a batch to fill: a request alone runs alone."""

    def __init__(self, pool: StreamWorkerPool, limit: int) -> None:
        if limit < 1:
            raise InputError(f"coalesce limit must be at least 1, got {limit}")
        self.pool, self.limit = pool, limit
        self._lock = threading.Lock()
        self._waiting: list[tuple[nn.Module, torch.Tensor, Future[torch.Tensor]]] = []
        self.batch_sizes: list[int] = []

    def submit(self, job: nn.Module, x: torch.Tensor) -> Future[torch.Tensor]:
        """Queue ``job(x)``; the future holds this request's rows of the batch it ran in."""
        future: Future[torch.Tensor] = Future()
        with self._lock:
            self._waiting.append((job, x, future))
        self.pool.submit(self._serve_oldest)  # one pool turn per request: FIFO order is kept
        return future

    def _serve_oldest(self) -> None:
        with self._lock:
            if not self._waiting:
                return  # served already, inside an earlier batch
            job = self._waiting[0][0]
            chosen = [i for i, (other, _, _) in enumerate(self._waiting) if other is job]
            chosen = chosen[: self.limit]
            taken = [self._waiting[i] for i in chosen]
            picked = set(chosen)
            self._waiting = [w for i, w in enumerate(self._waiting) if i not in picked]
            self.batch_sizes.append(len(taken))
        inputs = [x for _, x, _ in taken]
        try:
            with torch.inference_mode():
                out = job(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
            if out.is_cuda:  # consumers may run on other workers' streams
                torch.cuda.current_stream(out.device).synchronize()
        except BaseException as error:  # every request of the batch learns of it
            for _, _, future in taken:
                future.set_exception(error)
            return
        for (_, _, future), rows in zip(
            taken, out.split([x.shape[0] for x in inputs]), strict=True
        ):
            future.set_result(rows)


def run_multithread(
    instances: list[ModelInstance],
    requests: int,
    workers: int = 2,
    device: torch.device | str = "cpu",
    rate: float | None = None,
    threads_per_worker: int = 1,
    coalesce: int = 1,
) -> RunResult:
    """Paper B's MT framework: one driver thread per instance, jobs through one FIFO queue.
    ``coalesce`` > 1 (beyond the paper) lets a worker batch up to that many waiting requests
    for the same job of a shared model (:class:`JobCoalescer`)."""
    device = torch.device(device)
    result = RunResult("mt", {inst.name: [] for inst in instances})
    result.notes = {
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "coalesce": coalesce,
    }

    def set_threads(_: int) -> None:
        torch.set_num_threads(threads_per_worker)

    lock = threading.Lock()
    with StreamWorkerPool(workers, device, initializer=set_threads) as pool:
        coalescer = JobCoalescer(pool, coalesce) if coalesce > 1 else None
        if coalescer is not None and device.type == "cuda":
            # a batch mixes requests of several drivers: their inputs must be complete on
            # the device before any worker stream reads them (later ones are, by the
            # coalescer's own synchronisation)
            torch.cuda.synchronize(device)
        start_gate = threading.Barrier(len(instances) + 1)
        stop = threading.Event()  # Ctrl-C: every driver ends after its request in flight

        def drive(instance: ModelInstance) -> None:
            try:
                start_gate.wait()
            except threading.BrokenBarrierError:  # stopped before the start
                return
            began = time.perf_counter()
            schedule = _arrivals(requests, rate, began)
            try:
                for index in range(requests):
                    if stop.is_set():
                        break
                    if schedule:
                        time.sleep(max(0.0, schedule[index] - time.perf_counter()))
                    arrived = schedule[index] if schedule else time.perf_counter()
                    x = instance.example
                    for job in instance.jobs:
                        if coalescer is not None:
                            x = coalescer.submit(job, x).result()
                        else:
                            (x,) = pool.gather([pool.submit(_inference, job, x)])
                    if device.type == "cuda":
                        torch.cuda.current_stream(device).synchronize()
                    with lock:
                        result.latencies_ms[instance.name].append(
                            (time.perf_counter() - arrived) * 1e3
                        )
                    result.last_outputs[instance.name] = x
            except Exception as error:  # reported with the model's name; others carry on
                with lock:
                    result.errors[instance.name] = f"{type(error).__name__}: {error}"

        drivers = [
            threading.Thread(target=drive, args=(inst,), name=f"driver-{inst.name}")
            for inst in instances
        ]
        for thread in drivers:
            thread.start()
        began = time.perf_counter()
        try:
            start_gate.wait()
            began = time.perf_counter()
            for thread in drivers:
                thread.join()
        except KeyboardInterrupt:
            # the engines' threads must be idle before the process ends: an exit with a
            # worker inside ONNX Runtime aborts it ("exception not rethrown", exit 134)
            stop.set()
            start_gate.abort()
            for thread in drivers:
                thread.join()
            raise
        result.wall_s = time.perf_counter() - began
    if coalescer is not None and coalescer.batch_sizes:
        result.notes["mean_batch"] = float(np.mean(coalescer.batch_sizes))
    return result


def _inference(job: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return job(x)


def _finished(x: torch.Tensor) -> None:
    """Wait for a CUDA result before reading the clock (kernels run asynchronously)."""
    if x.is_cuda:
        torch.cuda.current_stream(x.device).synchronize()


def run_sequential(instances: list[ModelInstance], requests: int) -> RunResult:
    """Every instance's request one after another in one thread (round robin)."""
    result = RunResult("seq", {inst.name: [] for inst in instances})
    began = time.perf_counter()
    with torch.inference_mode():
        for _ in range(requests):
            for instance in instances:
                if instance.name in result.errors:
                    continue
                arrived = time.perf_counter()
                try:
                    x = instance.example
                    for job in instance.jobs:
                        x = job(x)
                    _finished(x)
                except Exception as error:
                    result.errors[instance.name] = f"{type(error).__name__}: {error}"
                    continue
                result.latencies_ms[instance.name].append((time.perf_counter() - arrived) * 1e3)
                result.last_outputs[instance.name] = x
    result.wall_s = time.perf_counter() - began
    return result


def run_batched(instances: list[ModelInstance], requests: int) -> RunResult:
    """Beyond the paper: the requests of instances that share a model run as one batch."""
    result = RunResult("batched", {inst.name: [] for inst in instances})
    groups: dict[int, list[ModelInstance]] = {}
    for instance in instances:
        groups.setdefault(id(instance.jobs[0]), []).append(instance)
    began = time.perf_counter()
    with torch.inference_mode():
        for _ in range(requests):
            for members in groups.values():
                arrived = time.perf_counter()
                x = torch.cat([m.example for m in members])
                try:
                    for job in members[0].jobs:
                        x = job(x)
                    _finished(x)
                except Exception as error:
                    for m in members:
                        result.errors[m.name] = f"{type(error).__name__}: {error}"
                    continue
                elapsed = (time.perf_counter() - arrived) * 1e3
                for m, rows in zip(
                    members, x.split([m.example.shape[0] for m in members]), strict=True
                ):
                    result.latencies_ms[m.name].append(elapsed)
                    result.last_outputs[m.name] = rows
    result.wall_s = time.perf_counter() - began
    return result


# ---------------------------------------------------------------------------------------------
# One process per model (MP baseline)
# ---------------------------------------------------------------------------------------------


def _process_main(
    build: Callable[[], ModelInstance],
    name: str,
    requests: int,
    threads: int,
    start: Any,
    queue: Any,
    device: str = "cpu",
) -> None:
    """Body of one MP process: build, wait for everyone, serve ``requests`` back to back."""
    try:
        torch.set_num_threads(threads)  # this process's own setting, gone when it exits
        instance = build()
        if device != "cpu":
            jobs = [job.to(device) for job in instance.jobs]
            instance = ModelInstance(instance.name, jobs, instance.example.to(device))
            run_sequential([instance], 1)  # CUDA context and kernels loaded before the start
    except BaseException:
        queue.put((name, [], traceback.format_exc(limit=3)))
        start.abort()  # release the others: they start without this one
        return
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    try:
        run = run_sequential([instance], requests)
        queue.put((name, run.latencies_ms[name], run.errors.get(name)))
    except BaseException:
        queue.put((name, [], traceback.format_exc(limit=3)))


def _await_start(start: Any, processes: dict[str, Any], timeout_s: float) -> bool:
    """Wait until every process has built its model (True), or until one fails or dies while
    building (False: the barrier is broken so the others start without it at once — a process
    killed before it could say so would otherwise hold them all for ``timeout_s``)."""
    broken = threading.Event()

    def wait() -> None:
        try:
            start.wait(timeout=timeout_s)
        except threading.BrokenBarrierError:
            broken.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    while waiter.is_alive():
        waiter.join(0.2)
        if waiter.is_alive() and any(not p.is_alive() for p in processes.values()):
            start.abort()  # one died before the start: nobody waits for it
    return not broken.is_set()


def run_multiprocess(
    builders: dict[str, Callable[[], ModelInstance]],
    requests: int,
    threads_per_process: int = 1,
    timeout_s: float = 600.0,
    device: torch.device | str = "cpu",
) -> RunResult:
    """One spawned OS process per instance (name → a picklable function that builds it, e.g.
    a ``functools.partial``), each running its model plainly on ``device`` (on CUDA: its own
    context, as paper B's MP baseline); a process that fails or dies is reported and the
    others' results are kept."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    start = context.Barrier(len(builders) + 1)
    queue = context.Queue()
    processes = {
        name: context.Process(
            target=_process_main,
            args=(build, name, requests, threads_per_process, start, queue, str(device)),
        )
        for name, build in builders.items()
    }
    for process in processes.values():
        process.start()
    result = RunResult("mp", {name: [] for name in builders})
    result.notes = {"threads_per_process": threads_per_process}
    if not _await_start(start, processes, timeout_s):
        result.notes["start"] = "a process failed while building; the others started without it"
    began = time.perf_counter()
    pending = set(builders)
    deadline = began + timeout_s
    while pending and time.perf_counter() < deadline:
        try:
            name, latencies, error = queue.get(timeout=1.0)
        except Exception:
            dead = [n for n in pending if not processes[n].is_alive()]
            for n in dead:
                result.errors[n] = f"process exited with code {processes[n].exitcode}"
                pending.discard(n)
            continue
        pending.discard(name)
        result.latencies_ms[name] = latencies
        if error:
            result.errors[name] = error.strip().splitlines()[-1]
    result.wall_s = time.perf_counter() - began
    for name in pending:
        result.errors[name] = "timed out"
    for process in processes.values():
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
    return result


__all__ = [
    "JobCoalescer",
    "RunResult",
    "run_batched",
    "run_multiprocess",
    "run_multithread",
    "run_sequential",
]
