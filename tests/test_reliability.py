"""Reliability, round 3 (issue 24), the families fixed so far: cached engine exports are
verified against a manifest and rebuilt when damaged, never opened as they are; frames that
are empty files; values that would run for ever or that numpy cannot take (``inf`` seconds, a
negative seed); a GPU record that is valid JSON but not a record. Each ends in one line and
exit 1, or in a correct result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headway.errors import InputError
from headway.io import manifest_matches
from headway.runtime.engines import engine_available, export_onnx
from headway.tracking.crop import read_frame
from test_cli_bad_input import assert_one_line_error


def _damages(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    return {
        "truncated": data[: len(data) // 2],
        "garbled": bytes(b ^ 0x5A for b in data[:64]) + data[64:],
        "empty": b"",
        "folder": None,
    }


@pytest.mark.skipif(not engine_available("onnxruntime"), reason="onnxruntime not installed")
def test_damaged_cached_exports_are_rebuilt_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headway.runtime.engines import compile_module

    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(24)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(2, 6)
    with torch.inference_mode():
        expected = model(x)
    path = export_onnx(model, (x,))
    assert manifest_matches(path)
    for name, damage in _damages(path).items():
        path.unlink()
        if damage is None:
            path.mkdir()  # a folder where the file was
        else:
            path.write_bytes(damage)
        assert not manifest_matches(path), name
        assert export_onnx(model, (x,)) == path and manifest_matches(path), name
        torch.testing.assert_close(compile_module("onnxruntime", model, x)(x), expected)


def test_an_empty_frame_is_one_line(tmp_path: Path) -> None:
    frame = tmp_path / "00000001.jpg"
    frame.write_bytes(b"")
    with pytest.raises(InputError, match="frame is empty"):
        read_frame(frame)


def test_values_that_would_run_for_ever_or_break_numpy(tmp_path: Path) -> None:
    assert_one_line_error(["synth", str(tmp_path / "d"), "--seed", "-1"], "--seed")
    assert not (tmp_path / "d").exists()
    assert_one_line_error(
        ["bench", "engines", "--cases", "vgg16", "--seconds", "inf"], "--seconds", "finite"
    )
    assert_one_line_error(["multirun", "--models", "vgg16", "--rate", "inf"], "--rate", "finite")


BLOCK = "# Benchmarks\n<!-- gpu-session:begin -->\nold\n<!-- gpu-session:end -->\n"


@pytest.mark.parametrize("content", ["[]", "{}", '"text"'])
def test_gpu_session_render_of_json_that_is_not_a_record(tmp_path: Path, content: str) -> None:
    record = tmp_path / "gpu_session.json"
    record.write_text(content)
    docs = tmp_path / "benchmarks.md"
    docs.write_text(BLOCK)
    args = ["bench", "gpu-session", "--render", str(record), "--docs", str(docs)]
    assert_one_line_error(args, "not a gpu_session.json")
    assert docs.read_text() == BLOCK
    json.loads(content)  # it was valid JSON all along


def test_folders_and_names_that_cannot_be_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_dataset: Path
) -> None:
    """A cache that is a file (``runner build``), a lock name taken by a folder, a folder
    given as a checkpoint, a sequence named twice: one line each, naming the problem."""
    from headway.io import LOCK_NAME, locked_folder, read_torch_file

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with (
        pytest.raises(InputError, match="cannot be used: Not a directory"),
        locked_folder(a_file / "below"),
    ):
        pass
    (tmp_path / "locked" / LOCK_NAME).mkdir(parents=True)
    with (
        pytest.raises(InputError, match="cannot be used: Is a directory"),
        locked_folder(tmp_path / "locked"),
    ):
        pass
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_torch_file(tmp_path)
    from headway.tracking.native.build import find_compiler

    monkeypatch.setenv("HEADWAY_CACHE", str(a_file))
    # without a compiler the command stops earlier, at that (also one line)
    expected = "cannot be used" if find_compiler() else "no C++ compiler"
    assert_one_line_error(["runner", "build"], expected)
    monkeypatch.delenv("HEADWAY_CACHE")
    (name,) = [p.name for p in sorted(synth_dataset.iterdir()) if p.is_dir()][:1]
    args = ["track", str(synth_dataset), "--out", str(tmp_path / "run"), "--config", "tiny"]
    assert_one_line_error([*args, "--sequences", f"{name},{name}"], "more than once")
    assert not (tmp_path / "run").exists()


def test_text_files_that_are_not_numbers(tmp_path: Path) -> None:
    """Ground truth, result boxes and time files share one reader: bytes that are not UTF-8
    text, binary files, infinite values and non-numbers each name the file (and line)."""
    from headway.tracking.datasets import read_boxes
    from headway.tracking.results import read_boxes_file

    gt = tmp_path / "groundtruth.txt"
    cases = {
        "UTF-16 text": "1,2,3,4\n5,6,7,8\n".encode("utf-16"),
        "2: not UTF-8 text": b"1,2,3,4\n5,6,7,\xe9\n",
        "binary": b"1,2,3,4\n\x00\x01\x02",
        "is not finite": b"1,2,3,4\n1,2,inf,4\n",
        "not a number": b"1,2,3,4\n1,2,x,4\n",
    }
    for expected, data in cases.items():
        gt.write_bytes(data)
        for reader in (read_boxes, read_boxes_file):
            with pytest.raises(InputError, match=expected):
                reader(gt)
    gt.write_bytes("\ufeff1,2,3,4\nnan,nan,nan,nan\n".encode())  # a BOM; NaN = absent target
    assert read_boxes(gt).shape == (2, 4)


def test_weights_that_are_not_finite_are_refused(tmp_path: Path) -> None:
    from headway.models.checkpoint import load_weights

    model = torch.nn.Linear(3, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["weight"][0, 1] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    before = model.weight.detach().clone()
    with pytest.raises(InputError, match=r"not finite .* in weight"):
        load_weights(model, path)
    assert torch.equal(model.weight, before)  # nothing loaded


def test_checkpoint_builtin_next_to_a_file_named_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_dataset: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "builtin").write_bytes(b"a user's file")
    args = ["track", str(synth_dataset), "--out", str(tmp_path / "run"), "--config", "tiny"]
    assert_one_line_error([*args, "--checkpoint", "./builtin"], "a file named builtin")
    assert not (tmp_path / "run").exists()
