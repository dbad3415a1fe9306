"""Tracking on Ray (the optional `cluster` extra, installed by `make test`): a local Ray instance
with 2 CPUs tracks the built-in sequences with the same boxes as a local run, a worker that dies
mid-sequence is restarted and the sequence retried, and unreadable frames are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headway.tracking.cluster import CRASH_ONCE_ENV, TrackerRecipe, track_dataset_ray
from headway.tracking.datasets import load_dataset
from headway.tracking.results import read_boxes_file
from headway.tracking.runner import evaluate_run, track_dataset
from headway.tracking.tracker import CSWinTTTracker, TrackerSettings

ray = pytest.importorskip("ray", reason="ray not installed (pip install 'headway[cluster]')")


def local_run(sequences, run: Path, recipe: TrackerRecipe) -> None:
    import torch

    from headway.measure import torch_threads
    from headway.models import build_cswintt

    with torch_threads(recipe.threads), torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        network = build_cswintt(recipe.config)
        tracker = CSWinTTTracker(network, TrackerSettings(update_interval=recipe.update_interval))
        track_dataset(tracker, sequences, run, "otb", show_progress=False)


def test_ray_run_equals_a_local_run_survives_a_dead_worker_and_reports_bad_frames(
    synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    sequences = load_dataset(data, "otb")
    recipe = TrackerRecipe(config="tiny", seed=2, update_interval=4, threads=1)
    local_run(sequences, tmp_path / "local", recipe)

    # the first sequence's worker dies once mid-run; the second sequence has a broken frame
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, f"{sequences[0].name}:{marker}")
    broken = Path(str(sequences[1].frames[3]))
    original = broken.read_bytes()
    broken.write_bytes(b"not an image")
    summary = track_dataset_ray(
        recipe, sequences, tmp_path / "ray", "otb", workers=2, show_progress=False
    )
    assert marker.is_file()  # the crash happened, and the retry tracked the sequence
    assert summary.tracked == [sequences[0].name]
    assert "cannot be decoded" in summary.failed[sequences[1].name]
    problems = json.loads((tmp_path / "ray" / "run.json").read_text())["problems"]
    assert list(problems) == [sequences[1].name]

    # fixed frame: a rerun tracks only what is missing
    broken.write_bytes(original)
    monkeypatch.delenv(CRASH_ONCE_ENV)
    summary = track_dataset_ray(
        recipe, sequences, tmp_path / "ray", "otb", workers=2, show_progress=False
    )
    assert summary.skipped == [sequences[0].name] and summary.tracked == [sequences[1].name]
    for sequence in sequences:
        ray_boxes = read_boxes_file(tmp_path / "ray" / f"{sequence.name}.txt")
        local_boxes = read_boxes_file(tmp_path / "local" / f"{sequence.name}.txt")
        np.testing.assert_allclose(ray_boxes, local_boxes, atol=1e-3)
    local_scores = evaluate_run(tmp_path / "local", sequences).scores
    ray_scores = evaluate_run(tmp_path / "ray", sequences).scores
    assert ray_scores == pytest.approx(local_scores, abs=1e-6)


def test_track_command_on_ray_and_without_ray(
    synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from typer.testing import CliRunner

    from headway.cli import app

    runner = CliRunner()
    args = ["track", str(synth_dataset), "--out", str(tmp_path / "run"), "--config", "tiny"]
    args += ["--no-progress", "--ray", "--ray-workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "local Ray instance" in result.output
    assert len(list((tmp_path / "run").glob("*_time.txt"))) == 2
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = runner.invoke(app, [*args[:3], str(tmp_path / "other"), "--ray"])
    assert result.exit_code == 1 and "pip install 'headway[cluster]'" in result.output


def test_ray_addresses_are_checked_and_reached_within_a_bound(
    synth_dataset: Path, tmp_path: Path
) -> None:
    """A malformed address, ray:// without the Ray client, and a port where nothing listens:
    one line each, within seconds (Ray itself retries a closed port for minutes)."""
    import importlib.util
    import time

    from test_cli_bad_input import assert_one_line_error

    args = ["track", str(synth_dataset), "--out", str(tmp_path / "run"), "--config", "tiny"]
    assert_one_line_error([*args, "--ray-address", "not an address"], "expected auto, HOST:PORT")
    assert_one_line_error([*args, "--ray-address", "host:99999"], "expected auto")
    if importlib.util.find_spec("grpc") is None:
        assert_one_line_error([*args, "--ray-address", "ray://127.0.0.1:10001"], "ray[client]")
    began = time.perf_counter()
    assert_one_line_error([*args, "--ray-address", "127.0.0.1:1"], "cannot reach", "127.0.0.1:1")
    reproduce = ["reproduce", str(tmp_path / "out"), "--quick", "--only", "tracker_speed"]
    assert_one_line_error([*reproduce, "--ray-address", "127.0.0.1:1"], "cannot reach")
    assert time.perf_counter() - began < 60
    assert not (tmp_path / "run" / "synth0007_000.txt").exists()


def test_a_worker_that_cannot_be_replaced_ends_the_run_with_its_cause(
    synth_dataset: Path, tmp_path: Path
) -> None:
    """Every worker fails to build its tracker (its checkpoint is not there on the node): the
    run ends, each sequence reported with the real cause in plain text, instead of waiting for
    a replacement that never starts."""
    sequences = load_dataset(synth_dataset, "otb")
    recipe = TrackerRecipe(config="tiny", checkpoint=str(tmp_path / "gone.pth"), threads=1)
    summary = track_dataset_ray(
        recipe, sequences, tmp_path / "ray", "otb", workers=1, show_progress=False
    )
    assert summary.tracked == []
    assert sorted(summary.failed) == sorted(s.name for s in sequences)
    for reason in summary.failed.values():
        assert "gone.pth" in reason and "\x1b[" not in reason, reason
