"""Static sparse attention masks (ViTCoD): average attention maps over a dataset, then keep,
per query row, the largest entries until their cumulative mass reaches τ.

Masks are boolean (L, H, N, N) with **True = keep**. The class token's row and column are
always kept. Off-by-one, decided: headway keeps exactly the k entries whose sum first reaches
τ; ViTCoD's code keeps k + 1 (``extra=1`` reproduces it). A requested sparsity (fraction of
dropped entries) is reached by bisecting τ, globally or per head.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from headway.errors import InputError
from headway.models.deit import adopt_vit


@torch.no_grad()
def average_attention(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Mean post-softmax attention (L, H, N, N) over all images of ``batches``, accumulated in
    float64 one batch at a time (memory bounded by one map per layer). ``model`` is headway's
    DeiT or a timm-style ViT (read through :func:`~headway.models.deit.adopt_vit`)."""
    model = adopt_vit(model)
    config = model.config
    n = model.num_tokens
    total = torch.zeros(config.depth, config.num_heads, n, n, dtype=torch.float64)
    count = 0

    def accumulate(layer: int, probs: torch.Tensor) -> None:
        total[layer] += probs.sum(dim=0).double().cpu()

    was_training = model.training
    model.eval()
    for images in batches:
        model.forward_tokens(images, on_attention=accumulate)
        count += images.shape[0]
    model.train(was_training)
    if count == 0:
        raise InputError("no images to average attention over")
    return (total / count).float()


def threshold_masks(
    maps: torch.Tensor, tau: float | torch.Tensor, extra: int = 0, prefix: int = 1
) -> torch.Tensor:
    """Keep, per row, the fewest largest entries whose sum reaches ``tau`` (+ ``extra``).
    ``tau`` may be a scalar or one value per (layer, head) as a (L, H) tensor. The rows and
    columns of the ``prefix`` tokens (class, distillation, registers) are always kept; with
    none, the diagonal is."""
    values, order = maps.sort(dim=-1, descending=True)
    cumulative = values.cumsum(dim=-1)
    tau = torch.as_tensor(tau, dtype=maps.dtype)
    while tau.dim() < maps.dim():
        tau = tau.unsqueeze(-1)
    before = cumulative - values  # mass of the entries ranked above each one
    keep_sorted = before < tau - 1e-12  # kept until the running sum has reached tau
    if extra:
        counts = keep_sorted.sum(dim=-1, keepdim=True) + extra
        rank = torch.arange(maps.shape[-1]).expand_as(keep_sorted)
        keep_sorted = rank < counts
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    keep[..., :prefix, :] = True
    keep[..., :, :prefix] = True
    if prefix == 0:  # no token every query keeps: its own key, so pruning never empties a row
        keep |= torch.eye(keep.shape[-1], dtype=torch.bool)
    return keep


def additive_masks(masks: torch.Tensor) -> torch.Tensor:
    """Boolean keep-masks as float masks added to the attention scores (0 keep, −inf drop):
    converted once, they apply in one addition per layer instead of a negation and a fill."""
    if masks.dtype != torch.bool:
        raise InputError(f"expected boolean keep-masks, got {masks.dtype}")
    return torch.zeros(masks.shape).masked_fill_(~masks, float("-inf"))


def sparsity(masks: torch.Tensor) -> float:
    return 1.0 - masks.float().mean().item()


def masks_for_sparsity(
    maps: torch.Tensor, target: float, per_head: bool = False, extra: int = 0, prefix: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks whose fraction of dropped entries is as close as bisection gets to ``target``;
    returns (masks, τ) with τ a scalar or (L, H)."""
    if not 0 <= target < 1:
        raise InputError(f"sparsity must be in [0, 1), got {target}")
    shape = maps.shape[:2] if per_head else ()
    low, high = torch.zeros(shape), torch.ones(shape)
    for _ in range(40):
        middle = (low + high) / 2
        masks = threshold_masks(maps, middle, extra, prefix)
        dropped = (
            1 - masks.float().mean(dim=(-1, -2)) if per_head else torch.tensor(sparsity(masks))
        )
        too_sparse = dropped > target  # tau too small: raise it
        low = torch.where(too_sparse, middle, low)
        high = torch.where(too_sparse, high, middle)
    return threshold_masks(maps, high, extra, prefix), high
