"""The spectral window attention (per-DFT-bin products instead of rolled key/value copies)
against the plain definition: the bases, one head's scores and outputs, the whole encoder on
random non-zero inputs with padding, and OpenVINO's bf16 hint on the rewritten graph."""

from __future__ import annotations

import pytest
import torch

from headway.models import build_cswintt, get_config, load_weights
from headway.runtime.engines import compile_module, engine_available
from headway.tracking.executors import cpu_has_bf16
from headway.transforms.heads import fuse_window_attention
from headway.transforms.spectral import (
    SpectralHeads,
    spectral_bases,
    spectral_window_attention,
    spectrum_bins,
)
from test_executors import FP32_ENCODER_TOL, encoder_inputs, random_network


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("window", [1, 2, 3, 4, 8])
def test_bases_invert_each_other_and_count_every_bin(window: int) -> None:
    forward, inverse, real, pairs = spectral_bases(window)
    assert real + 2 * pairs == window * window
    assert real == (4 if window % 2 == 0 else 1)  # self-conjugate bins: coordinates 0 or w/2
    torch.testing.assert_close(inverse @ forward, torch.eye(window * window), rtol=0, atol=1e-6)
    real_bins, pair_bins = spectrum_bins(window)
    assert len(real_bins) == real and len(pair_bins) == pairs
    negated = {((-a) % window, (-b) % window) for a, b in pair_bins}
    assert not negated & set(pair_bins)  # one representative per conjugate pair


@pytest.mark.parametrize("window", [2, 3, 4])
def test_spectral_products_equal_the_rolled_copies(window: int) -> None:
    """score[s] = Σ_x Q[x]·K[x − s] and out[x] = Σ_s A[s]·V[x − s], straight from the rolls."""
    generator = torch.Generator().manual_seed(window)
    q, k, v = (torch.randn(window, window, 5, generator=generator) for _ in range(3))
    weights = torch.rand(window, window, generator=generator)
    shifts = [(a, b) for a in range(window) for b in range(window)]
    rolled = {s: torch.roll(k, s, dims=(0, 1)) for s in shifts}  # rolled[s][x] = K[x − s]
    expected_scores = torch.stack([(q * rolled[s]).sum() for s in shifts])
    expected_out = sum(weights[s] * torch.roll(v, s, dims=(0, 1)) for s in shifts)

    forward, inverse, real, pairs = spectral_bases(window)
    area = window * window
    qf, kf, vf = (forward @ x.reshape(area, -1) for x in (q, k, v))
    cut = (real, pairs, pairs)
    (q_re, q_pre, q_pim), (k_re, k_pre, k_pim) = qf.split(cut), kf.split(cut)
    features = torch.cat(
        (
            (q_re * k_re).sum(-1),
            (q_pre * k_pre + q_pim * k_pim).sum(-1),
            (q_pim * k_pre - q_pre * k_pim).sum(-1),
        )
    )
    torch.testing.assert_close(inverse @ features, expected_scores, rtol=0, atol=1e-4)

    wf = forward @ weights.reshape(area)
    (w_re, w_pre, w_pim), (v_re, v_pre, v_pim) = wf.split(cut), vf.split(cut)
    out = torch.cat(
        (
            w_re[:, None] * v_re,
            w_pre[:, None] * v_pre - w_pim[:, None] * v_pim,
            w_pre[:, None] * v_pim + w_pim[:, None] * v_pre,
        )
    )
    torch.testing.assert_close(
        (inverse @ out).view(window, window, -1), expected_out, rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("batch", [1, 2])
def test_spectral_encoder_matches_eager_and_fused(batch: int) -> None:
    network = random_network(seed=40 + batch)
    spectral, report = spectral_window_attention(network)
    fused, _ = fuse_window_attention(network)
    layers = spectral.transformer.transformer
    assert all(isinstance(layer.attend, SpectralHeads) for layer in layers)
    assert any("33.0x fewer" in note for note in report.notes)  # w = 8: 4096 / 124
    load_weights(spectral, network.state_dict())  # same parameters, strict
    tokens, mask = encoder_inputs(network, batch, seed=50 + batch)
    assert mask.any()  # padded key windows must be excluded as in eager
    with torch.inference_mode():
        expected = network.forward_encoder(tokens, mask)
        got = spectral.forward_encoder(tokens, mask)
        torch.testing.assert_close(got, expected, rtol=0, atol=FP32_ENCODER_TOL)
        torch.testing.assert_close(got, fused.forward_encoder(tokens, mask), rtol=0, atol=1e-4)


def test_spectral_handles_every_shift_and_an_odd_window() -> None:
    """Shifted heads with w = 4 and a w = 3 layout (odd: one real bin, four complex pairs)."""
    for overrides in (
        {"window_sizes": (4,) * 8},
        {"window_sizes": (1, 3, 1, 3, 1, 3, 1, 3), "template_size": 96, "search_size": 192},
    ):
        torch.manual_seed(7)
        network = build_cswintt(get_config("tiny", **overrides)).eval()
        spectral, _ = spectral_window_attention(network)
        tokens, mask = encoder_inputs(network, 2, seed=8)
        with torch.inference_mode():
            expected = network.forward_encoder(tokens, mask)
            got = spectral.forward_encoder(tokens, mask)
        torch.testing.assert_close(got, expected, rtol=0, atol=FP32_ENCODER_TOL)


@pytest.mark.skipif(not engine_available("openvino"), reason="openvino not installed")
@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_openvino_bf16_is_correct_on_the_rewritten_graph() -> None:
    """Under OpenVINO's bf16 hint the exported eager graph's w = 2 heads go wrong (0.28 after
    one default layer, measured); the fused and spectral graphs stay within bf16 rounding."""
    torch.manual_seed(9)
    config = get_config("tiny", enc_layers=1, window_sizes=(2,) * 8)
    network = build_cswintt(config).eval()
    tokens, mask = encoder_inputs(network, 1, seed=10)

    class Encoder(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.net.forward_encoder(tokens, mask)

    with torch.inference_mode():
        expected = network.forward_encoder(tokens, mask)
        for transform in (fuse_window_attention, spectral_window_attention):
            engine = compile_module("openvino-bf16", Encoder(transform(network)[0]), (tokens, mask))
            torch.testing.assert_close(engine(tokens, mask), expected, rtol=0, atol=0.05)


def test_the_log_sum_exp_shortcut_is_not_exact() -> None:
    """Issue 17's lead — attention over each window's own tokens plus log Σ_copies exp(additive)
    — is not the same function: it drops the roll scores' dependence on q and k. Kept as a test
    so the docs' statement stays backed (differences far above fp32 rounding for every w > 1)."""
    torch.manual_seed(0)
    network = build_cswintt(get_config("tiny")).eval()
    fused, _ = fuse_window_attention(network)
    layer = fused.transformer.transformer[0]
    tokens, mask = encoder_inputs(network, 1, seed=60)
    length, c = tokens.shape[0], layer.head_dim
    with torch.inference_mode():
        context = fused.transformer.encoder_context(mask)
        q, k, v = layer.project(tokens)  # q scaled by c^-1/2
        qkv = torch.stack((q, k, v)).view(3, length, 1, layer.num_heads, c)
        qkv = qkv.permute(0, 2, 3, 1, 4).reshape(3, 1, layer.num_heads * length, c)
        for group in (g for g in layer.attend.groups if g.window > 1):
            area, additive = group.window**2, context.additive[group.window]
            exact = layer.attend.attend_group(group, qkv, additive, layer.attention_dropout)
            count = length // area
            q, k, v = (
                x.index_select(1, group.query_index).view(group.num_heads, count, area * c)
                for x in qkv.unbind(0)
            )
            bias = torch.logsumexp(additive.view(-1, count, count, area), dim=-1)
            scores = q @ k.transpose(1, 2) / area + bias
            shortcut = (scores.softmax(-1) @ v).view(1, -1, c)
            # measured: 0.38, 0.85 and 2.1 times the largest output for w = 2, 4, 8
            assert (shortcut - exact).abs().max() > 0.25 * exact.abs().max()
