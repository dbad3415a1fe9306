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
from headway.runtime.engines import require_engine
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
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    return ov.Core().compile_model(converted, "CPU", config)


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
    infer = {name: compiled[models[name][0]].create_infer_request() for name in names}
    # A completion callback only says "done"; this thread records the time and starts the
    # request's next inference. Restarting a request from inside its own callback, the
    # shorter way, can lose a completion in OpenVINO (and then waits for ever).
    completed: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
    started: dict[str, float] = {}
    for name in names:
        infer[name].infer({0: arrays[name]})  # first-call work out of the timing
        infer[name].set_callback(lambda _, n=name: completed.put((n, time.perf_counter())), None)
    began = time.perf_counter()
    for name in names:
        started[name] = time.perf_counter()
        infer[name].start_async({0: arrays[name]})
    for _ in range(requests * len(names)):
        try:
            name, finished_at = completed.get(timeout=STALL_S)
        except queue.Empty:
            raise RuntimeError(f"OpenVINO finished no request within {STALL_S:.0f} s") from None
        times = result.latencies_ms[name]
        times.append((finished_at - started[name]) * 1e3)
        if len(times) < requests:
            started[name] = time.perf_counter()
            infer[name].start_async({0: arrays[name]})
    result.wall_s = time.perf_counter() - began
    for name in names:
        result.last_outputs[name] = torch.from_numpy(np.array(infer[name].get_output_tensor().data))
        # the callback refers back to the requests through ``infer``: a cycle through C++
        # objects that Python's collector cannot see, so break it
        infer[name].set_callback(_ignore, None)
    infer.clear()
    return result


def _ignore(_: object) -> None:
    """A completion callback that refers to nothing."""


__all__ = ["HINTS", "call_compiled", "openvino_compiled", "run_openvino_peer"]
