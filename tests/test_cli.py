"""The command line end to end, and its one-line errors with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from headway.cli import app

runner = CliRunner()


def test_synth_track_eval(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    result = runner.invoke(app, ["synth", str(data), "--sequences", "2", "--frames", "6"])
    assert result.exit_code == 0, result.output
    args = ["track", str(data), "--out", str(run), "--config", "tiny", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoder" in result.output and "FPS" in result.output
    result = runner.invoke(app, ["eval", str(run), "--dataset", str(data)])
    assert result.exit_code == 0, result.output
    assert "AUC" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["scores"]) >= {"AUC", "P", "Pnorm"}
    assert (run / "success_plot.png").stat().st_size > 1000
    result = runner.invoke(
        app, ["eval", str(run), "--dataset", str(data), "--convention", "got10k"]
    )
    assert result.exit_code == 0 and "AO" in result.output


def test_errors_are_one_line(tmp_path: Path, synth_dataset: Path) -> None:
    cases = [
        ["track", str(synth_dataset), "--out", str(tmp_path / "r"), "--format", "vot"],
        ["track", str(tmp_path / "absent"), "--out", str(tmp_path / "r")],
        ["track", str(synth_dataset), "--out", str(tmp_path / "r"), "--device", "cuda:7"]
        if not torch.cuda.is_available()
        else ["track", str(synth_dataset), "--out", str(tmp_path / "r"), "--config", "huge"],
        ["eval", str(tmp_path / "absent"), "--dataset", str(synth_dataset)],
        ["track", str(synth_dataset), "--out", str(tmp_path / "r"), "--executor", "warp"],
        ["bench", "tracker", "--executors", "eager,warp"],
    ]
    if not torch.cuda.is_available():
        cases.append(
            ["track", str(synth_dataset), "--out", str(tmp_path / "r"), "--executor", "cudagraph"]
        )
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip().startswith("error:"), result.output
        assert "Traceback" not in result.output


def test_checkpoint_mismatch_is_reported(tmp_path: Path, synth_dataset: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"net": {"bottleneck.weight": torch.zeros(3)}}, path)
    args = [
        "track",
        str(synth_dataset),
        "--out",
        str(tmp_path / "r"),
        "--config",
        "tiny",
        "--checkpoint",
        str(path),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "does not match the model" in result.output and "missing" in result.output
    assert "bottleneck.weight (checkpoint [3]" in result.output


def test_builtin_weights_track_and_need_the_tiny_config(
    tmp_path: Path, synth_dataset: Path
) -> None:
    base = [
        "track",
        str(synth_dataset),
        "--out",
        str(tmp_path / "r"),
        "--checkpoint",
        "builtin",
        "--no-progress",
    ]
    result = runner.invoke(app, [*base, "--config", "tiny"])
    assert result.exit_code == 0, result.output
    assert "tiny_tracker.pth" in json.loads((tmp_path / "r" / "run.json").read_text())["weights"]
    result = runner.invoke(app, [*base, "--config", "default"])
    assert result.exit_code == 1 and "weights are for --config tiny" in result.output


def test_track_with_executor_and_bench(tmp_path: Path, synth_dataset: Path) -> None:
    run = tmp_path / "fused"
    args = [
        "track",
        str(synth_dataset),
        "--out",
        str(run),
        "--config",
        "tiny",
        "--executor",
        "fused",
        "--no-progress",
        "--sequences",
        "synth0007_000",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["executor"] == "fused"
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "tracker",
        "--config",
        "tiny",
        "--frames",
        "2",
        "--warmup",
        "1",
        "--executors",
        "eager,fused",
        "--json",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["results"]] == ["eager", "fused"]
    assert data["results"][0]["encoder_speedup"] == 1.0
    assert data["results"][1]["max_encoder_diff"] < 1e-4


def test_multirun_and_compress(tmp_path: Path) -> None:
    out = tmp_path / "multi.json"
    args = [
        "multirun",
        "--models",
        "alexnet:2",
        "--mode",
        "mt",
        "--requests",
        "2",
        "--jobs",
        "jobs:3",
        "--json",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"alexnet#0", "alexnet#1"} and not data["errors"]
    result = runner.invoke(app, [*args[:-2], "--coalesce", "2"])
    assert result.exit_code == 0 and "coalesced batches" in result.output, result.output
    for bad in (
        ["multirun", "--models", "vgg19:2"],
        ["multirun", "--models", "alexnet:0"],
        ["multirun", "--models", "alexnet:1", "--mode", "gpu"],
        ["multirun", "--models", "alexnet:2", "--mode", "seq", "--coalesce", "2"],
        ["multirun", "--models", "alexnet:2", "--coalesce", "0"],
    ):
        result = runner.invoke(app, bad)
        assert result.exit_code == 1 and result.output.strip().startswith("error:"), bad
