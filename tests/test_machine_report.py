"""``headway bench report``: the page names the machine and puts headway's best beside the best
peer with the ratio (the comparisons themselves are the engines and multi-DNN experiments,
tested where they live; here they are replaced by fixed numbers to keep the test short)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from headway.cli import app
from headway.experiments import machine_report
from headway.experiments.machine_report import Comparison


def _fixed(min_run_time: float, on_case=None) -> list[Comparison]:
    return [Comparison("CSWinTT encoder", True, "openvino (spectral graph)", 10.0, "eager", 21.8)]


def _fixed_serving(requests: int, rounds: int, on_case=None) -> list[Comparison]:
    return [Comparison("8 × VGG-16", True, "MT", 205.0, "OpenVINO", 200.0, "req/s")]


def test_the_page_names_the_machine_and_the_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine_report, "engine_comparisons", _fixed)
    monkeypatch.setattr(machine_report, "serving_comparison", _fixed_serving)
    out = tmp_path / "page.md"
    result = CliRunner().invoke(
        app, ["bench", "report", "--quick", "--out", str(out), "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    facts = machine_report.machine_facts()
    name = machine_report.machine_name(facts)
    assert page.startswith("## ") and name in page.splitlines()[0]
    assert f"Machine: {name}" in page  # the table names its machine too
    assert facts["cpu"] in page and "torch" in page
    assert "2.18×" in page  # 21.8 ms / 10.0 ms
    assert "1.02×" in page  # 205 / 200 req/s: higher is better
    assert (tmp_path / "r.json").is_file()


def test_a_folder_as_the_page_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "report", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "folder" in result.output
