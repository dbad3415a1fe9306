"""Paper C's speed numbers on this CPU: wall-clock speedup of sparse attention + token pruning
over sparse attention alone (DeiT-Tiny/Small, batch 1 and 32), side by side in one process.

    python benchmarks/bench_vit.py [--json vit.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from headway.experiments.vit import pruning_speedup
from headway.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="deit_tiny,deit_small")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--prune", default="0.1:0.9", help="pruning share START:END")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    start, end = (float(v) for v in args.prune.split(":"))
    results = {}
    table = Table(title=f"sparse ({args.sparsity:.0%}) + pruning {args.prune} vs sparse only, "
                  f"{torch.get_num_threads()} threads, median ms")  # fmt: skip
    for column in ("model", "batch", "sparse only", "sparse + pruning", "speedup"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in args.models.split(","):
        rows = pruning_speedup(name, (1, 32), args.sparsity, (start, end))
        results[name] = rows
        for r in rows:
            table.add_row(name, str(r["batch"]), f"{r['sparse_only_ms']:.2f}",
                          f"{r['sparse_pruned_ms']:.2f}", f"{r['speedup']:.2f}×")  # fmt: skip
    Console(width=120).print(table)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
