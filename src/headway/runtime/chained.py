"""Paper B's multi-thread runtime on an inference engine, with no Python thread per job.

The jobs of many model instances still pass through one FIFO queue, but an engine job is
started asynchronously (OpenVINO ``InferRequest.start_async``, ONNX Runtime ``run_async``) and
its completion callback only reports. One thread (the caller's) takes the reports in order:
it queues that request's next job (or records the finished request and queues the instance's
next one) and starts the oldest queued jobs while fewer than ``depth`` are in flight. No worker
thread blocks in Python while an engine computes, and the engine's own streams are the workers.
The callbacks start nothing: restarting a request from inside its own callback lost a
completion once in the peer (``peers.py``). A request is started again only once its previous
run has fully ended (OpenVINO puts a request's callback back only after it returns), its
callback is set once, and before the models go every request is waited for with the GIL
released, so no engine thread is left waiting for Python while a compiled model's destructor
joins it (a deadlock seen twice with callbacks still running).

- OpenVINO: every distinct job is compiled once with ``NUM_STREAMS = streams`` and
  ``threads`` threads per stream; each instance owns one infer request per job, chained without
  copies (a job's input tensor *is* the previous job's output tensor).
- ONNX Runtime: ``run_async`` runs on a session's own pool thread, so every distinct job gets
  ``streams`` sessions and instance *i* uses session *i* mod ``streams`` for all its jobs.

Measured on the 2-core VM (docs/benchmarks.md, "Multi-DNN on the engines"): each engine call
costs roughly 0.6 ms of core time on top of its compute, so here whole-model jobs (``jobs:1``)
serve the most requests; finer jobs pay that once per job.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.engines import export_onnx, open_engine, require_engine, retire
from headway.runtime.jobs import ModelInstance
from headway.runtime.multi_model import RunResult

CHAIN_ENGINES = ("onnxruntime", "openvino", "openvino-bf16")


@dataclass
class _Link:
    """One job of one instance: start it, and read its output once it has finished."""

    start: Callable[[], None]
    output: Callable[[], np.ndarray]


class _OpenVINOJobs:
    """Every distinct job module compiled once (shared by the copies of a model)."""

    def __init__(self, engine: str, streams: int, threads: int) -> None:
        import openvino as ov

        self._ov = ov
        self.engine, self.streams, self.threads = engine, streams, threads
        self._compiled: dict[int, Any] = {}
        self._requests: list[Any] = []

    def compile(self, path: Path) -> Any:
        """The exported graph at ``path`` compiled with this run's streams and precision (the
        THROUGHPUT hint's other choices, with the stream count headway's workers give)."""
        threads = self.streams * self.threads
        return open_engine(self.engine, path, threads, self.streams, "THROUGHPUT")

    def release(self) -> None:
        _release_openvino(self._requests, list(self._compiled.values()))
        self._requests = []
        self._compiled.clear()

    def chain(
        self, jobs: list[nn.Module], example: torch.Tensor, done: Callable[[int], None]
    ) -> list[_Link]:
        """One infer request per job, each fed by the previous one's output tensor;
        ``done(k)`` runs on job ``k``'s completion (in the engine's callback thread)."""
        links, previous, x = [], None, example
        for index, job in enumerate(jobs):
            compiled = self._compiled.get(id(job))
            if compiled is None:
                compiled = self._compiled[id(job)] = self.compile(export_onnx(job, (x,)))
            request = compiled.create_infer_request()
            self._requests.append(request)
            if previous is None:
                request.set_input_tensor(self._ov.Tensor(example.detach().contiguous().numpy()))
            else:  # the previous request has run once, so its output tensor exists
                request.set_input_tensor(previous.get_output_tensor())
            request.infer()
            request.set_callback(lambda _, k=index: done(k), None)
            links.append(
                _Link(partial(_restart, request), lambda r=request: r.get_output_tensor().data)
            )
            previous = request
            with torch.no_grad():
                x = job(x)
        return links


@dataclass
class _BatchRun:
    """One infer request of a batch-size model and what its current run reports to."""

    request: Any
    count: int = 0
    done: Callable[[list[np.ndarray] | None, str | None], None] | None = None


class _OpenVINOBatches:
    """Coalescing on OpenVINO: a job run on a batch of waiting requests, compiled once per
    (job, batch size), with a free list of infer requests per compiled model."""

    def __init__(self, engine: str, streams: int, threads: int) -> None:
        self._jobs = _OpenVINOJobs(engine, streams, threads)
        self._compiled: dict[tuple[int, int], Any] = {}
        self._free: dict[tuple[int, int], list[Any]] = {}
        self._requests: list[Any] = []
        self._lock = threading.Lock()

    def prepare(self, job: nn.Module, shape: torch.Size, batch: int) -> None:
        """Export and compile ``job`` for ``batch`` requests of ``shape`` (before timing)."""
        key = (id(job), batch)
        if key not in self._compiled:
            example = torch.zeros(batch, *shape[1:])
            self._compiled[key] = self._jobs.compile(export_onnx(job, (example,)))
            self._free[key] = []

    def run(
        self,
        job: nn.Module,
        arrays: list[np.ndarray],
        done: Callable[[list[np.ndarray] | None, str | None], None],
    ) -> None:
        """Start ``job`` on the rows of ``arrays`` (one per request); ``done(rows, None)``
        gets each request's output rows back, ``done(None, error)`` a failure."""
        key = (id(job), len(arrays))
        with self._lock:
            free = self._free[key]
            run = free.pop() if free else None
        if run is None:
            # one callback for the request's life, set before it first runs: a callback
            # replaced while a run is finishing is freed on OpenVINO's thread instead (its
            # last task keeps it), which then needs the GIL
            run = _BatchRun(self._compiled[key].create_infer_request())
            run.request.set_callback(lambda _, r=run, k=key: self._finished(k, r), None)
            with self._lock:
                self._requests.append(run.request)
        run.count, run.done = len(arrays), done
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        _restart(run.request, {0: batch})

    def _finished(self, key: tuple[int, int], run: _BatchRun) -> None:
        """``run``'s completion, in OpenVINO's callback thread: copy the rows out, free the
        request, report."""
        count, done = run.count, run.done
        try:
            out = run.request.get_output_tensor().data
            rows = [np.array(out[j : j + 1]) for j in range(count)]
        except Exception as error:  # reported with the instances' names
            rows, message = None, f"{type(error).__name__}: {error}"
        else:
            message = None
        with self._lock:
            self._free[key].append(run)
        done(rows, message)

    def release(self) -> None:
        _release_openvino(self._requests, list(self._compiled.values()))
        self._requests = []
        self._free.clear()
        self._compiled.clear()
        self._jobs.release()


class _OnnxRuntimeJobs:
    """Every distinct job module opened ``streams`` times (ONNX Runtime's ``run_async`` runs
    a session's calls on its one pool thread, one at a time)."""

    def __init__(self, streams: int, threads: int) -> None:
        self.streams, self.threads = streams, threads
        self._sessions: dict[int, list[Any]] = {}
        self._turn = 0

    def release(self) -> None:
        self._sessions.clear()

    def _open(self, path: str) -> Any:
        # run_async needs a pool thread beside the intra-op ones
        return open_engine("onnxruntime", Path(path), self.threads + 1)

    def chain(
        self, jobs: list[nn.Module], example: torch.Tensor, done: Callable[[int], None]
    ) -> list[_Link]:
        stream, self._turn = self._turn % self.streams, self._turn + 1
        outputs: list[np.ndarray | None] = [None] * len(jobs)
        links, x, first = [], example, example.detach().contiguous().numpy()
        for index, job in enumerate(jobs):
            sessions = self._sessions.get(id(job))
            if sessions is None:
                path = str(export_onnx(job, (x,)))
                sessions = self._sessions[id(job)] = [self._open(path) for _ in range(self.streams)]
            session = sessions[stream]
            name = session.get_inputs()[0].name

            def finished(results: Any, k: int, error: str) -> None:
                outputs[k] = results[0] if results else None
                done(k, error or None)

            def start(k: int = index, session: Any = session, name: str = name) -> None:
                source = first if k == 0 else outputs[k - 1]
                session.run_async(None, {name: source}, finished, k)

            links.append(_Link(start, lambda k=index: outputs[k]))
            with torch.no_grad():
                x = job(x)
        return links


def run_chained(
    instances: list[ModelInstance],
    requests: int,
    engine: str,
    streams: int = 2,
    threads: int = 1,
    depth: int | None = None,
    rate: float | None = None,
    coalesce: int = 1,
    stall_s: float = 300.0,
) -> RunResult:
    """Serve ``requests`` requests of every instance through one FIFO of engine jobs.

    Args:
        instances: models cut into jobs (plain modules; copies of one model share them).
        engine: ``openvino``, ``openvino-bf16`` or ``onnxruntime``.
        streams: the engine's parallel streams (the paper's workers).
        threads: intra-op threads per stream.
        depth: most jobs in flight at once (default: one per instance, i.e. the engine queues
            them; fewer leaves streams idle while a callback starts the next job).
        rate: requests per second per instance (open loop); None sends each instance's next
            request when its last one returns.
        coalesce: beyond the paper (OpenVINO): the oldest queued job also takes up to
            ``coalesce`` − 1 other queued requests for the same job of a shared model and
            runs them as one batch; nothing waits for a batch to fill.
        stall_s: when no job has come back for this long, the unfinished instances fail
            with that reason instead of the run waiting for ever.
    """
    if engine not in CHAIN_ENGINES:
        raise InputError(f"unknown engine {engine!r}: choose from {', '.join(CHAIN_ENGINES)}")
    if coalesce > 1 and engine == "onnxruntime":
        raise InputError("coalescing engine jobs needs OpenVINO (openvino, openvino-bf16)")
    require_engine(engine)
    for value, what in ((requests, "requests"), (streams, "streams"), (threads, "threads")):
        if value < 1:
            raise InputError(f"{what} must be at least 1, got {value}")
    depth = depth or len(instances)
    if depth < 1:
        raise InputError(f"depth must be at least 1, got {depth}")
    if coalesce < 1:
        raise InputError(f"coalesce must be at least 1, got {coalesce}")
    if coalesce > 1 and any(inst.example.shape[0] != 1 for inst in instances):
        raise InputError("coalescing batches single-image requests: every request must be one")
    run = _ChainedRun(instances, requests, engine, streams, threads, depth, coalesce)
    return run.serve(rate, stall_s)


class _ChainedRun:
    """One run of :func:`run_chained`: the FIFO, what is in flight and what each instance
    has served. The engines' callbacks only put reports on ``reports``; the caller's thread
    handles them in order holding ``lock``, which the open loop's arrivals thread shares.
    Every method named "holding the lock" must be called with it held."""

    def __init__(
        self,
        instances: list[ModelInstance],
        requests: int,
        engine: str,
        streams: int,
        threads: int,
        depth: int,
        coalesce: int,
    ) -> None:
        self.instances = instances
        self.requests = requests
        self.depth = depth
        self.coalesce = coalesce
        self.rate: float | None = None  # requests per second per instance; None: closed loop
        self.result = RunResult("mt", {inst.name: [] for inst in instances})
        self.result.notes = {
            "engine": engine,
            "streams": streams,
            "threads": threads,
            "depth": depth,
        }
        if coalesce > 1:
            self.result.notes["coalesce"] = coalesce
        self.batches = _OpenVINOBatches(engine, streams, threads) if coalesce > 1 else None
        self.builder: _OnnxRuntimeJobs | _OpenVINOJobs | _OpenVINOBatches
        if self.batches is not None:
            self.builder = self.batches
        elif engine == "onnxruntime":
            self.builder = _OnnxRuntimeJobs(streams, threads)
        else:
            self.builder = _OpenVINOJobs(engine, streams, threads)
        self.batch_sizes: list[int] = []
        self.outputs: list[np.ndarray | None] = [None] * len(instances)
        self.progress = 0.0  # when an engine job last came back
        self.lock = threading.Lock()  # the open loop's arrivals thread shares the FIFO
        # what the engines' callbacks report (its handling, the instances it concerns),
        # handled in order by the serving thread
        self.reports: queue.SimpleQueue[tuple[Callable[[], None], list[int]]] = queue.SimpleQueue()
        self.fifo: collections.deque[tuple[int, int]] = collections.deque()
        self.in_flight = 0
        self.served = [0] * len(instances)
        self.waiting: list[collections.deque[float]] = [collections.deque() for _ in instances]
        self.busy = [False] * len(instances)
        self.finished = threading.Event()
        self.stopping = False  # Ctrl-C: no job starts; the ones in flight come back first
        self.remaining = requests * len(instances)
        # every job's input shape, from one pass of each distinct model in torch
        self.inputs: dict[int, list[np.ndarray]] = {}
        self.chains: list[list[_Link]] = []
        if self.batches is None:
            assert not isinstance(self.builder, _OpenVINOBatches)
            self.chains = [
                self.builder.chain(inst.jobs, inst.example, partial(self._report_job, i))
                for i, inst in enumerate(instances)
            ]
        else:
            self._prepare_batches(self.batches)

    def _report_job(self, i: int, k: int, error: str | None = None) -> None:
        """An engine's callback: job ``k`` of instance ``i`` came back (report only)."""
        self.reports.put((lambda: self.completed(i, k, error), [i]))

    def _prepare_batches(self, batches: _OpenVINOBatches) -> None:
        shapes: dict[int, list[torch.Size]] = {}
        for i, inst in enumerate(self.instances):
            self.inputs[i] = [inst.example.detach().contiguous().numpy()]
            if id(inst.jobs[0]) in shapes:
                continue
            x, seen = inst.example, []
            with torch.no_grad():
                for job in inst.jobs:
                    seen.append(x.shape)
                    x = job(x)
            shapes[id(inst.jobs[0])] = seen
            copies = sum(other.jobs[0] is inst.jobs[0] for other in self.instances)
            for job, shape in zip(inst.jobs, seen, strict=True):
                for size in range(1, min(self.coalesce, copies) + 1):
                    batches.prepare(job, shape, size)

    def start_jobs(self) -> None:  # holding the lock
        while self.in_flight < self.depth and self.fifo and not self.stopping:
            i, k = self.fifo.popleft()
            self.in_flight += 1
            if self.batches is not None:
                self.start_batch(self.batches, i, k)
                continue
            try:
                self.chains[i][k].start()
            except Exception as error:  # reported with the instance's name
                self.in_flight -= 1
                self.fail(i, f"{type(error).__name__}: {error}")

    def start_batch(self, batches: _OpenVINOBatches, i: int, k: int) -> None:  # holding the lock
        job = self.instances[i].jobs[k]
        members = [(i, k)]
        for entry in list(self.fifo):
            if len(members) == self.coalesce:
                break
            if entry[1] == k and self.instances[entry[0]].jobs[k] is job:
                members.append(entry)
                self.fifo.remove(entry)
        self.batch_sizes.append(len(members))
        arrays = [self.inputs[m][0] if n == 0 else self.outputs[m] for m, n in members]

        def report(rows: list[np.ndarray] | None, error: str | None) -> None:
            handle = partial(self.batch_done, members, rows, error)
            self.reports.put((handle, [m for m, _ in members]))

        try:
            batches.run(job, arrays, report)
        except Exception as error:  # reported with the instances' names
            self.batch_done(members, None, f"{type(error).__name__}: {error}")

    def batch_done(
        self, members: list[tuple[int, int]], rows: list[np.ndarray] | None, error: str | None
    ) -> None:  # holding the lock
        self.in_flight -= 1
        for index, (i, k) in enumerate(members):
            if rows is None:
                self.fail(i, error or "the engine returned nothing")
                continue
            self.outputs[i] = rows[index]
            self.advance(i, k)

    def fail(self, i: int, message: str) -> None:  # holding the lock
        name = self.instances[i].name
        if name not in self.result.errors:
            self.result.errors[name] = message
            self.remaining -= self.requests - self.served[i]
            self.served[i] = self.requests
            if self.remaining <= 0:
                self.finished.set()

    def begin_next(self, i: int) -> None:  # holding the lock: the instance's next request
        if self.waiting[i] and self.instances[i].name not in self.result.errors:
            self.busy[i] = True
            self.fifo.append((i, 0))
        else:
            self.busy[i] = False

    def advance(self, i: int, k: int) -> None:  # holding the lock: job k of instance i is done
        if k + 1 < len(self.instances[i].jobs):
            self.fifo.append((i, k + 1))
            return
        arrived = self.waiting[i].popleft()
        latency_ms = (time.perf_counter() - arrived) * 1e3
        self.result.latencies_ms[self.instances[i].name].append(latency_ms)
        self.served[i] += 1
        self.remaining -= 1
        if self.remaining <= 0:
            self.finished.set()
        if self.rate is None and self.served[i] < self.requests:
            self.waiting[i].append(time.perf_counter())
        self.begin_next(i)

    def completed(self, i: int, k: int, error: str | None = None) -> None:  # holding the lock
        self.in_flight -= 1
        if error:
            self.fail(i, error)
        else:
            self.advance(i, k)

    def _handle_reports(self, stall_s: float) -> None:
        """Handle the engines' reports in order until every request is served or failed, or
        nothing has come back for ``stall_s``."""
        while not self.finished.is_set():
            try:
                report, concerned = self.reports.get(timeout=1.0)
            except queue.Empty:
                if time.perf_counter() - self.progress > stall_s:  # nothing came back: say so
                    with self.lock:
                        for i in range(len(self.instances)):
                            if self.served[i] < self.requests:
                                self.fail(i, f"the engine returned nothing for {stall_s:.0f} s")
                    return
                continue
            self.progress = time.perf_counter()
            with self.lock:
                try:
                    report()
                    self.start_jobs()
                except Exception as failure:  # named with the instances, never swallowed
                    for i in concerned:
                        self.fail(i, f"{type(failure).__name__}: {failure}")

    def _drain(self) -> None:
        """Ctrl-C: start nothing more, let the jobs in flight come back (their callbacks run
        Python, which an ending interpreter would cut off inside the engine's threads: ONNX
        Runtime then aborts the process, "exception not rethrown"), then release the engines.
        Bounded by ``SETTLE_S``."""
        with self.lock:
            self.stopping = True
        deadline = time.perf_counter() + SETTLE_S
        while time.perf_counter() < deadline:
            with self.lock:
                if self.in_flight <= 0:
                    break
            try:
                report, _ = self.reports.get(timeout=0.1)
            except queue.Empty:
                continue
            with self.lock, contextlib.suppress(Exception):
                report()
        self.builder.release()
        self.chains.clear()

    def serve(self, rate: float | None, stall_s: float) -> RunResult:
        """Send the requests (closed loop, or ``rate`` per second per instance), handle the
        reports until every request is served or failed, then release the engines."""
        self.rate = rate
        began = time.perf_counter()
        if rate is None:
            with self.lock:
                for i in range(len(self.instances)):
                    self.waiting[i].append(time.perf_counter())
                    self.begin_next(i)
                self.start_jobs()
        else:
            threading.Thread(
                target=_arrive,
                args=(self, self.requests, rate),
                daemon=True,
                name="headway-arrivals",
            ).start()
        self.progress = time.perf_counter()
        try:
            self._handle_reports(stall_s)
        except KeyboardInterrupt:
            self._drain()
            raise
        result = self.result
        result.wall_s = time.perf_counter() - began
        with self.lock:
            result.notes["in_flight_at_end"] = self.in_flight
        for i, inst in enumerate(self.instances):
            if inst.name not in result.errors:
                last = self.chains[i][-1].output() if self.batches is None else self.outputs[i]
                result.last_outputs[inst.name] = torch.from_numpy(np.array(last))
        if self.batch_sizes:
            result.notes["mean_batch"] = float(np.mean(self.batch_sizes))
        self.builder.release()
        self.chains.clear()
        return result


def _ignore(_: object) -> None:
    """A completion callback that refers to nothing."""


def _release_openvino(requests: list[Any], compiled: list[Any]) -> None:
    """Wait for every request (the GIL released, so a callback still running can end), then
    drop the callbacks, which refer back to the requests: a cycle through OpenVINO's C++
    objects that Python's collector cannot see, so nothing would ever be freed. The requests
    and compiled models are retired, not freed here (``engines.retire``)."""
    if _settled(requests):  # else a request never came back: its callback stays
        for request in requests:
            request.set_callback(_ignore, None)
    retire([*requests, *compiled])


def _restart(request: Any, inputs: dict[int, np.ndarray] | None = None) -> None:
    """Start an OpenVINO request again once its previous run has fully ended. Its callback
    reports before it returns, and OpenVINO puts the callback back on the request only after
    that; a run started and finished in between would come back with no callback, a lost
    completion. ``wait`` releases the GIL and returns at once for a request that is done."""
    request.wait()
    request.start_async(inputs)


SETTLE_S = 10.0  # how long the requests may take, all together, to come back after a run


def _settled(requests: list[Any]) -> bool:
    """Whether every OpenVINO request has come back, its callback included, within
    ``SETTLE_S`` (``wait_for`` releases the GIL, so a callback waiting for it can end)."""
    deadline = time.perf_counter() + SETTLE_S
    for request in requests:
        left_ms = max(0, int((deadline - time.perf_counter()) * 1e3))
        if not request.wait_for(left_ms):
            return False
    return True


def _arrive(run: _ChainedRun, requests: int, rate: float) -> None:
    """Open loop: every instance's request ``r`` arrives at ``r / rate`` seconds; one that
    arrives while the instance is busy waits (its latency counts from its arrival)."""
    start = time.perf_counter()
    for r in range(requests):
        time.sleep(max(0.0, start + r / rate - time.perf_counter()))
        with run.lock:
            for i in range(len(run.waiting)):
                run.waiting[i].append(start + r / rate)
                if not run.busy[i]:
                    run.begin_next(i)
            run.start_jobs()


__all__ = ["CHAIN_ENGINES", "run_chained"]
