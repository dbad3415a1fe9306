"""The in-process serving API: paper B's runtime answering applications' requests.

``ServingRuntime(configs)`` loads every model (a model that fails is named and the others
serve, unless ``strict``), then ``submit(model, inputs) -> Future`` / ``infer(model, inputs)``
take a dict of named arrays (numpy or torch) and give a dict of named numpy arrays.

How a request runs (paper B, for requests from outside):
- models whose configs differ only in their names share one loaded graph (the copies of one
  model in paper B); their requests wait in one bounded FIFO per graph;
- a graph's batcher takes the oldest waiting requests, up to ``max_batch_size`` rows, once a
  full or preferred batch is there or the oldest has waited ``max_queue_delay`` (dynamic
  batching, which generalises headway's job coalescer to requests arriving within the delay);
  at most ``instances`` batches of a graph are in flight;
- the batch's jobs go one after another through **one FIFO job queue shared by every model**,
  served by stream-owning worker threads (:class:`~headway.runtime.pool.StreamWorkerPool`); a
  job's completion queues the next, so no thread waits for a model.

A full queue refuses at once (:class:`QueueFull`), a request past its ``timeout`` ends with
:class:`RequestTimeout`, a failing model call fails only the requests of its batch, and
:meth:`close` drains what was accepted (bounded) before it stops.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headway.errors import InputError, first_line
from headway.runtime.pool import StreamWorkerPool
from headway.serving.auto import load_graph
from headway.serving.config import DATATYPES, ModelConfig, TensorSpec
from headway.serving.errors import (
    BadRequest,
    ModelFailure,
    ModelUnavailable,
    QueueFull,
    RequestTimeout,
    ServingError,
    TooManySessions,
    UnknownModel,
)
from headway.serving.graphs import Arrays, Graph
from headway.serving.metrics import Metrics
from headway.serving.sessions import INPUTS as TRACKER_INPUTS
from headway.serving.sessions import OUTPUTS as TRACKER_OUTPUTS
from headway.serving.sessions import SequenceControl, TrackerSessions

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]


@dataclass
class _Request:
    model: str
    arrays: Arrays
    rows: int
    future: Future[Outputs]
    arrived: float
    deadline: float | None


class _GraphQueue:
    """One loaded graph's waiting requests, its batcher thread and its in-flight batches."""

    def __init__(self, runtime: ServingRuntime, graph: Graph, names: list[str]) -> None:
        self.runtime, self.graph, self.config = runtime, graph, graph.config
        self.names = names
        self.pending: collections.deque[_Request] = collections.deque()
        self.waiting = dict.fromkeys(names, 0)
        self.in_flight = 0
        self.condition = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(
            target=self._batch_loop, name=f"headway-batcher-{names[0]}", daemon=True
        )
        self.thread.start()

    # --- accepting ---------------------------------------------------------------------------
    def put(self, request: _Request, limit: int) -> None:
        with self.condition:
            if self.closing:
                raise ModelUnavailable(f"model {request.model!r} is shutting down")
            if self.waiting[request.model] >= limit:
                raise QueueFull(
                    f"model {request.model!r}: its queue is full ({limit} requests waiting); "
                    "retry later"
                )
            self.pending.append(request)
            self.waiting[request.model] += 1
            self.runtime.metrics.depth(request.model, self.waiting[request.model])
            self.condition.notify_all()

    # --- batching ----------------------------------------------------------------------------
    def _ready_rows(self) -> int:
        limit, rows = max(self.config.max_batch_size, 1), 0
        for request in self.pending:
            if rows + request.rows > limit:
                break
            rows += request.rows
        return rows

    def _wait_for_batch(self) -> None:
        """Holding the condition: wait while a batch may still grow within the delay."""
        batching = self.config.dynamic_batching
        if batching is None or self.config.max_batch_size <= 1:
            return
        full = self.config.max_batch_size
        while not self.closing and self.pending:
            rows = self._ready_rows()
            if rows >= full or rows in batching.preferred:
                return
            left = self.pending[0].arrived + batching.max_queue_delay_us / 1e6 - time.monotonic()
            if left <= 0:
                return
            self.condition.wait(left)

    def _take(self) -> list[_Request]:
        """Holding the condition: the oldest requests that fit one batch (expired ones fail).
        The waiting rows are shared among the free instances, so that every worker computes
        (on a CPU a batch's rows cost almost what they cost alone: two half batches on two
        workers finish sooner than one full batch on one)."""
        limit = max(self.config.max_batch_size, 1) if self.config.dynamic_batching else 1
        free = max(self.config.instances - self.in_flight, 1)
        limit = max(1, min(limit, -(-self._ready_rows() // free)))
        taken: list[_Request] = []
        rows = 0
        now = time.monotonic()
        while self.pending and (not taken or rows + self.pending[0].rows <= limit):
            request = self.pending.popleft()
            self.waiting[request.model] -= 1
            self.runtime.metrics.depth(request.model, self.waiting[request.model])
            if request.deadline is not None and now > request.deadline:
                self.runtime.fail(request, RequestTimeout(_timeout_line(request)), "timeout")
                continue
            if request.future.cancelled():
                continue
            taken.append(request)
            rows += request.rows
            if self.config.dynamic_batching is None or not self.config.batched:
                break
        return taken

    def _batch_loop(self) -> None:
        while True:
            with self.condition:
                while (not self.pending and not self.closing) or (
                    self.pending and self.in_flight >= self.config.instances
                ):
                    self.condition.wait()
                if not self.pending:
                    return  # closing, and nothing is left
                self._wait_for_batch()
                batch = self._take()
                if not batch:
                    continue
                self.in_flight += 1
            self.runtime.dispatch(self, batch)

    def finished(self) -> None:
        with self.condition:
            self.in_flight -= 1
            self.condition.notify_all()

    def drain(self, deadline: float) -> bool:
        """Stop accepting; wait (until ``deadline``) for every accepted request to end."""
        with self.condition:
            self.closing = True
            self.condition.notify_all()
            while self.pending or self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.condition.wait(left)
        return True


def _timeout_line(request: _Request) -> str:
    return f"model {request.model!r}: the request's timeout expired before it was answered"


class ServingRuntime:
    """Models of a repository served in this process on paper B's runtime.

    Args:
        configs: the models (:func:`headway.serving.load_repository`, or configs made in
            Python; ``ModelConfig(name, module=my_module, inputs=...)`` serves a module).
        workers: worker threads of the shared FIFO job queue (engine streams).
        threads: intra-op threads per worker.
        strict: raise when any model fails to load (else it is named and the others serve).
        on_model: called with each model name before it loads (progress).
        load: load now (False: call :meth:`load` later, e.g. after the server is live).
    """

    def __init__(
        self,
        configs: list[ModelConfig],
        *,
        workers: int = 2,
        threads: int = 1,
        strict: bool = False,
        on_model: Callable[[str], None] | None = None,
        load: bool = True,
    ) -> None:
        if not 1 <= workers <= 256 or not 1 <= threads <= 256:
            raise InputError(f"workers and threads must be 1–256, got {workers} and {threads}")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise InputError("every served model needs its own name")
        self.configs = {c.name: c for c in configs}
        self.workers, self.threads, self.strict = workers, threads, strict
        self.metrics = Metrics()
        self.failed: dict[str, str] = {}
        self.loaded: dict[str, _GraphQueue] = {}
        self.trackers: dict[str, TrackerSessions] = {}
        self._on_model = on_model
        self._closed = False
        self._loaded_all = threading.Event()
        self._lock = threading.Lock()
        self.pool = StreamWorkerPool(workers, "cpu", initializer=self._set_threads)
        if load:
            try:
                self.load()
            except BaseException:  # strict: nothing is left running behind the error
                self.close(0)
                raise

    def _set_threads(self, _: int) -> None:
        torch.set_num_threads(self.threads)

    # --- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load every model (graphs shared by equal configs); warm and checked when it returns."""
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, config in self.configs.items():
            if not config.tracker:
                groups.setdefault(config.graph_key(), []).append(name)
        try:
            for name in [n for n, c in self.configs.items() if c.tracker]:
                if self._closed:
                    return
                self._load_tracker(name)
            for names in groups.values():
                if self._closed:
                    return
                if self._on_model is not None:
                    self._on_model(", ".join(names))
                try:
                    graph = load_graph(self.configs[names[0]], self.workers, self.threads)
                except Exception as error:  # named per model; the others still serve
                    if self.strict:
                        raise
                    reason = first_line(error)
                    log.error("models %s failed to load: %s", ", ".join(names), reason)
                    for name in names:
                        self.failed[name] = reason
                    continue
                queue = _GraphQueue(self, graph, names)
                with self._lock:
                    for name in names:
                        self.configs[name] = _named(graph, self.configs[name])
                        self.loaded[name] = queue
        finally:
            self._loaded_all.set()

    def _load_tracker(self, name: str) -> None:
        """A tracker model (sessions over one executor); a failure is named like a graph's."""
        if self._on_model is not None:
            self._on_model(name)
        try:
            sessions = TrackerSessions(self.configs[name], self.threads)
        except Exception as error:
            if self.strict:
                raise
            self.failed[name] = first_line(error)
            log.error("model %s failed to load: %s", name, self.failed[name])
            return
        with self._lock:
            self.configs[name] = self.configs[name].with_tensors(TRACKER_INPUTS, TRACKER_OUTPUTS)
            self.trackers[name] = sessions

    def ready(self) -> bool:
        """Whether every model is loaded and warm (a failed one makes the server not ready)."""
        return self._loaded_all.is_set() and not self.failed and not self._closed

    def model_ready(self, model: str) -> bool:
        return (model in self.loaded or model in self.trackers) and not self._closed

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded_all.wait(timeout)

    # --- metadata ----------------------------------------------------------------------------
    def _config(self, model: str) -> ModelConfig:
        config = self.configs.get(model)
        if config is None:
            known = ", ".join(self.configs) or "none"
            raise UnknownModel(f"unknown model {model!r}: served models are {known}")
        return config

    def metadata(self, model: str) -> dict[str, Any]:
        """The protocol's model metadata: name, versions, platform, inputs and outputs (a
        batched tensor's shape starts with -1)."""
        config = self._config(model)
        queue = self.loaded.get(model)
        lead = [-1] if config.batched else []
        platform = f"headway_{queue.graph.backend}" if queue else "headway"
        return {
            "name": model,
            "versions": ["1"],
            "platform": "headway_tracker" if config.tracker else platform,
            "inputs": [_shape_dict(t, lead) for t in config.inputs],
            "outputs": [_shape_dict(t, lead) for t in config.outputs],
        }

    def model_config(self, model: str) -> dict[str, Any]:
        """The configuration in the JSON form of Triton's model configuration endpoint."""
        config = self._config(model).as_triton()
        queue = self.loaded.get(model)
        if queue is not None:
            config["parameters"]["backend_chosen"] = {"string_value": queue.graph.backend}
        if model in self.trackers:
            chosen = self.trackers[model].executor_name
            config["parameters"]["executor_chosen"] = {"string_value": chosen}
        return config

    # --- requests ----------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        inputs: Mapping[str, Any],
        timeout: float | None = None,
        sequence: SequenceControl | None = None,
    ) -> Future[Outputs]:
        """Queue one request; its future gives ``{output name: array}``. Bad input, an unknown
        model and a full queue raise here, before any work. ``sequence``: the session of a
        tracker model (:mod:`headway.serving.sessions`)."""
        config = self._config(model)
        if config.tracker:
            return self._submit_to_tracker(model, inputs, timeout, sequence)
        queue = self.loaded.get(model)
        if queue is None or self._closed:
            reason = self.failed.get(model, "not loaded yet" if not self._closed else "closed")
            raise ModelUnavailable(f"model {model!r} is not ready: {reason}")
        self.metrics.received(model)
        try:
            arrays, rows = check_inputs(config, inputs)
        except BadRequest:
            self.metrics.failed(model, "bad_request")
            raise
        if timeout is not None and not timeout > 0:
            raise BadRequest(f"timeout must be a positive number of seconds, got {timeout}")
        now = time.monotonic()
        future: Future[Outputs] = Future()
        request = _Request(
            model, arrays, rows, future, now, now + timeout if timeout is not None else None
        )
        try:
            queue.put(request, config.max_queue_size)
        except ServingError:
            self.metrics.failed(model, "queue_full")
            raise
        return future

    def _submit_to_tracker(
        self,
        model: str,
        inputs: Mapping[str, Any],
        timeout: float | None,
        sequence: SequenceControl | None,
    ) -> Future[Outputs]:
        sessions = self.trackers.get(model)
        if sessions is None or self._closed:
            reason = self.failed.get(model, "not loaded yet" if not self._closed else "closed")
            raise ModelUnavailable(f"model {model!r} is not ready: {reason}")
        self.metrics.received(model)
        arrived = time.monotonic()
        try:
            future = sessions.submit(inputs, sequence, timeout)
        except ServingError as error:
            self.metrics.failed(model, "bad_request" if isinstance(error, BadRequest) else "error")
            raise

        def count(finished: Future[Outputs]) -> None:
            error = finished.exception() if not finished.cancelled() else None
            if error is None:
                self.metrics.answered(model, time.monotonic() - arrived)
            else:
                kind = "bad_request" if isinstance(error, BadRequest) else "model_error"
                if isinstance(error, TooManySessions):
                    kind = "sessions"
                self.metrics.failed(model, kind)

        future.add_done_callback(count)
        return future

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        timeout: float | None = None,
        sequence: SequenceControl | None = None,
    ) -> Outputs:
        """``submit`` and wait (at most ``timeout`` seconds)."""
        future = self.submit(model, inputs, timeout, sequence)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise RequestTimeout(f"model {model!r}: no answer within {timeout} s") from None

    # --- running -----------------------------------------------------------------------------
    def dispatch(self, queue: _GraphQueue, batch: list[_Request]) -> None:
        """Start ``batch``'s first job on the shared FIFO job queue."""
        started = time.monotonic()
        for request in batch:  # a request cancelled by now is skipped at the answer
            request.future.set_running_or_notify_cancel()
        if len(batch) == 1:
            arrays = batch[0].arrays
        else:
            arrays = tuple(
                np.concatenate(parts) for parts in zip(*(r.arrays for r in batch), strict=True)
            )
        self._next_job(queue, batch, arrays, 0, started)

    def _next_job(
        self, queue: _GraphQueue, batch: list[_Request], arrays: Arrays, k: int, started: float
    ) -> None:
        jobs = queue.graph.jobs
        if k == len(jobs):
            self._answer(queue, batch, arrays, started)
            return
        try:
            future = self.pool.submit(jobs[k], arrays)
        except RuntimeError as error:  # the pool is shut down
            self._fail_batch(queue, batch, ModelUnavailable(first_line(error)), "shutdown")
            return

        def done(finished: Future[Arrays]) -> None:
            error = finished.exception()
            if error is not None:
                failure = ModelFailure(f"model {batch[0].model!r} failed: {first_line(error)}")
                self._fail_batch(queue, batch, failure, "model_error")
                return
            self._next_job(queue, batch, finished.result(), k + 1, started)

        future.add_done_callback(done)

    def _answer(
        self, queue: _GraphQueue, batch: list[_Request], outputs: Arrays, started: float
    ) -> None:
        now = time.monotonic()
        names = [t.name for t in queue.graph.outputs]
        offset = 0
        for model in {r.model for r in batch}:
            self.metrics.batch(model, sum(r.rows for r in batch), now - started)
        for request in batch:
            if len(batch) == 1:
                rows = outputs
            else:
                rows = tuple(o[offset : offset + request.rows] for o in outputs)
            offset += request.rows
            if request.deadline is not None and now > request.deadline:
                self.fail(request, RequestTimeout(_timeout_line(request)), "timeout")
                continue
            if not request.future.done():
                request.future.set_result(dict(zip(names, rows, strict=True)))
                self.metrics.answered(request.model, started - request.arrived)
        queue.finished()

    def _fail_batch(
        self, queue: _GraphQueue, batch: list[_Request], error: ServingError, reason: str
    ) -> None:
        for request in batch:
            self.fail(request, error, reason)
        queue.finished()

    def fail(self, request: _Request, error: ServingError, reason: str) -> None:
        self.metrics.failed(request.model, reason)
        if not request.future.done():
            if not request.future.running():
                request.future.set_running_or_notify_cancel()
            if not request.future.done():
                request.future.set_exception(error)

    # --- stopping ----------------------------------------------------------------------------
    def close(self, drain_s: float = 30.0) -> bool:
        """Refuse new requests, answer every accepted one (within ``drain_s``), stop the
        workers and release the graphs. True when nothing accepted was left unanswered."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        deadline = time.monotonic() + drain_s
        queues = list({id(q): q for q in self.loaded.values()}.values())
        drained = all([q.drain(deadline) for q in queues])
        for queue in queues:
            with queue.condition:
                left = list(queue.pending)
                queue.pending.clear()
            for request in left:
                self.fail(request, ModelUnavailable("the server stopped first"), "shutdown")
        self.pool.shutdown(wait=drained)
        for queue in queues:
            queue.graph.close()
        for sessions in self.trackers.values():
            sessions.close(wait=drained)
        return drained

    def __enter__(self) -> ServingRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _named(graph: Graph, config: ModelConfig) -> ModelConfig:
    """``config`` with the tensors the loaded graph has (names and dims filled in)."""
    return config.with_tensors(graph.inputs, graph.outputs)


def _shape_dict(spec: TensorSpec, lead: list[int]) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": [*lead, *spec.dims]}


def check_inputs(config: ModelConfig, inputs: Mapping[str, Any]) -> tuple[Arrays, int]:
    """The request's arrays in the model's input order and its row count; :class:`BadRequest`
    naming the first input that is unknown, missing, of the wrong datatype or shape."""
    if not isinstance(inputs, Mapping):
        raise BadRequest("inputs must be a mapping of input name to array")
    expected = {t.name: t for t in config.inputs}
    for name in inputs:
        if name not in expected:
            raise BadRequest(
                f"model {config.name!r} has no input {name!r} (its inputs: {', '.join(expected)})"
            )
    arrays, rows = [], None
    for spec in config.inputs:
        if spec.name not in inputs:
            raise BadRequest(f"model {config.name!r}: input {spec.name!r} is missing")
        value = inputs[spec.name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            raise BadRequest(f"input {spec.name!r} must be a numpy array or torch tensor")
        wanted = np.dtype(DATATYPES[spec.datatype])
        if value.dtype != wanted:
            raise BadRequest(
                f"input {spec.name!r} is {value.dtype}, model {config.name!r} takes "
                f"{spec.datatype} ({wanted})"
            )
        shape = value.shape[1:] if config.batched else value.shape
        fits = len(shape) == len(spec.dims) and all(
            d == -1 or d == s for d, s in zip(spec.dims, shape, strict=True)
        )
        if config.batched and value.ndim >= 1:
            if not 1 <= value.shape[0] <= config.max_batch_size:
                raise BadRequest(
                    f"input {spec.name!r} has batch size {value.shape[0]}, model "
                    f"{config.name!r} takes 1–{config.max_batch_size}"
                )
            rows = value.shape[0] if rows is None else rows
            if value.shape[0] != rows:
                raise BadRequest("every input of one request needs the same batch size")
        if not fits or (config.batched and value.ndim == 0):
            lead = "[batch, " if config.batched else "["
            dims = ", ".join(map(str, spec.dims))
            raise BadRequest(
                f"input {spec.name!r} has shape {list(value.shape)}, model {config.name!r} "
                f"takes {lead}{dims}]"
            )
        if not value.flags.writeable:  # bytes off the wire: torch wants arrays it may own
            value = value.copy()
        arrays.append(np.ascontiguousarray(value))
    return tuple(arrays), rows or 1
