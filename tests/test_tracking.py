"""Crops, box mapping, synthetic data, and the tracker loop end to end (tiny configuration)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from headway.errors import InputError
from headway.models import build_cswintt
from headway.tracking.crop import clip_box, map_box_back, sample_target
from headway.tracking.datasets import load_dataset
from headway.tracking.results import read_boxes_file, read_stage_times
from headway.tracking.runner import evaluate_run, stage_breakdown, track_dataset
from headway.tracking.synth import SynthSettings, synthesize
from headway.tracking.tracker import STAGES, CSWinTTTracker, TrackerSettings


def tiny_tracker(interval: int = 200, seed: int = 0) -> CSWinTTTracker:
    torch.manual_seed(seed)
    return CSWinTTTracker(build_cswintt("tiny"), TrackerSettings(update_interval=interval))


def test_sample_target_inside_and_at_the_border() -> None:
    image = np.arange(100 * 120 * 3, dtype=np.uint8).reshape(100, 120, 3)
    crop, factor, mask = sample_target(image, [50, 40, 10, 10], 2.0, 32)
    assert crop.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert factor == pytest.approx(32 / 20)
    assert not mask.any()
    crop, _, mask = sample_target(image, [0, 0, 10, 10], 4.0, 40)
    assert mask[0, 0] and not mask[-1, -1]  # top-left padded, bottom-right inside
    assert (crop[0, 0] == 0).all()


def test_clip_box_and_map_back() -> None:
    assert clip_box([-5, -5, 20, 20], 100, 100, margin=10) == [0, 0, 15, 15]
    assert clip_box([95, 95, 20, 20], 100, 100, margin=10) == [90, 90, 10, 10]
    # a box centred in the crop maps back to the previous centre
    state = [40.0, 30.0, 20.0, 10.0]
    crop_size = 100
    box = map_box_back([50.0, 50.0, 20.0, 10.0], state, 384 / crop_size, 384)
    assert box == pytest.approx([40.0, 30.0, 20.0, 10.0])


def test_synth_is_deterministic(tmp_path: Path) -> None:
    settings = SynthSettings(frames=4)
    synthesize(tmp_path / "a", 2, seed=3, settings=settings)
    synthesize(tmp_path / "b", 2, seed=3, settings=settings)
    synthesize(tmp_path / "c", 1, seed=4, settings=settings)
    for name in ("synth0003_000/img/0003.jpg", "synth0003_001/groundtruth_rect.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = (tmp_path / "a" / "synth0003_000" / "img" / "0001.jpg").read_bytes()
    assert a != (tmp_path / "c" / "synth0004_000" / "img" / "0001.jpg").read_bytes()
    (sequence, _) = load_dataset(tmp_path / "a", "otb")
    assert len(sequence) == 4 and (sequence.ground_truth[:, 2:] > 0).all()


def test_track_evaluate_and_resume(synth_dataset: Path, tmp_path: Path) -> None:
    sequences = load_dataset(synth_dataset, "otb")
    run = tmp_path / "run"
    summary = track_dataset(tiny_tracker(), sequences, run, "otb", show_progress=False)
    assert summary.tracked == [s.name for s in sequences]
    boxes = read_boxes_file(run / f"{sequences[0].name}.txt")
    assert boxes.shape == (len(sequences[0]), 4)
    np.testing.assert_allclose(boxes[0], sequences[0].init_box)
    assert (boxes[:, 2:] >= 10).all()  # clip margin
    stages = read_stage_times(run, sequences[0].name)
    assert set(stages["stage_ms"]) == set(STAGES)
    assert all(len(v) == len(sequences[0]) for v in stages["stage_ms"].values())
    breakdown = stage_breakdown(run, [s.name for s in sequences])
    assert breakdown.frames == sum(len(s) - 1 for s in sequences)
    assert breakdown.stage_ms["encoder"] > 0 and breakdown.fps > 0
    result = evaluate_run(run, sequences)
    assert 0 <= result.scores["AUC"] <= 100
    assert (run / "metrics.json").is_file()
    again = track_dataset(tiny_tracker(), sequences, run, "otb", show_progress=False)
    assert again.tracked == [] and len(again.skipped) == len(sequences)


def test_same_weights_same_boxes(synth_dataset: Path) -> None:
    sequence = load_dataset(synth_dataset, "otb")[0]
    first = tiny_tracker(seed=5).run_sequence(sequence).boxes
    second = tiny_tracker(seed=5).run_sequence(sequence).boxes
    np.testing.assert_array_equal(first, second)


def test_template_update_follows_confidence(synth_dataset: Path) -> None:
    sequence = load_dataset(synth_dataset, "otb")[0]
    confident = tiny_tracker(interval=3)
    torch.nn.init.constant_(confident.executor.network.cls_head.layers[-1].bias, 20.0)
    result = confident.run_sequence(sequence)
    assert result.template_updates == (len(sequence) - 1) // 3
    assert sum(1 for t in result.stage_times["template_update"] if t > 0) == 3
    doubtful = tiny_tracker(interval=3)
    torch.nn.init.constant_(doubtful.executor.network.cls_head.layers[-1].bias, -20.0)
    assert doubtful.run_sequence(sequence).template_updates == 0


def test_bad_frame_keeps_finished_results(synth_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    sequences = load_dataset(data, "otb")
    broken = sequences[1].frames[4]
    broken.write_bytes(b"not an image")
    run = tmp_path / "run"
    # the broken sequence first: it is reported, and the one after it is still tracked
    summary = track_dataset(tiny_tracker(), sequences[::-1], run, "otb", show_progress=False)
    assert summary.tracked == [sequences[0].name]
    assert list(summary.failed) == [sequences[1].name]
    assert "0005.jpg: frame cannot be decoded" in summary.failed[sequences[1].name]
    assert (run / f"{sequences[0].name}.txt").is_file()
    assert not (run / f"{sequences[1].name}.txt").exists()
    problems = json.loads((run / "run.json").read_text())["problems"]
    assert list(problems) == [sequences[1].name]
    broken.unlink()
    with pytest.raises(InputError, match=r"0005\.jpg: frame is missing"):
        tiny_tracker().run_sequence(sequences[1])


def test_bad_initial_box(synth_dataset: Path) -> None:
    sequence = load_dataset(synth_dataset, "otb")[0]
    sequence.ground_truth = sequence.ground_truth.copy()
    sequence.ground_truth[0] = [10, 10, 0, 5]
    with pytest.raises(InputError, match="zero or negative size"):
        tiny_tracker().run_sequence(sequence)
    sequence.ground_truth[0] = [1000, 10, 5, 5]
    with pytest.raises(InputError, match="outside the 320x240 image"):
        tiny_tracker().run_sequence(sequence)


@pytest.mark.cuda
def test_tracker_on_cuda_matches_cpu(synth_dataset: Path) -> None:
    sequence = load_dataset(synth_dataset, "otb")[0]
    cpu = tiny_tracker(seed=2).run_sequence(sequence).boxes
    torch.manual_seed(2)
    tracker = CSWinTTTracker(build_cswintt("tiny"), device="cuda")
    result = tracker.run_sequence(sequence)
    np.testing.assert_allclose(result.boxes, cpu, atol=0.5)
    assert result.stage_times["encoder"][1] > 0


def test_an_otb_special_case_tracks_and_scores(synth_dataset: Path, tmp_path: Path) -> None:
    """Tiger1's protocol starts at frame 6 (first 5 frames and annotations dropped)."""
    source = sorted(p for p in synth_dataset.iterdir() if p.is_dir())[0]
    shutil.copytree(source, tmp_path / "data" / "Tiger1")
    (sequence,) = load_dataset(tmp_path / "data", "otb")
    full = load_dataset(synth_dataset, "otb", names=[source.name])[0]
    assert len(sequence) == len(full) - 5
    np.testing.assert_array_equal(sequence.ground_truth, full.ground_truth[5:])
    assert sequence.frames[0].name == full.frames[5].name
    track_dataset(tiny_tracker(), [sequence], tmp_path / "run", "otb", show_progress=False)
    scores = evaluate_run(tmp_path / "run", [sequence]).scores
    assert 0 <= scores["AUC"] <= 100 and len(read_boxes_file(tmp_path / "run" / "Tiger1.txt")) == 5


def _layout_from_synth(source: Path, root: Path, layout: str) -> None:
    """One synthetic sequence rewritten in a benchmark's exact folder layout."""
    frames = sorted((source / "img").iterdir())
    boxes = (source / "groundtruth_rect.txt").read_text().replace("\t", ",")
    if layout == "got10k":
        folder = root / "val" / "GOT-10k_Val_000001"
        names = [f"{i + 1:08d}.jpg" for i in range(len(frames))]
        extra = {
            "cover.label": "8\n" * len(frames),
            "absence.label": "0\n" * len(frames),
            "meta_info.ini": "[METAINFO]\nresolution: (320, 240)\n",
        }
        (root / "val").mkdir(parents=True)
        (root / "val" / "list.txt").write_text("GOT-10k_Val_000001\n")
        gt_name = "groundtruth.txt"
    elif layout == "trackingnet":
        folder = root / "TEST" / "frames" / "seq_1"
        names = [f"{i}.jpg" for i in range(len(frames))]
        (root / "TEST" / "anno").mkdir(parents=True)
        (root / "TEST" / "anno" / "seq_1.txt").write_text(boxes)
        extra, gt_name = {}, None
    else:  # lasot
        folder = root / "cat" / "cat-1" / "img"
        names = [f"{i + 1:08d}.jpg" for i in range(len(frames))]
        flags = ",".join("0" * len(frames))
        extra = {"../full_occlusion.txt": flags, "../out_of_view.txt": flags}
        gt_name = "../groundtruth.txt"
    folder.mkdir(parents=True)
    for frame, name in zip(frames, names, strict=True):
        shutil.copy(frame, folder / name)
    for name, text in extra.items():
        (folder / name).write_text(text)
    if gt_name is not None:
        (folder / gt_name).write_text(boxes)


@pytest.mark.parametrize(
    ("layout", "convention"),
    [("got10k", "got10k"), ("trackingnet", "trackingnet"), ("lasot", "lasot")],
)
def test_real_layouts_track_and_score(
    layout: str, convention: str, synth_dataset: Path, tmp_path: Path
) -> None:
    source = sorted(p for p in synth_dataset.iterdir() if p.is_dir())[0]
    _layout_from_synth(source, tmp_path / "data", layout)
    sequences = load_dataset(tmp_path / "data", layout)
    assert len(sequences) == 1 and len(sequences[0]) == len(list((source / "img").iterdir()))
    track_dataset(tiny_tracker(), sequences, tmp_path / "run", layout, show_progress=False)
    scores = evaluate_run(tmp_path / "run", sequences, convention).scores
    assert all(0 <= value <= 100 for value in scores.values())
