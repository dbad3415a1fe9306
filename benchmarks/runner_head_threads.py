"""How cpp-heads' thread layout changes its time on this machine: Case B in C++ (``cpp``)
beside Case C in C++ with 8 head workers × the caller's intra-op threads (the default, boxes
bit-identical), 8 workers × 1 thread, and 1 worker × the caller's threads. Default CSWinTT,
random weights, synthetic frames; passes interleaved (order reversed every round); medians of
the backbone and encoder milliseconds per frame after the warm-up frames.

    python benchmarks/runner_head_threads.py [--frames 9] [--warmup 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from headway.models.cswintt import build_cswintt
from headway.tracking.datasets import load_dataset
from headway.tracking.native.runner import NativeTracker
from headway.tracking.synth import SynthSettings, synthesize

LAYOUTS = {  # label → (executor, head workers, intra-op threads per worker)
    "cpp": ("cpp", 0, 0),
    "cpp-heads 8 × caller's": ("cpp-heads", 8, 0),
    "cpp-heads 8 × 1": ("cpp-heads", 8, 1),
    "cpp-heads 1 × caller's": ("cpp-heads", 1, 0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.frames <= args.warmup or args.warmup < 0 or args.rounds < 1:
        parser.error("need frames > warmup ≥ 0 and rounds ≥ 1")
    torch.manual_seed(0)
    network = build_cswintt("default").eval()
    with tempfile.TemporaryDirectory() as folder:
        synthesize(folder, sequences=1, settings=SynthSettings(frames=args.frames))
        sequence = load_dataset(folder, "otb")[0]
        trackers = {
            label: NativeTracker(network, None, "cpu", ex, head_threads=w, head_intra_op_threads=t)
            for label, (ex, w, t) in LAYOUTS.items()
        }
        times: dict[str, dict[str, list[float]]] = {
            label: {"backbone": [], "encoder": []} for label in LAYOUTS
        }
        labels = list(LAYOUTS)
        for round_index in range(args.rounds):
            for label in labels if round_index % 2 == 0 else labels[::-1]:
                raw = trackers[label].run_job(sequence.frames, sequence.init_box)
                for stage, values in times[label].items():
                    values += raw["stage_ms"][stage][args.warmup :]
        for tracker in trackers.values():
            tracker.close()
    print(f"| layout | backbone ms | encoder ms |  ({torch.get_num_threads()} threads)")
    print("|---|---:|---:|")
    for label, stages in times.items():
        backbone, encoder = (float(np.median(stages[s])) for s in ("backbone", "encoder"))
        print(f"| {label} | {backbone:.1f} | {encoder:.1f} |")


if __name__ == "__main__":
    main()
