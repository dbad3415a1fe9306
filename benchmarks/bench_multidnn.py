"""Paper B's multi-DNN experiments on this machine (small-input models, 32×32, 10 classes).

- solo: each model alone vs 6 copies at once, one process each (paper B, Table 1);
- homogeneous: 8 × VGG-16 — Ori.(MP), Dcomp.(MP), Dcomp.(MT), plus, beyond the paper, MT with
  job coalescing, sequential and batched (paper B, Fig. 5);
- heterogeneous: 3 VGG-16, 1 ResNet-152, 2 Inception V3, 2 RegNetY-32GF (paper B, Fig. 6).
MP runs one process per instance with 1 intra-op thread; MT runs 2 pool workers with 1 thread
each; sequential/batched use 2 threads. The cases take turns in each of ``--rounds`` rounds;
medians over the rounds are reported, with MT's throughput ratio over Dcomp.(MP) per round.
Prints tables, writes JSON and one bar plot per experiment.

    python benchmarks/bench_multidnn.py --out runs/multidnn [--only homogeneous] [--requests 60]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from headway.experiments.multidnn import (
    HETEROGENEOUS,
    HETEROGENEOUS_CASES,
    HOMOGENEOUS,
    HOMOGENEOUS_CASES,
    MIX_RANK,
    RANK,
    plot_cases,
    run_cases,
    solo_vs_crowd,
)
from headway.io import atomic_write_text

console = Console(width=140)


def print_cases(title: str, experiment: dict[str, Any]) -> None:
    rows = experiment["cases"]
    model_names = list(next(iter(rows.values()))["per_model_ms"])
    table = Table(
        title=f"{title}: {experiment['models']}, {experiment['requests']} requests per "
        "instance, mean ms"
    )
    table.add_column("case")
    for name in model_names:
        table.add_column(name, justify="right")
    table.add_column("throughput req/s", justify="right")
    base = next(iter(rows.values()))
    for label, row in rows.items():
        cells = []
        for name in model_names:
            value = row["per_model_ms"].get(name, float("nan"))
            change = 100 * (value / base["per_model_ms"][name] - 1)
            cells.append(f"{value:.1f} ({change:+.0f}%)")
        table.add_row(label, *cells, f"{row['throughput']:.1f}")
    console.print(table)


def experiment(title: str, models: str, cases: list[tuple[str, str, str | None]],
               requests: int, out: Path, rounds: int) -> dict[str, Any]:  # fmt: skip
    result = run_cases(models, cases, requests,
                       lambda label: console.print(f"{title}: {label} …"), rounds)  # fmt: skip
    print_cases(title, result)
    rows = result["cases"]
    if "Dcomp.(MP)" in rows:
        base = rows["Dcomp.(MP)"]["throughputs"]
        for label in [k for k in rows if k.startswith("Dcomp.(MT")]:
            ratios = [t / b for t, b in zip(rows[label]["throughputs"], base, strict=True)]
            console.print(f"{label} / Dcomp.(MP) throughput per round: "
                          + ", ".join(f"{r:.2f}×" for r in ratios))  # fmt: skip
    plot_cases(title, result, out / f"{title}.png")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/multidnn")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("solo", "homogeneous", "heterogeneous"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"rank": RANK, "mix_rank": MIX_RANK, "mp_threads": 1,
                              "mt_workers": 2, "mt_threads": 1}  # fmt: skip
    if args.only in (None, "solo"):
        solo = solo_vs_crowd(requests=max(2, args.requests // 3))
        table = Table(title="solo vs 6 at once (one process each, 1 thread), mean ms")
        for column in ("model", "solo", "6 at once"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for model, row in solo.items():
            table.add_row(model, f"{row['solo_ms']:.1f}", f"{row['crowd_ms']:.1f}")
        console.print(table)
        report["solo"] = solo
    if args.only in (None, "homogeneous"):
        report["homogeneous"] = experiment(
            "homogeneous", HOMOGENEOUS, HOMOGENEOUS_CASES, args.requests, out, args.rounds
        )
    if args.only in (None, "heterogeneous"):
        report["heterogeneous"] = experiment(
            "heterogeneous",
            HETEROGENEOUS,
            HETEROGENEOUS_CASES,
            max(2, args.requests // 12),
            out,
            1,
        )
    atomic_write_text(out / "multidnn.json", json.dumps(report, indent=2))
    console.print(f"wrote {out / 'multidnn.json'} and the plots")


if __name__ == "__main__":
    main()
