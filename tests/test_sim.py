"""The cycle-level accelerator model: hand counts and scaling."""

from __future__ import annotations

import math

import pytest
import torch

from headway.errors import InputError
from headway.sim.vitcod import Accelerator, simulate_deit, simulate_layer, synthetic_masks
from headway.transforms.token_pruning import keep_counts, pruning_ratios


def test_dense_gemm_hand_count_and_vitcod_ffn_anchor() -> None:
    acc = Accelerator()
    assert acc.macs_per_cycle == 512
    assert acc.gemm(197, 192, 576) == math.ceil(197 * 192 * 576 / 512)
    keep = torch.ones(3, 197, 197, dtype=torch.bool)
    layer = simulate_layer(acc, 197, 192, 3, keep, None)
    assert layer.ffn == 113_472  # ViTCoD's bundled DeiT-Ti log: 113,472 FFN cycles per layer


def test_scaling_with_tokens_width_and_bandwidth() -> None:
    keep = synthetic_masks(1, 3, 129, 0.7)[0]
    small = simulate_layer(Accelerator(), 65, 192, 3, keep[:, :65, :65], None)
    large = simulate_layer(Accelerator(), 129, 192, 3, keep, None)
    assert large.ffn == pytest.approx(small.ffn * 129 / 65, rel=0.01)
    wide = simulate_layer(Accelerator(pe_width=128), 129, 192, 3, keep, None)
    assert wide.ffn == pytest.approx(large.ffn / 2, rel=0.01)
    slow = Accelerator(bandwidth_gib_s=1.0)
    assert Accelerator(bandwidth_gib_s=0.5).transfer(10_000) == pytest.approx(
        2 * slow.transfer(10_000), rel=0.01
    )
    memory_bound = simulate_layer(slow, 129, 192, 3, keep, None)
    faster = simulate_layer(Accelerator(bandwidth_gib_s=2.0), 129, 192, 3, keep, None)
    assert memory_bound.ffn == pytest.approx(2 * faster.ffn, rel=0.01)


def test_masks_and_pruning() -> None:
    masks = synthetic_masks(2, 3, 65, 0.8)
    assert masks[:, :, 0, :].all() and masks[:, :, :, 0].all()
    assert abs(1 - masks.float().mean().item() - 0.8) < 0.02
    sparse = simulate_deit("deit_digits", 0.8)
    pruned = simulate_deit("deit_digits", 0.8, keep_counts(64, pruning_ratios(6, 0.2, 0.6)))
    assert pruned.total < sparse.total
    assert pruned.layers[-1].tokens < sparse.layers[-1].tokens
    assert pruned.by_type()["topk"] > 0
    with pytest.raises(InputError, match="sparsity"):
        synthetic_masks(1, 1, 5, 1.0)
    with pytest.raises(InputError, match="unknown DeiT"):
        simulate_deit("deit_huge")
