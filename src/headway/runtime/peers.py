"""The peer every multi-model benchmark must beat: OpenVINO the way its own users serve many
requests, without headway. ``ov.convert_model`` straight from the PyTorch module (shape fixed to
the request's, as a careful user does), compiled with a performance hint, and one asynchronous
infer request per model instance whose completion callback sends that instance's next request.
One compiled model per distinct model, as OpenVINO needs."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.engines import compile_openvino, require_engine, retire
from headway.runtime.multi_model import RunResult

HINTS = ("THROUGHPUT", "LATENCY")


def openvino_compiled(
    module: nn.Module, example: torch.Tensor, precision: str = "f32", hint: str = "THROUGHPUT"
) -> object:
    """``module`` converted by OpenVINO itself and compiled for the CPU with ``hint``."""
    require_engine("openvino")
    if hint not in HINTS:
        raise InputError(f"unknown OpenVINO hint {hint!r}: choose from {', '.join(HINTS)}")
    import openvino as ov

    with torch.no_grad():
        converted = ov.convert_model(module.eval(), example_input=example)
    converted.reshape(list(example.shape))
    return compile_openvino(converted, precision, hint=hint)


def call_compiled(compiled: Any, x: torch.Tensor) -> torch.Tensor:
    """One synchronous call of an OpenVINO compiled model on one tensor, as torch (what the
    benchmarks time and check beside headway's paths)."""
    return torch.from_numpy(compiled(x.numpy())[0].copy())


STALL_S = 300.0  # no request finished for this long: something is wrong, not slow


def run_openvino_peer(
    models: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]],
    requests: int,
    precision: str = "f32",
    hint: str = "THROUGHPUT",
) -> RunResult:
    """Serve ``requests`` requests of every instance (name → (a function that builds its model,
    its request input); instances with the same builder share one compiled model), each
    instance sending its next request when the last returns."""
    if requests < 1:
        raise InputError(f"requests must be at least 1, got {requests}")
    compiled: dict[object, object] = {}
    for build, example in models.values():
        if build not in compiled:
            compiled[build] = openvino_compiled(build(), example, precision, hint)
    names = list(models)
    result = RunResult(f"openvino {hint.lower()}", {name: [] for name in names})
    result.notes = {
        "precision": precision,
        "hint": hint,
        "streams": sorted({int(c.get_property("NUM_STREAMS")) for c in compiled.values()}),
    }
    arrays = {name: example.detach().contiguous().numpy() for name, (_, example) in models.items()}
    # OpenVINO's AsyncInferQueue, one request per instance of each compiled model, as its users
    # serve: the callback only reports (OpenVINO threads then never wait for Python), this
    # thread restarts the instance, and wait_all() (without the GIL) lets every callback end
    # before the compiled models are destroyed. Plain requests whose Python callbacks were
    # still being released then deadlocked that destructor (twice in full test runs).
    require_engine("openvino")
    import openvino as ov

    queues = {
        build: ov.AsyncInferQueue(model, sum(models[n][0] is build for n in names))
        for build, model in compiled.items()
    }
    completed: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
    outputs: dict[str, np.ndarray] = {}

    def on_done(request: Any, name: str) -> None:
        outputs[name] = np.array(request.get_output_tensor().data)  # tiny: the class scores
        completed.put((name, time.perf_counter()))

    for build, jobs in queues.items():
        example_name = next(n for n in names if models[n][0] is build)
        for index in range(len(jobs)):
            jobs[index].infer({0: arrays[example_name]})  # first-call work out of the timing
        jobs.set_callback(on_done)
    started: dict[str, float] = {}
    began = time.perf_counter()
    try:
        for name in names:
            started[name] = time.perf_counter()
            queues[models[name][0]].start_async({0: arrays[name]}, name)
        for _ in range(requests * len(names)):
            try:
                name, finished_at = completed.get(timeout=STALL_S)
            except queue.Empty:
                raise RuntimeError(f"OpenVINO finished no request within {STALL_S:.0f} s") from None
            times = result.latencies_ms[name]
            times.append((finished_at - started[name]) * 1e3)
            if len(times) < requests:
                started[name] = time.perf_counter()
                queues[models[name][0]].start_async({0: arrays[name]}, name)
        result.wall_s = time.perf_counter() - began
    finally:
        for jobs in queues.values():
            jobs.wait_all()
        retire([*queues.values(), *compiled.values()])  # freed once their threads are idle
    result.last_outputs = {name: torch.from_numpy(outputs[name]) for name in names}
    return result


__all__ = ["HINTS", "call_compiled", "openvino_compiled", "run_openvino_peer"]
