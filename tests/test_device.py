"""Device selection, stage timing and the allocator setting."""

from __future__ import annotations

import time

import pytest
import torch

from headway.errors import InputError
from headway.runtime.device import StageTimer, keep_freed_memory, resolve_device


def test_stage_timer_adds_repeated_stages_and_resets() -> None:
    timer = StageTimer("cpu")
    for _ in range(2):
        with timer.stage("encoder"):
            time.sleep(0.01)
    with timer.stage("load", host=True):
        pass
    times = timer.finish_frame()
    assert times["encoder"] >= 20.0
    assert set(times) == {"encoder", "load"}
    assert timer.finish_frame() == {}


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match=r"unknown device|unsupported device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_keep_freed_memory_is_harmless() -> None:
    assert keep_freed_memory() in (True, False)
    x = torch.randn(1024, 1024)
    assert torch.isfinite(x @ x).all()
