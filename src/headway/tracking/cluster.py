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

import contextlib
import dataclasses
import os
import re
import socket
import time
from collections.abc import Iterator
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
    TrackerRecipe,
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


ADDRESS_FORMS = "auto, HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT (Ray client)"
CONNECT_TIMEOUT_S = 10.0
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def check_ray_address(address: str) -> str:
    """``address`` if it has one of Ray's forms, else one line naming them; ``ray://`` also
    needs the Ray client (grpcio), named with its install command when missing."""
    if address == "auto":
        return address
    rest = address.removeprefix("ray://")
    host, colon, port = rest.rpartition(":")
    if (
        not colon
        or not host
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
        or any(c.isspace() or c in "/@" for c in host)
    ):
        raise InputError(f"--ray-address {address!r}: expected {ADDRESS_FORMS}")
    if rest != address:
        try:
            import grpc  # noqa: F401 - the Ray client's transport
        except ImportError:
            raise InputError(
                f"--ray-address {address}: ray:// needs the Ray client, which is not installed "
                "(pip install 'ray[client]')"
            ) from None
    return address


def _reachable(address: str, timeout_s: float) -> None:
    """Refuse, within ``timeout_s``, an address where nothing listens (Ray itself retries a
    closed port for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__.replace("Error", " error").lower()
        raise InputError(
            f"cannot reach the Ray cluster at {address} ({reason} within {timeout_s:.0f} s); "
            "is `ray start --head` running there?"
        ) from None


def plain_ray_message(error: BaseException) -> str:
    """Ray's message for ``error`` on one line: colour codes removed, the cause kept (the last
    meaningful line of a remote traceback, which names what went wrong)."""
    lines = [_ESCAPES.sub("", ln).strip() for ln in str(error).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("File ", "Traceback", "^", "~"))]
    if not lines:
        return type(error).__name__
    cause = next(
        (ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]+(Error|Exception)", ln)), ""
    )
    return lines[0] if not cause or cause == lines[0] else f"{lines[0]} … {cause}"


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected for the block: to the cluster at ``address`` (checked, reached within
    ``CONNECT_TIMEOUT_S``), or to a new local instance with ``cpus`` CPUs (even where a
    ``ray start`` cluster runs on this machine); an instance started here is shut down after.
    Connection failures are one line without colour codes."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        _reachable(check_ray_address(address), CONNECT_TIMEOUT_S)
        options: dict[str, Any] = {"address": address}
    else:
        options = {
            "address": "local",
            "num_cpus": cpus or os.cpu_count(),
            "include_dashboard": False,
        }
    try:
        ray.init(log_to_driver=False, **options)
    except Exception as error:  # ConnectionError, RuntimeError, ValueError… by Ray version
        where = address or "a local Ray instance"
        raise InputError(f"cannot start Ray on {where}: {plain_ray_message(error)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class _Worker:
    """The actor body: one tracker, many sequences."""

    def __init__(self, recipe: TrackerRecipe) -> None:
        torch.set_num_threads(recipe.threads)
        self.tracker = recipe.tracker()

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
    show_progress: bool = True,
    unloadable: dict[str, str] | None = None,
    max_retries: int = 2,
) -> TrackRunSummary:
    """:func:`~headway.tracking.runner.track_dataset` with the sequences tracked by Ray actors.

    ``address`` connects to a running cluster (``auto`` or ``ray://host:10001``); without it a
    local instance with ``workers`` CPUs (default: all) is started. One actor per CPU (or
    ``workers``), each with ``recipe.threads`` torch threads."""
    require_ray()
    run_dir = Path(run_dir)
    # workers may run in another folder (``ray start`` ran there): they get absolute paths
    sequences = [
        dataclasses.replace(s, frames=[Path(f).absolute() for f in s.frames]) for s in sequences
    ]
    if recipe.checkpoint is not None:
        recipe = dataclasses.replace(recipe, checkpoint=str(Path(recipe.checkpoint).absolute()))
    settings = {**(info or {}), "format": dataset_format, "threads": recipe.threads}
    settings["device"] = recipe.device
    check_result_names(run_dir, [s.name for s in sequences])
    with locked_folder(run_dir):
        start_run_record(run_dir, settings, sequences)
        with ray_session(address, workers) as ray:
            summary = _track_on_ray(
                ray, recipe, sequences, run_dir, dataset_format, workers, max_retries, show_progress
            )
        summary.failed = {**(unloadable or {}), **summary.failed}
        record_entries(run_dir / "run.json", {"problems": summary.failed})
        return summary


PLACE_TIMEOUT_S = 120.0


def _replace_worker(ray: Any, dead: Any, actor_class: Any, recipe: TrackerRecipe) -> Any | None:
    """A fresh worker in place of one that kept dying (the dead one is killed first, so its
    CPU is free), or None when the new one cannot start (it fails to build its tracker, or no
    node can place it within ``PLACE_TIMEOUT_S``)."""
    ray.kill(dead, no_restart=True)
    actor = actor_class.remote(recipe)
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=PLACE_TIMEOUT_S)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        ray.kill(actor, no_restart=True)
        return None
    return actor


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
    # never more actors than the instance can place (an unplaced actor would hold its sequence):
    # by CPUs, and by GPUs too where each worker reserves one
    free = ray.available_resources()
    gpus = 1 if recipe.device.startswith("cuda") else 0
    placeable = int(free.get("CPU", 0)) // recipe.threads
    if gpus:
        placeable = min(placeable, int(free.get("GPU", 0)))
    if placeable < 1:
        need = f"{recipe.threads} CPU(s)" + (" and a GPU" if gpus else "")
        raise InputError(f"the Ray cluster has no room for a worker ({need}); it has {free}")
    count = max(1, min(len(todo), workers or placeable, placeable))
    actor_class = ray.remote(
        num_cpus=recipe.threads,
        num_gpus=gpus,
        max_restarts=max_retries,
        max_task_retries=max_retries,
    )(_Worker)
    actors = [actor_class.remote(recipe) for _ in range(count)]
    pending = list(todo)
    in_flight: dict[Any, tuple[Any, Sequence]] = {}

    def submit(actor: Any) -> None:
        if pending:
            sequence = pending.pop(0)
            in_flight[actor.track.remote(sequence)] = (actor, sequence)

    live = len(actors)
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
                message = plain_ray_message(error)
                failed[sequence.name] = f"worker failed after {max_retries} retries: {message}"
                actor = _replace_worker(ray, actor, actor_class, recipe)
                if actor is None:  # none can take its place: the others go on without it
                    live -= 1
                if live == 0:  # no worker left: the run ends, every sequence left with the cause
                    cause = failed[sequence.name]
                    failed.update({s.name: f"not tracked: {cause}" for s in pending})
                    progress.advance(bar, len(pending))
                    pending.clear()
            else:
                if status == "ok":
                    boxes, times, stages, updates = payload
                    result = SequenceResult(np.asarray(boxes), np.asarray(times), stages, updates)
                    write_sequence_result(run_dir, sequence.name, result, dataset_format)
                    tracked.append(sequence.name)
                else:
                    failed[sequence.name] = payload
            progress.advance(bar)
            if actor is not None:
                submit(actor)
    return TrackRunSummary(tracked, skipped, time.perf_counter() - began, failed)
