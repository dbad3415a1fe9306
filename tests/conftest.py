"""Shared fixtures: deterministic seeds, a tiny synthetic dataset, CUDA skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from headway.tracking.synth import SynthSettings, synthesize

# The interleaved timer's pause between variants (50 ms) makes timings fair; the tests check
# no timings, so they run without it (commands run as subprocesses inherit this too).
os.environ.setdefault("HEADWAY_SETTLE_MS", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def torch_thread_count_is_kept() -> object:
    """A test that sets torch's thread count (an in-process CLI call with --threads, a Ray
    worker's set-up run locally) must not change the next test's numerics: restore it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short synthetic OTB-layout sequences, shared read-only by the tests."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, sequences=2, seed=7, settings=SynthSettings(frames=10))
    return root
