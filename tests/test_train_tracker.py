"""Training the tracker (losses, sampling, resume), the shipped weights, and appearance change."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from headway.errors import InputError
from headway.models import build_cswintt, load_weights
from headway.models.pretrained import builtin_weights_path, load_tracker_network
from headway.tracking.datasets import load_dataset
from headway.tracking.synth import SynthSettings, render_sequence
from headway.tracking.tracker import CSWinTTTracker, TrackerSettings
from headway.tracking.train import (
    SequencePool,
    TrackerTrainSettings,
    box_iou_and_giou,
    box_loss,
    make_batch,
    train_tracker,
)

SMALL = TrackerTrainSettings(
    box_steps=2, confidence_steps=1, batch_size=2, pool_size=2, frames=4, warmup_steps=1
)


def test_iou_and_giou_on_hand_computed_boxes() -> None:
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.4, 0.4]])
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    iou, giou = box_iou_and_giou(pred, target)
    assert iou.tolist() == pytest.approx([1.0, 0.0, 0.0])
    # disjoint unit boxes 1 apart: hull 3, union 2 → GIoU = 0 − 1/3
    assert giou[:2].tolist() == pytest.approx([1.0, -1 / 3])
    assert torch.isfinite(giou[2])  # flipped corners count as empty, not as an error
    parts = box_loss(pred[:1], target[:1])
    assert float(parts["loss"]) == pytest.approx(0.0)


def test_unjittered_search_target_sits_in_the_middle() -> None:
    settings = replace(SMALL, center_jitter=0.0, scale_jitter=0.0, same_template_share=1.0)
    pool = SequencePool(settings)
    pool.advance_to(0)
    batch = make_batch(pool, settings, 128, 256, np.random.default_rng(3))
    x1, y1, x2, y2 = batch.target_xyxy.unbind(1)
    assert torch.allclose((x1 + x2) / 2, torch.full_like(x1, 0.5), atol=0.02)
    assert torch.allclose((y1 + y2) / 2, torch.full_like(y1, 0.5), atol=0.02)
    # the crop side is 5·√(wh), so the box's geometric-mean side is 1/5 of it
    assert torch.allclose(((x2 - x1) * (y2 - y1)).sqrt(), torch.full_like(x1, 0.2), atol=0.02)
    assert batch.search[0].shape == (2, 3, 256, 256) and batch.positive.tolist() == [1.0, 1.0]
    assert len(batch.templates) == 2 and batch.templates[0][0].shape == (2, 3, 128, 128)


def test_pool_content_depends_only_on_the_step() -> None:
    settings = replace(SMALL, refresh_every=1)
    walked, jumped = SequencePool(settings), SequencePool(settings)
    for step in range(4):
        walked.advance_to(step)
    jumped.advance_to(3)
    assert walked.ids == jumped.ids
    for slot in range(settings.pool_size):
        assert np.array_equal(walked.sequence(slot)[1], jumped.sequence(slot)[1])


def test_training_runs_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    seen: list[int] = []
    weights = train_tracker(tmp_path, SMALL, on_step=lambda step, _: seen.append(step))
    assert seen == [0, 1, 2]
    network = build_cswintt("tiny")
    load_weights(network, weights)  # strict: the same keys as the plain network
    info = json.loads((tmp_path / "weights.json").read_text())
    assert info["settings"]["box_steps"] == 2 and "stage1_loss" in info["final"]
    again: list[int] = []
    train_tracker(tmp_path, SMALL, on_step=lambda step, _: again.append(step))
    assert again == []  # finished runs are not rerun
    longer = replace(SMALL, box_steps=3)
    with pytest.raises(InputError, match="other settings"):
        train_tracker(tmp_path, longer)


def test_interrupted_training_resumes_where_it_stopped(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop_after_first(step: int, _: dict[str, float]) -> None:
        if step == 1:
            raise Stop

    with pytest.raises(Stop):
        train_tracker(tmp_path, SMALL, checkpoint_every=1, on_step=stop_after_first)
    resumed: list[int] = []
    train_tracker(tmp_path, SMALL, on_step=lambda step, _: resumed.append(step))
    assert resumed == [1, 2]


def test_bad_training_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch size"):
        train_tracker(tmp_path, replace(SMALL, batch_size=1))


def test_shipped_weights_load_and_track(synth_dataset: Path) -> None:
    path = builtin_weights_path()
    info = json.loads(path.with_suffix(".json").read_text())
    assert {"command", "settings", "train_seed"} <= set(info)
    network = load_tracker_network()
    assert not network.training
    sequence = load_dataset(synth_dataset, "otb")[0]
    tracker = CSWinTTTracker(network, TrackerSettings(update_interval=3))
    result = tracker.run_sequence(sequence)
    assert np.isfinite(result.boxes).all() and (result.boxes[:, 2:] >= 10).all()


def test_appearance_change_keeps_the_motion_and_changes_the_target() -> None:
    plain = render_sequence(np.random.default_rng([5, 0]), SynthSettings(frames=12))
    changed = render_sequence(
        np.random.default_rng([5, 0]), SynthSettings(frames=12, appearance_change=0.9)
    )
    assert np.array_equal(plain[1], changed[1])  # same boxes
    x, y, w, h = (int(v) for v in plain[1][-1])
    last_plain = plain[0][-1][y : y + h, x : x + w].astype(float)
    last_changed = changed[0][-1][y : y + h, x : x + w].astype(float)
    assert np.abs(last_plain - last_changed).mean() > 10
    with pytest.raises(ValueError, match="appearance change"):
        SynthSettings(appearance_change=1.5)
