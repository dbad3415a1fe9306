"""``headway.accelerate`` on stand-ins with real libraries' structures: every candidate it
returns computes what the module computes, a candidate that does not is rejected, bad options
are one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import headway
from headway.errors import InputError
from headway.models.resnet import FrozenBatchNorm2d


class SamePadConv(nn.Conv2d):
    """timm's Conv2dSame: TF "same" padding computed from the input at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = max(
            (-(-height // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - height, 0
        )
        pad_w = max(
            (-(-width // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - width, 0
        )
        x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation)


class StandIn(nn.Module):
    """Conv + BN + ReLU, a frozen norm (torchvision detection), same padding, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.frozen = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8))
        self.same = SamePadConv(8, 16, 3, stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.frozen(self.stem(x)).relu()
        return self.head(self.same(x).mean((2, 3)))


def stand_in(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = StandIn().eval()
    for module in model.modules():  # norms that matter
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.fixture(autouse=True)
def plan_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))


def test_the_chosen_candidate_computes_what_the_module_does() -> None:
    model = stand_in(0)
    example = torch.randn(2, 3, 15, 17)  # odd sizes: same padding is asymmetric
    fast = headway.accelerate(model, example, budget_s=20)
    x = torch.randn(2, 3, 15, 17) + 0.2
    with torch.inference_mode():
        expected = model(x)
        got = fast(x)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    header, rows = fast.report.table()
    assert header[0] == "candidate" and "max rel |Δ|" in header
    statuses = {row[0]: row[1] for row in rows}
    assert statuses[fast.report.chosen] == "chosen"
    assert statuses["plain@eager"] in ("chosen", "passed")
    again = headway.accelerate(model, example, budget_s=20)
    assert again.report.cached and again.report.chosen == fast.report.chosen


def test_a_rewrite_that_changes_the_answers_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from headway import ways

    real_fold = ways.fold_batchnorm

    def wrong_fold(model):  # as fold_batchnorm did on timm's BatchNormAct2d: activation lost
        folded, report = real_fold(model)
        folded.stem[2] = nn.Identity()
        return folded, report

    monkeypatch.setattr(ways, "fold_batchnorm", wrong_fold)
    model = stand_in(1)
    fast = headway.accelerate(model, torch.randn(1, 3, 16, 16), budget_s=10)
    status = {c.name: c for c in fast.report.candidates}
    assert status["fold@eager"].status == "rejected"
    assert fast.report.chosen == "plain@eager" or not fast.report.chosen.startswith("fold")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tolerance": 0.0}, "tolerance must be"),
        ({"tolerance": float("nan")}, "tolerance must be"),
        ({"budget_s": 0.0}, "budget must be"),
        ({"precision": "fp16"}, "precision must be one of"),
        ({"probes": -1}, "probes must be"),
    ],
)
def test_bad_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        headway.accelerate(stand_in(2), torch.randn(1, 3, 8, 8), **options)


def test_inputs_must_be_tensors() -> None:
    with pytest.raises(InputError, match="tensor"):
        headway.accelerate(stand_in(3), [1, 2, 3])  # type: ignore[list-item]


def _halved(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v * 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", ["chosen", "onnxruntime"])
def test_a_result_saves_copies_and_loads_like_the_module(backend: str, tmp_path) -> None:
    import copy
    import pickle

    from headway.acceleration import Accelerated
    from headway.runtime.engines import engine_available
    from headway.ways import Way

    model = stand_in(4).train()
    example = torch.randn(2, 3, 12, 12)
    fast = headway.accelerate(model, example, budget_s=10)
    assert model.training  # the caller's module keeps its mode
    if backend != "chosen":
        if not engine_available(backend):
            pytest.skip(f"{backend} not installed")
        fast = Accelerated(fast.module, Way(("fold",), backend=backend), (example,), fast.report)
    state = fast.state_dict()
    assert list(state) == list(model.state_dict())  # the module's keys, each once
    x = torch.randn(2, 3, 12, 12)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool((a - b).abs().max() <= 1e-4 * b.abs().max())

    with torch.inference_mode():
        before = model.eval()(x)
        assert close(fast(x), before)
        for copied in (
            copy.deepcopy(fast),
            pickle.loads(pickle.dumps(fast)),
        ):
            assert close(copied(x), before)
        torch.save(fast, tmp_path / "fast.pt")
        loaded = torch.load(tmp_path / "fast.pt", weights_only=False)
        assert close(loaded(x), before)

    halved = _halved(model)
    result = fast.load_state_dict(halved)  # the module's checkpoint loads, and is used
    assert not result.missing_keys and not result.unexpected_keys
    model.load_state_dict(halved)
    with torch.inference_mode():
        assert close(fast(x), model(x))
    fast.load_state_dict(fast.state_dict())  # round trip
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fast.load_state_dict({**halved, "nosuch.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="cannot be moved or cast"):
        fast.to(torch.float64)
    with pytest.raises(InputError, match="inference only"):
        fast.train()
    fast.eval()


def test_not_a_module_is_one_line() -> None:
    with pytest.raises(InputError, match=r"must be a torch\.nn\.Module"):
        headway.accelerate(lambda x: x, torch.randn(1, 3))  # type: ignore[arg-type]


def test_an_unwritable_cache_costs_only_the_cache(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not a folder"
    blocker.write_text("")
    monkeypatch.setenv("HEADWAY_CACHE", str(blocker))  # neither plans nor exports can be kept
    model = stand_in(6)
    example = torch.randn(1, 3, 10, 10)
    fast = headway.accelerate(model, example, budget_s=8)
    with torch.inference_mode():
        assert (fast(example) - model(example)).abs().max() <= 1e-4 * model(example).abs().max()
    assert not fast.report.cached


def test_bad_example_output_and_probes_are_one_line() -> None:
    with pytest.raises(InputError, match=r"cannot run on example_inputs \(torch.float32 \[1, 5"):
        headway.accelerate(stand_in(7), torch.randn(1, 5, 8, 8))  # 5 channels, not 3

    class Scalar(nn.Module):
        def forward(self, x: torch.Tensor) -> float:
            return float(x.sum())

    with pytest.raises(InputError, match=r"must return tensors.*it returns float"):
        headway.accelerate(Scalar(), torch.randn(1, 3))
    with pytest.raises(InputError, match="probes must be a whole number"):
        headway.accelerate(stand_in(7), torch.randn(1, 3, 8, 8), probes=1.5)  # type: ignore[arg-type]


class Detector(nn.Module):
    """A detection-style head: a dict of tensors and a tuple inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.conv(x)
        return {"boxes": y[:, :2], "scores": (y[:, 2].sigmoid(), y[:, 3].amax((1, 2)))}


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "openvino"])
def test_nested_outputs_keep_their_nesting_on_every_backend(backend: str) -> None:
    from headway.acceleration import Accelerated
    from headway.runtime.engines import engine_available
    from headway.ways import Way

    if backend != "eager" and not engine_available(backend):
        pytest.skip(f"{backend} not installed")
    torch.manual_seed(8)
    model = Detector().eval()
    example = torch.randn(2, 3, 9, 9)
    fast = headway.accelerate(model, example, budget_s=5)
    fast = Accelerated(fast.module, Way(("fold",), backend=backend), (example,), fast.report)
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        got, expected = fast(x), model(x)
    assert set(got) == {"boxes", "scores"} and isinstance(got["scores"], tuple)
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=1e-4, atol=1e-5)
    for g, e in zip(got["scores"], expected["scores"], strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_new_shapes_build_within_a_bound_and_fall_back_with_a_warning(monkeypatch) -> None:
    import warnings

    from headway import acceleration

    monkeypatch.setattr(acceleration, "MAX_SHAPES", 2)
    model = stand_in(9)
    fast = headway.accelerate(model, torch.randn(1, 3, 12, 12), budget_s=8)

    def check(x: torch.Tensor) -> None:
        with torch.inference_mode():
            expected = model(x)
            got = fast(x)
        assert (got.float() - expected.float()).abs().max() <= 1e-4 * expected.abs().max()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second shape is built, silently
        check(torch.randn(3, 3, 14, 10))
        check(torch.randn(3, 3, 14, 10))
    with pytest.warns(UserWarning, match="beyond the 2 it builds for"):
        check(torch.randn(2, 3, 20, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every call
        check(torch.randn(2, 3, 20, 20))
    with pytest.raises(RuntimeError, match="Double"):  # the module's own error, as it is
        fast(torch.randn(1, 3, 12, 12, dtype=torch.float64))

    relu = headway.accelerate(nn.Sequential(nn.ReLU()), torch.randn(2, 5), budget_s=3)
    relu(torch.randn(3, 5))  # the second shape: built
    with pytest.warns(UserWarning, match="beyond the 2"):
        relu(torch.randn(4, 5))
    x = torch.randn(2, 5, dtype=torch.float64)  # said too, after the bound's warning
    with pytest.warns(UserWarning, match="another kind than the example's"):
        got = relu(x)
    assert got.dtype == torch.float64 and torch.equal(got, x.relu())


def test_a_way_that_differs_on_a_new_shape_is_not_used_there() -> None:
    model = stand_in(10)
    example = torch.randn(1, 3, 12, 12)
    fast = headway.accelerate(model, example, budget_s=8)
    built = fast._run

    def wrong_elsewhere(x: torch.Tensor) -> torch.Tensor:  # as a trace of a shape branch
        return built(x) if x.shape == example.shape else built(x) + 1.0

    object.__setattr__(fast, "_run", wrong_elsewhere)
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning, match="differs from the module"):
        got = fast(x)
    with torch.inference_mode():
        torch.testing.assert_close(got, model(x))
        torch.testing.assert_close(fast(x), model(x))  # remembered: the module runs it


def test_whole_modules_run_on_the_engines_defaults_and_stages_do_not() -> None:
    from headway.runtime.engines import EngineModule, engine_available
    from headway.ways import Way, module_runner

    if not engine_available("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    model, example = stand_in(11), torch.randn(1, 3, 8, 8)
    run, _ = module_runner(Way(("fold",), backend="onnxruntime"), model, (example,))
    stage = EngineModule("onnxruntime", model)

    def options(engine: EngineModule):
        return engine.session_for(example)._session.get_session_options()

    whole = options(run)  # type: ignore[arg-type]
    assert whole.intra_op_num_threads == 0  # ONNX Runtime's own: a pinned thread per core
    among_others = options(stage)
    assert among_others.intra_op_num_threads == torch.get_num_threads()
    assert among_others.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_tuning_loop_does_not_start_what_would_overrun_and_retimes_near_ties() -> None:
    from headway.tuning import CandidateResult, Trial, choose_fastest, tune

    speeds = {"ref": 10.0, "quick": 5.0, "slow-build": 1.0}
    trial = Trial(
        build=lambda name: name,
        check=lambda name, built: ({"max_abs_diff": 0.0}, None),
        time=lambda built: [speeds[built]],
        cost=lambda name, spent: 1e6 if name == "slow-build" else 0.0,
    )
    plan, built = tune(
        ["quick", "slow-build"], trial, "k", precision="fp32", tolerance=1e-4, budget_s=30,
        reference="ref", use_cache=False,
    )  # fmt: skip
    results = {c.name: c for c in plan.candidates}
    assert results["slow-build"].status == "skipped"
    assert "would overrun the tuning budget" in results["slow-build"].reason
    assert plan.chosen == built == "quick"

    # a near-tie: both timed again; within 1% the one listed first is kept
    calls = {"simple": 0, "engine": 0}

    def timed(name: str, ms: float):
        def run() -> list[float]:
            calls[name] += 1
            return [ms]

        return run

    results = {n: CandidateResult(n, "passed") for n in calls}
    chosen = choose_fastest(
        results, {"simple": timed("simple", 10.05), "engine": timed("engine", 10.0)}, 0.0
    )
    assert chosen == "simple" and calls["simple"] == calls["engine"] == 4
    assert "near-tie with simple" in results["engine"].reason
    results = {n: CandidateResult(n, "passed") for n in calls}
    assert (
        choose_fastest(
            results, {"simple": timed("simple", 10.25), "engine": timed("engine", 10.0)}, 0.0
        )
        == "engine"
    )


def test_each_variant_is_timed_after_the_last_ones_threads_settle(monkeypatch) -> None:
    """A runtime's threads spin-wait after its calls: the interleaved timer pauses before a
    variant that follows another one (not before a repeat), and the pause is not counted in
    the timing budget (the rounds it allows are the same)."""
    from headway import tuning

    monkeypatch.delenv(tuning.SETTLE_ENV, raising=False)  # the default (the suite sets 0)
    events: list[str] = []
    monkeypatch.setattr(tuning.time, "sleep", lambda seconds: events.append(f"pause {seconds}"))

    def run(name: str):
        def timed() -> list[float]:
            events.append(name)
            return [1.0]

        return timed

    samples = tuning.interleaved_samples({"a": run("a"), "b": run("b")}, 0.0, 2, 2)
    assert samples == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    pause = f"pause {tuning.SETTLE_S}"
    # rounds alternate their order: a b | b a  (no pause between the two b's)
    assert events == ["a", pause, "b", "b", pause, "a"]
    events.clear()
    assert tuning.interleaved_samples({"only": run("only")}, 0.0, 3, 3) == {"only": [1.0] * 3}
    assert events == ["only"] * 3
    events.clear()
    monkeypatch.setenv(tuning.SETTLE_ENV, "0")  # no pause at all
    tuning.interleaved_samples({"a": run("a"), "b": run("b")}, 0.0, 2, 2)
    assert events == ["a", "b", "b", "a"]
    monkeypatch.setenv(tuning.SETTLE_ENV, "20")
    assert tuning.settle_s() == pytest.approx(0.02)
    for bad in ("soon", "-5", "nan"):
        monkeypatch.setenv(tuning.SETTLE_ENV, bad)
        with pytest.raises(InputError, match="HEADWAY_SETTLE_MS must be a number"):
            tuning.settle_s()


class Branching(nn.Module):
    """Control flow on the input's values: a trace keeps only the branch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if x.mean() > 0 else -y


def test_a_traced_branch_is_rejected_and_the_choice_is_right_on_both_branches() -> None:
    import warnings

    from headway.runtime.engines import engine_available

    torch.manual_seed(12)
    model = Branching().eval()
    example = torch.randn(1, 3, 8, 8).abs()  # the positive branch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = headway.accelerate(model, example, budget_s=20)
    status = {c.name: c for c in fast.report.candidates}
    for engine in ("onnxruntime", "openvino"):
        if engine_available(engine):  # seen before the trace: the module reads a value
            assert status[f"fold@{engine}"].status == "skipped"
            assert "reads tensor values into Python" in status[f"fold@{engine}"].reason
    for x in (example + 0.1, -example - 0.1):
        with torch.inference_mode():
            torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_budget_too_small_for_any_candidate_keeps_the_module_and_says_so() -> None:
    fast = headway.accelerate(stand_in(13), torch.randn(1, 3, 8, 8), budget_s=1e-6)
    assert fast.report.chosen == "plain@eager"
    assert fast.report.skipped()[0].startswith("tuning budget spent: fold@eager")


class InPlace(nn.Module):
    """Writes into its input, as some preprocessing layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return self.conv(x)


def test_a_module_that_writes_into_its_input_is_checked_on_the_real_inputs() -> None:
    torch.manual_seed(14)
    model = InPlace().eval()
    example = torch.randn(1, 3, 8, 8)
    kept = example.clone()
    fast = headway.accelerate(model, example, budget_s=8)
    assert torch.equal(example, kept)  # the caller's example is as it was
    assert fast.report.candidates[0].status in ("chosen", "passed")  # not rejected vs itself
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.clone()), model(x.clone()), rtol=1e-4, atol=1e-5)
