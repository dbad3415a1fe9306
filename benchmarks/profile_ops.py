"""Where the time goes, by operator (torch.profiler), for two claims in docs/benchmarks.md:
the fused bf16 CSWinTT encoder (operator time vs wall time: the rest is Python dispatch) and
DeiT-Tiny at batch 1, sparse only vs sparse + token pruning — by operator, and split into the
transformer blocks vs everything between them (embedding, pruning bookkeeping, mask gathers,
final norm), timed with block hooks.

    python benchmarks/profile_ops.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import profile

from headway.models import build_cswintt
from headway.models.deit import build_deit
from headway.tracking.executors import build_executor
from headway.transforms.sparse_attention import (
    additive_masks,
    average_attention,
    masks_for_sparsity,
)
from headway.transforms.token_pruning import keep_counts, pruning_ratios


def report(label: str, run: Callable[[], object], runs: int) -> None:
    """Wall time per call, the summed operator self-time per call, and the top operators."""
    for _ in range(3):
        run()
    began = time.perf_counter()
    for _ in range(runs):
        run()
    wall_ms = (time.perf_counter() - began) * 1e3 / runs
    with profile() as prof:
        for _ in range(runs):
            run()
    events = prof.key_averages()
    self_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / runs
    print(f"\n{label}: {wall_ms:.1f} ms per call (wall), {self_ms:.1f} ms operator self-time")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
        print(
            f"  {event.key:28s} {event.self_cpu_time_total / 1e3 / runs:7.2f} ms"
            f"  ({event.count // runs} calls)"
        )


def block_split(model: torch.nn.Module, run: Callable[[], object], runs: int) -> None:
    """Median ms per call inside the blocks (pre/post forward hooks) and outside them."""
    inside: list[float] = []
    entered: list[float] = []
    handles = []
    for block in model.blocks:
        handles.append(
            block.register_forward_pre_hook(lambda *_: entered.append(time.perf_counter()))
        )
        handles.append(
            block.register_forward_hook(lambda *_: inside.append(time.perf_counter() - entered[-1]))
        )
    totals, blocks = [], []
    for _ in range(3):
        run()
    for _ in range(runs):
        inside.clear()
        began = time.perf_counter()
        run()
        totals.append(time.perf_counter() - began)
        blocks.append(sum(inside))
    for handle in handles:
        handle.remove()
    total, in_blocks = statistics.median(totals) * 1e3, statistics.median(blocks) * 1e3
    print(
        f"  blocks {in_blocks:.2f} ms, outside the blocks {total - in_blocks:.2f} ms "
        f"(total {total:.2f} ms, medians of {runs})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    network = build_cswintt("default").eval()
    executor = build_executor("fused-bf16", network, torch.device("cpu"))
    config = network.config
    tokens = torch.randn(config.num_tokens, 1, config.d_model)
    mask = torch.zeros(1, config.num_tokens, dtype=torch.bool)
    deit = build_deit("deit_tiny").eval()
    maps = average_attention(deit, [torch.randn(8, 3, 224, 224)])
    masks, _ = masks_for_sparsity(maps, 0.7)
    additive = additive_masks(masks)
    counts = keep_counts(deit.config.num_patches, pruning_ratios(deit.config.depth, 0.1, 0.9))
    image = torch.randn(1, 3, 224, 224)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; keep counts {counts}")
    with torch.inference_mode():
        report(
            "CSWinTT default encoder, fused-bf16", lambda: executor.encoder(tokens, mask), args.runs
        )
        report(
            "DeiT-Tiny batch 1, 70% sparse only",
            lambda: deit.forward_tokens(image, masks),
            args.runs * 2,
        )
        report(
            "DeiT-Tiny batch 1, 70% sparse + pruning 0.1:0.9",
            lambda: deit.forward_tokens(image, masks, counts),
            args.runs * 2,
        )
        for label, keep in (("sparse only", None), ("sparse + pruning", counts)):
            print(f"\nDeiT-Tiny batch 1, {label}, additive masks:")
            block_split(
                deit, lambda keep=keep: deit.forward_tokens(image, additive, keep), args.runs * 10
            )


if __name__ == "__main__":
    main()
