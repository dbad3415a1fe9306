"""Paper B's multi-DNN experiments on this machine (small-input models, 32×32, 10 classes).

- solo: each model alone vs 6 copies at once, one process each (paper B, Table 1);
- homogeneous: 8 × VGG-16 — Ori.(MP), Dcomp.(MP), Dcomp.(MT), plus sequential and batched
  (paper B, Fig. 5);
- heterogeneous: 3 VGG-16, 1 ResNet-152, 2 Inception V3, 2 RegNetY-32GF (paper B, Fig. 6).
MP runs one process per instance with 1 intra-op thread; MT runs 2 pool workers with 1 thread
each; sequential/batched use 2 threads. Prints tables, writes JSON and one bar plot per
experiment.

    python benchmarks/bench_multidnn.py --out runs/multidnn [--only homogeneous] [--requests 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from headway.io import atomic_write_text
from headway.runtime.multi_model import (
    ModelSpec,
    instance_names,
    parse_models,
    run_mode,
)

console = Console(width=140)
RANK = "macs:0.19"  # VGG-16: 81% fewer MACs
MIX_RANK = "vbmf"  # per layer; a whole-model MAC budget is out of reach for ResNet-152's 1x1s


def specs_for(models: str, decomposed: str | None) -> dict[str, ModelSpec]:
    return {n: ModelSpec(m, decomposed=decomposed) for n, m in instance_names(parse_models(models))}


def per_model_mean(result: Any) -> dict[str, float]:
    """Mean latency per model type (averaged over its instances)."""
    by_model: dict[str, list[float]] = {}
    for name, values in result.latencies_ms.items():
        by_model.setdefault(name.split("#")[0], []).extend(values)
    return {m: float(np.mean(v)) for m, v in by_model.items() if v}


def run_cases(title: str, models: str, cases: list[tuple[str, str, str | None]], requests: int,
              out: Path) -> dict[str, Any]:  # fmt: skip
    rows = {}
    for label, mode, rank in cases:
        console.print(f"{title}: {label} …")
        result = run_mode(mode, specs_for(models, rank), requests, workers=2, threads=1)
        rows[label] = {"per_model_ms": per_model_mean(result), "throughput": result.throughput,
                       "errors": result.errors, "summary": result.summary()}  # fmt: skip
    model_names = list(next(iter(rows.values()))["per_model_ms"])
    table = Table(title=f"{title}: {models}, {requests} requests per instance, mean ms")
    table.add_column("case")
    for name in model_names:
        table.add_column(name, justify="right")
    table.add_column("throughput req/s", justify="right")
    base = rows[cases[0][0]]
    for label, row in rows.items():
        cells = []
        for name in model_names:
            value = row["per_model_ms"].get(name, float("nan"))
            change = 100 * (value / base["per_model_ms"][name] - 1)
            cells.append(f"{value:.1f} ({change:+.0f}%)")
        table.add_row(label, *cells, f"{row['throughput']:.1f}")
    console.print(table)
    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=120)
    width = 0.8 / len(rows)
    for i, (label, row) in enumerate(rows.items()):
        axes.bar(
            np.arange(len(model_names)) + i * width,
            [row["per_model_ms"].get(n, 0) for n in model_names],
            width,
            label=label,
        )
    axes.set_xticks(np.arange(len(model_names)) + width * (len(rows) - 1) / 2, model_names)
    axes.set_ylabel("mean latency per request (ms)")
    axes.set_title(f"{title} ({models})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"{title}.png")
    plt.close(figure)
    return {"models": models, "requests": requests, "cases": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/multidnn")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--only", choices=("solo", "homogeneous", "heterogeneous"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"rank": RANK, "mix_rank": MIX_RANK, "mp_threads": 1,
                              "mt_workers": 2, "mt_threads": 1}  # fmt: skip
    if args.only in (None, "solo"):
        solo = {}
        for model in ("alexnet", "squeezenet1_1", "vgg16", "regnet_y_32gf"):
            alone = run_mode("mp", specs_for(f"{model}:1", None), args.requests, threads=1)
            crowd = run_mode("mp", specs_for(f"{model}:6", None), args.requests, threads=1)
            solo[model] = {"solo_ms": per_model_mean(alone)[model],
                           "six_ms": per_model_mean(crowd)[model]}  # fmt: skip
        table = Table(title="solo vs 6 at once (one process each, 1 thread), mean ms")
        for column in ("model", "solo", "6 at once"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for model, row in solo.items():
            table.add_row(model, f"{row['solo_ms']:.1f}", f"{row['six_ms']:.1f}")
        console.print(table)
        report["solo"] = solo
    if args.only in (None, "homogeneous"):
        report["homogeneous"] = run_cases("homogeneous", "vgg16:8", [
            ("Ori.(MP)", "mp", None), ("Dcomp.(MP)", "mp", RANK), ("Dcomp.(MT)", "mt", RANK),
            ("Dcomp.(seq)", "seq", RANK), ("Dcomp.(batched)", "batched", RANK),
        ], args.requests, out)  # fmt: skip
    if args.only in (None, "heterogeneous"):
        report["heterogeneous"] = run_cases(
            "heterogeneous", "vgg16:3,resnet152:1,inception_v3:2,regnet_y_32gf:2",
            [("Ori.(MP)", "mp", None), ("Dcomp.(MP)", "mp", MIX_RANK),
             ("Dcomp.(MT)", "mt", MIX_RANK)],
            max(2, args.requests // 4), out,
        )  # fmt: skip
    atomic_write_text(out / "multidnn.json", json.dumps(report, indent=2))
    console.print(f"wrote {out / 'multidnn.json'} and the plots")


if __name__ == "__main__":
    main()
