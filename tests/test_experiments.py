"""Paper B's experiment drivers on the smallest settings (results, files, resume)."""

from __future__ import annotations

import json
from pathlib import Path

from headway.experiments.tucker import accuracy, mac_reduction


def test_mac_reduction_rows() -> None:
    (row,) = mac_reduction(["alexnet"], "ratio:0.5")
    assert row["model"] == "alexnet" and row["input"] == 224
    assert 0 < row["macs_after"] < row["macs_before"]
    assert row["layers_decomposed"] + row["layers_skipped"] == 5


def test_accuracy_experiment_writes_and_resumes(tmp_path: Path) -> None:
    rows = accuracy(
        tmp_path,
        "ratio:0.5",
        finetune_epochs=1,
        epochs_scale=0.2,
        models=["vgg16_bn"],
        show_progress=False,
    )
    (row,) = rows
    # the digits are easy for VGG-16-BN: well above chance (10%) after one epoch; the exact
    # figure depends on the CPU's kernels (47.4% on an AVX2 machine, above 50% with AVX-512)
    assert row.trained > 30
    assert row.decomposed is not None and row.finetuned is not None
    assert row.macs_after < row.macs
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    assert saved[0]["model"] == "vgg16_bn"
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    again = accuracy(
        tmp_path,
        "ratio:0.5",
        finetune_epochs=1,
        epochs_scale=0.2,
        models=["vgg16_bn"],
        show_progress=False,
    )
    assert again[0].trained == row.trained and again[0].finetuned == row.finetuned
    # nothing was retrained: the checkpoints were not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == stamps
