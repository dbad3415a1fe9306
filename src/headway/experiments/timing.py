"""Side-by-side timing that survives a noisy machine: the compared variants take turns in
short blocks (torch.utils.benchmark timers), so a slow spell of the VM lands on all of them
instead of on whichever happened to run then; each variant's median block is reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer


def interleaved_medians(
    variants: dict[str, Callable[[], object]],
    min_run_time: float = 2.0,
    block_seconds: float = 0.05,
    min_rounds: int = 7,
) -> dict[str, float]:
    """Median seconds per call of each variant, timed in alternating blocks of about
    ``block_seconds`` until every variant has had ``min_run_time`` seconds (and
    ``min_rounds`` blocks)."""
    threads = torch.get_num_threads()
    timers = {
        name: Timer("run()", globals={"run": run}, num_threads=threads)
        for name, run in variants.items()
    }
    numbers = {}
    for name, timer in timers.items():
        timer.timeit(number=1)  # warm-up: first-call allocations, lazy initialisation
        single = timer.timeit(number=1).mean
        numbers[name] = max(1, int(block_seconds / max(single, 1e-9)))
    per_call: dict[str, list[float]] = {name: [] for name in timers}
    began = time.perf_counter()
    while len(
        per_call[next(iter(per_call))]
    ) < min_rounds or time.perf_counter() - began < min_run_time * len(timers):
        for name, timer in timers.items():
            per_call[name].append(timer.timeit(number=numbers[name]).mean)
    return {name: statistics.median(values) for name, values in per_call.items()}
