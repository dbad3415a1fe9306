"""Paper B's compression numbers on this machine: MAC reduction per model (ImageNet sizes) and
CPU latency before/after decomposition at batch 1 and 8, side by side in one process.

    python benchmarks/bench_tucker.py --json tucker.json [--only macs|latency]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from headway.experiments.tucker import latency, mac_reduction
from headway.io import atomic_write_text


def print_macs(console: Console, rows: list[dict[str, Any]], rank: str) -> None:
    table = Table(title=f"Tucker-2 MAC reduction ({rank}); conv + linear MACs per image")
    for column in ("model", "input", "MACs before", "MACs after", "reduction", "paper",
                   "params before", "params after", "decomposed / skipped"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"], str(r["input"]), f"{r['macs_before']:,}", f"{r['macs_after']:,}",
            f"{r['mac_reduction_pct']:.1f}%", f"{r['paper_mac_reduction_pct']}%",
            f"{r['params_before']:,}", f"{r['params_after']:,}",
            f"{r['layers_decomposed']} / {r['layers_skipped']}",
        )  # fmt: skip
    console.print(table)


def print_latency(console: Console, timing: dict[str, Any]) -> None:
    layout = "channels-last" if timing["channels_last"] else "NCHW"
    table = Table(
        title=f"{timing['model']} ({timing['input']}×{timing['input']}, {timing['rank']}, "
        f"{timing['mac_reduction_pct']:.1f}% fewer MACs), CPU latency, {timing['threads']} "
        f"threads, {layout}, median"
    )
    for column in ("batch", "original ms", "decomposed ms", "speedup"):
        table.add_column(column, justify="right")
    for r in timing["rows"]:
        table.add_row(str(r["batch"]), f"{r['original_ms']:.2f}", f"{r['decomposed_ms']:.2f}",
                      f"{r['speedup']:.2f}×")  # fmt: skip
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="vgg16,resnet152,inception_v3,regnet_y_32gf")
    parser.add_argument("--rank", default="vbmf", help="rank rule for the MAC table")
    parser.add_argument("--latency-model", default="vgg16")
    parser.add_argument("--latency-rank", default="macs:0.19")
    parser.add_argument("--only", choices=("macs", "latency"), default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    console = Console(width=140)
    rows: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    if args.only != "latency":
        rows = mac_reduction(
            args.models.split(","),
            args.rank,
            on_model=lambda name: console.print(f"decomposing {name} …"),
        )
        print_macs(console, rows, args.rank)
    if args.only != "macs":
        timing = latency(args.latency_model, args.latency_rank)
        print_latency(console, timing)
    if args.json:
        environment = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.machine()}  # fmt: skip
        payload = {"mac_reduction": rows, "latency": timing, "environment": environment}
        atomic_write_text(Path(args.json), json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
