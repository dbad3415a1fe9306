"""Weights shipped inside the package: the trained tiny CSWinTT (``headway/weights/``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from headway.errors import InputError
from headway.models.checkpoint import load_weights
from headway.models.cswintt import CSWinTT, build_cswintt

WEIGHTS_FILE = "tiny_tracker.pth"


def builtin_weights_path() -> Path:
    """Path of the shipped tiny-tracker weights; a clear error if the file is missing."""
    path = Path(str(resources.files("headway") / "weights" / WEIGHTS_FILE))
    if not path.is_file():
        raise InputError(
            f"{path}: the trained tiny-tracker weights are missing (reinstall headway, or train "
            "them with `headway train tracker` and pass --checkpoint)"
        )
    return path


def load_tracker_network(checkpoint: str | Path | None = None, seed: int = 0) -> CSWinTT:
    """The tiny network with the built-in (or given) weights; ``checkpoint='random'`` gives the
    random-weight network of ``seed`` (the global random state is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = build_cswintt("tiny")
    if checkpoint != "random":
        load_weights(network, checkpoint or builtin_weights_path())
    return network.eval()
