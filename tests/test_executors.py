"""Every executor against eager: encoder outputs on random non-zero inputs and tracked boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from headway.errors import InputError
from headway.models import build_cswintt, load_weights
from headway.tracking.datasets import load_dataset
from headway.tracking.executors import build_executor, check_executor
from headway.tracking.tracker import CSWinTTTracker
from headway.transforms.fold import cast_matmul_weights, fold_batchnorm
from headway.transforms.heads import (
    SplitHeads,
    fuse_window_attention,
    set_head_dispatch,
    split_heads,
)
from test_encoder_formula import make_padding

# fp32 executors reorder floating-point sums only; bf16 keeps ~3 significant digits
FP32_ENCODER_TOL = 1e-4
BF16_ENCODER_TOL = 0.25
FP32_BOX_TOL_PX = 0.01
BF16_BOX_TOL_PX = 1.0


def random_network(config: str = "tiny", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = build_cswintt(config).eval()
    for table in network.transformer.bias_tables().values():
        torch.nn.init.normal_(table, std=0.5)  # make the bias matter
    return network


def encoder_inputs(network, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    config = network.config
    tokens = torch.randn(config.num_tokens, batch, config.d_model, generator=generator) + 0.3
    return tokens, make_padding(config, batch, generator)


@pytest.mark.parametrize("batch", [1, 2])
def test_split_and_fused_encoders_match_eager(batch: int) -> None:
    network = random_network(seed=batch)
    split, report = split_heads(network)
    fused, _ = fuse_window_attention(network)
    assert report.layers == network.config.enc_layers
    assert all(isinstance(layer.attend, SplitHeads) for layer in split.transformer.transformer)
    tokens, mask = encoder_inputs(network, batch, seed=100 + batch)
    with torch.inference_mode():
        expected = network.forward_encoder(tokens, mask)
        torch.testing.assert_close(split.forward_encoder(tokens, mask), expected, rtol=0, atol=0)
        torch.testing.assert_close(
            fused.forward_encoder(tokens, mask), expected, rtol=0, atol=FP32_ENCODER_TOL
        )


def test_transforms_keep_the_state_dict_and_leave_the_input_alone() -> None:
    network = random_network()
    keys = list(network.state_dict())
    for transform in (split_heads, fuse_window_attention):
        transformed, _ = transform(network)
        assert list(transformed.state_dict()) == keys
        load_weights(transformed, network.state_dict())  # strict
    assert type(network.transformer.transformer[0].attend).__name__ == "SequentialHeads"
    assert network.transformer.context_builder is None


def test_head_dispatch_sees_every_head() -> None:
    network = random_network()
    split, _ = split_heads(network)
    calls: list[int] = []

    def counting(jobs):
        calls.append(len(jobs))
        return [job() for job in jobs]

    set_head_dispatch(split, counting)
    tokens, mask = encoder_inputs(network, 1, seed=3)
    with torch.inference_mode():
        split.forward_encoder(tokens, mask)
    assert calls == [network.config.num_heads] * network.config.enc_layers
    with pytest.raises(TypeError, match="split_heads"):
        set_head_dispatch(network, counting)


@pytest.mark.parametrize(
    ("name", "encoder_tol", "box_tol"),
    [
        ("scripted", 0.0, 0.0),
        # worker threads may block the matmuls differently: equal up to summation order
        ("heads", FP32_ENCODER_TOL, FP32_BOX_TOL_PX),
        ("scripted-fork", FP32_ENCODER_TOL, FP32_BOX_TOL_PX),
        ("fused", FP32_ENCODER_TOL, FP32_BOX_TOL_PX),
        ("fused-bf16", BF16_ENCODER_TOL, BF16_BOX_TOL_PX),
        ("spectral", FP32_ENCODER_TOL, FP32_BOX_TOL_PX),
        ("spectral-bf16", BF16_ENCODER_TOL, BF16_BOX_TOL_PX),
    ],
)
def test_executor_matches_eager(
    name: str, encoder_tol: float, box_tol: float, synth_dataset: Path
) -> None:
    network = random_network(seed=4)
    tokens, mask = encoder_inputs(network, 1, seed=5)
    sequence = load_dataset(synth_dataset, "otb")[0]
    with build_executor("eager", network) as eager, build_executor(name, network) as other:
        with torch.inference_mode():
            expected = eager.encoder(tokens, mask)
            got = other.encoder(tokens, mask).float()
        torch.testing.assert_close(got, expected, rtol=0, atol=encoder_tol)
        eager_boxes = CSWinTTTracker(eager).run_sequence(sequence).boxes
        other_boxes = CSWinTTTracker(other).run_sequence(sequence).boxes
    assert np.abs(other_boxes - eager_boxes).max() <= box_tol


@pytest.mark.slow
def test_compiled_encoder_matches_eager() -> None:
    network = random_network(seed=6)
    tokens, mask = encoder_inputs(network, 1, seed=7)
    with build_executor("compiled", network) as compiled, torch.inference_mode():
        got = compiled.encoder(tokens, mask)
        expected = network.forward_encoder(tokens, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=FP32_ENCODER_TOL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("compiled-spectral", FP32_ENCODER_TOL), ("compiled-bf16", BF16_ENCODER_TOL)],
)
def test_compiled_spectral_encoders_match_eager(name: str, tolerance: float) -> None:
    network = random_network(seed=16)
    tokens, mask = encoder_inputs(network, 1, seed=17)
    with build_executor(name, network) as compiled, torch.inference_mode():
        got = compiled.encoder(tokens, mask).float()
        expected = network.forward_encoder(tokens, mask)
    assert not compiled.compile_failed
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)


def test_compiled_bf16_runs_uncompiled_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    network = random_network(seed=18)
    tokens, mask = encoder_inputs(network, 1, seed=19)
    with (
        build_executor("compiled-bf16", network) as compiled,
        build_executor("spectral-bf16", network) as plain,
        torch.inference_mode(),
    ):
        with pytest.warns(RuntimeWarning, match="uncompiled"):
            got = compiled.encoder(tokens, mask)
        assert compiled.compile_failed
        torch.testing.assert_close(got, plain.encoder(tokens, mask), rtol=0, atol=0)


def test_executor_name_errors() -> None:
    with pytest.raises(InputError, match="unknown executor 'warp'"):
        check_executor("warp", "cpu")
    with pytest.raises(InputError, match="needs CUDA"):
        check_executor("cudagraph", "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize(
    "name", ["heads", "scripted-fork", "fused", "cudagraph", "fused-bf16", "cudagraph-bf16"]
)
def test_cuda_executors_match_eager(name: str, synth_dataset: Path) -> None:
    network = random_network(seed=8)
    tokens, mask = (t.cuda() for t in encoder_inputs(network, 1, seed=9))
    tol = BF16_ENCODER_TOL if "bf16" in name else 1e-3
    sequence = load_dataset(synth_dataset, "otb")[0]
    with (
        build_executor("eager", network, "cuda") as eager,
        build_executor(name, network, "cuda") as other,
    ):
        with torch.inference_mode():
            expected = eager.encoder(tokens, mask)
            for _ in range(2):  # the second call replays captured graphs
                got = other.encoder(tokens, mask).float()
        torch.testing.assert_close(got, expected, rtol=0, atol=tol)
        eager_boxes = CSWinTTTracker(eager).run_sequence(sequence).boxes
        other_boxes = CSWinTTTracker(other).run_sequence(sequence).boxes
    assert np.abs(other_boxes - eager_boxes).max() <= (BF16_BOX_TOL_PX if "bf16" in name else 0.05)


def test_fold_batchnorm_keeps_the_function() -> None:
    network = random_network(seed=10)
    generator = torch.Generator().manual_seed(11)
    for module in network.modules():  # non-trivial statistics in every norm
        if hasattr(module, "running_var") and module.running_var is not None:
            module.running_var.copy_(
                torch.rand(module.running_var.shape, generator=generator) + 0.5
            )
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
    folded, report = fold_batchnorm(network)
    assert report.layers == 1 + 3 * 3 + 3 + 8  # trunk, bottlenecks, downsamples, box head
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    images = torch.randn(1, 3, 256, 256, generator=generator)
    mask = torch.zeros(1, 256, 256, dtype=torch.bool)
    with torch.inference_mode():
        expected = network.forward_backbone(images, mask).tokens
        got = folded.forward_backbone(images, mask).tokens
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        memory = torch.randn(network.config.num_tokens, 1, network.config.d_model)
        decoded = torch.randn(1, 1, network.config.d_model)
        torch.testing.assert_close(
            folded.forward_box_head(memory, decoded),
            network.forward_box_head(memory, decoded),
            rtol=1e-4,
            atol=1e-5,
        )


def test_cast_matmul_weights_leaves_norms_in_fp32() -> None:
    network = random_network()
    cast, report = cast_matmul_weights(network, torch.bfloat16)
    assert report.layers > 0
    assert cast.bottleneck.weight.dtype == torch.bfloat16
    assert cast.transformer.transformer_post[0].self_attn.in_proj_weight.dtype == torch.bfloat16
    assert cast.transformer.transformer[0].norm1.weight.dtype == torch.float32
    assert network.bottleneck.weight.dtype == torch.float32


def test_compiled_runs_uncompiled_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fallback policy for every compiled executor: the same stages, uncompiled."""

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    network = random_network(seed=12)
    tokens, mask = encoder_inputs(network, 1, seed=13)
    with build_executor("compiled", network) as compiled, torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="'compiled' runs its stages uncompiled"):
            got = compiled.encoder(tokens, mask)
        expected = network.forward_encoder(tokens, mask)
        assert compiled.compile_failed
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_forked_heads_are_scripted_and_match_eager() -> None:
    """Case C through torch.jit.fork: a scripted dispatcher per input shape, heads traced."""
    from headway.transforms.fork import ForkedHeads, fork_heads

    network = random_network(seed=23)
    forked, report = fork_heads(network)
    layers = forked.transformer.transformer
    assert report.layers == len(layers) and all(
        isinstance(layer.attend, ForkedHeads) for layer in layers
    )
    for batch in (1, 2):
        tokens, mask = encoder_inputs(network, batch, seed=24 + batch)
        with torch.inference_mode():
            torch.testing.assert_close(
                forked.forward_encoder(tokens, mask),
                network.forward_encoder(tokens, mask),
                rtol=0,
                atol=FP32_ENCODER_TOL,
            )
    forkers = layers[0].attend._forkers
    assert len(forkers) == 2  # one per input shape
    assert all(isinstance(f, torch.jit.ScriptModule) for f in forkers.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of CPU-only torch")
def test_stream_forker_falls_back_where_torch_has_no_cuda_streams() -> None:
    """Per-head streams need TorchScript's CUDA stream type; a CPU-only torch lacks it, so the
    dispatcher says so and forks the heads on the caller's stream, with the same result."""
    from headway.transforms.fork import HeadForker, script_forker

    heads = [torch.jit.trace(nn.Linear(4, 2), torch.randn(3, 4)) for _ in range(2)]

    class Wrap(nn.Module):  # the heads' five-argument signature
        def __init__(self, linear: torch.jit.ScriptModule) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, q, k, v, mask, bias):
            return self.linear(q + k + v)

    traced = [
        torch.jit.trace(Wrap(h), (*[torch.randn(3, 4)] * 3, torch.zeros(1), torch.zeros(0)))
        for h in heads
    ]
    with pytest.warns(RuntimeWarning, match="per-head CUDA streams could not be scripted"):
        forker = script_forker(traced, cuda=True)
    inputs = [torch.randn(3, 4) for _ in range(3)]
    expected = torch.jit.script(HeadForker(traced))(*inputs, torch.zeros(1), [torch.zeros(0)] * 2)
    torch.testing.assert_close(forker(*inputs, torch.zeros(1), [torch.zeros(0)] * 2), expected)
