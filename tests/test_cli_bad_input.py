"""Every command fed bad input as a demanding user would: each case must end in one line on
stderr naming the problem, exit status 1, no traceback, and (where it matters) nothing written.
All of these are refused before any long work starts, so the whole file runs in seconds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from headway.cli import app
from headway.io import locked_folder

runner = CliRunner()


def assert_one_line_error(args: list[str], *expected: str) -> None:
    result = runner.invoke(app, args)
    assert isinstance(result.exception, SystemExit), (args, result.exception, result.output)
    assert result.exit_code == 1, (args, result.output)
    lines = result.output.strip().splitlines()
    text = lines[-1]  # a progress bar may stand above it, never a traceback
    assert text.startswith("error:"), (args, result.output)
    assert sum("error:" in line for line in lines) == 1, (args, result.output)
    assert "Traceback" not in result.output
    for part in expected:
        assert part in text, (args, part, text)


@pytest.fixture()
def places(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder\n")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "file": a_file,
        "folder": folder,
        "under_file": a_file / "inside",
        "free": tmp_path / "new",
    }


def test_output_paths_are_checked_before_work(places: dict[str, Path], synth_dataset: Path) -> None:
    file, folder, under = str(places["file"]), str(places["folder"]), str(places["under_file"])
    cases = [
        (["synth", file], "is a file"),
        (["synth", under], "is a file, not a folder"),
        (["track", str(synth_dataset), "--out", file, "--config", "tiny"], "is a file"),
        (["track", str(synth_dataset), "--out", under, "--config", "tiny"], "not a folder"),
        (
            ["eval", str(places["folder"]), "--dataset", str(synth_dataset), "--plots", file],
            "is a file",
        ),
        (["bench", "tracker", "--config", "tiny", "--json", folder], "is a folder"),
        (["bench", "tracker", "--config", "tiny", "--json", under + "/b.json"], "not a folder"),
        (["compress", "tucker", "alexnet", "--out", folder], "is a folder"),
        (["compress", "tucker", "alexnet", "--out", str(places["free"]) + ".json"], ".json"),
        (["compress", "accuracy", file], "is a file"),
        (["multirun", "--models", "vgg16:1", "--json", folder], "is a folder"),
        (["train", "tracker", file], "is a file"),
        (["vit", "accuracy", under], "not a folder"),
        (["vit", "breakdown", "--plot", folder], "is a folder"),
        (["reproduce", file], "is a file"),
        (["bench", "vit", "--json", folder], "is a folder"),
        (["bench", "tucker", "--json", folder], "is a folder"),
        (["bench", "multidnn", "--out", file], "is a file"),
    ]
    for args, expected in cases:
        assert_one_line_error(args, expected)
    assert places["file"].read_text() == "not a folder\n"
    assert list(places["folder"].iterdir()) == []
    assert not places["free"].with_suffix(".json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_one_line_error(["synth", str(locked / "data")], "not writable")
        assert_one_line_error(["vit", "breakdown", "--plot", str(locked / "x.png")], "not writable")
    finally:
        locked.chmod(0o755)


def test_numbers_out_of_range(tmp_path: Path, synth_dataset: Path) -> None:
    out, data = str(tmp_path / "out"), str(synth_dataset)
    track = ["track", data, "--out", out, "--config", "tiny"]
    cases = [
        (["synth", out, "--sequences", "0"], "--sequences"),
        (["synth", out, "--frames", "1"], "--frames"),
        (["synth", out, "--appearance-change", "1.5"], "appearance change"),
        ([*track, "--threads", "0"], "--threads"),
        ([*track, "--threads", "-2"], "--threads"),
        ([*track, "--update-interval", "0"], "--update-interval"),
        (["bench", "tracker", "--frames", "0"], "--frames"),
        (["bench", "tracker", "--rounds", "0"], "--rounds"),
        (["bench", "tracker", "--warmup", "-1"], "--warmup"),
        (["compress", "tucker", "alexnet", "--num-classes", "0"], "--num-classes"),
        (["compress", "tucker", "alexnet", "--num-classes", "-3"], "--num-classes"),
        (["compress", "tucker", "alexnet", "--input-size", "0"], "--input-size"),
        (["compress", "tucker", "alexnet", "--input-size", "1"], "cannot run on a 1×1 input"),
        (["compress", "tucker", "alexnet", "--min-rank", "0"], "--min-rank"),
        (["compress", "accuracy", out, "--finetune-epochs", "-1"], "--finetune-epochs"),
        (["multirun", "--models", "vgg16:1", "--rate", "0"], "--rate"),
        (["multirun", "--models", "vgg16:1", "--rate", "-1"], "--rate"),
        (["multirun", "--models", "vgg16:1", "--threads", "0"], "--threads"),
        (["multirun", "--models", "vgg16:1", "--workers", "0"], "--workers"),
        (["multirun", "--models", "vgg16:1", "--requests", "0"], "--requests"),
        (["multirun", "--models", "vgg16:1", "--input-size", "0"], "--input-size"),
        (
            ["multirun", "--models", "vgg16:1", "--input-size", "2", "--mode", "seq"],
            "cannot run on a 2×2 input",
        ),
        (["multirun", "--models", "vgg16:0"], "at least 1"),
        (["train", "tracker", out, "--threads", "0"], "--threads"),
        (["train", "tracker", out, "--batch-size", "1"], "batch size"),
        (["train", "tracker", out, "--lr", "0"], "--lr"),
        (["train", "tracker", out, "--box-steps", "-1"], "step counts"),
        (
            ["train", "tracker", out, "--box-steps", "0", "--confidence-steps", "0"],
            "nothing to train",
        ),
        ([*track, "--split", "val"], "a split applies to got10k and trackingnet only"),
        (["vit", "accuracy", out, "--sparsities", "1.5"], "1.5"),
        (["vit", "accuracy", out, "--sparsities", "0"], "between"),
        (["vit", "accuracy", out, "--sparsities", "a,b"], "numbers"),
        (["vit", "accuracy", out, "--prune", "0.5:2"], "--prune"),
        (["vit", "accuracy", out, "--prune", "0.6:0.2"], "start ≤ end"),
        (["vit", "accuracy", out, "--finetune-epochs", "-1"], "--finetune-epochs"),
        (["simulate", "--sparsity", "0"], "between"),
        (["simulate", "--prune", "x"], "--prune"),
        (["bench", "vit", "--sparsity", "1"], "between"),
        (["bench", "vit", "--batches", "0"], "--batches"),
        (["bench", "vit", "--batches", "x"], "integers"),
        (["bench", "engines", "--batches", "0"], "--batches"),
        (["bench", "engines", "--seconds", "0"], "--seconds"),
        (["bench", "engines", "--cases", "resnet"], "unknown case"),
        (["bench", "engines", "--cases", ","], "--cases needs at least one name"),
        (["bench", "multidnn", "--out", out, "--requests", "0"], "--requests"),
        (["bench", "multidnn", "--out", out, "--rounds", "0"], "--rounds"),
    ]
    for args, expected in cases:
        assert_one_line_error(args, expected)
    assert not Path(out).exists()  # nothing was started


def test_unknown_names(tmp_path: Path, synth_dataset: Path) -> None:
    out = str(tmp_path / "out")
    cases = [
        (["compress", "tucker", "vgg17"], "unknown model"),
        (["compress", "tucker", "alexnet", "--rank", "magic:3"], "rank"),
        (["compress", "accuracy", out, "--rank", "magic:3"], "rank"),
        (["multirun", "--models", "vgg17:1"], "unknown model"),
        (["multirun", "--models", "vgg16:1", "--mode", "fast"], "unknown mode"),
        (["multirun", "--models", "vgg16:1", "--decomposed", "magic"], "rank"),
        (["multirun", "--models", "vgg16:1", "--mode", "seq", "--coalesce", "2"], "--coalesce"),
        (["train", "tracker", out, "--config", "huge"], "unknown configuration"),
        (["vit", "accuracy", out, "--images", out, "--model", "deit_huge"], "DeiT model"),
        (["vit", "breakdown", "--models", "deit_huge"], "DeiT model"),
        (["simulate", "--model", "deit_huge"], "DeiT model"),
        (
            ["eval", str(tmp_path), "--dataset", str(synth_dataset), "--convention", "x"],
            "convention",
        ),
        (["reproduce", out, "--only", "everything"], "unknown experiments"),
        (["reproduce", out, "--only", ","], "--only needs at least one name"),
        (["compress", "accuracy", out, "--models", ","], "--models needs at least one name"),
        (["bench", "tucker", "--models", " , "], "--models needs at least one name"),
        (["bench", "vit", "--models", "deit_huge"], "DeiT model"),
        (["bench", "tucker", "--models", "vgg17"], "unknown model"),
        (["bench", "tucker", "--only", "speed"], "--only part"),
        (["bench", "multidnn", "--out", out, "--only", "all"], "--only part"),
    ]
    for args, expected in cases:
        assert_one_line_error(args, expected)


def test_paths_with_markup_characters_print_as_given(tmp_path: Path) -> None:
    odd = tmp_path / "[bold]x[/]" / "[/not markup]"
    result = runner.invoke(app, ["synth", str(odd), "--sequences", "1", "--frames", "2"])
    assert result.exit_code == 0, result.output
    assert "[/not markup]" in result.output.replace("\n", "")
    assert_one_line_error(["reproduce", str(odd / "synth.json"), "--quick"], "[/not markup]")


def test_corrupt_files_are_one_line(tmp_path: Path, synth_dataset: Path) -> None:
    truncated = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    args = [
        "track",
        str(synth_dataset),
        "--out",
        str(tmp_path / "r"),
        "--config",
        "tiny",
        "--checkpoint",
        str(truncated),
    ]
    assert_one_line_error(args, "cannot be read")
    assert_one_line_error(
        ["compress", "tucker", "alexnet", "--checkpoint", str(truncated)], "cannot be read"
    )
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": torch.zeros(2), "callback": Path("x")}, pickled)  # not plain data
    assert_one_line_error(
        ["compress", "tucker", "alexnet", "--checkpoint", str(pickled)], "does not unpickle"
    )
    training = tmp_path / "train"
    training.mkdir()
    (training / "checkpoint.pth").write_bytes(b"PK\x03\x04 broken zip")
    assert_one_line_error(
        ["train", "tracker", str(training), "--box-steps", "1", "--confidence-steps", "0"],
        "cannot be read",
    )


def test_truncated_frame_and_absurd_first_box(tmp_path: Path, synth_dataset: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    sequence = sorted(p for p in data.iterdir() if p.is_dir())[0]
    frame = sorted((sequence / "img").iterdir())[3]
    frame.write_bytes(frame.read_bytes()[: frame.stat().st_size // 2])

    def track(out: str) -> list[str]:
        return [
            "track",
            str(data),
            "--out",
            str(tmp_path / out),
            "--config",
            "tiny",
            "--no-progress",
            "--sequences",
            sequence.name,
        ]

    assert_one_line_error(track("r"), "truncated", frame.name)
    truth = sequence / "groundtruth_rect.txt"
    lines = truth.read_text().splitlines()
    truth.write_text("\n".join(["0,0,1e9,1e9", *lines[1:]]) + "\n")
    assert_one_line_error(track("r2"), "image")


def test_a_run_folder_is_one_run(tmp_path: Path, synth_dataset: Path) -> None:
    run = tmp_path / "run"
    base = [
        "track",
        str(synth_dataset),
        "--out",
        str(run),
        "--config",
        "tiny",
        "--no-progress",
        "--threads",
        "1",
    ]
    result = runner.invoke(app, [*base, "--checkpoint", "builtin"])
    assert result.exit_code == 0, result.output
    before = (run / "run.json").read_text()
    assert_one_line_error([*base, "--seed", "3"], "other settings", "weights")
    assert (run / "run.json").read_text() == before  # still describes the run that made it
    again = runner.invoke(app, [*base, "--checkpoint", "builtin"])
    assert again.exit_code == 0 and "skipped 2 complete sequences" in again.output
    with locked_folder(run):  # another process writing there
        assert_one_line_error([*base, "--checkpoint", "builtin"], "in use")
    assert oct((run / "run.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_eval_refuses_results_of_another_dataset(tmp_path: Path, synth_dataset: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    sequences = sorted(p.name for p in synth_dataset.iterdir() if p.is_dir())
    for name in sequences:  # 10-frame sequences, results of 5 frames
        (run / f"{name}.txt").write_text("10\t10\t20\t20\n" * 5)
    assert_one_line_error(
        ["eval", str(run), "--dataset", str(synth_dataset)], "5 boxes for a sequence of 10 frames"
    )
    assert not (run / "metrics.json").exists()


def test_multiprocess_mode_reports_a_failing_model(tmp_path: Path) -> None:
    out = tmp_path / "mp.json"
    args = [
        "multirun",
        "--models",
        "alexnet:1,vgg16:1",
        "--mode",
        "mp",
        "--requests",
        "1",
        "--input-size",
        "8",
        "--json",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "failed" in result.output and "vgg16#0" in result.output
    assert "vgg16#0" in json.loads(out.read_text())["errors"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_export_results_errors_and_a_working_export(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert_one_line_error(
        ["export-results", str(run), "--to", "otb", "--out", str(tmp_path / "o")], "does not exist"
    )
    run.mkdir()
    assert_one_line_error(
        ["export-results", str(run), "--to", "vot", "--out", str(tmp_path / "o")], "layout"
    )
    assert_one_line_error(
        ["export-results", str(run), "--to", "otb", "--out", str(tmp_path / "o")], "no result"
    )
    (run / "a.txt").write_text("1\t2\t3\t4\n5\t6\t7\t8\n")
    result = runner.invoke(
        app, ["export-results", str(run), "--to", "got10k", "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "a" / "a_001.txt").read_text().startswith("1.0000,2.0000")
    (run / "b.txt").write_text("1\t2\t3\n")  # a broken box file: nothing is exported
    assert_one_line_error(
        ["export-results", str(run), "--to", "otb", "--out", str(tmp_path / "o2")], "b.txt"
    )
    assert not (tmp_path / "o2").exists()
    assert_one_line_error(
        ["track", str(run), "--out", str(tmp_path / "t"), "--ray-workers", "2"], "add --ray"
    )


def test_eval_scores_what_it_can_and_names_the_rest(tmp_path: Path, synth_dataset: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    run = tmp_path / "run"
    args = ["track", str(data), "--out", str(run), "--config", "tiny", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    first, second = sorted(p.name for p in data.iterdir() if p.is_dir())
    (run / f"{second}.txt").unlink()  # as if it could not be tracked
    truth = data / first / "groundtruth_rect.txt"
    result = runner.invoke(app, ["eval", str(run), "--dataset", str(data)])
    assert result.exit_code == 0, result.output
    assert f"not scored: {second}: not in {run}" in result.output.replace("\n", "")
    truth.write_text("1,1,5,5\n1,1,5,5\n")  # the first cannot be loaded now (2 lines, 10 frames)
    (run / f"{second}.txt").unlink(missing_ok=True)
    assert_one_line_error(["eval", str(run), "--dataset", str(data)], "no sequence can be scored")
    args = ["track", str(data), "--out", str(run), "--config", "tiny", "--no-progress"]
    tracked = runner.invoke(app, args)  # tracks the second again, reports the first: exit 1
    assert tracked.exit_code == 1 and (run / f"{second}.txt").is_file(), tracked.output
    result = runner.invoke(app, ["eval", str(run), "--dataset", str(data)])
    assert result.exit_code == 0, result.output
    assert "2 ground-truth lines" in result.output.replace("\n", "")
