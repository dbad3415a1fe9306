"""headway's models beside the inference engines users already have (ONNX Runtime, OpenVINO) on
the same inputs, timed in alternating blocks in one process: DeiT-Tiny (dense), and VGG-16 at
32×32, dense and Tucker-2-decomposed. Each row gives the median ms per call, the ratio to
eager PyTorch and the largest difference from eager's output."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from headway.experiments.timing import interleaved_medians
from headway.measure import keeps_global_rng
from headway.models.registry import create_model
from headway.runtime.engines import ENGINES, compile_module, engine_available
from headway.transforms.tucker import decompose_model

CASES = ("deit_tiny", "vgg16", "vgg16_tucker")


def _case(name: str, batch: int) -> tuple[nn.Module, torch.Tensor, bool]:
    """(model, input, is a CNN) with random weights of a fixed seed."""
    torch.manual_seed(0)
    if name == "deit_tiny":
        model = create_model("deit_tiny").eval()
        size = model.config.img_size
        return model, torch.randn(batch, 3, size, size), False
    model = create_model("vgg16", num_classes=10, small_input=True).eval()
    x = torch.randn(batch, 3, 32, 32)
    if name == "vgg16_tucker":
        model, _ = decompose_model(model, x[:2], "macs:0.19")
        model.eval()
    return model, x, True


@keeps_global_rng
def compare_engines(
    cases: tuple[str, ...] = CASES,
    batches: tuple[int, ...] = (1, 32),
    engines: tuple[str, ...] | None = None,
    min_run_time: float = 1.0,
    on_case: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (case, batch, variant). Variants: ``eager``, for CNNs ``eager
    channels-last`` (headway's CNN latency path), and every installed engine."""
    engines = tuple(e for e in (engines or ENGINES) if engine_available(e))
    rows = []
    for name in cases:
        for batch in batches:
            if on_case is not None:
                on_case(f"{name}, batch {batch}")
            model, x, is_cnn = _case(name, batch)
            with torch.inference_mode():
                expected = model(x)
            variants: dict[str, Callable[[], torch.Tensor]] = {"eager": partial(model, x)}
            if is_cnn:
                last = copy.deepcopy(model).to(memory_format=torch.channels_last)
                x_last = x.contiguous(memory_format=torch.channels_last)
                variants["eager channels-last"] = partial(last, x_last)
            for engine in engines:
                variants[engine] = partial(compile_module(engine, model, x), x)
            with torch.inference_mode():
                differences = {
                    label: float((run().float() - expected).abs().max())
                    for label, run in variants.items()
                }
                seconds = interleaved_medians(variants, min_run_time=min_run_time)
            for label, value in seconds.items():
                rows.append(
                    {
                        "case": name,
                        "batch": batch,
                        "variant": label,
                        "ms": 1e3 * value,
                        "speedup": seconds["eager"] / value,
                        "max_diff": differences[label],
                    }
                )
    return rows


def engines_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of :func:`compare_engines`' rows (``headway bench engines``)."""
    header = ["case", "batch", "variant", "ms", "× eager", "max |Δ| vs eager"]
    cells = [
        [
            r["case"],
            str(r["batch"]),
            r["variant"],
            f"{r['ms']:.2f}",
            f"{r['speedup']:.2f}×",
            f"{r['max_diff']:.1e}",
        ]
        for r in rows
    ]
    return header, cells
