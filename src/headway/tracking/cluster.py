"""Tracking a dataset on a Ray cluster (``headway track --ray``), or on a local Ray instance.

Each worker is a Ray actor that builds one tracker (network, weights, executor) once and then
tracks whole sequences; sequences are handed out longest first, one at a time per actor.
Results travel back to the driver, which writes them atomically into the run folder exactly
as a local run does — so the run folder needs no shared storage, and a rerun skips finished
sequences. The dataset's frames must be readable at the same path on every node (a shared
filesystem, or a copy at the same path). A worker that dies costs only its sequence: Ray
restarts the actor and retries the task (``max_retries``); a sequence that still fails, or
whose frames are unreadable, is reported by name (run.json ``problems``) while the rest go on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from headway.errors import InputError
from headway.io import locked_folder
from headway.tracking.datasets import Sequence
from headway.tracking.results import SequenceResult, is_complete, write_sequence_result
from headway.tracking.runner import (
    TrackRunSummary,
    check_result_names,
    record_entries,
    start_run_record,
)

RAY_HINT = "pip install 'headway[cluster]'"
# Fault injection for tests: "<sequence>:<marker file>" makes a worker process exit the first
# time it starts that sequence (the marker records that it did), as a crashed node would.
CRASH_ONCE_ENV = "HEADWAY_TEST_CRASH_ONCE"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed ({RAY_HINT})") from None
    return ray


@dataclass(frozen=True)
class TrackerRecipe:
    """How a worker builds its tracker (picklable: names and paths, no tensors)."""

    config: str = "default"
    checkpoint: str | None = None
    seed: int = 0
    executor: str = "eager"
    update_interval: int = 200
    threads: int = 1
    device: str = "cpu"


class _Worker:
    """The actor body: one tracker, many sequences."""

    def __init__(self, recipe: TrackerRecipe) -> None:
        from headway.models import build_cswintt, load_weights
        from headway.tracking.backends import build_tracker
        from headway.tracking.settings import TrackerSettings

        torch.set_num_threads(recipe.threads)
        with torch.random.fork_rng():
            torch.manual_seed(recipe.seed)
            network = build_cswintt(recipe.config)
        if recipe.checkpoint is not None:
            load_weights(network, recipe.checkpoint)
        settings = TrackerSettings(update_interval=recipe.update_interval)
        self.tracker = build_tracker(network, settings, recipe.device, recipe.executor)

    def track(self, sequence: Sequence) -> tuple[str, Any]:
        """("ok", result fields) or ("error", message) for unreadable input (not retried)."""
        crash = os.environ.get(CRASH_ONCE_ENV, "")
        if crash.startswith(f"{sequence.name}:"):
            marker = Path(crash.split(":", 1)[1])
            if not marker.exists():
                marker.write_text("crashed once\n")
                os._exit(1)
        try:
            result = self.tracker.run_sequence(sequence)
        except InputError as error:
            return "error", str(error)
        return "ok", (result.boxes, result.frame_times, result.stage_times, result.template_updates)


def track_dataset_ray(
    recipe: TrackerRecipe,
    sequences: list[Sequence],
    run_dir: str | Path,
    dataset_format: str,
    info: dict[str, object] | None = None,
    address: str | None = None,
    workers: int | None = None,
    max_retries: int = 2,
    show_progress: bool = True,
    unloadable: dict[str, str] | None = None,
) -> TrackRunSummary:
    """:func:`~headway.tracking.runner.track_dataset` with the sequences tracked by Ray actors.

    ``address`` connects to a running cluster (``auto`` or ``ray://host:10001``); without it a
    local instance with ``workers`` CPUs (default: all) is started. One actor per CPU (or
    ``workers``), each with ``recipe.threads`` torch threads."""
    ray = require_ray()
    run_dir = Path(run_dir)
    settings = {**(info or {}), "format": dataset_format, "threads": recipe.threads}
    settings["device"] = recipe.device
    check_result_names(run_dir, [s.name for s in sequences])
    with locked_folder(run_dir):
        start_run_record(run_dir, settings, sequences)
        started_here = not ray.is_initialized()
        if started_here:
            if address is not None:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False,
                         log_to_driver=False)  # fmt: skip
        try:
            summary = _track_on_ray(
                ray, recipe, sequences, run_dir, dataset_format, workers, max_retries, show_progress
            )
        finally:
            if started_here:
                ray.shutdown()
        summary.failed = {**(unloadable or {}), **summary.failed}
        record_entries(run_dir / "run.json", {"problems": summary.failed})
        return summary


def _track_on_ray(
    ray: Any,
    recipe: TrackerRecipe,
    sequences: list[Sequence],
    run_dir: Path,
    dataset_format: str,
    workers: int | None,
    max_retries: int,
    show_progress: bool,
) -> TrackRunSummary:
    todo = sorted(
        (s for s in sequences if not is_complete(run_dir, s.name, len(s))), key=len, reverse=True
    )
    skipped = [s.name for s in sequences if is_complete(run_dir, s.name, len(s))]
    tracked: list[str] = []
    failed: dict[str, str] = {}
    began = time.perf_counter()
    if not todo:
        return TrackRunSummary(tracked, skipped, 0.0, failed)
    # never more actors than the instance can place (an unplaced actor would hold its sequence)
    placeable = max(1, int(ray.available_resources().get("CPU", 1)) // recipe.threads)
    count = max(1, min(len(todo), workers or placeable, placeable))
    gpus = 1 if recipe.device.startswith("cuda") else 0  # a GPU worker reserves one GPU
    actor_class = ray.remote(num_cpus=recipe.threads, num_gpus=gpus, max_restarts=max_retries,
                             max_task_retries=max_retries)(_Worker)  # fmt: skip
    actors = [actor_class.remote(recipe) for _ in range(count)]
    pending = list(todo)
    in_flight: dict[Any, tuple[Any, Sequence]] = {}

    def submit(actor: Any) -> None:
        if pending:
            sequence = pending.pop(0)
            in_flight[actor.track.remote(sequence)] = (actor, sequence)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        bar = progress.add_task(f"sequences on {count} Ray workers", total=len(todo))
        for actor in actors:
            submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, sequence = in_flight.pop(ready[0])
            try:
                status, payload = ray.get(ready[0])
            except ray.exceptions.RayError as error:  # the worker kept dying: report, go on
                message = str(error).strip().splitlines()[0] if str(error) else type(error).__name__
                failed[sequence.name] = f"worker failed after {max_retries} retries: {message}"
                actor = actor_class.remote(recipe)  # a fresh worker takes its place
            else:
                if status == "ok":
                    boxes, times, stages, updates = payload
                    result = SequenceResult(np.asarray(boxes), np.asarray(times), stages, updates)
                    write_sequence_result(run_dir, sequence.name, result, dataset_format)
                    tracked.append(sequence.name)
                else:
                    failed[sequence.name] = payload
            progress.advance(bar)
            submit(actor)
    return TrackRunSummary(tracked, skipped, time.perf_counter() - began, failed)
