"""Token pruning by attention received (the source paper's section on pruning).

A token's importance is the attention it receives, summed over queries and heads; each layer
from ``first_pruned`` on runs without a share of the least important patch tokens (scored by
the previous layer's attention; the class token is never dropped) and a dropped token stays
dropped. The share rises exponentially from ``start`` to ``end`` across the pruned layers, so
layers 1–3 run on all tokens, layer 4 on 90% of them and layer 12 on 10% for 0.1 → 0.9 (the
worked example of the spec: mean keep 0.714). Every value of the schedule takes effect.

The share's meaning, pinned down: ``of="original"`` (default) means layer l keeps
(1 − r_l) of the *original* patch tokens — the schedule states directly how many survive and
the counts never increase; ``of="remaining"`` drops r_l of the tokens *still present*, which
compounds (0.1 → 0.9 over nine layers would keep ≈0.3% of 196 patches, less than one token,
which is reported as an error). Both are offered; counts round down.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from headway.errors import InputError


def pruning_ratios(depth: int, start: float, end: float, first_pruned: int = 3) -> list[float]:
    """Per layer pruning share: 0 before ``first_pruned``, then geometric from start to end."""
    if first_pruned < 1:
        raise InputError("the first layer cannot be pruned: no attention scores its tokens yet")
    if not (0 < start <= end < 1):
        raise InputError(f"pruning ratios must satisfy 0 < start ≤ end < 1, got {start}, {end}")
    pruned = depth - first_pruned
    if pruned < 1:
        raise InputError(f"no layer left to prune: depth {depth}, first pruned {first_pruned}")
    if pruned == 1:
        return [0.0] * first_pruned + [start]
    growth = (end / start) ** (1 / (pruned - 1))
    return [0.0] * first_pruned + [start * growth**i for i in range(pruned)]


def keep_counts(
    num_patches: int, ratios: list[float], of: str = "original", prefix: int = 1
) -> list[int]:
    """Tokens each layer runs on: floor((1 − r) · patches) + ``prefix`` (the class token and
    any distillation or register tokens, never pruned)."""
    if of not in ("original", "remaining"):
        raise InputError(f"of must be 'original' or 'remaining', got {of!r}")
    counts, present = [], num_patches
    for ratio in ratios:
        if of == "original":
            present = min(present, math.floor((1 - ratio) * num_patches))
        else:
            present = math.floor((1 - ratio) * present)
        if present < 1:
            raise InputError("the pruning schedule would leave no patch token")
        counts.append(present + prefix)
    return counts


class SparsePrunedDeiT(nn.Module):
    """A DeiT with its static attention masks and pruning schedule fixed: ``images →
    logits`` (and, with ``with_ids``, the ids of the tokens the last block ran on). This is
    the graph the engines get. The keep counts are fixed by the schedule, so every shape is
    static; only *which* tokens survive depends on the data (TopK picks them, Gather takes
    them), and the ONNX exporter and the engines run that as it is."""

    def __init__(
        self,
        model: nn.Module,
        masks: torch.Tensor | None = None,
        counts: list[int] | None = None,
        with_ids: bool = False,
    ) -> None:
        super().__init__()
        if counts is not None and min(counts) < 1:
            raise InputError(f"every block needs at least one token, got counts {counts}")
        self.model = model.eval()
        self.counts = None if counts is None else list(counts)
        self.with_ids = with_ids
        self.register_buffer("masks", masks, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feature, ids = self.model.forward_tokens(images, self.masks, self.counts, return_ids=True)
        logits = self.model.classify(feature)
        return (logits, ids) if self.with_ids else logits
