"""The commands no other test runs, each once on its smallest settings: they finish, print
their table and write what they say."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from headway.cli import app

runner = CliRunner()


def invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    return result.output


def test_simulate() -> None:
    output = invoke(["simulate", "--model", "deit_tiny", "--sparsity", "0.7"])
    assert "mean speedup of sparse + pruning over sparse only" in output


def test_vit_breakdown_writes_its_plot(tmp_path: Path) -> None:
    plot = tmp_path / "breakdown.png"
    output = invoke(["vit", "breakdown", "--models", "deit_tiny", "--plot", str(plot)])
    assert "deit_tiny" in output and "attention" in output
    assert plot.stat().st_size > 1000


def test_compress_accuracy_on_one_small_model(tmp_path: Path) -> None:
    output = invoke(
        [
            "compress",
            "accuracy",
            str(tmp_path),
            "--models",
            "vgg16_bn",
            "--quick",
            "--finetune-epochs",
            "0",
        ]
    )
    assert "Top-1" in output
    (row,) = json.loads((tmp_path / "accuracy.json").read_text())
    assert row["model"] == "vgg16_bn" and row["trained"] > 30  # well above chance (10%)
    assert 0 < row["macs_after"] < row["macs"]
    assert row["decomposed"] is not None and row["finetuned"] is None  # 0 fine-tuning epochs


def test_train_tracker_two_steps_and_resume(tmp_path: Path) -> None:
    args = [
        "train",
        "tracker",
        str(tmp_path),
        "--box-steps",
        "2",
        "--confidence-steps",
        "1",
        "--batch-size",
        "2",
        "--threads",
        "1",
    ]
    output = invoke(args)
    assert "weights:" in output and (tmp_path / "weights.pth").is_file()
    again = invoke(args)  # everything done: a rerun resumes at the end and rewrites nothing new
    assert "weights:" in again


def test_bench_tucker_macs_and_bench_vit(tmp_path: Path) -> None:
    out = tmp_path / "tucker.json"
    output = invoke(
        ["bench", "tucker", "--only", "macs", "--models", "alexnet", "--json", str(out)]
    )
    assert "alexnet" in output
    (row,) = json.loads(out.read_text())["mac_reduction"]
    assert 0 < row["macs_after"] < row["macs_before"]
    out = tmp_path / "vit.json"
    invoke(["bench", "vit", "--models", "deit_tiny", "--batches", "1", "--json", str(out)])
    (row,) = json.loads(out.read_text())["deit_tiny"]
    assert row["batch"] == 1 and row["sparse_only_ms"] > 0 and row["sparse_pruned_ms"] > 0
