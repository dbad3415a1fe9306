"""Running a tracker over a dataset (resumable, with progress) and summarising the results:
the per-stage time breakdown (the paper's Table 1) and the benchmark scores."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from headway.errors import InputError
from headway.io import (
    NAME_MAX,
    atomic_write_text,
    check_file_targets,
    check_settings,
    locked_folder,
    read_json_file,
    read_number_rows,
    record_settings,
    require_folder,
)
from headway.models.cswintt import CSWinTT
from headway.models.pretrained import load_tracker_network
from headway.tracking.backends import Tracker, build_tracker
from headway.tracking.datasets import Sequence
from headway.tracking.metrics import EvalResult, evaluate
from headway.tracking.results import (
    is_complete,
    read_boxes_file,
    read_stage_times,
    result_file_names,
    write_sequence_result,
)
from headway.tracking.settings import STAGES, TrackerSettings
from headway.tuning import TuningPlan


@dataclass(frozen=True)
class TrackerRecipe:
    """How to build a tracker: names and paths, no tensors (picklable, for Ray workers too).
    ``checkpoint`` None means the random weights of ``seed``."""

    config: str = "default"
    checkpoint: str | None = None
    seed: int = 0
    executor: str = "eager"
    update_interval: int = 200
    threads: int = 1
    device: str = "cpu"

    def network(self) -> CSWinTT:
        return load_tracker_network(self.checkpoint or "random", self.seed, self.config)

    def settings(self) -> TrackerSettings:
        return TrackerSettings(update_interval=self.update_interval)

    def tracker(self) -> Tracker:
        return build_tracker(self.network(), self.settings(), self.device, self.executor)


def track_with_recipe(
    recipe: TrackerRecipe,
    sequences: list[Sequence],
    run_dir: str | Path,
    dataset_format: str,
    info: dict[str, object],
    choose: Callable[[CSWinTT, TrackerSettings], tuple[TuningPlan, Tracker]] | None = None,
    announce: Callable[[str], None] | None = None,
    show_progress: bool = True,
    unloadable: dict[str, str] | None = None,
) -> TrackRunSummary:
    """:func:`track_dataset` in this process with the tracker ``recipe`` describes, or with the
    one ``choose`` picks for its network (``--executor auto``; its plan goes into run.json).
    ``announce`` is told what runs, once it is built."""
    network, settings = recipe.network(), recipe.settings()
    notes: dict[str, object] = {}
    if choose is not None:  # a rerun with other settings is refused before the tuning
        check_settings(
            Path(run_dir) / "run.json",
            run_settings(info, dataset_format, recipe.device),
            "tracking run",
        )
        plan, tracker = choose(network, settings)
        notes["auto"] = plan.to_json()
        running = f"{plan.chosen} (chosen by auto)"
    else:
        tracker = build_tracker(network, settings, recipe.device, recipe.executor)
        running = recipe.executor
    try:
        if announce is not None:
            announce(running)
        return track_dataset(
            tracker, sequences, run_dir, dataset_format, info, show_progress, unloadable, notes,
            chosen=plan.chosen if choose is not None else None,
        )  # fmt: skip
    finally:
        tracker.close()


@dataclass
class TrackRunSummary:
    """What a call of :func:`track_dataset` did: sequences tracked now, sequences already
    complete (skipped), and sequences that could not be loaded or tracked, with the reason."""

    tracked: list[str]
    skipped: list[str]
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)


def track_dataset(
    tracker: Tracker,
    sequences: list[Sequence],
    run_dir: str | Path,
    dataset_format: str,
    info: dict[str, object] | None = None,
    show_progress: bool = True,
    unloadable: dict[str, str] | None = None,
    notes: dict[str, object] | None = None,
    chosen: str | None = None,
) -> TrackRunSummary:
    """Track every sequence not yet complete in ``run_dir``; each finished sequence is written
    at once, so an interrupted run loses at most the sequence in progress.

    A sequence whose frames cannot be read is reported, not fatal: the others are tracked, and
    ``run.json`` lists it under ``problems`` with the reason, beside ``unloadable`` (sequences
    the reader already refused, name → reason). A rerun tries them again.

    The folder is one run: it is locked while this runs (a second process is refused), and
    ``run.json`` records the settings (``info``, format, threads, device) before any work; a
    rerun with other settings raises :class:`InputError` instead of mixing results.
    ``notes`` go into ``run.json`` beside the settings, never compared (e.g. how ``auto`` chose
    its executor). ``chosen`` (``auto``'s executor) is added to ``auto_runs`` with the
    sequences it tracked, so a run resumed under another choice says which tracked what.
    """
    run_dir = Path(run_dir)
    settings = run_settings(info, dataset_format, tracker.device)
    check_result_names(run_dir, [s.name for s in sequences])
    with locked_folder(run_dir):
        start_run_record(run_dir, settings, sequences)
        if notes:
            record_entries(run_dir / "run.json", notes)
        summary = _track_missing(tracker, sequences, run_dir, dataset_format, show_progress)
        summary.failed = {**(unloadable or {}), **summary.failed}
        entries: dict[str, object] = {"problems": summary.failed}
        if chosen is not None and summary.tracked:
            earlier = read_json_file(run_dir / "run.json", "run record").get("auto_runs", [])
            runs = earlier if isinstance(earlier, list) else []
            entries["auto_runs"] = [*runs, {"chosen": chosen, "sequences": summary.tracked}]
        record_entries(run_dir / "run.json", entries)
        return summary


def run_settings(
    info: dict[str, object] | None, dataset_format: str, device: object
) -> dict[str, object]:
    """What run.json compares on a rerun: ``info`` (config, weights, executor …), the format,
    torch's threads and the device."""
    return {
        **(info or {}),
        "format": dataset_format,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def check_result_names(run_dir: Path, names: list[str]) -> None:
    """Before any work: every result file the run will write has a name the file system takes,
    and no two sequences write the same file (``a``'s time file is ``a_time.txt``, which a
    sequence named ``a_time`` would overwrite with its boxes)."""
    owners: dict[str, str] = {}
    check_file_targets(run_dir, ["run.json", "metrics.json"])
    for name in names:
        check_file_targets(run_dir, result_file_names(name))
        for file_name in result_file_names(name):
            if len(os.fsencode(file_name)) > NAME_MAX:
                raise InputError(
                    f"sequence {name[:40]}…: its result file {file_name[:40]}… would be "
                    f"{len(os.fsencode(file_name))} bytes long; at most {NAME_MAX} per name"
                )
            other = owners.setdefault(file_name, name)
            if other != name:
                raise InputError(
                    f"sequences {other!r} and {name!r} would both write {run_dir / file_name}; "
                    "rename one of them or track them into different folders"
                )


def start_run_record(run_dir: Path, settings: dict[str, object], sequences: list[Sequence]) -> None:
    """``run.json``: the settings (compared on resume), and each sequence's frame count (what a
    complete result file holds; export-results checks the boxes against it)."""
    record_settings(run_dir / "run.json", settings, "tracking run", run_environment())
    frames = read_json_file(run_dir / "run.json", "run record").get("frames", {})
    frames.update({sequence.name: len(sequence) for sequence in sequences})
    record_entries(run_dir / "run.json", {"frames": frames})


def run_environment() -> dict[str, str]:
    """What run.json records beside the settings (not compared on resume)."""
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def record_entries(path: Path, entries: dict[str, object]) -> None:
    """Replace these entries of ``run.json`` (not settings: never compared), e.g. ``problems``."""
    record = read_json_file(path, "run record")
    record.update(json.loads(json.dumps(entries)))
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True))


def _track_missing(
    tracker: Tracker,
    sequences: list[Sequence],
    run_dir: Path,
    dataset_format: str,
    show_progress: bool,
) -> TrackRunSummary:
    todo = [s for s in sequences if not is_complete(run_dir, s.name, len(s))]
    todo_names = {s.name for s in todo}
    skipped = [s.name for s in sequences if s.name not in todo_names]
    tracked: list[str] = []
    failed: dict[str, str] = {}
    began = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        overall = progress.add_task("sequences", total=len(todo), fps="")
        frames_task = progress.add_task("frames", total=0, fps="")
        last_tick = time.perf_counter()

        def on_frame(index: int) -> None:
            nonlocal last_tick
            now = time.perf_counter()
            fps = 1.0 / max(now - last_tick, 1e-9)
            last_tick = now
            progress.update(frames_task, completed=index + 1, fps=f"{fps:5.1f} FPS")

        for sequence in todo:
            progress.reset(frames_task, total=len(sequence), description=sequence.name, fps="")
            last_tick = time.perf_counter()
            try:
                result = tracker.run_sequence(sequence, on_frame)
            except InputError as error:  # an unreadable frame: report it, track the others
                failed[sequence.name] = str(error)
            else:
                write_sequence_result(run_dir, sequence.name, result, dataset_format)
                tracked.append(sequence.name)
            progress.advance(overall)
    return TrackRunSummary(tracked, skipped, time.perf_counter() - began, failed)


@dataclass
class StageBreakdown:
    """Mean milliseconds per tracked frame for each stage, and the frame rate."""

    stage_ms: dict[str, float]
    frame_ms: float
    frames: int

    @property
    def fps(self) -> float:
        return 1000.0 / self.frame_ms if self.frame_ms else 0.0

    def shares(self) -> dict[str, float]:
        total = sum(self.stage_ms.values())
        return {k: (100 * v / total if total else 0.0) for k, v in self.stage_ms.items()}

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows: each stage's ms per frame and share, then the whole frame."""
        shares = self.shares()
        rows = [
            [stage, f"{ms:.2f}", f"{shares[stage]:.1f}%"] for stage, ms in self.stage_ms.items()
        ]
        rows.append(["[bold]frame (wall)", f"{self.frame_ms:.2f}", f"{self.fps:.2f} FPS"])
        return ["stage", "ms / frame", "share"], rows


def stage_breakdown(run_dir: str | Path, names: list[str]) -> StageBreakdown:
    """Average stage times over all tracked frames (the initialisation frame left out)."""
    run_dir = Path(run_dir)
    per_stage: dict[str, list[float]] = {name: [] for name in STAGES}
    frame_times: list[float] = []
    for name in names:
        record = read_stage_times(run_dir, name)
        if record is None:
            continue
        for stage in STAGES:
            per_stage[stage].extend(record["stage_ms"].get(stage, [])[1:])
        times = run_dir / f"{name}_time.txt"
        if times.exists():
            seconds = read_number_rows(times, 1, "time file", allow_nan=False)[1:, 0]
            frame_times.extend(float(v) * 1e3 for v in seconds)
    frames = len(frame_times)
    stage_ms = {k: float(np.mean(v)) if v else 0.0 for k, v in per_stage.items()}
    return StageBreakdown(stage_ms, float(np.mean(frame_times)) if frames else 0.0, frames)


def evaluate_run(
    run_dir: str | Path,
    sequences: list[Sequence],
    convention: str = "pytracking",
) -> EvalResult:
    """Score the result files in ``run_dir`` against the sequences' ground truth."""
    run_dir = Path(run_dir)
    require_folder(run_dir, "run folder")
    dataset = sequences[0].dataset if sequences else "otb"
    predictions = {s.name: read_boxes_file(run_dir / f"{s.name}.txt") for s in sequences}
    for sequence in sequences:
        rows, frames = len(predictions[sequence.name]), len(sequence)
        if rows != frames:
            raise InputError(
                f"{run_dir / (sequence.name + '.txt')}: {rows} boxes for a sequence of {frames} "
                "frames; was this run made on another dataset (or interrupted)?"
            )
    ground_truth = {s.name: s.ground_truth for s in sequences}
    visible = {s.name: s.target_visible for s in sequences}
    sizes = {s.name: s.image_size for s in sequences if s.image_size is not None}
    result = evaluate(predictions, ground_truth, visible, convention, dataset, sizes)
    atomic_write_text(run_dir / "metrics.json", json.dumps(result.to_json(), indent=2))
    return result
