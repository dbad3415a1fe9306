"""The floor above the two tracker hosts: picks the Python tracker or the C++ runner for an
executor name, so neither host imports the other (the table in
:mod:`headway.tracking.executors` says which host runs what)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from headway.errors import InputError
from headway.models.cswintt import CSWinTT
from headway.tracking.datasets import Sequence
from headway.tracking.executors import Executor, ExecutorSpec, check_spec, resolve_executor
from headway.tracking.results import SequenceResult
from headway.tracking.settings import TrackerSettings
from headway.tracking.tracker import CSWinTTTracker


class Tracker(Protocol):
    """What both hosts are: the Python :class:`CSWinTTTracker` and the C++ runner's
    :class:`~headway.tracking.native.runner.NativeTracker`, called with the same arguments."""

    def run_frames(
        self,
        frames: Seq[str | Path],
        init_box: Seq[float],
        on_frame: Callable[[int], None] | None = None,
        name: str = "sequence",
        images: Seq[np.ndarray] | None = None,
    ) -> SequenceResult: ...

    def run_sequence(
        self, sequence: Sequence, on_frame: Callable[[int], None] | None = None
    ) -> SequenceResult: ...

    def encoder(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


def check_tracker_executor(name: str, device: torch.device | str) -> tuple[str, ExecutorSpec]:
    """The table's short name and spec for ``name``, or one line for an unknown executor, an
    unsupported combination, a CUDA-only one on the CPU, an engine that is not installed, or a
    C++ executor whose runner is not built."""
    short, spec = resolve_executor(name)
    check_spec(spec, device, name)
    if spec.host == "cpp":
        from headway.tracking.native.build import require_runner

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"executor {name!r} on {device}: this torch has no CUDA device")
        require_runner()
    return short, spec


def build_tracker(
    network: CSWinTT,
    settings: TrackerSettings | None = None,
    device: torch.device | str = "cpu",
    executor: str = "eager",
) -> Tracker:
    """The tracker for ``executor``: :class:`CSWinTTTracker` for the Python host, the C++
    runner's :class:`~headway.tracking.native.runner.NativeTracker` for ``cpp``/``aoti``
    backends; both are a :class:`Tracker`. The name is resolved and checked once, here; the
    host gets the spec."""
    short, spec = check_tracker_executor(executor, device)
    if spec.host == "cpp":
        from headway.tracking.native.runner import NativeTracker

        return NativeTracker(network, settings, device, short)
    return CSWinTTTracker(Executor(network, device, spec, short), settings)


def run_pass(
    tracker: Tracker,
    images: Seq[np.ndarray],
    paths: Seq[Path],
    init_box: Seq[float],
    on_frame: Callable[[int], None] | None = None,
) -> SequenceResult:
    """One pass of either host over the same frames (the first initialises on ``init_box``):
    the Python tracker is handed the decoded ``images``, the C++ runner reads ``paths`` itself
    (its read times are in the result's ``read_ms``)."""
    return tracker.run_frames(list(paths)[: len(images)], init_box, on_frame, images=images)


def tracked_ms(result: SequenceResult, first: int = 1) -> np.ndarray:
    """Milliseconds of frames ``first`` … of a pass, reading image files left out (what a
    Python tracker handed decoded images spends)."""
    read = result.read_ms if result.read_ms is not None else np.zeros(len(result.frame_times))
    return result.frame_times[first:] * 1e3 - read[first:]
