"""The executor table (names, composed specs, every entry builds or says why not) and
``--executor auto`` (checks, rejects a wrong candidate, caches its plan, refuses bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from headway.cli import app
from headway.errors import InputError
from headway.models import build_cswintt
from headway.tracking import auto
from headway.tracking.backends import build_tracker, check_tracker_executor
from headway.tracking.datasets import load_dataset
from headway.tracking.executors import EXECUTORS, resolve_executor

runner = CliRunner()


@pytest.mark.parametrize(
    ("spelling", "short"),
    [
        ("spectral+bf16@openvino", "openvino-bf16"),
        ("plain@cpp", "cpp"),
        ("heads@cpp", "cpp-heads"),
        ("plain@eager", "eager"),
        ("spectral@aoti", "cpp-aoti"),
        ("fused-bf16", "fused-bf16"),
    ],
)
def test_composed_names_resolve_to_the_table(spelling: str, short: str) -> None:
    assert resolve_executor(spelling)[0] == short


def test_every_short_name_has_a_distinct_composed_spelling() -> None:
    composed = [spec.composed for spec in EXECUTORS.values()]
    assert len(set(composed)) == len(composed)
    for name, spec in EXECUTORS.items():
        assert resolve_executor(spec.composed) == (name, spec)


@pytest.mark.parametrize(
    ("spelling", "message"),
    [
        ("warp", "unknown executor 'warp'"),
        ("heads@openvino", "not a supported combination: choose from plain@eager"),
        ("plain+fp16@eager", "unknown executor"),
        ("spectral@nowhere", "unknown executor"),
    ],
)
def test_bad_specs_are_one_line(spelling: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as error:
        resolve_executor(spelling)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", list(EXECUTORS))
def test_every_table_entry_builds_or_says_why_not(name: str) -> None:
    """On this machine each executor either builds (and runs one encoder call) or is refused
    in one line before any work."""
    try:
        check_tracker_executor(name, "cpu")
    except InputError as error:
        assert "\n" not in str(error)
        return
    spec = EXECUTORS[name]
    if spec.backend in ("inductor", "aoti"):
        pytest.skip("compiling is covered by the compiled executors' own tests")
    torch.manual_seed(0)
    network = build_cswintt("tiny").eval()
    tracker = build_tracker(network, None, "cpu", name)
    try:
        config = network.config
        tokens = torch.randn(config.num_tokens, 1, config.d_model)
        mask = torch.zeros(1, config.num_tokens, dtype=torch.bool)
        encoder = tracker.executor.encoder if spec.host == "python" else tracker.encoder
        with torch.inference_mode():
            assert torch.isfinite(encoder(tokens, mask).float()).all()
    finally:
        tracker.close()


@pytest.fixture
def plan_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "plans"


def test_auto_rejects_a_wrong_candidate_and_caches_its_plan(
    synth_dataset: Path, plan_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequence = load_dataset(synth_dataset, "otb")[0]
    torch.manual_seed(1)
    network = build_cswintt("tiny").eval()

    def broken_fused(network, settings, device, name):
        tracker = build_tracker(network, settings, device, name)
        if name == "fused":  # a rewrite that went wrong: one weight of the encoder off
            with torch.no_grad():
                next(tracker.executor.network.transformer.transformer[0].parameters()).add_(0.5)
        return tracker

    monkeypatch.setattr(auto, "build_tracker", broken_fused)
    plan, tracker = auto.tune_tracker(
        network, list(sequence.frames), list(sequence.init_box), budget_s=5,
        candidates=["fused", "spectral", "fused-bf16"],
    )  # fmt: skip
    tracker.close()
    status = {c.name: c for c in plan.candidates}
    assert status["fused"].status == "rejected"
    assert "tolerance" in status["fused"].reason
    assert status["fused-bf16"].status == "skipped"  # fp32 by default
    assert plan.chosen in ("eager", "spectral")
    assert status[plan.chosen].status == "chosen"
    assert status["spectral"].max_abs_diff <= auto.TOLERANCE["fp32"]
    assert not plan.cached

    again, tracker = auto.tune_tracker(
        network, list(sequence.frames), list(sequence.init_box), budget_s=5,
        candidates=["fused", "spectral", "fused-bf16"],
    )  # fmt: skip
    tracker.close()
    assert again.cached and again.chosen == plan.chosen

    (cached,) = plan_cache.glob("*.json")
    record = json.loads(cached.read_text())
    record["plan"]["chosen"] = "fused"  # tampered: its hash no longer matches
    cached.write_text(json.dumps(record))
    retuned, tracker = auto.tune_tracker(
        network, list(sequence.frames), list(sequence.init_box), budget_s=5,
        candidates=["fused", "spectral"],
    )  # fmt: skip
    tracker.close()
    assert not retuned.cached


def test_track_auto_records_its_choice(synth_dataset: Path, tmp_path: Path, plan_cache: Path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["track", str(synth_dataset), "--out", str(out), "--config", "tiny", "--executor",
         "auto", "--tune-seconds", "3", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--executor auto (fp32)" in result.output
    record = json.loads((out / "run.json").read_text())
    assert record["executor"] == "auto"
    assert record["auto"]["chosen"] in EXECUTORS
    assert len(list(plan_cache.glob("*.json"))) == 1  # its plan is cached


def test_a_damaged_plan_file_is_never_trusted(plan_cache: Path) -> None:
    """An unreadable or half-written plan is tuned again, with one warning (a second
    `track --executor auto` over a damaged file did the same in 40 s of the suite)."""
    from headway.tuning import _plan_path, load_plan

    path = _plan_path("k" * 16)
    path.parent.mkdir(parents=True)
    for damaged in ("{not json", "", '{"plan": {}}', '{"plan": {"chosen": "x"}, "sha256": 1}'):
        path.write_text(damaged)
        assert load_plan("k" * 16, lambda name: True) is None
    path.write_bytes(b"\xff\xfe")
    assert load_plan("k" * 16, lambda name: True) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "auto", "--tolerance", "0"], "tolerance must be"),
        (["--executor", "auto", "--tolerance", "nan"], "tolerance must be"),
        (["--executor", "auto", "--tune-seconds", "0"], "budget must be"),
        (["--executor", "auto", "--tune-seconds", "inf"], "budget must be"),
        (["--executor", "auto", "--precision", "fp16"], "precision must be one of fp32, bf16"),
        (["--executor", "heads@openvino"], "not a supported combination"),
        (["--executor", "auto", "--ray"], "chooses for the machine it runs on"),
        (["--precision", "bf16"], "--precision: only for --executor auto"),
        (
            ["--executor", "spectral", "--tolerance", "0.1", "--tune-seconds", "9"],
            "--tolerance, --tune-seconds: only for --executor auto",
        ),
    ],
)
def test_bad_auto_options_are_one_line(
    options: list[str], message: str, synth_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["track", str(synth_dataset), "--out", str(out), *options])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert not out.exists()
