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
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from headway.errors import first_line
from headway.models.resnet import FrozenBatchNorm2d
from headway.transforms.heads import TransformReport

BATCH_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)
# forwards that compute the batch norm and nothing else (SyncBatchNorm in eval mode is one)
_PLAIN_FORWARDS = {nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward, FrozenBatchNorm2d.forward}
_FROZEN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


# norms with fixed statistics as buffers: headway's and torchvision's, and timm's frozen norm +
# activation (norm, then ``drop``, then ``act``)
_FROZEN_NAMES = ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")


def is_batch_norm(module: nn.Module) -> bool:
    """A batch norm by what it is, not its library: ``nn.BatchNorm2d`` and its subclasses
    (timm's ``BatchNormAct2d``), ``SyncBatchNorm``, and any ``FrozenBatchNorm2d`` or
    ``FrozenBatchNormAct2d`` (headway's, torchvision's, timm's: fixed statistics as
    buffers)."""
    if isinstance(module, (*BATCH_NORMS, nn.SyncBatchNorm)):
        return True
    return (
        type(module).__name__ in _FROZEN_NAMES
        and all(isinstance(getattr(module, name, None), torch.Tensor) for name in _FROZEN_BUFFERS)
        and hasattr(module, "eps")
    )


def _remainder(norm: nn.Module) -> nn.Module | None:
    """What stays of ``norm`` once its affine map is in the convolution: nothing for a plain
    norm; timm's norm + activation (``BatchNormAct2d``, ``FrozenBatchNormAct2d``: norm, then
    ``drop``, then ``act``) keeps its drop and activation; None for any other forward of its
    own (it is left and named)."""
    forward = type(norm).forward
    if forward in _PLAIN_FORWARDS or type(norm).__name__ == "FrozenBatchNorm2d":
        return nn.Identity()
    drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)
    norm_act = isinstance(norm, nn.BatchNorm2d) or type(norm).__name__ == "FrozenBatchNormAct2d"
    if norm_act and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)
    return None


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold ``norm`` (applied after ``conv``) into ``conv``'s weight and bias, in place."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training:
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


class _NormLeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps batch norms (also headway's frozen one) as single calls."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return is_batch_norm(module) or super().is_leaf_module(module, qualified_name)


@dataclass
class _FoldPlan:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (conv, norm) qualified names
    unfolded: dict[str, str] = field(default_factory=dict)  # norm → why it stays
    untraced: dict[str, str] = field(default_factory=dict)  # module → what blocked tracing


def _plan(module: nn.Module, prefix: str, plan: _FoldPlan) -> None:
    """Find, in ``module``'s traced graph, every batch norm whose only input is a convolution
    that nothing else reads (each called once): those fold exactly. A module that cannot be
    traced is searched child by child, and its own name is reported."""
    has_forward = type(module).forward is not nn.Module.forward
    try:
        if not has_forward:  # a container (ModuleList, a module of methods): search inside
            raise NotImplementedError
        graph = _NormLeafTracer().trace(module)
    except Exception as error:  # fx raises many kinds for untraceable Python
        if has_forward and list(module.children()):
            plan.untraced[prefix.rstrip(".") or "<model>"] = first_line(error)[:160]
        for name, child in module.named_children():
            _plan(child, f"{prefix}{name}.", plan)
        return
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        norm = module.get_submodule(target)
        if not is_batch_norm(norm):
            continue
        source = node.args[0] if node.args else None
        name = prefix + target
        if _remainder(norm) is None:
            plan.unfolded[name] = (
                f"{type(norm).__name__} has a forward of its own; folding would drop what it adds"
            )
        elif calls[target] > 1:
            plan.unfolded[name] = "the norm is called more than once"
        elif not (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(module.get_submodule(str(source.target)), nn.Conv2d)
        ):
            what = source.target if isinstance(source, torch.fx.Node) else source
            plan.unfolded[name] = f"its input is {what}, not a convolution"
        elif calls[str(source.target)] > 1:
            plan.unfolded[name] = "its convolution is called more than once"
        elif len(source.users) > 1:
            plan.unfolded[name] = "the convolution's output is also read elsewhere"
        else:
            plan.pairs.append((prefix + str(source.target), name))


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, TransformReport]:
    """A copy of ``model`` with every batch norm folded into the convolution in front of it.

    Pairs are proven on the model's torch.fx graph (any architecture: torchvision's, timm's,
    your own), not by class names: a norm folds when its only input is a convolution whose
    output nothing else reads. The report counts the folded norms and names each one left
    as it was, and why (and any module fx could not trace, whose children were searched)."""
    model = copy.deepcopy(model).eval()
    plan = _FoldPlan()
    _plan(model, "", plan)
    folded = {norm for _, norm in plan.pairs}
    for name, module in model.named_modules():  # every norm is folded or named
        if is_batch_norm(module) and name not in folded and name not in plan.unfolded:
            plan.unfolded[name] = (
                "not reached by the traced forward (a branch used only in training, or code "
                "fx could not trace)"
            )
    for conv_name, norm_name in plan.pairs:
        norm = model.get_submodule(norm_name)
        _fold_pair(model.get_submodule(conv_name), norm)
        parent_name, _, child = norm_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, _remainder(norm))
    notes = [f"{len(plan.pairs)} batch norms folded"]
    notes += [f"not folded: {name} ({why})" for name, why in plan.unfolded.items()]
    notes += [
        f"not traceable, searched by child: {name} ({why})" for name, why in plan.untraced.items()
    ]
    return model, TransformReport("fold_batchnorm", len(plan.pairs), notes, dict(plan.unfolded))


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
