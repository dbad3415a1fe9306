"""``headway export``: files that reload in ONNX Runtime and OpenVINO equal to eager, a
verification record beside them, and nothing half-written on bad input or failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headway.cli import app
from headway.runtime import deploy
from headway.runtime.engines import engine_available

runner = CliRunner()
needs_engines = pytest.mark.skipif(
    not (engine_available("onnxruntime") and engine_available("openvino")),
    reason="needs headway[engines]",
)


def files(record: dict) -> dict[str, dict]:
    return record["files"]


@needs_engines
def test_spectral_tracker_stages_reload_equal_to_eager(tmp_path: Path) -> None:
    out = tmp_path / "tracker"
    result = runner.invoke(
        app, ["export", str(out), "--config", "tiny", "--formats", "onnx,openvino,torchscript"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "verification.json").read_text())
    assert record["executor"] == "spectral" and record["command"].startswith("headway export")
    encoder = {
        entry["format"]: entry for entry in files(record).values() if entry["part"] == "encoder"
    }
    assert set(encoder) == {"onnx", "openvino", "torchscript"}
    for entry in files(record).values():
        assert entry["max_abs_diff"] <= 1e-4, entry
    assert (out / "encoder.onnx").is_file() and (out / "encoder.xml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@needs_engines
def test_a_zoo_cnn_reloads_equal_to_eager(tmp_path: Path) -> None:
    out = tmp_path / "vgg"
    result = runner.invoke(
        app, ["export", str(out), "--model", "vgg16", "--small-input", "--formats", "onnx,openvino"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "verification.json").read_text())
    assert {e["format"] for e in files(record).values()} == {"onnx", "openvino"}
    assert max(e["max_abs_diff"] for e in files(record).values()) <= 1e-4
    assert not (out / "vgg16.pt").exists()


@pytest.mark.parametrize(
    ("setup", "options", "message"),
    [
        ("file", [], "is already a file"),
        ("folder", [], "is already a folder"),
        ("dangling", [], "is a symbolic link"),
        ("readonly", [], "is not a writable folder"),
        ("under_a_file", [], "is not a writable folder"),
        (None, ["--formats", "tflite"], "unknown export format tflite"),
        (None, ["--executor", "heads"], "nothing of it exports as one graph"),
        (None, ["--executor", "warp"], "unknown executor 'warp'"),
        (None, ["--probes", "0"], "--probes"),
        (None, ["--model", "nosuch"], "only for the tracker"),
        (None, ["--model", "vgg16", "--executor", "fused"], "only for the tracker"),
        (None, ["--batch", "2"], "--batch: only for zoo models"),
        (None, ["--probes", "100000000"], "--probes must be at most 1000"),
    ],
)
def test_bad_export_input_is_one_line(
    setup: str | None, options: list[str], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("keep me")
    elif setup == "folder":
        out.mkdir()
    elif setup == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    elif setup == "under_a_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    elif setup == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        tmp_path.chmod(0o500)
    try:
        result = runner.invoke(app, ["export", str(out), "--config", "tiny", *options])
    finally:
        tmp_path.chmod(0o700)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    if setup == "file":
        assert out.read_text() == "keep me"
    elif setup == "folder":
        assert list(out.iterdir()) == []
    elif setup == "dangling":
        assert out.is_symlink() and not out.exists()
    else:
        assert not out.exists()


@pytest.mark.parametrize(
    ("size", "message"),
    [("8", "vgg16 cannot run on 8×8 images"), ("2147483647", "at most 4096")],
)
def test_an_input_size_the_model_cannot_take_is_one_line(
    size: str, message: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(out), "--model", "vgg16", "--input-size", size])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_a_disk_too_full_is_one_line_before_the_serializer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["export", str(out), "--config", "tiny", "--formats", "torchscript"]
    )
    assert result.exit_code == 1, result.output
    assert "1 MiB free" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_a_failing_format_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = deploy._write

    def failing(fmt, part, path):
        if part.name == "encoder":
            raise RuntimeError("exporter gave up")
        return real_write(fmt, part, path)

    monkeypatch.setattr(deploy, "_write", failing)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["export", str(out), "--config", "tiny", "--formats", "torchscript"]
    )
    assert result.exit_code == 1
    assert "encoder could not be exported as torchscript (exporter gave up)" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_folder_made_meanwhile_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = deploy._write
    out = tmp_path / "out"

    def and_another_export(fmt, part, path):  # a second export to the same folder finishes
        out.mkdir(exist_ok=True)
        (out / "verification.json").write_text("{}")
        return real_write(fmt, part, path)

    monkeypatch.setattr(deploy, "_write", and_another_export)
    result = runner.invoke(
        app, ["export", str(out), "--config", "tiny", "--formats", "torchscript"]
    )
    assert result.exit_code == 1
    assert "appeared while this export ran" in " ".join(result.output.split())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
    assert [p.name for p in out.iterdir()] == ["verification.json"]  # the other's, untouched


@needs_engines
def test_a_zoo_model_exports_with_its_checkpoint(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime
    import torch

    from headway.models.registry import random_model_and_input

    module, example, _ = random_model_and_input("vgg16", small_input=True, seed=5)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(0.5)  # weights no seed gives
    weights = tmp_path / "halved.pth"
    torch.save(module.state_dict(), weights)
    out = tmp_path / "vgg"
    result = runner.invoke(
        app,
        ["export", str(out), "--model", "vgg16", "--small-input", "--formats", "onnx",
         "--checkpoint", str(weights)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "verification.json").read_text())
    assert "--checkpoint" in record["command"]
    (entry,) = files(record).values()
    assert entry["max_rel_diff"] <= 1e-5 and entry["max_rel_diff"] >= 0
    session = onnxruntime.InferenceSession(str(out / "vgg16.onnx"))
    x = torch.randn_like(example)
    with torch.no_grad():
        expected = module(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))

    result = runner.invoke(
        app, ["export", str(tmp_path / "b"), "--model", "vgg16", "--checkpoint", "builtin"]
    )
    assert result.exit_code == 1 and "tiny tracker's weights" in result.output


def test_export_file_names_are_portable(tmp_path: Path) -> None:
    import torch

    assert deploy.portable_name("torchvision:resnet18") == "torchvision-resnet18"
    assert deploy.portable_name("timm:vit/small?") == "timm-vit-small"
    part = deploy.ExportPart("timm:tiny", torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),))
    record = deploy.export_parts([part], tmp_path / "out", ["torchscript"], probes=1)
    assert list(record["files"]) == ["timm-tiny.pt"]
    assert (tmp_path / "out" / "timm-tiny.pt").exists()
