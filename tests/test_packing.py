"""oneDNN-packed linear layers against nn.Linear on random inputs: plain, with a fused ReLU or
GELU, inside CSWinTT and DeiT, and the fallbacks (autocast, gradients, no oneDNN)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from headway.models import create_model, load_weights
from headway.transforms import packing
from headway.transforms.packing import PackedLinear, onednn_linear_available, pack_linear_weights
from test_executors import FP32_ENCODER_TOL, encoder_inputs, random_network

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="torch without oneDNN")
LINEAR_TOL = 1e-4  # fp32, sums reordered


@needs_onednn
@pytest.mark.parametrize("activation", [None, nn.ReLU(), nn.GELU(), nn.GELU("tanh")])
@pytest.mark.parametrize("shape", [(7, 24), (5, 3, 24)])
def test_packed_linear_equals_linear(activation: nn.Module | None, shape: tuple[int, ...]) -> None:
    torch.manual_seed(len(shape))
    linear = nn.Linear(24, 40)
    x = torch.randn(shape) + 0.2
    expected = linear(x) if activation is None else activation(linear(x))
    packed = PackedLinear(linear, activation)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), expected.detach(), rtol=0, atol=LINEAR_TOL)


@needs_onednn
def test_packed_linear_falls_back_and_follows_its_weight() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(16, 8)
    packed = PackedLinear(copy.deepcopy(linear), nn.ReLU())
    x = torch.randn(4, 16, requires_grad=True)
    packed(x).sum().backward()  # gradients: plain path
    assert x.grad is not None and packed.weight.grad is not None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed(x.detach()).dtype == torch.bfloat16  # autocast: plain path
    with torch.inference_mode():
        packed(x.detach())  # packs
        clone = pickle.loads(pickle.dumps(copy.deepcopy(packed)))  # opaque copy dropped
        torch.testing.assert_close(clone(x.detach()), packed(x.detach()), rtol=0, atol=0)
        packed.weight.mul_(2)  # a changed weight is packed again
        expected = torch.relu(nn.functional.linear(x.detach(), packed.weight, packed.bias))
        torch.testing.assert_close(packed(x.detach()), expected, rtol=0, atol=LINEAR_TOL)


@needs_onednn
def test_cswintt_with_packed_linears_matches_and_keeps_its_state_dict() -> None:
    network = random_network(seed=30)
    packed, report = pack_linear_weights(network)
    assert report.layers > 0 and "activations fused" in report.notes[0]
    for attention in (m for m in packed.modules() if isinstance(m, nn.MultiheadAttention)):
        assert type(attention.out_proj) is not PackedLinear  # read by attribute, not called
    assert list(packed.state_dict()) == list(network.state_dict())
    load_weights(packed, network.state_dict())  # strict
    tokens, mask = encoder_inputs(network, 2, seed=31)
    with torch.inference_mode():
        expected = network.forward_encoder(tokens, mask)
        got = packed.forward_encoder(tokens, mask)
        torch.testing.assert_close(got, expected, rtol=0, atol=FP32_ENCODER_TOL)
        memory = expected
        torch.testing.assert_close(
            packed.forward_decoder(memory, mask),
            network.forward_decoder(memory, mask),
            rtol=0,
            atol=FP32_ENCODER_TOL,
        )


@needs_onednn
def test_deit_with_packed_linears_matches() -> None:
    torch.manual_seed(32)
    model = create_model("deit_tiny", num_classes=10).eval()
    packed, _ = pack_linear_weights(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), model(x), rtol=0, atol=1e-3)


def test_without_onednn_the_model_is_returned_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "onednn_linear_available", lambda: False)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    copied, report = pack_linear_weights(model)
    assert report.layers == 0 and "oneDNN" in report.notes[0]
    assert type(copied[0]) is nn.Linear and copied is not model


class _Shared(nn.Module):
    """One activation called twice, and a linear output read twice: neither may be fused."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.act(hidden) + hidden + self.act(self.fc2(x)) + self.fc3(x)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@needs_onednn
def test_activations_are_fused_only_where_the_traced_graph_allows() -> None:
    torch.manual_seed(33)
    x = torch.randn(3, 6)
    for module, fused in (
        (_Shared(), 0),
        (_Mlp(), 1),
        (nn.Sequential(nn.Linear(6, 6), nn.ReLU()), 1),
    ):
        packed, report = pack_linear_weights(module)
        assert report.notes[0].endswith(f"{fused} activations fused"), report.notes
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), module(x), rtol=0, atol=LINEAR_TOL)
    deit, report = pack_linear_weights(create_model("deit_tiny", num_classes=10))
    assert f"{len(deit.blocks)} activations fused" in report.notes[0]
