"""fp32 linear layers run by oneDNN on weights it has reordered once (CPU).

PyTorch's ``nn.Linear`` on CPU calls a BLAS GEMM (MKL) that repacks the weight on every call;
oneDNN's inner product with a weight already in its blocked layout skips that and fuses the
bias and a following ReLU/GELU. Measured on the default CSWinTT encoder (AMD, AVX-512,
``headway bench engines --cases cswintt_encoder``): 7–8% less encoder time at 1 and 2 threads
(docs/benchmarks.md). The products are the same up to the order of floating-point sums.

The weight stays an ordinary parameter (state_dict, ``.to``, copies and pickling work as
before); the packed copy is made on the first call and remade if the weight changes. Outside
plain fp32 CPU inference (autocast, gradients, another device or dtype) the layer computes
exactly what ``nn.Linear`` does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from headway.transforms.heads import TransformReport

_ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.GELU: "gelu"}


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed linear operators (x86 and Arm CPU builds)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """``nn.Linear`` (optionally followed by ReLU or GELU) computed by oneDNN on a packed
    weight. Same parameters and names as the linear it replaces."""

    def __init__(self, linear: nn.Linear, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.activation = activation
        self._packed: tuple[tuple[int, int | None], torch.Tensor] | None = None

    def _attribute(self) -> tuple[str, str]:
        if self.activation is None:
            return "none", ""
        if isinstance(self.activation, nn.GELU):
            return "gelu", self.activation.approximate
        return "relu", ""

    def _packed_weight(self) -> torch.Tensor:
        weight = self.weight  # inference tensors keep no version: their storage is the key
        key = (weight.data_ptr(), None if weight.is_inference() else weight._version)
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = (
            x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        )
        if fast:
            attribute, algorithm = self._attribute()
            return torch.ops.mkldnn._linear_pointwise(
                x, self._packed_weight(), self.bias, attribute, [], algorithm
            )
        out = F.linear(x, self.weight, self.bias)
        return out if self.activation is None else self.activation(out)

    def __getstate__(self) -> dict[str, Any]:  # oneDNN's opaque tensors cannot be copied
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__getstate__(), memo))
        return clone

    def extra_repr(self) -> str:
        fused = f", then {self._attribute()[0]}" if self.activation is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{fused}"


def _fusable_activations(parent: nn.Module) -> dict[str, str]:
    """Linear child → activation child of ``parent`` such that, in ``parent``'s traced forward
    (torch.fx), the activation is called once, on the linear's output, and nothing else reads
    that output. Empty when the forward cannot be traced."""
    names = {name: type(child) for name, child in parent.named_children()}
    if not any(t is nn.Linear for t in names.values()) or not any(
        t in _ACTIVATIONS for t in names.values()
    ):
        return {}
    try:
        graph = torch.fx.symbolic_trace(parent).graph
    except Exception:  # data-dependent control flow, unsupported calls: no fusion here
        return {}
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    pairs = {}
    for name, kind in names.items():
        if kind is not nn.Linear or len(calls.get(name, [])) != 1:
            continue
        users = list(calls[name][0].users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        follower = str(users[0].target)
        if names.get(follower) in _ACTIVATIONS and len(calls[follower]) == 1:
            pairs[name] = follower
    return pairs


def pack_linear_weights(model: nn.Module) -> tuple[nn.Module, TransformReport]:
    """A copy of ``model`` whose called ``nn.Linear`` children run as :class:`PackedLinear`.

    A ReLU or GELU child is fused into the linear before it when the parent's traced forward
    (torch.fx) proves that it only ever takes that linear's output (an ``nn.Sequential``, a
    transformer MLP). Linears that a parent reads by attribute instead of calling
    (``nn.MultiheadAttention.out_proj``) are left alone. Without oneDNN the copy is returned
    unchanged and the report says so."""
    model = copy.deepcopy(model)
    if not onednn_linear_available():
        return model, TransformReport("pack_linear_weights", 0, ["oneDNN not in this build"])
    packed = fused = 0
    for parent in list(model.modules()):
        if isinstance(parent, (nn.MultiheadAttention, PackedLinear)):
            continue
        pairs = _fusable_activations(parent)
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            activation = None
            if name in pairs:
                activation = getattr(parent, pairs[name])
                setattr(parent, pairs[name], nn.Identity())
                fused += 1
            setattr(parent, name, PackedLinear(child, activation))
            packed += 1
    notes = [f"{packed} linears packed for oneDNN, {fused} activations fused"]
    return model, TransformReport("pack_linear_weights", packed, notes)
