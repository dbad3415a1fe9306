"""A pool of worker threads fed by one FIFO job queue; on CUDA every worker owns a stream.

This is paper A's head-parallel mechanism (and paper B's layer-group runtime): a caller submits
jobs, any free worker takes the oldest one and issues its kernels on the worker's own stream, so
jobs of different workers can overlap on the GPU. Stream hand-offs are explicit: a job starts
only after the work the caller had queued on its stream when it submitted (an event), tensors
crossing streams are marked with ``record_stream`` so the caching allocator does not reuse
their memory too early, and :meth:`StreamWorkerPool.gather` makes the caller's stream wait for
each job's completion event. On CPU there are no streams; the threads still run the jobs (ATen
releases the GIL inside its kernels).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils._pytree import tree_flatten

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future[Any]
    ready: torch.cuda.Event | None


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(obj)[0] if isinstance(leaf, torch.Tensor)]


class StreamWorkerPool:
    """``num_workers`` threads serving one FIFO queue. Use as a context manager or call
    :meth:`shutdown`. Exceptions raised in a job are re-raised, with their traceback, by the
    job's future (and by :meth:`run_all`)."""

    _ids = itertools.count()

    def __init__(
        self,
        num_workers: int,
        device: torch.device | str = "cpu",
        initializer: Callable[[int], None] | None = None,
    ) -> None:
        """``initializer(worker_index)`` runs first in every worker thread (e.g. to set its
        intra-op thread count)."""
        if num_workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {num_workers}")
        self.device = torch.device(device)
        self.uses_streams = self.device.type == "cuda"
        self.streams: list[torch.cuda.Stream | None] = [
            torch.cuda.Stream(self.device) if self.uses_streams else None
            for _ in range(num_workers)
        ]
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._initializer = initializer
        self._closed = False
        self._lock = threading.Lock()
        pool_id = next(self._ids)
        self._threads = [
            threading.Thread(
                target=self._serve, args=(i,), name=f"headway-pool{pool_id}-worker{i}", daemon=True
            )
            for i in range(num_workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def num_workers(self) -> int:
        return len(self._threads)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; safe to call from several threads at once."""
        future: Future[T] = Future()
        ready = None
        if self.uses_streams:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool has been shut down")
            self._queue.put(_Job(fn, args, kwargs, future, ready))
        return future

    def gather(self, futures: Iterable[Future[T]]) -> list[T]:
        """Results in submission order. On CUDA the caller's current stream is made to wait for
        each job's stream, and result tensors are marked as used on it."""
        futures = list(futures)
        results = [f.result() for f in futures]
        if self.uses_streams:
            caller = torch.cuda.current_stream(self.device)
            for future in futures:
                caller.wait_event(future.done_event)  # type: ignore[attr-defined]
            for tensor in _tensors(results):
                if tensor.is_cuda:
                    tensor.record_stream(caller)
        return results

    def run_all(self, jobs: Iterable[Callable[[], T]]) -> list[T]:
        """Run argument-less callables concurrently and return their results in order."""
        return self.gather([self.submit(job) for job in jobs])

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
        return self.gather([self.submit(fn, *args) for args in zip(*iterables, strict=True)])

    def _serve(self, index: int) -> None:
        stream = self.streams[index]
        if self._initializer is not None:
            try:
                self._initializer(index)
            except Exception:  # a broken initializer must not leave queued jobs unserved
                log.exception("worker %d initializer failed; serving jobs anyway", index)
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if stream is None:
                    result = job.fn(*job.args, **job.kwargs)
                else:
                    with torch.cuda.stream(stream):
                        stream.wait_event(job.ready)
                        for tensor in _tensors((job.args, job.kwargs)):
                            if tensor.is_cuda:
                                tensor.record_stream(stream)
                        result = job.fn(*job.args, **job.kwargs)
                        done = torch.cuda.Event()
                        done.record(stream)
                    job.future.done_event = done  # type: ignore[attr-defined]
            except BaseException as error:  # delivered to the caller through the future
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    def shutdown(self, wait: bool = True) -> None:
        """Finish the queued jobs, then stop the workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def __enter__(self) -> StreamWorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
