"""``headway reproduce``: the headway counterparts of the three papers' experiments, on built-in
data and this machine, in one resumable run that writes ``report.md``, PNG plots and raw JSON.
This module is the run loop and the report writer only: each experiment's computation and its
section of the report live in its own module (``experiments/<name>.py``).

Each experiment runs in its own folder and, when it finishes, writes ``<key>/<mode>.json``
(its table as Markdown, its data, its plots and the equivalent commands); a rerun skips the
experiments that have that file. An experiment that fails writes ``<key>/<mode>.error.txt``; the
others still run and the report says what failed and why.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from headway.errors import InputError
from headway.experiments import multidnn, tracker_accuracy, tracker_executors, tucker, vit
from headway.experiments.report import Section
from headway.io import LOCK_NAME, atomic_write_text, locked_folder, read_json_file


@dataclass(frozen=True)
class Experiment:
    """One part of the report: its key (folder name), paper, title, and the function of its
    experiment module that runs it and returns its section."""

    key: str
    paper: str
    title: str
    run: Callable[[Path, bool], Section]
    timed: bool = True  # measures time: never run beside another part (``--ray`` keeps it serial)


EXPERIMENTS = (
    Experiment(
        "tracker_accuracy",
        "A",
        "Tracking accuracy per executor (Table 3) and the trained tiny tracker",
        tracker_accuracy.section,
        timed=False,
    ),
    Experiment(
        "tracker_speed",
        "A",
        "Executors: encoder time, FPS, stage breakdown (Table 1, Fig. 10–12)",
        tracker_executors.section,
    ),
    Experiment("tucker_macs", "B", "Tucker-2 MAC reduction", tucker.macs_section, timed=False),
    Experiment(
        "tucker_accuracy",
        "B",
        "Accuracy before / after Tucker-2 and fine-tuning",
        tucker.accuracy_section,
        timed=False,
    ),
    Experiment(
        "multidnn",
        "B",
        "Many models at once: Ori.(MP), Dcomp.(MP), Dcomp.(MT) (Fig. 5–6)",
        multidnn.section,
    ),
    Experiment(
        "vit_accuracy",
        "C",
        "Sparse only vs sparse + pruning accuracy (Table 1)",
        vit.accuracy_section,
        timed=False,
    ),
    Experiment(
        "vit_breakdown", "C", "FLOPs vs CPU time by layer type (Fig. 1)", vit.breakdown_section
    ),
    Experiment(
        "vit_speed", "C", "Speedup of pruning: simulator and CPU wall clock", vit.speed_section
    ),
)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    key: str
    status: str  # "done", "skipped" (finished earlier), "failed"
    seconds: float = 0.0
    error: str = ""


def _environment() -> dict[str, Any]:
    return {
        "headway": version("headway"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _check_folder(out: Path) -> None:
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            stored = read_json_file(manifest, "reproduce manifest").get("headway")
        except InputError as error:
            raise InputError(f"{error}: not a headway reproduce manifest") from None
        if stored != version("headway"):
            raise InputError(
                f"{out} holds a report from headway {stored} (this is {version('headway')}); "
                "choose another folder or delete it"
            )
    elif out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise InputError(f"{out} is not empty and holds no headway report; choose another folder")


def reproduce(
    out: str | Path,
    quick: bool = False,
    only: list[str] | None = None,
    on_start: Callable[[Experiment, int, int], None] | None = None,
    on_end: Callable[[Outcome], None] | None = None,
    experiments: tuple[Experiment, ...] = EXPERIMENTS,
    ray_address: str | None = None,
    use_ray: bool = False,
) -> tuple[Path, list[Outcome]]:
    """Run the experiments (all, or ``only`` these keys) and write ``out/report.md``.

    With ``use_ray`` the parts that time nothing run first, in parallel as Ray tasks (a local
    instance, or the cluster at ``ray_address``; the output folder must be reachable from the
    workers, as on one machine or a shared filesystem); the timing parts then run one after
    another on this process, alone, so no part's timing shares the machine with another."""
    out = Path(out)
    known = {e.key for e in experiments}
    unknown = sorted(set(only or []) - known)
    if unknown:
        raise InputError(f"unknown experiments {unknown}: choose from {', '.join(sorted(known))}")
    _check_folder(out)
    with locked_folder(out):
        atomic_write_text(out / "manifest.json", json.dumps(_environment(), indent=2))
        if use_ray or ray_address is not None:
            return _run_with_ray(out, quick, only, on_start, on_end, experiments, ray_address)
        return _run(out, quick, only, on_start, on_end, experiments)


def _run_one(experiment: Experiment, folder: Path, quick: bool) -> Outcome:
    """Run one part, writing its section (or its traceback) into ``folder``."""
    mode = "quick" if quick else "full"
    done, failure = folder / f"{mode}.json", folder / f"{mode}.error.txt"
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        section = experiment.run(folder, quick)
        section["seconds"] = time.perf_counter() - began
        atomic_write_text(done, json.dumps(section, indent=2, default=str))
        failure.unlink(missing_ok=True)
        return Outcome(experiment.key, "done", section["seconds"])
    except Exception as error:
        atomic_write_text(failure, "".join(traceback.format_exception(error)))
        return Outcome(
            experiment.key,
            "failed",
            time.perf_counter() - began,
            f"{type(error).__name__}: {error}",
        )


def _ray_part(experiment: Experiment, folder: Path, quick: bool) -> Outcome:
    """A Ray task: one untimed part on one CPU."""
    torch.set_num_threads(1)
    return _run_one(experiment, folder, quick)


def _run_with_ray(
    out: Path,
    quick: bool,
    only: list[str] | None,
    on_start: Callable[[Experiment, int, int], None] | None,
    on_end: Callable[[Outcome], None] | None,
    experiments: tuple[Experiment, ...],
    address: str | None,
) -> tuple[Path, list[Outcome]]:
    from headway.tracking.cluster import plain_ray_message, ray_session

    mode = "quick" if quick else "full"
    chosen = [e for e in experiments if not only or e.key in only]
    parallel = [e for e in chosen if not e.timed and not (out / e.key / f"{mode}.json").is_file()]
    outcomes: dict[str, Outcome] = {}
    # connected even when every part left is timed (and so runs here, alone): an address
    # given is checked, never silently ignored
    if parallel or address is not None:
        with ray_session(address) as ray:
            task = ray.remote(num_cpus=1)(_ray_part)
            refs = {task.remote(e, out / e.key, quick): e for e in parallel}
            for index, experiment in enumerate(parallel):
                if on_start is not None:
                    on_start(experiment, index, len(chosen))
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                experiment = refs.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except ray.exceptions.RayError as error:
                    outcome = Outcome(experiment.key, "failed", error=plain_ray_message(error))
                outcomes[experiment.key] = outcome
                if on_end is not None:
                    on_end(outcome)
    rest = tuple(e for e in chosen if e.key not in outcomes)
    _, serial = _run(out, quick, [e.key for e in rest], on_start, on_end, rest)
    outcomes.update({o.key: o for o in serial})
    atomic_write_text(
        out / f"ray.{mode}.json",
        json.dumps({"parallel_on_ray": [e.key for e in parallel]}, indent=2),
    )
    return write_report(out, mode, chosen), [outcomes[e.key] for e in chosen]


def _run(
    out: Path,
    quick: bool,
    only: list[str] | None,
    on_start: Callable[[Experiment, int, int], None] | None,
    on_end: Callable[[Outcome], None] | None,
    experiments: tuple[Experiment, ...],
) -> tuple[Path, list[Outcome]]:
    mode = "quick" if quick else "full"
    chosen = [e for e in experiments if not only or e.key in only]
    outcomes = []
    for index, experiment in enumerate(chosen):
        folder = out / experiment.key
        done = folder / f"{mode}.json"
        if on_start is not None:
            on_start(experiment, index, len(chosen))
        if done.is_file():
            outcome = Outcome(experiment.key, "skipped")
        else:
            outcome = _run_one(experiment, folder, quick)
        outcomes.append(outcome)
        if on_end is not None:
            on_end(outcome)
    return write_report(out, mode, chosen), outcomes


def write_report(
    out: Path, mode: str, experiments: list[Experiment] | tuple[Experiment, ...] = EXPERIMENTS
) -> Path:
    """Assemble ``report.md`` from the finished experiments' JSON (and the failures)."""
    env = read_json_file(out / "manifest.json", "reproduce manifest")
    command = "headway reproduce " + ("--quick " if mode == "quick" else "") + str(out)
    lines = [
        f"# headway reproduce ({mode})",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "Paper A: head-parallel CSWinTT. Paper B: Tucker-2 + multi-DNN runtime. Paper C: DeiT "
        "sparse attention + token pruning (see the repository's docs/ for the method notes).",
    ]
    ray_record = out / f"ray.{mode}.json"
    if ray_record.is_file():
        parallel = read_json_file(ray_record, "Ray record").get("parallel_on_ray", [])
        if parallel:
            lines += [
                "",
                f"Run with `--ray`: {', '.join(parallel)} ran in parallel as Ray tasks (one CPU "
                "each); every part that measures time ran afterwards, alone, one after another.",
            ]
    total = 0.0
    for experiment in experiments:
        folder = out / experiment.key
        lines += ["", f"## Paper {experiment.paper}: {experiment.title}", ""]
        done, failure = folder / f"{mode}.json", folder / f"{mode}.error.txt"
        if done.is_file():
            section = read_json_file(done, "finished part")
            total += section.get("seconds", 0.0)
            lines.append(section["markdown"])
            for plot in section.get("plots", []):
                lines += ["", f"![{Path(plot).stem}]({plot})"]
            lines += [
                "",
                "Equivalent commands: "
                + "; ".join(f"`{c}`" for c in section.get("commands", []))
                + f". Took {section.get('seconds', 0):.0f} s; "
                f"raw data: `{experiment.key}/{mode}.json`.",
            ]
        elif failure.is_file():
            last = failure.read_text(errors="replace").strip().splitlines()[-1]
            lines.append(f"**Failed:** `{last}` (traceback in `{experiment.key}/{failure.name}`).")
        else:
            lines.append("Not run.")
    lines += ["", f"Total experiment time: {total / 60:.1f} min."]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
