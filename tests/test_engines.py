"""ONNX Runtime and OpenVINO as engines (optional extra, installed by `make test`): every engine
against eager on fresh random inputs, for the tracker's stages and through the generic path
(a zoo CNN, a Tucker-decomposed CNN, DeiT dense and with static masks); the export cache; the
one-line error when an engine is missing. Each test skips cleanly where its engine is absent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headway.errors import InputError
from headway.experiments.vit import MaskedClassifier
from headway.models import create_model
from headway.runtime import engines
from headway.runtime.engines import ENGINES, compile_module, engine_available, export_onnx
from headway.tracking.datasets import load_dataset
from headway.tracking.executors import build_executor, check_executor
from headway.tracking.tracker import CSWinTTTracker
from headway.transforms.sparse_attention import average_attention, masks_for_sparsity
from headway.transforms.tucker import decompose_model
from test_executors import FP32_ENCODER_TOL, encoder_inputs, random_network

# fp32 engines reorder sums like the fused executor; the bf16 hint may run products in bf16
# (where the processor has bf16 instructions), so it gets fused-bf16's bounds
TOLERANCES = {
    "onnxruntime": (FP32_ENCODER_TOL, 0.01),
    "openvino": (FP32_ENCODER_TOL, 0.01),
    "openvino-bf16": (0.25, 1.0),
}


def needs(engine: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not engine_available(engine), reason=f"{engine} not installed")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs(e)) for e in ENGINES])
def test_tracker_engine_executors_match_eager(engine: str, synth_dataset: Path) -> None:
    encoder_tol, box_tol = TOLERANCES[engine]
    network = random_network(seed=21)
    tokens, mask = encoder_inputs(network, 1, seed=22)
    sequence = load_dataset(synth_dataset, "otb")[0]
    with build_executor("eager", network) as eager, build_executor(engine, network) as other:
        with torch.inference_mode():
            expected = eager.encoder(tokens, mask)
            decoded = eager.decoder(expected, mask)
            torch.testing.assert_close(
                other.encoder(tokens, mask), expected, rtol=0, atol=encoder_tol
            )
            # encoder and decoder take equal shapes: each must get its own exported graph
            torch.testing.assert_close(
                other.decoder(expected, mask), decoded, rtol=0, atol=encoder_tol
            )
        eager_boxes = CSWinTTTracker(eager).run_sequence(sequence).boxes
        other_boxes = CSWinTTTracker(other).run_sequence(sequence).boxes
    assert np.abs(other_boxes - eager_boxes).max() <= box_tol


def _cnn_cases() -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(31)
    alexnet = create_model("alexnet", num_classes=10, small_input=True).eval()
    vgg = create_model("vgg16_bn", num_classes=10, small_input=True, width=0.25).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(32)) + 0.1
    tucker, _ = decompose_model(vgg, x, "ratio:0.5")
    return [("alexnet", alexnet, x), ("vgg16_bn tucker-2", tucker.eval(), x)]


def _deit_cases() -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(33)
    deit = create_model("deit_digits").eval()
    size = deit.config.img_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(34))
    masks, _ = masks_for_sparsity(average_attention(deit, [x]), 0.6)
    return [("deit dense", deit, x), ("deit static masks", MaskedClassifier(deit, masks).eval(), x)]


@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs(e)) for e in ENGINES])
def test_generic_path_matches_eager_for_cnns_and_deit(engine: str) -> None:
    tolerance = TOLERANCES[engine][0]
    for label, module, x in [*_cnn_cases(), *_deit_cases()]:
        with torch.inference_mode():
            expected = module(x)
        assert expected.abs().sum() > 0
        got = compile_module(engine, module, x)(x)
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance * scale, msg=label)


@needs("onnxruntime")
def test_exports_are_cached_per_weights_and_shape(tmp_path: Path) -> None:
    torch.manual_seed(35)
    model = create_model("alexnet", num_classes=10, small_input=True).eval()
    x = torch.randn(1, 3, 32, 32)
    first = export_onnx(model, (x,), tmp_path)
    stamp = first.stat().st_mtime_ns
    assert export_onnx(model, (x,), tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert export_onnx(model, (torch.randn(2, 3, 32, 32),), tmp_path) != first  # new shape
    with torch.no_grad():
        model.classifier[-1].bias.add_(1.0)
    assert export_onnx(model, (x,), tmp_path) != first  # new weights
    assert len(list(tmp_path.glob("*.onnx"))) == 3


def test_a_missing_engine_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        engines.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "openvino" else real(name, *a),
    )
    with pytest.raises(InputError, match=r"pip install 'headway\[engines\]'"):
        check_executor("openvino", "cpu")
    with pytest.raises(InputError, match="unknown engine"):
        compile_module("tensorrt", torch.nn.Identity(), torch.zeros(1))
    with pytest.raises(InputError, match="CPU only"):
        check_executor("onnxruntime", "cuda")


@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs(e)) for e in ENGINES])
def test_multirun_jobs_run_by_an_engine(engine: str) -> None:
    """MT mode with the jobs run by the engine (sessions shared by the workers; OpenVINO gives
    each worker thread its own infer request), coalescing included: the answers are the
    model's own."""
    from headway.vision.serving import ModelSpec, build_instance, run_mode

    plain = build_instance(ModelSpec("alexnet"), "plain", "layers")
    with torch.inference_mode():
        expected = plain.example
        for job in plain.jobs:
            expected = job(expected)
    spec = ModelSpec("alexnet", engine=engine)
    for coalesce in (1, 2):
        result = run_mode(
            "mt", {"a#0": spec, "a#1": spec, "a#2": spec}, requests=3, workers=2, coalesce=coalesce
        )
        assert not result.errors and set(result.last_outputs) == {"a#0", "a#1", "a#2"}
        for output in result.last_outputs.values():
            torch.testing.assert_close(output, expected, rtol=0, atol=TOLERANCES[engine][0])


def test_an_unusable_export_cache_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setenv("HEADWAY_CACHE", str(a_file))
    with pytest.raises(InputError, match="HEADWAY_CACHE"):
        export_onnx(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))


@needs("onnxruntime")
def test_bench_engines_rows_agree_with_eager(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headway.cli import app

    out = tmp_path / "engines.json"
    args = [
        "bench",
        "engines",
        "--cases",
        "vgg16_tucker",
        "--batches",
        "1",
        "--seconds",
        "0.05",
        "--compiled",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    variants = {r["variant"] for r in rows}
    assert {
        "eager",
        "eager channels-last",
        "compiled (inductor, freezing)",
        "onnxruntime",
    } <= variants
    assert all(r["ms"] > 0 and r["max_diff"] < 1e-4 for r in rows)


@needs("onnxruntime")
def test_exports_from_several_threads_share_the_cache(tmp_path: Path) -> None:
    """Workers that meet new shapes at once (coalesced batches) export one after another."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(36)
    models = [torch.nn.Linear(4, 3).eval() for _ in range(4)]
    inputs = [torch.randn(1 + i, 4) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda i: export_onnx(models[i], (inputs[i],), tmp_path), range(4)))
    assert len(set(paths)) == 4 and all(p.is_file() for p in paths)
