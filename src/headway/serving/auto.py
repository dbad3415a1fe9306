"""Loading a served model (:func:`load_graph`), and ``backend: auto``: every installed
backend built, checked against eager PyTorch and timed on a full batch by headway's one tuning
loop (:func:`headway.tuning.tune`); the fastest within tolerance serves, and the choice is
cached per machine like ``headway.accelerate``'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from headway.runtime.engines import engine_available
from headway.serving.config import ModelConfig
from headway.serving.graphs import (
    BF16_TOLERANCE,
    TOLERANCE,
    Arrays,
    Graph,
    build_checked,
    source_network,
)
from headway.tuning import Trial, call_ms, plan_key, tune

AUTO_BUDGET_S = 60.0


def _batch(example: Arrays, size: int) -> Arrays:
    return tuple(np.repeat(a, size, axis=0) for a in example)


def choose_backend(
    config: ModelConfig,
    model: nn.Module | None,
    export: Path | None,
    example: Arrays,
    workers: int,
    threads: int,
    tolerance: float,
) -> Graph:
    """The fastest backend that answers like eager PyTorch, built and warm."""
    batch = _batch(example, config.max_batch_size) if config.max_batch_size > 1 else example
    candidates = [b for b in ("openvino", "onnxruntime") if engine_available(b)]
    if config.precision == "bf16":
        candidates = [b for b in candidates if b != "onnxruntime"]

    def build(name: str) -> Graph:
        return build_checked(config, name, model, export, example, workers, threads, tolerance)

    def check(name: str, graph: Graph) -> tuple[dict[str, float], str | None]:
        return {"max_abs_diff": graph.notes["max_rel_diff"]}, None

    def time_one(graph: Graph) -> list[float]:
        return call_ms(graph.run, (batch,), calls=3)

    key = plan_key(
        {
            "serving": repr(config.graph_key()),
            "workers": workers,
            "threads": threads,
            "shape": [list(a.shape) for a in batch],
        }
    )
    plan, graph = tune(
        candidates,
        Trial(build, check, time_one, close=Graph.close),
        key,
        precision=config.precision,
        tolerance=tolerance,
        budget_s=AUTO_BUDGET_S,
        reference="torch",
    )
    graph.notes["auto"] = plan.chosen
    return graph


def load_graph(config: ModelConfig, workers: int = 2, threads: int = 1) -> Graph:
    """``config``'s model loaded on its backend (``auto``: measured among the installed ones,
    the fastest within tolerance), checked against eager PyTorch, warm."""
    model, export, example = source_network(config)
    tolerance = BF16_TOLERANCE if config.precision == "bf16" else TOLERANCE
    if config.backend == "auto":
        return choose_backend(config, model, export, example, workers, threads, tolerance)
    return build_checked(
        config, config.backend, model, export, example, workers, threads, tolerance
    )
