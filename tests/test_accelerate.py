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
