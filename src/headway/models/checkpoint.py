"""Loading released weights strictly, with an error that says exactly what does not fit.

Accepted layouts: a bare state_dict (the official CSWinTT release), a training checkpoint that
keeps it under ``net`` (CSWinTT/STARK trainers), ``model`` (DeiT/timm) or ``state_dict``; a
``module.`` prefix left by DataParallel is removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headway.errors import InputError
from headway.io import read_torch_file

WRAPPER_KEYS = ("net", "model", "state_dict")


class CheckpointMismatchError(InputError):
    """The checkpoint's keys or shapes do not match the model; the message lists them."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.wrong_shape = wrong_shape
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_preview(unexpected)}")
        if wrong_shape:
            shapes = [f"{k} (checkpoint {list(c)}, model {list(m)})" for k, c, m in wrong_shape]
            parts.append(f"{len(wrong_shape)} with wrong shape: {_preview(shapes)}")
        super().__init__(f"checkpoint {source} does not match the model: " + "; ".join(parts))


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a checkpoint object and strip a ``module.`` prefix."""
    state = checkpoint
    for key in WRAPPER_KEYS:
        inner = state.get(key) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping):
            state = inner
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise InputError("checkpoint holds no state_dict (expected a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (weights only, never arbitrary pickled code)."""
    return extract_state_dict(read_torch_file(path, "checkpoint"))


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "<state_dict>"
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly the model's keys and
    shapes. ``num_batches_tracked`` is tolerated both ways, as torch's strict loading does:
    absent from the checkpoint (batch norms keep their counter) or present for a frozen batch
    norm that has none."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    wrong_shape = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(source, missing, unexpected, wrong_shape)


def check_finite(state: Mapping[str, Any], source: str) -> None:
    """Refuse weights holding NaN or infinity: a model loaded with them answers with garbage
    on every input (a tracker's boxes collapse to a constant) and nothing else says why."""
    bad = [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InputError(
            f"{source}: weights are not finite (NaN or infinity) in {', '.join(bad[:3])}{more}"
        )


def load_weights(
    model: nn.Module,
    checkpoint: str | Path | Mapping[str, Any],
    strict: bool = True,
) -> nn.Module:
    """Load a checkpoint (path or object) into ``model``; strict by default.

    With ``strict=False`` only the keys whose names and shapes fit are loaded; the rest is
    reported through the returned model's untouched values (use strict unless you know why).
    """
    if isinstance(checkpoint, (str, Path)):
        source = str(checkpoint)
        state = read_checkpoint(checkpoint)
    else:
        source = "<state_dict>"
        state = extract_state_dict(checkpoint)
    check_finite(state, source)
    if strict:
        check_state_dict(model, state, source)
        model.load_state_dict(state, strict=True)
    else:
        expected = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
        model.load_state_dict(fitting, strict=False)
    return model
