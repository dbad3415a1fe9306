"""A property test of the whole CLI (issue 24): every command, driven in-process through
typer's runner with generated hostile values for its arguments and options — numbers (0,
negatives, NaN, inf, huge), text (empty, markup, unicode, over-long, repeated names), paths
(too long, a file where a folder is wanted and the reverse, markup, unicode, spaces, damaged
files) — must end with exit status 0, 1 or 2 (usage), never a traceback, one line on error,
and no temporary file or staging folder left behind.

The commands are found by walking the app, so a new command is driven without a change here.
What is tested is everything a command does before its work starts: the library functions
that do the work (``WORK``) are replaced by a stand-in that stops the command, and such an
invocation counts as accepted (the work's own failures are tested where the work is). Cheap
work (scoring, exporting results) runs for real. An invocation that still runs longer than
``SLOW_S`` fails the test: its command has work to add to ``WORK``. ``make test`` runs a
fixed-seed, small budget; ``HEADWAY_PROPERTY_EXAMPLES=200 pytest tests/test_cli_property.py``
runs a longer one, and ``HEADWAY_PROPERTY_SEED=N`` another search.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from headway.cli import app

EXAMPLES = int(os.environ.get("HEADWAY_PROPERTY_EXAMPLES", "25"))
SEED = os.environ.get("HEADWAY_PROPERTY_SEED")  # another search than make test's fixed one
SLOW_S = 20.0

# The functions each command calls once its input is checked, to do its (long) work.
WORK = [
    "headway.tracking.synth.synthesize",
    "headway.tracking.backends.build_tracker",
    "headway.tracking.runner.build_tracker",
    "headway.tracking.runner.track_dataset",
    "headway.tracking.cluster.track_dataset_ray",
    "headway.tracking.auto.tune_tracker",
    "headway.tracking.video.track_video",
    "headway.tracking.train.train_tracker",
    "headway.tracking.native.build.build_runner",
    "headway.experiments.tracker_executors.benchmark_executors",
    "headway.experiments.gpu_session.run_session",
    "headway.experiments.tucker.accuracy",
    "headway.experiments.tucker.latency",
    "headway.experiments.tucker.mac_reduction",
    "headway.experiments.tucker.decomposition_time",
    "headway.experiments.tucker.create_model",
    "headway.experiments.multidnn.run_cases",
    "headway.experiments.multidnn.solo_vs_crowd",
    "headway.experiments.engines.compare_engines",
    "headway.experiments.reproduce.reproduce",
    "headway.experiments.vit.flop_latency_breakdown",
    "headway.experiments.vit.pruning_speedup",
    "headway.experiments.vit.trained_digits_deit",
    "headway.experiments.vit.build_deit",
    "headway.models.create_model",
    "headway.models.registry.random_model_and_input",
    "headway.models.deit.build_deit",
    "headway.runtime.deploy.export_parts",
    "headway.vision.serving.run_mode",
    "headway.sim.vitcod.simulate_deit",
    "headway.serving.server.serve_repository",
    "headway.serving.ray_serve.serve_on_ray",
    "headway.experiments.serve_bench.run_serve_bench",
    "headway.acceleration.accelerate_to_folder",
]


class _Accepted(BaseException):
    """Raised where the work would start: the command took its input."""


@pytest.fixture()
def work_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    def accepted(*args: object, **kwargs: object) -> None:
        raise _Accepted

    # every module first: one imported while patching would bind a stand-in already set
    # (runner's build_tracker from backends) and keep it after the test
    for target in WORK:
        importlib.import_module(target.rsplit(".", 1)[0])
    for target in WORK:
        monkeypatch.setattr(target, accepted)


def _commands() -> list[tuple[tuple[str, ...], object]]:
    def walk(command: object, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():  # type: ignore[attr-defined]
                yield from walk(sub, (*prefix, name))
        else:
            yield prefix, command

    return list(walk(typer.main.get_command(app), ()))


COMMANDS = _commands()

INTS = ["0", "-1", "-7", "2147483648", "99999999999999999999", "nan", "1.5", "x"]
FLOATS = ["0", "-1", "nan", "inf", "-inf", "1e309", "1e-320", "x"]
TEXTS = ["", " ", ",", "a,a", "[red]x[/red]", "ü ñ 🚀", "x" * 300, "nosuch", "-1", "nan", "0"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Path) -> dict[str, Path]:
    """Paths a hostile user might give: missing, wrong kind, odd names, damaged files."""
    root = tmp_path_factory.mktemp("zoo")
    (root / "plain.txt").write_text("just text\n")
    (root / "folder").mkdir()
    (root / "binary.pth").write_bytes(bytes(range(256)) * 4)
    (root / "utf16.txt").write_bytes("1,2,3,4\n".encode("utf-16"))
    (root / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (root / "notjson.json").write_text("{not json")
    bad = root / "baddata" / "Seq" / "img"
    bad.mkdir(parents=True)
    (bad / "0001.jpg").write_bytes(b"\xff\xd8\xff\xda" + b"\x01" * 30 + b"\xff\xd9")
    (bad / "0002.jpg").write_bytes(b"")
    (bad.parent / "groundtruth_rect.txt").write_bytes("1,2,3,4\n".encode("utf-16"))
    dataset = root / "dataset"  # a private copy: accepted runs may write beside it
    shutil.copytree(synth_dataset, dataset)
    run = root / "badrun"
    run.mkdir()
    (run / "run.json").write_bytes(b"\x00garbage")
    (run / "Seq.txt").write_text("1,2,inf,4\nnan\n")
    return {
        "missing": root / "missing" / "thing",
        "file": root / "plain.txt",
        "folder": root / "folder",
        "under a file": root / "plain.txt" / "below",
        "long": root / ("n" * 300),
        "markup": root / "[bold]x[/bold]",
        "unicode": root / "dé jà 🚀",
        "spaces": root / "name with spaces",
        "binary": root / "binary.pth",
        "utf16": root / "utf16.txt",
        "truncated jpeg": root / "truncated.jpg",
        "not json": root / "notjson.json",
        "damaged dataset": root / "baddata",
        "damaged run": run,
        "dataset": dataset,
    }


def _values(parameter: object, zoo: dict[str, Path]) -> st.SearchStrategy[str]:
    kind = parameter.type_descriptor.annotation  # type: ignore[attr-defined]
    if kind is int:
        return st.sampled_from(INTS)
    if kind is float:
        return st.sampled_from(FLOATS)
    if kind is Path or "Path" in str(kind):
        fresh = st.integers(0, 10**6).map(lambda n: str(zoo["folder"].parent / f"new-{n}"))
        return st.one_of(st.sampled_from([str(p) for p in zoo.values()]), fresh)
    return st.sampled_from(TEXTS)


def _invocations(path: tuple[str, ...], command: object, zoo: dict) -> st.SearchStrategy:
    """Arguments for ``command``: every required parameter and up to three optional ones,
    each with a hostile value (flags are left out: on or off is not hostile)."""
    params = [
        p
        for p in command.params  # type: ignore[attr-defined]
        if p.name != "help" and not getattr(p, "is_flag", False)
    ]
    required = [p for p in params if p.required]
    optional = [p for p in params if not p.required]

    def build(values: list[tuple[object, str]]) -> list[str]:
        args = list(path)
        for parameter, value in values:
            if parameter.param_type_name == "argument":
                args.append(value)
            else:
                args += [parameter.opts[0], value]
        return args

    chosen_optional = (
        st.lists(st.sampled_from(optional), max_size=3, unique_by=lambda p: p.name)
        if optional
        else st.just([])
    )
    return chosen_optional.flatmap(
        lambda extra: st.tuples(
            *(_values(p, zoo).map(lambda v, p=p: (p, v)) for p in [*required, *extra])
        )
    ).map(lambda pairs: build(list(pairs)))


def _leftovers(root: Path) -> list[Path]:
    """Temporary files and staging folders a command must never leave behind."""
    found = []
    for path in root.rglob("*"):
        name = path.name
        if name.endswith((".tmp", ".building", ".building.pt2")) or ".old-" in name:
            found.append(path)
        elif path.is_dir() and name.startswith(".") and name not in (".headway.lock",):
            found.append(path)  # a staging folder of an export
    return found


def _check(args: list[str], *scratch: Path) -> None:
    began = time.perf_counter()
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    except _Accepted:
        return
    finally:
        seconds = time.perf_counter() - began
        if os.environ.get("HEADWAY_PROPERTY_TIMES"):
            print(f"{seconds:6.2f} s  {' '.join(args)[:150]}")
    assert seconds < SLOW_S, f"headway {' '.join(args)} ran {seconds:.0f} s: add its work to WORK"
    if isinstance(result.exception, _Accepted):
        return
    shown = f"headway {' '.join(args)}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback ({result.exception!r:.300}) from {shown}") from (
            result.exception
        )
    assert result.exit_code in (0, 1, 2), shown
    assert "Traceback" not in result.output, shown
    if result.exit_code == 1:
        lines = result.output.strip().splitlines()
        assert lines and lines[-1].startswith("error:"), shown
        assert sum(line.startswith("error:") for line in lines) == 1, shown
    assert [p for root in scratch for p in _leftovers(root)] == [], shown


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_takes_hostile_input_in_one_line(
    path: tuple[str, ...],
    command: object,
    zoo: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    work_stopped: None,
) -> None:
    monkeypatch.chdir(tmp_path)  # default output names land here
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))

    @seed(int(SEED or 0))
    @settings(
        max_examples=EXAMPLES,
        derandomize=SEED is None,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(_invocations(path, command, zoo))
    def drive(args: list[str]) -> None:
        _check(args, tmp_path, zoo["folder"].parent)

    drive()
