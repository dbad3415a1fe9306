"""Ray scaling on this machine: sequences per minute tracked locally and by 1 and 2 Ray
workers (tiny CSWinTT, eager, 1 thread per worker, built-in synthetic sequences), and the
overheads a scaling model needs (Ray start, actor start, per-sequence driver/transfer cost).
Prints a table and writes JSON (``--json``)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from headway.models import build_cswintt
from headway.tracking.cluster import TrackerRecipe, require_ray, track_dataset_ray
from headway.tracking.datasets import load_dataset
from headway.tracking.runner import track_dataset
from headway.tracking.synth import SynthSettings, synthesize
from headway.tracking.tracker import CSWinTTTracker, TrackerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ray = require_ray()
    recipe = TrackerRecipe(config="tiny", threads=1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        synthesize(
            root / "data", args.sequences, seed=3, settings=SynthSettings(frames=args.frames)
        )
        sequences = load_dataset(root / "data", "otb")
        torch.set_num_threads(1)
        began = time.perf_counter()
        network = build_cswintt("tiny")
        tracker = CSWinTTTracker(network, TrackerSettings(update_interval=200))
        built = time.perf_counter()
        track_dataset(tracker, sequences, root / "local", "otb", show_progress=False)
        local = time.perf_counter() - built
        build_seconds = built - began
        began = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - began
        runs = {}
        for workers in (1, 2):
            began = time.perf_counter()
            track_dataset_ray(recipe, sequences, root / f"ray{workers}", "otb", workers=workers,
                              show_progress=False)  # fmt: skip
            runs[workers] = time.perf_counter() - began
        ray.shutdown()
    per_sequence = local / len(sequences)
    overhead = (runs[1] - build_seconds - local) / len(sequences)
    result = {
        "sequences": len(sequences),
        "frames": args.frames,
        "local_s": local,
        "ray_start_s": ray_start,
        "tracker_build_s": build_seconds,
        "ray_s": {str(k): v for k, v in runs.items()},
        "per_sequence_s": per_sequence,
        "ray_overhead_per_sequence_s": overhead,
        "sequences_per_minute": {
            "local": 60 * len(sequences) / local,
            **{f"ray_{k}": 60 * len(sequences) / v for k, v in runs.items()},
        },
    }
    print(f"{len(sequences)} sequences x {args.frames} frames, tiny CSWinTT, 1 thread per worker")
    local_rate = result["sequences_per_minute"]["local"]
    print(f"local (1 thread):   {local:6.1f} s   {local_rate:6.1f} seq/min")
    for workers, seconds in runs.items():
        rate = result["sequences_per_minute"][f"ray_{workers}"]
        print(f"Ray, {workers} worker(s): {seconds:6.1f} s   {rate:6.1f} seq/min")
    print(
        f"Ray start {ray_start:.1f} s, tracker build {build_seconds:.2f} s, per sequence "
        f"{per_sequence:.2f} s, Ray overhead per sequence {overhead:.3f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
