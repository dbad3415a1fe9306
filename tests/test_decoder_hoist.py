"""The decoder's keys and values in one product (``hoist-kv``): the plain decoder's answers on
random memories and padding masks, and the engines' decoder stage built with it."""

from __future__ import annotations

import pytest
import torch

from headway.models import build_cswintt
from headway.runtime.engines import engine_available
from headway.tracking.executors import build_executor
from headway.transforms.decoder import hoist_decoder_kv


@pytest.mark.parametrize(("config", "seed"), [("tiny", 11), ("default", 23)])
def test_hoisted_decoder_gives_the_plain_decoders_answers(config: str, seed: int) -> None:
    torch.manual_seed(seed)
    network = build_cswintt(config).eval()
    hoisted, report = hoist_decoder_kv(network)
    assert report.layers == network.config.dec_layers
    assert network.transformer.decoder_override is None  # the original is left as it was
    tokens = 1 + torch.randint(20, 700, ()).item()
    for batch in (1, 2):
        memory = torch.randn(tokens, batch, network.config.d_model) * 3
        mask = torch.rand(batch, tokens) < 0.3
        mask[:, 0] = False  # a row of all padding is undefined in both
        with torch.inference_mode():
            plain = network.forward_decoder(memory, mask)
            fast = hoisted.forward_decoder(memory, mask)
        scale = plain.abs().max().item()
        assert (plain - fast).abs().max().item() <= 1e-5 * max(scale, 1.0)


@pytest.mark.skipif(not engine_available("onnxruntime"), reason="onnxruntime not installed")
def test_the_engines_decoder_runs_hoisted(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(5)
    network = build_cswintt("tiny").eval()
    executor = build_executor("onnxruntime", network)
    assert executor.network.transformer.decoder_override is not None
    tokens = network.config.num_tokens
    memory = torch.randn(tokens, 1, network.config.d_model)
    mask = torch.zeros(1, tokens, dtype=torch.bool)
    mask[0, :7] = True
    with torch.inference_mode():
        reference = network.forward_decoder(memory, mask)
        answer = executor.decoder(memory, mask)
    assert (reference - answer).abs().max().item() <= 1e-4
    executor.close()
