"""Why the shipped tiny tracker's template update never fires (docs/reproduce.md): the
confidence it outputs on held-out frames, how well a linear probe on its decoder output tells
"the template's target" from "another target", and what refreshing the template regardless of
the confidence does on the appearance-change set.

    python benchmarks/probe_confidence.py [--out runs/probe]
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from headway.experiments.tracker_accuracy import held_out_datasets
from headway.models.pretrained import load_tracker_network
from headway.tracking.crop import read_frame
from headway.tracking.runner import evaluate_run, track_dataset
from headway.tracking.tracker import CSWinTTTracker, TrackerSettings
from headway.tracking.train import SequencePool, TrackerTrainSettings, make_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/probe")
    args = parser.parse_args()
    out = Path(args.out)
    network = load_tracker_network()
    datasets = held_out_datasets(out / "data", 8, 60)
    with torch.inference_mode():
        confidences = []
        for sequence in datasets["standard"][:2] + datasets["appearance"][:2]:
            tracker = CSWinTTTracker(network, TrackerSettings(update_interval=10))
            tracker.initialize(read_frame(sequence.frames[0]), list(sequence.init_box))
            confidences += [tracker.track(read_frame(f))[1] for f in sequence.frames[1:]]
        print(
            f"confidence on {len(confidences)} held-out frames: min {min(confidences):.3f}, "
            f"mean {np.mean(confidences):.3f}, max {max(confidences):.3f}"
        )
        settings = replace(TrackerTrainSettings(), pool_size=48)
        pool = SequencePool(settings)
        pool.advance_to(0)
        features, labels = [], []
        for index in range(10):
            rng = np.random.default_rng([3, index])
            batch = make_batch(pool, settings, 128, 256, rng, negative_share=0.5)
            parts = [network.forward_backbone(*image) for image in [*batch.templates, batch.search]]
            merged = network.merge(parts)
            memory = network.forward_encoder(merged.tokens, merged.padding_mask)
            decoded = network.forward_decoder(memory, merged.padding_mask)
            features.append(decoded[0].numpy())
            labels.append(batch.positive.numpy())
    x, y = np.concatenate(features), np.concatenate(labels)
    probe = LogisticRegression(max_iter=5000, C=10)
    score = cross_val_score(probe, x, y, cv=4).mean()
    print(
        f"linear probe on the decoder output, {len(y)} samples (half from other sequences), "
        f"4-fold accuracy {100 * score:.1f}%"
    )
    for label, interval, threshold in (
        ("no update", 10**9, 0.5),
        ("ungated, every 10", 10, 0.0),
        ("ungated, every 5", 5, 0.0),
    ):
        run_dir = out / label.replace(" ", "_").replace(",", "")
        shutil.rmtree(run_dir, ignore_errors=True)
        settings_ = TrackerSettings(update_interval=interval, confidence_threshold=threshold)
        tracker = CSWinTTTracker(network, settings_)
        track_dataset(tracker, datasets["appearance"], run_dir, "otb", show_progress=False)
        scores = evaluate_run(run_dir, datasets["appearance"]).scores
        print(
            f"appearance set, {label}: AUC {scores['AUC']:.1f}, P {scores['P']:.1f}, "
            f"Pnorm {scores['Pnorm']:.1f}"
        )


if __name__ == "__main__":
    main()
