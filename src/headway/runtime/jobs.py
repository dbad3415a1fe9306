"""Cutting a model into *jobs*: runs of consecutive layers (a Tucker-decomposed convolution
counts as its three convolutions) that a worker pool executes one after another. Generic: the
model gives its layer order (``layer_sequence()``), or torch.fx finds one; the runtime knows no
model family."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from headway.errors import InputError, first_line


@dataclass
class ModelInstance:
    """One model to serve: a name (for reports), its jobs and a request input."""

    name: str
    jobs: list[nn.Module]
    example: torch.Tensor


# ---------------------------------------------------------------------------------------------


def _expand(modules: list[nn.Module]) -> list[nn.Module]:
    """Flatten Tucker-2 triples (a Sequential of three convolutions) into their layers."""
    layers: list[nn.Module] = []
    for module in modules:
        if isinstance(module, nn.Sequential) and all(isinstance(m, nn.Conv2d) for m in module):
            layers.extend(module)
        else:
            layers.append(module)
    return layers


def layer_sequence(model: nn.Module) -> list[nn.Module]:
    """The model's forward pass as a list of layers whose composition equals ``model(x)``
    (inference mode: no auxiliary heads), with Tucker-2 triples flattened. A model may say its
    own order through a ``layer_sequence()`` method (every zoo model has one); an
    ``nn.Sequential`` is its own order; any other model (torchvision's, timm's, your own) is
    traced with torch.fx and cut wherever one tensor alone carries the computation on
    (:func:`traced_stages`)."""
    if callable(getattr(model, "layer_sequence", None)):
        return _expand(list(model.layer_sequence()))
    if isinstance(model, nn.Sequential):
        return _expand(list(model))
    return traced_stages(model)


def traced_stages(model: nn.Module) -> list[nn.Module]:
    """``model`` traced by torch.fx and cut into stages at every point where exactly one value
    is live (a residual block stays whole: its input lives until the addition). Each stage is
    a ``torch.fx.GraphModule`` sharing the model's parameters; running them in order computes
    the traced graph, i.e. ``model(x)`` for the one tensor input. Raises :class:`InputError`
    naming what blocks tracing (data-dependent control flow, several inputs or outputs)."""
    name = f"{type(model).__module__}.{type(model).__name__}"
    parameters = list(inspect.signature(model.forward).parameters.values())
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if len(required) != 1:
        raise InputError(
            f"cannot split {name} into jobs: its forward needs {len(required)} inputs "
            f"({', '.join(required) or 'none'}), not one tensor"
        )
    # optional arguments (timm's ``attn_mask=None``) keep their defaults in the traced graph
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    try:
        traced = torch.fx.symbolic_trace(model, concrete_args=defaults or None)
    except Exception as error:  # fx raises many kinds for untraceable Python
        reason = first_line(error)
        raise InputError(
            f"cannot split {name} into jobs: torch.fx cannot trace it ({reason}); give it a "
            "layer_sequence() method or wrap its layers in an nn.Sequential"
        ) from None
    for node in list(traced.graph.nodes):  # fx's checks that a defaulted argument kept it
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert_is_none":
            traced.graph.erase_node(node)
    nodes = list(traced.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder" and n.target == required[0]]
    (output,) = [n for n in nodes if n.op == "output"]
    result = output.args[0]
    if not isinstance(result, torch.fx.Node):
        raise InputError(f"cannot split {name} into jobs: it returns a {type(result).__name__}")
    position = {node: index for index, node in enumerate(nodes)}
    last_use = {n: max((position[u] for u in n.users), default=position[n]) for n in nodes}
    stages: list[nn.Module] = []
    carried, body = inputs[0], []
    for index, node in enumerate(nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        body.append(node)
        live = [
            n
            for n in nodes[: index + 1]
            if n.op not in ("get_attr", "output") and last_use[n] > index
        ]
        if len(live) == 1 and live[0] is not carried:
            stages.append(_stage(traced, carried, body, live[0]))
            carried, body = live[0], []
    if body or not stages:
        stages.append(_stage(traced, carried, body, result))
    return stages


def _stage(
    traced: torch.fx.GraphModule,
    source: torch.fx.Node,
    body: list[torch.fx.Node],
    result: torch.fx.Node,
) -> torch.fx.GraphModule:
    """The nodes ``body`` as a module of one input (``source``'s value) returning ``result``."""
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {source: graph.placeholder("x")}

    def value(node: torch.fx.Node) -> torch.fx.Node | object:
        if node.op == "placeholder" and node is not source:
            return node.args[0] if node.args else None  # an optional argument's default
        if node not in env:  # a parameter or buffer read directly: read it here too
            env[node] = graph.get_attr(str(node.target))
        return env[node]

    for node in body:
        env[node] = graph.node_copy(node, value)
    graph.output(value(result))
    return torch.fx.GraphModule(traced, graph)


def _layer_macs(layers: list[nn.Module], example: torch.Tensor) -> list[int]:
    macs, x = [], example
    with torch.no_grad():
        for layer in layers:
            with FlopCounterMode(display=False) as counter:
                x = layer(x)
            macs.append(counter.get_total_flops() // 2)
    return macs


def split_jobs(
    model: nn.Module, policy: str = "jobs:8", example: torch.Tensor | None = None
) -> list[nn.Sequential]:
    """Cut ``model`` into jobs by ``policy``: ``layers`` (one job per layer or block),
    ``jobs:N`` (N jobs of about equal layer count) or ``macs:N`` (N jobs of about equal MACs,
    needs ``example``). Running the jobs in order computes exactly ``model(x)``."""
    layers = layer_sequence(model)
    kind, _, value = policy.partition(":")
    if kind == "layers":
        groups = [[layer] for layer in layers]
    elif kind in ("jobs", "macs"):
        try:
            count = int(value)
        except ValueError:
            raise InputError(f"job policy {policy!r}: {value!r} is not a job count") from None
        if not 1 <= count <= len(layers):
            raise InputError(
                f"job policy {policy!r} cannot split a model of {len(layers)} layers into "
                f"{count} jobs"
            )
        if kind == "jobs":
            weights = [1] * len(layers)
        else:
            if example is None:
                raise InputError("job policy macs:N needs an example input")
            weights = [max(m, 1) for m in _layer_macs(layers, example)]
        groups = _balanced_groups(layers, weights, count)
    else:
        raise InputError(f"unknown job policy {policy!r}: use layers, jobs:N or macs:N")
    return [nn.Sequential(*group) for group in groups]


def _balanced_groups(
    layers: list[nn.Module], weights: list[int], count: int
) -> list[list[nn.Module]]:
    """Contiguous groups whose weight sums are close to total / count (greedy by prefix)."""
    total = sum(weights)
    groups: list[list[nn.Module]] = [[]]
    running = 0
    for index, (layer, weight) in enumerate(zip(layers, weights, strict=True)):
        groups_left = count - len(groups)
        past_share = running + weight / 2 > total * len(groups) / count
        must_open = len(layers) - index <= groups_left
        if groups[-1] and groups_left > 0 and (past_share or must_open):
            groups.append([])
        groups[-1].append(layer)
        running += weight
    return groups
