"""Inference-only rewrites of convolution stacks and weight precision.

- :func:`fold_batchnorm` merges every (frozen or eval-mode) batch norm into the convolution in
  front of it: y = (W·x)·s + t becomes (W·s)·x + t. Same function, rounding aside (measured
  difference on the CSWinTT backbone ≈ 1e-7), and half the memory traffic of the backbone.
- :func:`cast_matmul_weights` stores the weights of linear, convolution and attention
  projections in a low precision once, so autocast does not re-cast them every call; norms
  keep fp32.

Both return a new model (the input is left alone); the folded model has conv biases instead of
batch-norm tensors, so it no longer loads the original state_dict.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from headway.models.resnet import Bottleneck, FrozenBatchNorm2d, ResNetTrunk
from headway.transforms.heads import TransformReport

BATCH_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold ``norm`` (applied after ``conv``) into ``conv``'s weight and bias, in place."""
    if isinstance(norm, nn.BatchNorm2d) and norm.training:
        raise ValueError("cannot fold a batch norm in training mode; call .eval() first")
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        scale = weight * (norm.running_var + norm.eps).rsqrt()
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        shift = bias - norm.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.bias = nn.Parameter(shift.detach().clone(), requires_grad=False)


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, norm) children of ``module`` where the norm follows the conv."""
    if isinstance(module, Bottleneck):
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    if isinstance(module, ResNetTrunk):
        return [("conv1", "bn1")]
    if isinstance(module, nn.Sequential):
        names = [name for name, _ in module.named_children()]
        return [
            (a, b)
            for a, b in itertools.pairwise(names)
            if isinstance(module.get_submodule(a), nn.Conv2d)
            and isinstance(module.get_submodule(b), BATCH_NORMS)
        ]
    return []


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, TransformReport]:
    """A copy of ``model`` with every batch norm that follows a convolution folded into it."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = module.get_submodule(conv_name), module.get_submodule(norm_name)
            if isinstance(norm, BATCH_NORMS) and isinstance(conv, nn.Conv2d):
                _fold_pair(conv, norm)
                setattr(module, norm_name, nn.Identity())
                folded += 1
    return model, TransformReport("fold_batchnorm", folded, [f"{folded} batch norms folded"])


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, TransformReport]:
    """A copy of ``model`` whose linear / conv / attention-projection weights are ``dtype``.
    Run it under ``torch.autocast`` (activations are cast there; norms stay fp32)."""
    model = copy.deepcopy(model)
    cast = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.to(dtype)
            cast += 1
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            module.in_proj_weight.data = module.in_proj_weight.data.to(dtype)
            if module.in_proj_bias is not None:
                module.in_proj_bias.data = module.in_proj_bias.data.to(dtype)
            cast += 1
    return model, TransformReport("cast_matmul_weights", cast, [f"{cast} modules in {dtype}"])
