"""ONNX Runtime and OpenVINO as engines (optional extra, installed by `make test`): every engine
against eager on fresh random inputs, for the tracker's stages and through the generic path
(a zoo CNN, a Tucker-decomposed CNN, DeiT dense and with static masks); the export cache; the
one-line error when an engine is missing. Each test skips cleanly where its engine is absent."""

from __future__ import annotations

import dataclasses
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
from headway.tracking.executors import build_executor, check_executor, cpu_has_bf16
from headway.tracking.tracker import CSWinTTTracker
from headway.transforms.sparse_attention import average_attention, masks_for_sparsity
from headway.transforms.tucker import decompose_model
from headway.vision.serving import ModelSpec, build_model
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
        # the engine's own asynchronous requests chain the jobs (with coalescing: OpenVINO)
        assert ("engine" in result.notes) == (coalesce == 1 or engine != "onnxruntime")
        for output in result.last_outputs.values():
            torch.testing.assert_close(output, expected, rtol=0, atol=TOLERANCES[engine][0])


def _own_answer(spec: ModelSpec) -> torch.Tensor:
    """The plain model's answer to its request (no jobs, no engine)."""

    model, example = build_model(dataclasses.replace(spec, engine=None))
    with torch.inference_mode():
        return model(example)


@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs(e)) for e in ENGINES])
def test_chained_engine_jobs_give_every_instance_its_models_answer(engine: str) -> None:
    """Issue 23: the MT runner on an engine chains asynchronous jobs through one FIFO — a mix
    of models (one Tucker-2-decomposed), whole-model and layer-group jobs, closed and open
    loop, fewer slots than instances: every request is served and every answer is the
    model's own."""
    from headway.runtime.chained import run_chained
    from headway.vision.serving import ModelSpec, build_instance

    specs = {
        "vgg16#0": ModelSpec("vgg16", seed=1),
        "vgg16#1": ModelSpec("vgg16", seed=1),
        "alexnet#0": ModelSpec("alexnet", seed=2, decomposed="ratio:0.5"),
    }
    expected = {name: _own_answer(spec) for name, spec in specs.items()}
    tolerance = TOLERANCES[engine][1]
    # whole models with two requests in flight, then layer groups in open loop one at a time
    runs = (("jobs:1", None, 2), ("jobs:3", 200.0, 1))
    if engine == "openvino-bf16":  # the openvino path with another precision hint: one run
        runs = runs[1:2]
    for policy, rate, depth in runs:
        built = {spec: build_instance(spec, name, policy) for name, spec in specs.items()}
        instances = [
            type(built[spec])(name, built[spec].jobs, built[spec].example)
            for name, spec in specs.items()
        ]
        result = run_chained(instances, 3, engine, streams=2, depth=depth, rate=rate)
        assert not result.errors, result.errors
        assert {n: len(v) for n, v in result.latencies_ms.items()} == dict.fromkeys(specs, 3)
        assert result.notes["in_flight_at_end"] == 0
        for name, output in result.last_outputs.items():
            scale = float(expected[name].abs().max())
            assert float((output - expected[name]).abs().max()) <= tolerance * max(scale, 1.0)


@needs("openvino")
def test_plain_openvino_peer_serves_the_models_own_answers() -> None:
    from headway.vision.serving import ModelSpec, run_peer

    spec = ModelSpec("alexnet", seed=5)
    result = run_peer({"v#0": spec, "v#1": spec}, 2)
    assert {n: len(v) for n, v in result.latencies_ms.items()} == {"v#0": 2, "v#1": 2}
    assert result.notes["hint"] == "THROUGHPUT" and result.notes["streams"]
    for output in result.last_outputs.values():
        torch.testing.assert_close(output, _own_answer(spec), rtol=0, atol=1e-4)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_ctrl_c_lets_the_jobs_in_flight_come_back_before_it_ends_the_run(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 34: Ctrl-C during an ONNX Runtime run aborted the process ("exception not
    rethrown", exit 134): the interpreter ended while the engine's threads still had Python
    callbacks to run. Now no job starts, the ones in flight come back, and the engines are
    released before Ctrl-C goes on."""
    from headway.runtime import chained
    from headway.vision.serving import ModelSpec, build_instance

    if not engine_available(engine):
        pytest.skip(f"{engine} not installed")
    spec = ModelSpec("alexnet", seed=3)
    built = build_instance(spec, "alexnet#0", "jobs:2")
    instances = [type(built)(f"alexnet#{i}", built.jobs, built.example) for i in range(3)]
    seen: dict[str, object] = {}
    real_handle = chained._ChainedRun._handle_reports

    def interrupted(self: chained._ChainedRun, stall_s: float) -> None:
        seen["run"] = self
        seen["in_flight"] = self.in_flight  # jobs were started: the engine is busy
        raise KeyboardInterrupt

    monkeypatch.setattr(chained._ChainedRun, "_handle_reports", interrupted)
    with pytest.raises(KeyboardInterrupt):
        chained.run_chained(instances, 50, engine, streams=2)
    run = seen["run"]
    assert seen["in_flight"] and run.in_flight == 0 and run.stopping  # type: ignore[attr-defined]
    assert not run.chains  # type: ignore[attr-defined]
    monkeypatch.setattr(chained._ChainedRun, "_handle_reports", real_handle)


def test_chained_runner_refuses_bad_settings() -> None:
    from headway.runtime.chained import run_chained
    from headway.vision.serving import ModelSpec, run_mode

    with pytest.raises(InputError, match="unknown engine"):
        run_chained([], 1, "tensorrt")
    with pytest.raises(InputError, match="one engine"):
        run_mode("mt", {"a": ModelSpec("alexnet"), "b": ModelSpec("alexnet", engine="openvino")}, 1)
    if engine_available("openvino"):
        with pytest.raises(InputError, match="requests must be at least 1"):
            run_chained([], 0, "openvino")
        with pytest.raises(InputError, match="streams must be at least 1"):
            run_chained([], 1, "openvino", streams=0)


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
        "--json",
        str(out),
    ]  # without --compiled: torch.compile is covered by the executors' and accelerate's tests
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    variants = {r["variant"] for r in rows}
    assert {"eager", "eager channels-last", "onnxruntime"} <= variants
    assert all(r["ms"] > 0 for r in rows)
    # fp32 paths agree to 1e-4; bf16 autocast (where the CPU has bf16) to bf16's precision
    assert all(r["max_diff"] < (0.05 if "bf16" in r["variant"] else 1e-4) for r in rows)
    assert ("eager bf16 (autocast)" in variants) == cpu_has_bf16()


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


@needs("openvino")
def test_multirun_and_bench_multidnn_on_openvino(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`multirun --engine` runs the chained runner (whole-model jobs by default); `bench
    multidnn --only engines` puts headway's rows beside plain OpenVINO and says the ratio."""
    from typer.testing import CliRunner

    from headway.cli import app
    from headway.experiments import multidnn

    out = tmp_path / "run.json"
    args = ["multirun", "--models", "vgg16:2", "--engine", "openvino", "--requests", "2"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "chained" in result.output
    record = json.loads(out.read_text())
    assert record["notes"]["engine"] == "openvino" and not record["errors"]

    monkeypatch.setattr(multidnn, "HOMOGENEOUS", "vgg16:2")
    monkeypatch.setattr(multidnn, "ENGINE_CASES", multidnn.ENGINE_CASES[2:5])
    folder = tmp_path / "bench"
    args = ["bench", "multidnn", "--only", "engines", "--requests", "2", "--rounds", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(folder)])
    assert result.exit_code == 0, result.output
    assert "MT openvino / OpenVINO THROUGHPUT throughput per round" in result.output
    cases = json.loads((folder / "multidnn.json").read_text())["engines"]["cases"]
    assert set(cases) == {"OpenVINO THROUGHPUT", "MT openvino", "Dcomp.(MT) openvino"}
    assert all(c["throughput"] > 0 and not c["errors"] for c in cases.values())


def _pruned_digits_deit(with_ids: bool) -> tuple[torch.nn.Module, list[int]]:
    """The digits DeiT (random weights) with ~70% sparse masks and a 0.2 → 0.6 schedule."""
    from headway.models.deit import build_deit
    from headway.transforms.sparse_attention import additive_masks
    from headway.transforms.token_pruning import SparsePrunedDeiT, keep_counts, pruning_ratios

    torch.manual_seed(41)
    model = build_deit("deit_digits").eval()
    size = model.config.img_size
    maps = average_attention(model, [torch.randn(6, 3, size, size)])
    masks, _ = masks_for_sparsity(maps, 0.7)
    counts = keep_counts(model.config.num_patches, pruning_ratios(model.config.depth, 0.2, 0.6))
    return SparsePrunedDeiT(model, additive_masks(masks), counts, with_ids=with_ids), counts


@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs(e)) for e in ENGINES])
def test_sparse_pruned_deit_runs_on_the_engines_as_in_torch(engine: str) -> None:
    """Issue 23: the masked, pruned DeiT exports as it is (TopK picks the kept tokens, so
    shapes are static) and every engine keeps the same tokens and gives the same logits
    (fp32 ≤ 1e-4 on fresh inputs; the bf16 hint only runs and keeps the token count)."""
    pruned, counts = _pruned_digits_deit(with_ids=True)
    size = pruned.model.config.img_size
    first = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    run = compile_module(engine, pruned, first)
    for seed in (6, 7):  # fresh inputs, not the export's
        images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            logits, ids = pruned(images)
        got_logits, got_ids = run(images)
        assert got_ids.shape == ids.shape == (3, counts[-1])
        if engine == "openvino-bf16":
            continue
        assert torch.equal(got_ids.long(), ids)
        torch.testing.assert_close(got_logits, logits, rtol=0, atol=1e-4)


@needs("openvino")
def test_bench_vit_and_vit_accuracy_on_engines() -> None:
    """`bench vit --engines` times the pruned graph on each engine beside plain OpenVINO on the
    dense model; `vit accuracy --engine` scores on the engine what torch scores."""
    from headway.experiments.vit import accuracy_table, pruning_speedup
    from headway.models.deit import build_deit
    from headway.vision.data import ClassificationData

    (row,) = pruning_speedup(
        "deit_digits", batches=(2,), prune=(0.2, 0.6), min_run_time=0.05,
        engines=("openvino",),
    )  # fmt: skip
    assert set(row["variants"]) == {
        "sparse_only",
        "sparse_pruned",
        "sparse_pruned@openvino",
        "openvino dense (f32, as its users run it)",
        "openvino dense (bf16, as its users run it)",
    }
    assert row["max_diff"]["sparse_pruned@openvino"] < 1e-4
    assert row["max_diff"]["openvino dense (f32, as its users run it)"] < 1e-4

    torch.manual_seed(8)
    model = build_deit("deit_digits").eval()
    generator = torch.Generator().manual_seed(9)
    images = torch.randn(30, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (30,), generator=generator)
    data = ClassificationData(
        images[:20], labels[:20], images[20:], labels[20:], [str(i) for i in range(10)]
    )
    scores = [
        accuracy_table(model, data, (0.5,), (0.2, 0.6), other_prunes=(), engine=engine)
        for engine in (None, "openvino")
    ]
    assert scores[1]["engine"] == "openvino"
    assert scores[0]["rows"] == scores[1]["rows"] and scores[0]["dense"] == scores[1]["dense"]


@pytest.mark.parametrize(
    "engine", [pytest.param(e, marks=needs(e)) for e in ("openvino", "openvino-bf16")]
)
def test_chained_coalescing_gives_every_request_its_own_rows(engine: str) -> None:
    """Beyond the paper, on OpenVINO: queued requests for the same job of a shared model run as
    one batch and each gets its own rows back — the model's own answer — with whole-model and
    layer-group jobs, and beside another model that never shares a batch."""
    from headway.runtime.chained import run_chained
    from headway.vision.serving import build_instance

    specs = {f"vgg16#{i}": ModelSpec("vgg16", seed=3) for i in range(4)}
    specs["alexnet#0"] = ModelSpec("alexnet", seed=4)
    expected = {name: _own_answer(spec) for name, spec in specs.items()}
    tolerance = TOLERANCES[engine][1]
    for policy in ("jobs:1", "jobs:3"):
        built = {spec: build_instance(spec, name, policy) for name, spec in specs.items()}
        instances = [
            type(built[spec])(name, built[spec].jobs, built[spec].example)
            for name, spec in specs.items()
        ]
        result = run_chained(instances, 3, engine, coalesce=3)
        assert not result.errors, result.errors
        assert result.notes["coalesce"] == 3 and 1 <= result.notes["mean_batch"] <= 3
        assert {n: len(v) for n, v in result.latencies_ms.items()} == dict.fromkeys(specs, 3)
        for name, output in result.last_outputs.items():
            scale = max(float(expected[name].abs().max()), 1.0)
            assert float((output - expected[name]).abs().max()) <= tolerance * scale
    with pytest.raises(InputError, match="needs OpenVINO"):
        run_chained(instances, 1, "onnxruntime", coalesce=2)


@needs("openvino")
def test_a_stalled_engine_ends_the_run_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine job that never comes back (a swallowed callback, a hung request) fails the
    instances that wait for it with the reason after ``stall_s``; the run does not hang."""
    from headway.runtime import chained
    from headway.vision.serving import build_instance

    def silent_chain(self: object, jobs: list, example: torch.Tensor, done: object) -> list:
        return [chained._Link(lambda: None, lambda: np.zeros(1)) for _ in jobs]

    monkeypatch.setattr(chained._OpenVINOJobs, "chain", silent_chain)
    instance = build_instance(ModelSpec("alexnet"), "a#0", "jobs:1")
    result = chained.run_chained([instance], 2, "openvino", stall_s=1.0)
    assert result.errors == {"a#0": "the engine returned nothing for 1 s"}


@needs("openvino")
def test_requests_that_never_came_back_are_kept_not_waited_on_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the compiled models go, every request is waited for (GIL released) so no
    callback is left running into their destructors; one that never comes back within
    ``SETTLE_S`` keeps its callback instead of the release hanging, and every request is
    retired (kept alive a while), not freed at once."""
    from headway.runtime import chained, engines

    class Request:
        def __init__(self, comes_back: bool) -> None:
            self.comes_back, self.callbacks, self.waited_ms = comes_back, [], []

        def wait_for(self, timeout_ms: int) -> bool:
            self.waited_ms.append(timeout_ms)
            return self.comes_back

        def set_callback(self, callback: object, userdata: object) -> None:
            self.callbacks.append(callback)

    monkeypatch.setattr(chained, "SETTLE_S", 0.05)
    jobs = chained._OpenVINOJobs("openvino", 1, 1)
    done, hung = Request(True), Request(False)
    jobs._requests = [done, hung]
    jobs.release()
    assert not done.callbacks and not hung.callbacks  # a callback may still run: left alone
    assert 0 <= hung.waited_ms[0] <= 50
    assert any(done in objects for _, objects in engines._retired)  # kept alive a while
    jobs._requests = [done]
    jobs.release()
    assert jobs._requests == [] and done.callbacks == [chained._ignore]


@needs("openvino")
def test_back_to_back_chained_runs_neither_abort_nor_hang() -> None:
    """Engine objects freed while OpenVINO's threads still held their last tasks aborted the
    process ("Resource deadlock avoided") or hung it within a few dozen back-to-back runs;
    they are retired for a while now. A hang here ends the process with a traceback."""
    import faulthandler

    from headway.runtime.chained import run_chained
    from headway.runtime.jobs import ModelInstance
    from headway.vision.serving import build_instance

    shared = build_instance(ModelSpec("alexnet"), "a", "jobs:1", open_engine=False)
    instances = [ModelInstance(f"a#{i}", shared.jobs, shared.example) for i in range(3)]
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        for _ in range(8):
            for engine in ("openvino", "openvino-bf16"):
                for coalesce in (1, 2):
                    result = run_chained(instances, 3, engine, coalesce=coalesce)
                    assert not result.errors, result.errors
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_ctrl_c_in_a_command_is_one_line_and_exit_130() -> None:
    import typer
    from typer.testing import CliRunner

    from headway.cli.base import reports_errors

    app = typer.Typer()

    @app.command()
    @reports_errors
    def work() -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 130
    assert "interrupted (Ctrl-C)" in result.output


def test_the_export_fingerprint_sees_settings_outside_the_weights_and_the_repr() -> None:
    """A pruned DeiT and the dense one share weights and repr; only the keep counts (a plain
    list attribute) differ. Both used to map to one cached ONNX file, so the pruned model ran
    the dense graph."""
    from headway.models.deit import build_deit
    from headway.runtime.engines import module_fingerprint
    from headway.transforms.token_pruning import SparsePrunedDeiT

    torch.manual_seed(0)
    vit = build_deit("deit_digits").eval()
    x = (torch.randn(2, 3, 32, 32),)
    dense = SparsePrunedDeiT(vit)
    pruned = SparsePrunedDeiT(vit, counts=[65, 40, 30, 20, 10, 5])
    other = SparsePrunedDeiT(vit, counts=[65, 40, 30, 20, 10, 4])
    prints = {module_fingerprint(m, x) for m in (dense, pruned, other)}
    assert len(prints) == 3
    assert module_fingerprint(dense.train(), x) == module_fingerprint(dense.eval(), x)
