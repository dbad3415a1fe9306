"""Reliability, round 3 (issue 24): everything a command reads or writes besides its
arguments. Writes go through one path (names too long, a folder where a file goes, a full
disk); side files are read by one reader; frames that are damaged, change size or are too small
are refused by name (in Python and in the C++ runner alike); cached runner binaries and
AOTInductor packages are verified; exports are complete or absent."""

from __future__ import annotations

import errno
import io
import json
import pathlib
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headway.cli import app
from headway.errors import InputError
from headway.io import atomic_write_text, read_json_file
from headway.tracking.crop import read_frame
from test_cli_bad_input import assert_one_line_error

LONG = "n" * 300  # over the 255 bytes a file name may have


def _copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files or staging folders a failed write might have left."""
    return [p for p in folder.rglob(".*") if p.name != ".headway.lock"]


def _track(dataset: Path, out: Path, *extra: str) -> object:
    args = ["track", str(dataset), "--out", str(out), "--config", "tiny", "--no-progress"]
    return CliRunner().invoke(app, [*args, *extra])


# --- writes ------------------------------------------------------------------------------


def test_names_too_long_are_refused_before_work(tmp_path: Path, synth_dataset: Path) -> None:
    assert_one_line_error(["synth", str(tmp_path / LONG)], "at most 255 bytes")
    assert_one_line_error(
        ["track", str(synth_dataset), "--out", str(tmp_path / LONG), "--config", "tiny"],
        "at most 255 bytes",
    )
    assert list(tmp_path.iterdir()) == []
    # a sequence whose result files would be too long is named before anything is tracked
    data = _copy_dataset(synth_dataset, tmp_path / "data")
    first = sorted(p for p in data.iterdir() if p.is_dir())[0]
    first.rename(data / ("s" * 250))
    assert_one_line_error(
        ["track", str(data), "--out", str(tmp_path / "run"), "--config", "tiny"],
        "at most 255 per name",
    )
    assert not (tmp_path / "run").exists()


def test_a_long_file_name_still_gets_a_temporary_name(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 250)
    atomic_write_text(path, "kept")  # the temporary beside it must not be longer than 255
    assert path.read_text() == "kept" and _leftovers(tmp_path) == []


def test_sequences_whose_files_collide_are_refused(tmp_path: Path, synth_dataset: Path) -> None:
    data = _copy_dataset(synth_dataset, tmp_path / "data")
    first, second = sorted(p for p in data.iterdir() if p.is_dir())
    first.rename(data / "a")
    second.rename(data / "a_time")  # its boxes would be a's time file
    result = _track(data, tmp_path / "run")
    assert result.exit_code == 1 and "would both write" in result.output, result.output
    assert not (tmp_path / "run" / "a.txt").exists()


def test_a_folder_where_a_file_goes_is_one_line(tmp_path: Path, synth_dataset: Path) -> None:
    (tmp_path / "run" / "run.json").mkdir(parents=True)
    result = _track(synth_dataset, tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert "run.json is a folder" in result.output and "Traceback" not in result.output
    run = tmp_path / "run2"
    assert _track(synth_dataset, run).exit_code == 0
    (run / "metrics.json").mkdir()
    assert_one_line_error(
        ["eval", str(run), "--dataset", str(synth_dataset)], "metrics.json", "a folder is in"
    )
    assert _leftovers(run) == []


def test_a_full_disk_while_tracking_leaves_nothing_a_rerun_trusts(
    tmp_path: Path, synth_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the second sequence's boxes are written: one line, exit 1; the
    first sequence is complete, the second has no box file (so a rerun tracks it again) and no
    temporary file is left."""
    names = sorted(p.name for p in synth_dataset.iterdir() if p.is_dir())
    original = pathlib.Path.write_text

    def fills_up(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if self.name.startswith(f".{names[1]}.txt."):
            original(self, text[:10])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fills_up)
    run = tmp_path / "run"
    result = _track(synth_dataset, run)
    assert result.exit_code == 1, result.output
    assert "no space left on the device" in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert (run / f"{names[0]}.txt").is_file() and not (run / f"{names[1]}.txt").exists()
    assert _leftovers(run) == []
    monkeypatch.setattr(pathlib.Path, "write_text", original)
    result = _track(synth_dataset, run)
    assert result.exit_code == 0, result.output
    assert (run / f"{names[1]}.txt").is_file()


def test_synth_over_a_longer_dataset_leaves_no_frame_without_ground_truth(
    tmp_path: Path,
) -> None:
    from headway.tracking.datasets import load_dataset

    runner = CliRunner()
    assert runner.invoke(app, ["synth", str(tmp_path / "d"), "--sequences", "1"]).exit_code == 0
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--sequences", "1", "--frames", "5"])
    assert result.exit_code == 0, result.output
    (sequence,) = load_dataset(tmp_path / "d", "otb")
    assert len(sequence.frames) == 5 == len(sequence.ground_truth)


def test_a_plot_name_without_suffix_is_written_and_printed_as_png(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from headway.io import save_figure

    written = save_figure(Figure(), tmp_path / "plot")
    assert written == tmp_path / "plot.png" and written.is_file()
    with pytest.raises(InputError, match=r"cannot draw a \.xyz figure"):
        save_figure(Figure(), tmp_path / "plot.xyz")


# --- reads -------------------------------------------------------------------------------


def test_json_side_files_are_read_by_one_reader(tmp_path: Path, synth_dataset: Path) -> None:
    path = tmp_path / "side.json"
    cases = {
        b'{"a": 1,': "not JSON",
        b"[1, 2]": "not a JSON object",
        b"\x00\x01binary": "binary",
        '{"a": 1}'.encode("utf-16"): "UTF-16",
    }
    for data, expected in cases.items():
        path.write_bytes(data)
        with pytest.raises(InputError, match=expected):
            read_json_file(path, "side file")
    # a run whose run.json is not JSON: one line, nothing tracked
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_bytes(b"\xff\xfe\x00garbage")
    result = _track(synth_dataset, tmp_path / "run")
    assert result.exit_code == 1 and "run.json" in result.output, result.output
    assert "Traceback" not in result.output


# --- frames ------------------------------------------------------------------------------


def _jpeg(image: np.ndarray, **pil_options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90, **pil_options)
    return buffer.getvalue()


def test_half_a_jpeg_with_an_end_marker_is_damaged(tmp_path: Path) -> None:
    image = np.random.default_rng(24).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    data = _jpeg(image)
    frame = tmp_path / "0001.jpg"
    frame.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    with pytest.raises(InputError, match=r"frame is damaged .*libjpeg"):
        read_frame(frame)
    frame.write_bytes(data)
    assert read_frame(frame).shape == (96, 128, 3)


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    """The stored pixels, as libjpeg in the C++ runner gives them (it ignores EXIF)."""
    image = np.random.default_rng(5).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    frame = tmp_path / "0001.jpg"
    frame.write_bytes(_jpeg(image, exif=exif))
    assert read_frame(frame).shape == (40, 64, 3)


def _dataset_with(tmp_path: Path, synth_dataset: Path, change: str) -> tuple[Path, str]:
    """A copy of the synthetic dataset whose first sequence has a bad frame; its name."""
    data = _copy_dataset(synth_dataset, tmp_path / "data")
    first = sorted(p for p in data.iterdir() if p.is_dir())[0]
    frames = sorted((first / "img").glob("*.jpg"))
    if change == "size":
        cv2.imwrite(str(frames[3]), np.zeros((48, 64, 3), np.uint8))
    else:  # a first frame too small to crop
        cv2.imwrite(str(frames[0]), np.zeros((1, 1, 3), np.uint8))
    return data, first.name


@pytest.mark.parametrize(
    ("change", "expected"),
    [("size", "but the sequence's first frame is"), ("tiny", "at least 16 pixels")],
)
def test_frames_of_another_size_or_too_small_fail_their_sequence(
    tmp_path: Path, synth_dataset: Path, change: str, expected: str
) -> None:
    data, name = _dataset_with(tmp_path, synth_dataset, change)
    result = _track(data, tmp_path / "run")
    assert result.exit_code == 1, result.output  # some sequences failed
    problems = read_json_file(tmp_path / "run" / "run.json")["problems"]
    assert expected in problems[name]
    assert not (tmp_path / "run" / f"{name}.txt").exists()


def test_the_runner_refuses_the_same_frames(tmp_path: Path, synth_dataset: Path) -> None:
    """Parity: the C++ runner refuses damaged, resized and tiny frames with the same words,
    and reads BMP frames (which the dataset loader accepts) as OpenCV does."""
    from headway.tracking.native import build as native_build

    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler: headway-runner cannot be built")
    runner = native_build.build_runner()
    formats = subprocess.run([str(runner), "--version"], capture_output=True, text=True).stdout

    def decode(path: Path) -> subprocess.CompletedProcess:
        command = [str(runner), "decode", str(path), str(tmp_path / "pixels")]
        return subprocess.run(command, capture_output=True, text=True)

    image = np.random.default_rng(7).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    bmp = tmp_path / "frame.bmp"
    cv2.imwrite(str(bmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    done = decode(bmp)
    assert done.returncode == 0, done.stderr
    pixels = np.fromfile(tmp_path / "pixels", np.uint8).reshape(33, 47, 3)
    assert np.array_equal(pixels, image) and np.array_equal(read_frame(bmp), image)
    if "jpeg yes" in formats:
        data = _jpeg(image)
        damaged = tmp_path / "damaged.jpg"
        damaged.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
        done = decode(damaged)
        assert done.returncode == 2 and "frame is damaged" in done.stderr, done.stderr
        for change, expected in [
            ("size", "but the sequence's first frame is"),
            ("tiny", "at least 16 pixels"),
        ]:
            folder = tmp_path / change
            folder.mkdir()
            data, name = _dataset_with(folder, synth_dataset, change)
            result = _track(data, folder / "run", "--executor", "cpp")
            assert result.exit_code == 1, result.output
            assert expected in read_json_file(folder / "run" / "run.json")["problems"][name]


# --- caches ------------------------------------------------------------------------------


def test_a_damaged_runner_binary_is_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headway.io import write_manifest
    from headway.tracking.native import build as native_build

    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler: headway-runner cannot be built")
    plan = native_build.build_plan()
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))
    binary = native_build.runner_path(plan)
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"#!/bin/sh\necho fake\n")
    binary.chmod(0o755)
    write_manifest(binary)
    assert native_build.built_runner(plan) == binary
    binary.write_bytes(b"#!/bin/sh\necho random bytes\n")  # same size, other bytes
    assert native_build.built_runner(plan) is None
    assert_one_line_error(["runner", "info"], "is damaged", "headway runner build")


def _fake_runner(tmp_path: Path, script: str) -> object:
    """A NativeTracker whose runner is ``script`` (a shell script), to see how endings are
    reported without building anything."""
    from headway.tracking.native.runner import NativeTracker
    from headway.tracking.settings import TrackerSettings

    binary = tmp_path / "fake-runner"
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(0o755)
    tracker = NativeTracker.__new__(NativeTracker)
    tracker.binary, tracker.settings = binary, TrackerSettings()
    tracker.spec = type("Spec", (), {"graph": "stages"})()
    tracker.model_dir, tracker._folder = tmp_path, tmp_path
    tracker.intra_op_threads, tracker.head_threads, tracker.head_intra_op_threads = 1, 0, 0
    return tracker


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('echo "loading" >&2; echo "boom: bad alloc" >&2; kill -SEGV $$', "killed by SIGSEGV"),
        ("exit 0", "exited 0 without writing its results"),
        ('echo "headway-runner: out of memory" >&2; exit 3', "exit status 3"),
    ],
)
def test_a_runner_that_ends_abnormally_is_one_line(
    tmp_path: Path, script: str, expected: str
) -> None:
    from headway.tracking.native.runner import NativeRunError

    tracker = _fake_runner(tmp_path, script)
    with pytest.raises(NativeRunError, match=expected) as raised:
        tracker.run_job([tmp_path / "0001.jpg"], [1.0, 1.0, 4.0, 4.0])
    assert "\n" not in str(raised.value)
    if "boom" in script:
        assert "boom: bad alloc" in str(raised.value)  # the tail of what it printed
    (tmp_path / "fake-runner").write_bytes(b"\x7fELF garbage")
    with pytest.raises(NativeRunError, match="cannot be started"):
        tracker.run_job([tmp_path / "0001.jpg"], [1.0, 1.0, 4.0, 4.0])


def test_the_aotinductor_key_names_device_and_instruction_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headway.tracking.native.stages import aoti_key

    module, example = torch.nn.Linear(3, 2), (torch.randn(1, 3),)
    key = aoti_key(module, example)
    assert aoti_key(module, example) == key
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER")
    assert aoti_key(module, example) != key


# --- exports -----------------------------------------------------------------------------


@pytest.fixture()
def tracked_run(tmp_path: Path, synth_dataset: Path) -> Path:
    result = _track(synth_dataset, tmp_path / "run")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def _export(run: Path, out: Path, layout: str = "lasot") -> object:
    return CliRunner().invoke(app, ["export-results", str(run), "--to", layout, "--out", str(out)])


def test_exports_are_complete_or_absent(tracked_run: Path, tmp_path: Path) -> None:
    names = sorted(read_json_file(tracked_run / "run.json")["frames"])
    out = tmp_path / "export"
    assert _export(tracked_run, out).exit_code == 0
    mark = tmp_path / ".export.headway-export.json"  # beside: the layout folder holds no more
    assert not _leftovers(out) and mark.is_file()
    record = read_json_file(mark)
    (out / "stale.txt").write_text("1,2,3,4\n")  # a user's file: not replaced
    assert "not a headway export" in " ".join(_export(tracked_run, out).output.split())
    record["sequences"].append("stale")  # an earlier export of another run, with "stale"
    atomic_write_text(mark, json.dumps(record))
    assert _export(tracked_run, out).exit_code == 0
    assert sorted(p.stem for p in out.glob("*.txt")) == names  # the stale file is gone
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    box_file = tracked_run / f"{names[0]}.txt"
    good = box_file.read_text()
    for bad, expected in [
        (good.replace(good.splitlines()[2], "nan\tnan\tnan\tnan"), "not finite"),
        (good.replace(good.splitlines()[2], "1\t2\tinf\t4"), "not finite"),
        ("".join(good.splitlines(keepends=True)[:-1]), "boxes for a sequence of"),
    ]:
        box_file.write_text(bad)
        assert_one_line_error(
            ["export-results", str(tracked_run), "--to", "lasot", "--out", str(out)], expected
        )
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    box_file.write_text(good)
    assert _leftovers(tmp_path / "export") == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == [mark]


def test_runs_with_failed_or_unfinished_sequences_are_not_exported(
    tracked_run: Path, tmp_path: Path
) -> None:
    names = sorted(read_json_file(tracked_run / "run.json")["frames"])
    record = read_json_file(tracked_run / "run.json")
    atomic_write_text(
        tracked_run / "run.json", json.dumps({**record, "problems": {names[0]: "frame x"}})
    )
    assert_one_line_error(
        ["export-results", str(tracked_run), "--to", "got10k", "--out", str(tmp_path / "e")],
        "failed",
        names[0],
    )
    atomic_write_text(tracked_run / "run.json", json.dumps(record))
    (tracked_run / f"{names[1]}.txt").unlink()
    assert_one_line_error(
        ["export-results", str(tracked_run), "--to", "got10k", "--out", str(tmp_path / "e")],
        "not finished",
    )
    assert not (tmp_path / "e").exists()


def test_an_export_over_foreign_files_is_refused(tracked_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own file")
    (out / "times").write_text("a file where the export puts a folder")
    assert_one_line_error(
        ["export-results", str(tracked_run), "--to", "otb", "--out", str(out)],
        "not a headway export",
    )
    assert (out / "notes.txt").read_text() == "my own file"


def test_an_interrupted_export_leaves_the_earlier_one(
    tracked_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    assert _export(tracked_run, out, "got10k").exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    original = pathlib.Path.write_text
    calls = []

    def fills_up(self: Path, text: str, *args: object, **kwargs: object) -> int:
        calls.append(self)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fills_up)
    result = _export(tracked_run, out, "got10k")
    assert result.exit_code == 1 and "no space left" in result.output, result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [".export.headway-export.json"]  # the record beside it, nothing else
    monkeypatch.undo()
    assert _export(tracked_run, out, "got10k").exit_code == 0  # still known as an export


def test_a_runner_built_earlier_is_used_when_the_compiler_has_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headway.io import write_manifest
    from headway.tracking.native import build as native_build

    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))
    binary = tmp_path / "cache" / "native" / "0123456789abcdef" / native_build.BINARY_NAME
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'headway-runner 1 (test)'\n")
    binary.chmod(0o755)
    (binary.parent / native_build.ORIGIN_NAME).write_text(json.dumps(native_build._origin()))
    write_manifest(binary)
    monkeypatch.setattr(native_build, "find_compiler", lambda: None)
    assert native_build.require_runner() == binary
    result = CliRunner().invoke(app, ["runner", "info"])
    assert result.exit_code == 0 and "built earlier" in result.output, result.output
    (binary.parent / native_build.ORIGIN_NAME).write_text('{"source": "other", "torch": "0"}')
    assert_one_line_error(["runner", "info"], "no C++ compiler")


def test_folders_and_files_in_the_wrong_place_are_named_before_work(
    tmp_path: Path, synth_dataset: Path
) -> None:
    (tmp_path / "train" / "checkpoint.pth").mkdir(parents=True)
    assert_one_line_error(
        ["train", "tracker", str(tmp_path / "train"), "--box-steps", "1"], "checkpoint.pth"
    )
    (tmp_path / "file").write_text("x")
    args = ["--out", str(tmp_path / "run"), "--config", "tiny"]
    assert_one_line_error(["track", str(tmp_path / "file"), *args], "is a file, not a folder")
    split = ["--format", "got10k", "--split", "nosuch"]
    assert_one_line_error(["track", str(synth_dataset), *split, *args], "split 'nosuch'")
    assert not (tmp_path / "run").exists()


def test_label_files_with_infinity_are_one_line(tmp_path: Path) -> None:
    from headway.tracking.datasets import read_labels

    labels = tmp_path / "cover.label"
    labels.write_text("1\ninf\n")
    with pytest.raises(InputError, match="integer labels"):
        read_labels(labels, 2)


def test_a_full_disk_while_saving_weights_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    from headway.io import atomic_torch_save

    real_open = builtins.open

    def full_disk(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode and str(file).endswith(".tmp"):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    with pytest.raises(InputError, match="no space left"):
        atomic_torch_save(tmp_path / "weights.pth", {"w": torch.zeros(1000)})
    assert list(tmp_path.iterdir()) == []


def test_an_export_folder_has_the_permissions_of_a_plain_folder(
    tracked_run: Path, tmp_path: Path
) -> None:
    import os
    import stat

    umask = os.umask(0o022)
    try:
        assert _export(tracked_run, tmp_path / "export").exit_code == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755


def test_odd_export_places_are_one_line_and_links_are_followed(
    tracked_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert _export(tracked_run, link).exit_code == 0
    assert link.is_symlink() and any(target.glob("*.txt"))  # the export is where it pointed
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert_one_line_error(
        ["export-results", str(tracked_run), "--to", "otb", "--out", str(dangling)],
        "which does not exist",
    )
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert_one_line_error(
        ["export-results", str(tracked_run), "--to", "otb", "--out", "."],
        "cannot be the current folder",
    )
    assert not any(here.iterdir())
    # a garbage record copied into a folder of the user's files does not make them replaceable
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (tmp_path / ".mine.headway-export.json").write_text("{not json")
    (mine / ".headway-export.json").write_text('{"layout": "otb", "sequences": []}')
    assert_one_line_error(
        ["export-results", str(tracked_run), "--to", "otb", "--out", str(mine)],
        "not a headway export",
    )
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_killed_build_leaves_nothing_a_later_one_does_not_remove(tmp_path: Path) -> None:
    from headway.io import remove_stale_staging, staging_folder

    target = tmp_path / "export"
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f".export.staging-{gone.pid}.abc"
    stale.mkdir()
    (stale / "big.onnx").write_bytes(b"0" * 1024)
    aside = tmp_path / f".export.old-{gone.pid}"
    aside.mkdir()
    (aside / "kept.txt").write_text("the earlier export")
    staging = staging_folder(target)  # removes the dead build's folder, puts the old one back
    assert not stale.exists() and (target / "kept.txt").read_text() == "the earlier export"
    assert staging.exists()  # this process's own is never touched
    assert remove_stale_staging(target) == []
    shutil.rmtree(staging)


def test_an_old_folder_that_cannot_be_put_back_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from headway import io as headway_io

    gone = subprocess.Popen(["true"])
    gone.wait()
    target = tmp_path / "export"
    aside = tmp_path / f".export.old-{gone.pid}"
    aside.mkdir()
    (aside / "kept.txt").write_text("the earlier export")

    def refused(source: object, destination: object) -> None:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(headway_io.os, "replace", refused)
    assert headway_io.remove_stale_staging(target) == []
    monkeypatch.setattr(headway_io.os, "replace", os.replace)
    assert (aside / "kept.txt").read_text() == "the earlier export"
