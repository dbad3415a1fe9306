"""`headway bench gpu-session` on the CPU (how the one GPU command is tested without a GPU):
it runs its parts, writes JSON and Markdown, fills the docs block and renders a saved JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from headway.cli import app
from headway.experiments.gpu_session import BEGIN, END, render_markdown


def test_gpu_session_runs_on_the_cpu_and_fills_the_docs_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n{BEGIN}\nNot measured yet.\n{END}\n\nafter\n")
    cli = CliRunner()
    result = cli.invoke(
        app,
        ["bench", "gpu-session", "--device", "cpu", "--config", "tiny", "--frames", "1",
         "--warmup", "0", "--rounds", "1", "--executors", "eager,scripted,heads",
         "--no-tests", "--multidnn-requests", "0", "--out", str(tmp_path / "run"),
         "--docs", str(docs)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "gpu_session.json").read_text())
    assert [e["case"] for e in record["tracker"]["results"]] == ["A", "B", "C"]
    text = docs.read_text()
    assert "Not measured yet" not in text and text.endswith("after\n")
    assert "Target Case C" in text and "`scripted`" in text
    docs.write_text(f"{BEGIN}\nold\n{END}\n")
    result = cli.invoke(
        app,
        ["bench", "gpu-session", "--render", str(tmp_path / "run" / "gpu_session.json"),
         "--docs", str(docs)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "old" not in docs.read_text() and "`heads`" in docs.read_text()


def test_gpu_session_refuses_bad_input(tmp_path: Path) -> None:
    cli = CliRunner()
    no_block = tmp_path / "plain.md"
    no_block.write_text("nothing to replace\n")
    saved = tmp_path / "gpu_session.json"
    saved.write_text(json.dumps({"device": "cpu", "gpu": None, "torch": "x", "cuda": None,
                                 "date": "2026-11-30", "skipped": {}}))  # fmt: skip
    result = cli.invoke(
        app, ["bench", "gpu-session", "--render", str(saved), "--docs", str(no_block)]
    )
    assert result.exit_code != 0 and "gpu-session:begin" in result.output
    result = cli.invoke(app, ["bench", "gpu-session", "--render", str(saved)])
    assert result.exit_code != 0 and "--docs" in result.output
    (tmp_path / "bad.json").write_text("{not json")
    result = cli.invoke(
        app,
        ["bench", "gpu-session", "--render", str(tmp_path / "bad.json"), "--docs", str(saved)],
    )
    assert result.exit_code != 0 and "gpu-session:begin" in result.output
    docs = tmp_path / "docs.md"
    docs.write_text(f"{BEGIN}\n{END}\n")
    result = cli.invoke(
        app, ["bench", "gpu-session", "--render", str(tmp_path / "bad.json"), "--docs", str(docs)]
    )
    assert result.exit_code != 0 and "not a gpu_session.json" in result.output
    # checked before any measurement: nothing is run or written
    run = ["bench", "gpu-session", "--device", "cpu", "--no-tests", "--out", str(tmp_path / "o")]
    result = cli.invoke(app, [*run, "--docs", str(tmp_path / "missing.md")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = cli.invoke(app, [*run, "--multidnn-models", "bogus:3"])
    assert result.exit_code == 1 and "bogus" in result.output
    assert not (tmp_path / "o" / "gpu_session.json").exists()


def test_multidnn_block_renders_mp_and_mt() -> None:
    row = {"per_model_ms": {"vgg16": 10.0}, "throughput": 100.0}
    record = {
        "device": "cuda", "gpu": "H200", "torch": "2.11", "cuda": "13.0", "date": "d",
        "seconds": 1.0, "skipped": {"tests": "time budget spent"},
        "multidnn": {"models": "vgg16:8", "requests": 4, "cases": {
            "Ori.(MP)": row,
            "Dcomp.(MP)": {**row, "per_model_ms": {"vgg16": 5.0}},
            "Dcomp.(MT)": {"per_model_ms": {"vgg16": 4.0}, "throughput": 130.0},
        }},
    }  # fmt: skip
    text = render_markdown(record)
    assert "MT / MP throughput on the decomposed models: 1.30×" in text
    assert "-60%" in text and "Not measured: tests (time budget spent)" in text
