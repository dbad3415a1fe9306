"""`headway reproduce`: resumable, failures reported without stopping the rest, folder checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headway.cli import app
from headway.errors import InputError
from headway.experiments.reproduce import EXPERIMENTS, Experiment, Section, reproduce

calls: list[str] = []


def _works(folder: Path, quick: bool) -> Section:
    calls.append(f"works:{quick}")
    (folder / "table.json").write_text("{}")
    return {"markdown": "| a |\n|---|\n| 1 |", "data": {"a": 1}, "plots": [], "commands": ["x"]}


def _fails(folder: Path, quick: bool) -> Section:
    calls.append("fails")
    raise RuntimeError("the experiment broke")


FAKE = (
    Experiment("first", "A", "An experiment that works", _works),
    Experiment("second", "B", "An experiment that fails", _fails),
)


def test_a_failure_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    calls.clear()
    report, outcomes = reproduce(tmp_path / "out", quick=True, experiments=FAKE)
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert "RuntimeError: the experiment broke" in outcomes[1].error
    text = report.read_text()
    assert "| 1 |" in text and "**Failed:**" in text and "the experiment broke" in text
    assert "headway reproduce --quick" in text
    assert (tmp_path / "out" / "second" / "quick.error.txt").is_file()
    data = json.loads((tmp_path / "out" / "first" / "quick.json").read_text())
    assert data["data"] == {"a": 1}


def test_finished_experiments_are_not_rerun(tmp_path: Path) -> None:
    calls.clear()
    reproduce(tmp_path, quick=True, experiments=FAKE)
    _, outcomes = reproduce(tmp_path, quick=True, experiments=FAKE)
    assert [o.status for o in outcomes] == ["skipped", "failed"]
    assert calls == ["works:True", "fails", "fails"]
    _, outcomes = reproduce(tmp_path, quick=False, experiments=FAKE, only=["first"])
    assert [o.status for o in outcomes] == ["done"]  # the full mode has its own results


def test_folders_from_elsewhere_are_refused(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        reproduce(tmp_path / "other", experiments=FAKE)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"headway": "0.0.1"}))
    with pytest.raises(InputError, match=r"report from headway 0\.0\.1"):
        reproduce(old, experiments=FAKE)
    with pytest.raises(InputError, match="unknown experiments"):
        reproduce(tmp_path / "new", only=["nope"], experiments=FAKE)


def test_every_paper_has_experiments() -> None:
    assert {e.paper for e in EXPERIMENTS} == {"A", "B", "C"}
    assert len({e.key for e in EXPERIMENTS}) == len(EXPERIMENTS)


def test_cli_reports_unknown_experiments(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["reproduce", str(tmp_path / "r"), "--only", "nope"])
    assert result.exit_code == 1
    assert "unknown experiments" in result.output


def test_vit_speed_experiment_runs_quick(tmp_path: Path) -> None:
    """One real experiment end to end (the cheapest: simulator + one timing pair)."""
    report, outcomes = reproduce(tmp_path, quick=True, only=["vit_speed"])
    assert outcomes[0].status == "done", outcomes[0].error
    assert "paper C: 1.31×" in report.read_text()


def _timed(folder: Path, quick: bool) -> Section:
    return {"markdown": "timed part", "data": {}, "plots": [], "commands": ["y"]}


def test_ray_runs_untimed_parts_in_parallel_and_timed_ones_alone(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray not installed (pip install 'headway[cluster]')")
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    parts = (
        Experiment("untimed_a", "A", "Accuracy A", _works, timed=False),
        Experiment("timed", "B", "A timing part", _timed),
        Experiment("untimed_b", "C", "Accuracy B", _works, timed=False),
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report, outcomes = reproduce(tmp_path, quick=True, experiments=parts, use_ray=True)
    finally:
        ray.shutdown()
    assert [o.key for o in outcomes] == ["untimed_a", "timed", "untimed_b"]
    assert all(o.status == "done" for o in outcomes)
    record = json.loads((tmp_path / "ray.quick.json").read_text())
    assert record["parallel_on_ray"] == ["untimed_a", "untimed_b"]
    text = report.read_text()
    assert "ran in parallel as Ray tasks" in text and "timed part" in text
