"""Weights shipped inside the package: the trained tiny CSWinTT (``headway/weights/``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from headway.errors import InputError
from headway.models.checkpoint import load_weights
from headway.models.cswintt import CSWinTT, build_cswintt
from headway.models.registry import model_card


def builtin_weights_path(name: str = "cswintt_tiny") -> Path:
    """Path of the weights shipped for the registry model ``name`` (today: the trained tiny
    tracker); a clear error if none ship or the file is missing."""
    card = model_card(name)
    if card.weights is None:
        raise InputError(f"no weights ship with headway for {name}")
    path = Path(str(resources.files("headway") / "weights" / card.weights))
    if not path.is_file():
        raise InputError(
            f"{path}: the trained tiny-tracker weights are missing (reinstall headway, or train "
            "them with `headway train tracker` and pass --checkpoint)"
        )
    return path


def load_tracker_network(
    checkpoint: str | Path | None = None, seed: int = 0, config: str = "tiny"
) -> CSWinTT:
    """CSWinTT ``config`` in eval mode, with the weights of ``checkpoint``: a file (a ``Path``
    is always one), None for the built-in tiny-tracker weights, or ``"random"`` for the random
    initialisation of ``seed`` (the global random state is left as it was). The one way
    ``track``, ``export``, the Ray worker and the experiments build the tracker network."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = build_cswintt(config)
    if isinstance(checkpoint, Path) or checkpoint != "random":
        load_weights(network, checkpoint if checkpoint is not None else builtin_weights_path())
    return network.eval()
