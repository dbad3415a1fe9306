"""The one vocabulary (headway.ways) and the one tuning loop (headway.tuning.tune): every
executor's rewrites are the ones its graph always had, a new rewrite is one row that both
front doors can name, and the loop skips, fails, rejects, times and caches as it says."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from headway import ways
from headway.errors import InputError
from headway.tracking.executors import EXECUTORS
from headway.tuning import Trial, tune


@pytest.fixture(autouse=True)
def plan_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))


# what each executor's rewrite_network applied before the table existed (its if-chain)
EXPECTED_STEPS = {
    "eager": (),
    "scripted": (),
    "compiled": (),
    "heads": ("split",),
    "scripted-fork": ("fork",),
    "fused": ("fuse", "fold", "channels-last"),
    "fused-bf16": ("fuse", "fold", "channels-last", "bf16"),
    "spectral": ("spectral", "fold", "channels-last", "pack"),
    "spectral-bf16": ("spectral", "fold", "channels-last", "bf16"),
    "compiled-spectral": ("spectral", "fold", "channels-last"),
    "compiled-bf16": ("spectral", "fold", "channels-last", "bf16"),
    "cudagraph": ("fuse", "fold", "channels-last"),
    "cudagraph-bf16": ("fuse", "fold", "channels-last", "bf16"),
    "onnxruntime": ("spectral", "fold"),
    "openvino": ("spectral", "fold"),
    "openvino-bf16": ("spectral", "fold"),
    "cpp": (),
    "cpp-heads": ("split",),
    "cpp-spectral": ("spectral", "fold", "channels-last"),
    "cpp-aoti": ("spectral", "fold", "channels-last"),
}


def test_every_executor_applies_the_rewrites_its_graph_always_had() -> None:
    assert set(EXPECTED_STEPS) == set(EXECUTORS)
    for name, spec in EXECUTORS.items():
        assert spec.way.steps == EXPECTED_STEPS[name], name
        channels_last = "channels-last" in EXPECTED_STEPS[name]
        assert (spec.memory_format is torch.channels_last) == channels_last, name
        assert spec.autocast == ("bf16" in EXPECTED_STEPS[name]), name
        assert spec.engine == (
            spec.backend + ("-bf16" if spec.precision == "bf16" else "")
            if spec.backend in ways.ENGINE_BACKENDS
            else None
        )


def test_way_names_and_bad_ways() -> None:
    assert ways.Way().name == "plain@eager"
    assert ways.Way(("fold", "channels-last"), "bf16", "inductor").name == (
        "fold+channels-last+bf16@inductor"
    )
    with pytest.raises(ValueError, match="unknown rewrite 'warp'"):
        ways.Way(("warp",))
    with pytest.raises(ValueError, match="unknown rewrite 'bf16'"):  # a precision, not named
        ways.Way(("bf16",))
    with pytest.raises(ValueError, match="not a way"):
        ways.Way((), "fp16")
    with pytest.raises(ValueError, match="no engine 'onnxruntime-bf16'"):
        ways.Way(("fold",), "bf16", "onnxruntime")


def test_why_not_says_what_is_missing_in_a_few_words() -> None:
    assert ways.why_not(ways.Way(backend="cudagraph"), "cpu") == "needs CUDA"
    assert ways.why_not(ways.Way(backend="eager"), "cpu") is None
    assert ways.why_not(ways.Way(backend="openvino"), "cuda") == "runs on the CPU only"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).relu().mean((2, 3)))


def test_a_new_rewrite_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite added to the table is offered by name at once (here: a scale-and-unscale
    that computes the same), and applied on a copy."""
    calls: list[str] = []

    def halve_then_double(module: nn.Module) -> nn.Module:
        calls.append("applied")
        copy = ways.copy.deepcopy(module)
        copy.head.weight.data.mul_(0.5).mul_(2.0)
        return copy

    table = dict(ways.REWRITES)
    table["rescale"] = ways.Rewrite(halve_then_double, "a rewrite of one row")
    monkeypatch.setattr(ways, "REWRITES", table)
    torch.manual_seed(5)
    model = _Net().eval()
    way = ways.Way(("rescale", "fold"))
    assert way.steps == ("fold", "rescale")  # in table order
    run, held = ways.module_runner(way, model)
    x = torch.randn(2, 3, 9, 9) + 0.1
    with torch.inference_mode():
        torch.testing.assert_close(run(x), model(x), rtol=1e-5, atol=1e-5)
    assert calls == ["applied"] and held is not model


def test_tune_skips_fails_rejects_times_and_caches() -> None:
    built: list[str] = []
    closed: list[str] = []

    def build(name: str) -> str:
        built.append(name)
        if name == "broken":
            raise RuntimeError("no such kernel\nmore text")
        return name

    def check(name: str, candidate: str) -> tuple[dict[str, float], str | None]:
        diff = {"reference": 0.0, "fast": 1e-6, "slow": 1e-6, "wrong": 1.0}[candidate]
        return {"max_abs_diff": diff}, ("too far" if diff > 1e-3 else None)

    def time(candidate: str) -> list[float]:
        return [{"reference": 3.0, "fast": 1.0, "slow": 5.0}[candidate]]

    trial = Trial(build, check, time, skip=lambda n: "absent" if n == "missing" else None)
    trial.close = closed.append
    names = ["reference", "fast", "slow", "wrong", "broken", "missing"]
    options = {"precision": "fp32", "tolerance": 1e-3, "budget_s": 5.0, "reference": "reference"}
    plan, chosen = tune(names, trial, "k" * 24, **options)
    assert chosen == "fast" and plan.chosen == "fast" and not plan.cached
    status = {c.name: (c.status, c.reason) for c in plan.candidates}
    assert status["missing"] == ("skipped", "absent")
    assert status["broken"] == ("failed", "no such kernel")
    assert status["wrong"] == ("rejected", "too far")
    assert status["slow"][0] == "passed" and status["fast"][0] == "chosen"
    assert sorted(closed) == ["reference", "slow", "wrong"]
    built.clear()
    again, chosen = tune(names, trial, "k" * 24, **options)
    assert again.cached and chosen == "fast" and built == ["fast"]  # the choice only

    # a cached choice that cannot run here any more (an unbuilt runner, no CUDA): tuned again
    trial.skip = lambda n: "gone" if n in ("missing", "fast") else None
    retuned, chosen = tune(names, trial, "k" * 24, **options)
    assert not retuned.cached and chosen == "reference"
    trial.skip = lambda n: None
    first, chosen = tune(["reference", "fast"], trial, "q" * 24, **options)
    assert chosen == "fast" and not first.cached

    def fails_now(name: str) -> str:
        if name == "fast":
            raise RuntimeError("the runner is gone")
        return name

    trial.build = fails_now
    retuned, chosen = tune(["reference", "fast"], trial, "q" * 24, **options)
    assert not retuned.cached and chosen == "reference"


def test_a_plan_cache_that_cannot_be_written_costs_only_the_cache(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("HEADWAY_CACHE", str(blocker))  # plans/ cannot be made under a file
    trial = Trial(lambda n: n, lambda n, b: ({}, None), lambda b: [1.0])
    options = {"precision": "fp32", "tolerance": 1e-3, "budget_s": 5.0, "reference": "ref"}
    plan, chosen = tune(["ref"], trial, "c" * 24, **options)
    assert chosen == "ref" and not plan.cached


def test_tune_raises_when_the_reference_fails_or_nothing_passes() -> None:
    def broken(name: str) -> str:
        raise RuntimeError("the model itself cannot run")

    options = {"precision": "fp32", "tolerance": 1e-3, "budget_s": 5.0, "reference": "ref"}
    trial = Trial(broken, lambda n, b: ({}, None), lambda b: [1.0])
    with pytest.raises(RuntimeError, match="cannot run"):
        tune(["ref"], trial, "a" * 24, use_cache=False, **options)
    trial = Trial(lambda n: n, lambda n, b: ({}, "never the same twice"), lambda b: [1.0])
    with pytest.raises(InputError, match="no way of running the model meets the tolerance"):
        tune(["ref"], trial, "b" * 24, use_cache=False, **options)


def test_the_old_native_package_name_still_imports() -> None:
    import headway.tracking.native.build as moved

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        import headway.native.build as alias
        from headway.native.export import NATIVE_EXECUTORS

    assert alias is moved and "cpp" in NATIVE_EXECUTORS
