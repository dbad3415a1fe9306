"""The floor above the two tracker hosts: picks the Python tracker or the C++ runner for an
executor name, so neither host imports the other (the table in
:mod:`headway.tracking.executors` says which host runs what)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headway.errors import InputError
from headway.models.cswintt import CSWinTT
from headway.tracking.executors import check_executor, resolve_executor
from headway.tracking.settings import TrackerSettings
from headway.tracking.tracker import CSWinTTTracker

if TYPE_CHECKING:
    from headway.native.runner import NativeTracker


def check_tracker_executor(name: str, device: torch.device | str) -> None:
    """One line for an unknown executor, an unsupported combination, a CUDA-only one on the
    CPU, an engine that is not installed, or a C++ executor whose runner is not built."""
    spec = check_executor(name, device)
    if spec.host == "cpp":
        from headway.native.build import require_runner

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"executor {name!r} on {device}: this torch has no CUDA device")
        require_runner()


def build_tracker(
    network: CSWinTT,
    settings: TrackerSettings | None = None,
    device: torch.device | str = "cpu",
    executor: str = "eager",
) -> CSWinTTTracker | NativeTracker:
    """The tracker for ``executor``: :class:`CSWinTTTracker` for the Python host, the C++
    runner's :class:`~headway.native.runner.NativeTracker` for ``cpp``/``aoti`` backends. Both
    have ``run_frames``, ``run_sequence`` and ``close``."""
    check_tracker_executor(executor, device)
    short, spec = resolve_executor(executor)
    if spec.host == "cpp":
        from headway.native.runner import NativeTracker

        return NativeTracker(network, settings, device, short)
    return CSWinTTTracker(network, settings, device, short)
