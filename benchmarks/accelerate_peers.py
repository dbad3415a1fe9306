"""``headway.accelerate`` against the engines its users already have, on real torchvision and
timm models: eager, ``torch.compile``, OpenVINO (``ov.convert_model``, LATENCY hint) and ONNX
Runtime (its default session, which spin-waits) beside accelerate's choice, all timed
interleaved in one process; the ratio is the best peer's median over accelerate's.

ONNX Runtime is also timed with spin-waiting off (headway's setting for a stage among others):
the cost of that setting on a whole model is what made engine settings a per-workload choice.
Each row also gives accelerate's tuning time against its budget.

Needs torchvision and timm (not in ``make test``'s set-up: a separate environment with
``torch==2.14.1 torchvision==0.29.1 timm==1.0.31``, OpenVINO and ONNX Runtime, and headway's
``src`` on ``PYTHONPATH``). Random weights, eval mode, CPU, fp32.

    PYTHONPATH=src python benchmarks/accelerate_peers.py [--batches 1 8] [--budget 60]
        [--models tv:resnet18 ...] [--json accelerate_peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODELS = [
    "tv:resnet18",
    "tv:resnet50",
    "tv:mobilenet_v3_large",
    "tv:convnext_tiny",
    "tv:efficientnet_b0",
    "timm:efficientnet_b0",
    "timm:regnety_016",
    "timm:deit_tiny_patch16_224",
]


def build(name: str) -> nn.Module:
    library, model = name.split(":", 1)
    if library == "tv":
        from torchvision import models

        return models.get_model(model, weights=None).eval()
    import timm

    return timm.create_model(model, pretrained=False).eval()


def onnxruntime_session(path: Path, spinning: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime as its users open it: default options (threads, spinning), CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def peers(model: nn.Module, x: torch.Tensor, cache: Path) -> dict[str, Callable[[], Any]]:
    import openvino as ov

    from headway.runtime.engines import compile_openvino, export_onnx
    from headway.runtime.peers import call_compiled

    compiled = torch.compile(model)
    with torch.inference_mode():
        compiled(x)  # compiles now, not while timed
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=x)
    converted.reshape(list(x.shape))
    openvino = compile_openvino(converted, hint="LATENCY")
    path = export_onnx(model, (x,), cache)
    spin, no_spin = onnxruntime_session(path, True), onnxruntime_session(path, False)
    return {
        "torch.compile": lambda: compiled(x),
        "openvino": lambda: call_compiled(openvino, x),
        "onnxruntime": lambda: spin(x),
        "onnxruntime (no spin)": lambda: no_spin(x),
    }


def measure(name: str, batch: int, budget_s: float, cache: Path) -> dict[str, Any]:
    import headway
    from headway.tuning import interleaved_medians

    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(batch, 3, 224, 224)
    began = time.perf_counter()
    fast = headway.accelerate(model, x, budget_s=budget_s, use_cache=False)
    tune_s = time.perf_counter() - began
    with torch.inference_mode():
        expected, got = model(x), fast(x)
    rel = float((got - expected).abs().max() / expected.abs().max())
    variants = {"eager": lambda: model(x), **peers(model, x, cache), "accelerate": lambda: fast(x)}
    with torch.inference_mode():
        medians = interleaved_medians(variants, min_run_time=3.0)
    best_peer = min(("torch.compile", "openvino", "onnxruntime"), key=lambda peer: medians[peer])
    row = {
        "model": name,
        "batch": batch,
        "ms": {k: v * 1e3 for k, v in medians.items()},
        "chosen": fast.report.chosen,
        "best_peer": best_peer,
        "vs_best_peer": medians[best_peer] / medians["accelerate"],
        "vs_eager": medians["eager"] / medians["accelerate"],
        "spin_gain": medians["onnxruntime (no spin)"] / medians["onnxruntime"],
        "tune_s": tune_s,
        "budget_s": budget_s,
        "tried": sum(c.status != "skipped" for c in fast.report.candidates),
        "not_tried": fast.report.skipped(),
        "max_rel_diff": rel,
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    header = (
        f"{'model':<28} {'b':>2} {'eager':>8} {'compile':>8} {'ov':>8} {'ort':>8} "
        f"{'ort-ns':>8} {'accel':>8}  {'chosen':<24} {'vs best':>7} {'spin':>6} {'tune s':>7}"
    )
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("HEADWAY_CACHE", scratch)
        for batch in args.batches:
            for name in args.models:
                row = measure(name, batch, args.budget, Path(scratch) / "peers")
                rows.append(row)
                ms = row["ms"]
                print(
                    f"{name:<28} {batch:>2} {ms['eager']:8.2f} {ms['torch.compile']:8.2f} "
                    f"{ms['openvino']:8.2f} {ms['onnxruntime']:8.2f} "
                    f"{ms['onnxruntime (no spin)']:8.2f} {ms['accelerate']:8.2f}  "
                    f"{row['chosen']:<24} {row['vs_best_peer']:6.2f}× {row['spin_gain']:5.2f}× "
                    f"{row['tune_s']:7.1f}",
                    flush=True,
                )
                if args.json is not None:  # kept after every row: a long run loses nothing
                    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
