"""A property test of ``headway.accelerate`` with generated hostile modules (issue 34): a
module may branch on its input's values, write into its input, be in training mode with
dropout and batch norm, take one or two inputs and return a tensor, a tuple, a list, a dict
or a nesting of them. Whatever was generated, the result must

- leave the caller's module (training flag and weights) and example as they were;
- answer what the module answers in eval mode, with the same nesting, on inputs of every
  branch (positive, negative and large values), not only the example's;
- say what it chose.

``make test`` runs a fixed-seed, small budget; ``HEADWAY_PROPERTY_EXAMPLES=40`` runs more.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._pytree import tree_flatten

import headway

EXAMPLES = int(os.environ.get("HEADWAY_PROPERTY_EXAMPLES", "6"))
SEED = int(os.environ.get("HEADWAY_PROPERTY_SEED", "34"))


@dataclass(frozen=True)
class Hostility:
    branch: str  # "none", "mean" (sign of the mean), "max" (largest value over a threshold)
    in_place: bool  # writes into its (first) input
    training: bool  # the caller's module is in training mode, with dropout and batch norm
    inputs: int  # 1 or 2
    output: str  # "tensor", "tuple", "list", "dict", "nested"


class Hostile(nn.Module):
    def __init__(self, how: Hostility) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.other = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.norm.running_mean.uniform_(-0.5, 0.5)
        self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> object:
        how = self.how
        if how.in_place:
            x.mul_(2.0)
        if more:
            x = x + more[0]
        if how.branch == "mean":
            y = self.conv(x) if x.mean() > 0 else self.other(x)
        elif how.branch == "max":
            y = self.conv(x) if x.amax() > 3.0 else self.other(x) * 2
        else:
            y = self.conv(x)
        y = self.drop(self.norm(y))
        pooled = y.mean((2, 3))
        if how.output == "tuple":
            return y, pooled
        if how.output == "list":
            return [pooled, y.relu()]
        if how.output == "dict":
            return {"features": y, "logits": pooled}
        if how.output == "nested":
            return {"boxes": (y, [pooled]), "scores": pooled.softmax(-1)}
        return y


HOSTILITIES = st.builds(
    Hostility,
    branch=st.sampled_from(["none", "mean", "max"]),
    in_place=st.booleans(),
    training=st.booleans(),
    inputs=st.sampled_from([1, 2]),
    output=st.sampled_from(["tensor", "tuple", "list", "dict", "nested"]),
)


def _inputs_of_every_branch(count: int, generator: torch.Generator) -> list[tuple]:
    """Positive, negative and large inputs: each branch of every generated module."""
    base = [torch.rand(1, 3, 8, 8, generator=generator) + 0.1 for _ in range(count)]
    return [
        tuple(b.clone() for b in base),
        tuple(-b for b in base),
        tuple(b * 10 for b in base),
        tuple(torch.randn(1, 3, 8, 8, generator=generator) for _ in range(count)),
    ]


def _same(got: object, expected: object) -> None:
    got_leaves, got_spec = tree_flatten(got)
    expected_leaves, expected_spec = tree_flatten(expected)
    assert got_spec == expected_spec, f"nesting {got_spec} != {expected_spec}"
    for g, e in zip(got_leaves, expected_leaves, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * (float(e.abs().max()) + 1))


@pytest.fixture(autouse=True)
def plan_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path_factory.mktemp("cache")))


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(how=HOSTILITIES, weights=st.integers(0, 2**31 - 1))
def test_hostile_modules_are_accelerated_to_what_they_compute(how: Hostility, weights: int) -> None:
    torch.manual_seed(weights)
    module = Hostile(how).train(how.training)
    before = copy.deepcopy(module.state_dict())
    generator = torch.Generator().manual_seed(weights)
    example = tuple(torch.rand(1, 3, 8, 8, generator=generator) + 0.1 for _ in range(how.inputs))
    kept = tuple(e.clone() for e in example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on the branches: expected
        fast = headway.accelerate(module, example if how.inputs > 1 else example[0], budget_s=4)
    assert module.training == how.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(example, kept, strict=True))
    assert fast.report.chosen in {c.name for c in fast.report.candidates}
    reference = copy.deepcopy(module).eval()
    for inputs in _inputs_of_every_branch(how.inputs, generator):
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = reference(*(a.clone() for a in inputs))
            got = fast(*(a.clone() for a in inputs))
        _same(got, expected)
