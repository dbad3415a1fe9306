"""Device selection and per-stage timing.

On CUDA a stage is timed with events recorded on the current stream and read once per frame, so
timing adds no synchronisation inside the frame; on CPU wall-clock ``perf_counter`` is used.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from headway.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"unknown device {name!r}: use cpu or cuda") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}: use cpu or cuda")
    return device


class StageTimer:
    """Accumulates the time of named stages within one frame; ``finish_frame`` returns them in
    milliseconds. Stages may repeat within a frame (their times add up)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._cpu: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def stage(self, name: str, host: bool = False) -> Iterator[None]:
        """Time the block. ``host=True`` marks CPU-side work (image decoding), always timed with
        the wall clock."""
        if self.device.type == "cuda" and not host:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            began = time.perf_counter()
            yield
            self._cpu[name] = self._cpu.get(name, 0.0) + (time.perf_counter() - began) * 1e3

    def finish_frame(self) -> dict[str, float]:
        """Per-stage milliseconds of the frame just run; resets for the next frame."""
        times = dict(self._cpu)
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                times[name] = times.get(name, 0.0) + start.elapsed_time(end)
        self._cpu.clear()
        self._events.clear()
        return times


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system.

    Tensors of a few MB are otherwise served by fresh ``mmap`` pages on every call, and the
    page faults that zero them cost milliseconds per frame (measured: the fused encoder took
    100 ms in a loop and 120–216 ms inside the tracker without this, 115 ms with it).
    Process-wide and harmless; a no-op (returning False) where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(
            libc.mallopt(option, value) == 1
            for option, value in (
                (_M_MMAP_THRESHOLD, 32 * 1024 * 1024),
                (_M_TRIM_THRESHOLD, 1 << 30),
                (_M_TOP_PAD, 64 * 1024 * 1024),
            )
        )
    except (OSError, AttributeError):
        return False
