"""Batch-norm folding proven on the torch.fx graph: any architecture (a torchvision-structured
ResNet stand-in written here, since torchvision is not installed by `make test`; the real one
when it is), with every norm that cannot fold named with its reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headway.models import build_cswintt, create_model
from headway.transforms.fold import BATCH_NORMS, fold_batchnorm


class StandInBottleneck(nn.Module):
    """torchvision's Bottleneck structure and names, not headway's class (folding must not
    depend on class names)."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class StandInResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(StandInBottleneck(8, 4), StandInBottleneck(16, 4))
        self.layer2 = nn.Sequential(StandInBottleneck(16, 8, 2), StandInBottleneck(32, 8))
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def check_equal(model: nn.Module, folded: nn.Module, x: torch.Tensor, atol: float) -> None:
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=atol)


def test_every_pair_of_a_torchvision_structured_resnet_folds() -> None:
    torch.manual_seed(0)
    model = randomise_norms(StandInResNet(), seed=1)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, report = fold_batchnorm(model)
    assert report.layers == norms == 15 and not report.skipped
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    check_equal(model, folded, torch.randn(2, 3, 32, 32) + 0.5, atol=1e-5)


class NotAfterConv(nn.Module):
    """Three norms that must stay: on the input, after a conv whose output is also read by a
    residual, and a norm module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.after_shared = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.twice = nn.BatchNorm2d(3)
        self.conv3 = nn.Conv2d(3, 3, 1)
        self.ok = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.input_norm(x))
        y = self.after_shared(y) + y
        y = self.twice(self.twice(self.conv2(y)))
        return self.ok(self.conv3(y))


def test_norms_that_cannot_fold_are_named_with_their_reason() -> None:
    torch.manual_seed(2)
    model = randomise_norms(NotAfterConv(), seed=3)
    folded, report = fold_batchnorm(model)
    assert report.layers == 1  # only `ok`
    assert "not a convolution" in report.skipped["input_norm"]
    assert "read elsewhere" in report.skipped["after_shared"]
    assert "more than once" in report.skipped["twice"]
    check_equal(model, folded, torch.randn(2, 3, 8, 8), atol=1e-5)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: fx cannot trace this module
            return self.block(x)
        return self.block(-x)


def test_an_untraceable_module_is_searched_child_by_child_and_reported() -> None:
    torch.manual_seed(4)
    model = randomise_norms(Untraceable(), seed=5)
    folded, report = fold_batchnorm(model)
    assert report.layers == 1
    assert any(
        note.startswith("not traceable, searched by child: <model>") for note in report.notes
    )
    check_equal(model, folded, torch.randn(2, 3, 8, 8), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn", "inception_v3", "regnet_y_32gf"])
def test_zoo_and_tracker_fold_every_norm(name: str) -> None:
    torch.manual_seed(6)
    model = randomise_norms(create_model(name, num_classes=10, small_input=True), seed=7)
    folded, report = fold_batchnorm(model)
    assert report.layers == sum(isinstance(m, BATCH_NORMS) for m in model.modules())
    check_equal(model, folded, torch.randn(2, 3, 32, 32), atol=1e-4)
    network = build_cswintt("tiny").eval()
    assert fold_batchnorm(network)[1].layers == sum(
        isinstance(m, BATCH_NORMS) for m in network.modules()
    )


def test_torchvision_resnet50_folds_all_53_norms() -> None:
    models = pytest.importorskip("torchvision.models", reason="torchvision not installed")
    model = randomise_norms(models.resnet50(), seed=8)
    folded, report = fold_batchnorm(model)
    assert report.layers == 53 and not report.skipped
    check_equal(model, folded, torch.randn(1, 3, 64, 64), atol=1e-4)


# -- stand-ins for the real libraries' norm structures (torchvision and timm are not installed
# by `make test`; benchmarks run the real ones) ----------------------------------------------


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm + activation in one module: batch norm, then ``drop`` (drop path / dropout),
    then ``act``."""

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.drop = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d's structure (not headway's class): buffers only."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.eps = 1e-5
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0)):
            self.register_buffer(name, torch.full((features,), value))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class FrozenBatchNormAct2d(FrozenBatchNorm2d):
    """timm's frozen norm + activation (layers/norm_act.py): fixed statistics as buffers, then
    ``drop``, then ``act``; a plain ``nn.Module``, not a ``BatchNorm2d``."""

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.drop = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class NormWithExtra(nn.BatchNorm2d):
    """A norm subclass whose forward adds something headway cannot know about."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2 + 1


class Structures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn_act = nn.Conv2d(3, 6, 3, padding=1, bias=False), BatchNormAct2d(6)
        self.conv2, self.frozen = nn.Conv2d(6, 6, 3, padding=1), FrozenBatchNorm2d(6)
        self.conv3, self.sync = nn.Conv2d(6, 6, 1, bias=False), nn.SyncBatchNorm(6)
        self.conv4, self.extra = nn.Conv2d(6, 6, 1), NormWithExtra(6)
        self.conv5, self.frozen_act = nn.Conv2d(6, 6, 3, padding=1), FrozenBatchNormAct2d(6)
        self.aux = nn.Sequential(nn.Conv2d(6, 2, 1), nn.BatchNorm2d(2))  # training-only head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.frozen(self.conv2(self.bn_act(self.conv1(x))))
        x = self.frozen_act(self.conv5(x))
        return self.extra(self.conv4(self.sync(self.conv3(x))))


def test_real_library_norm_structures_fold_exactly_or_are_named() -> None:
    torch.manual_seed(11)
    model = randomise_norms(Structures(), seed=12)
    generator = torch.Generator().manual_seed(13)
    for frozen in (model.frozen, model.frozen_act):
        frozen.running_mean.copy_(torch.randn(6, generator=generator) * 0.1)
        frozen.running_var.copy_(torch.rand(6, generator=generator) + 0.5)
        frozen.weight.copy_(torch.rand(6, generator=generator) + 0.5)
        frozen.bias.copy_(torch.randn(6, generator=generator) * 0.2)
    folded, report = fold_batchnorm(model)
    assert report.layers == 4  # bn_act and frozen_act (activations kept), frozen, sync
    assert isinstance(folded.bn_act, nn.Sequential) and isinstance(folded.bn_act[1], nn.SiLU)
    assert isinstance(folded.frozen_act, nn.Sequential)
    assert isinstance(folded.frozen_act[1], nn.ReLU)
    assert "forward of its own" in report.skipped["extra"]
    assert "not reached by the traced forward" in report.skipped["aux.1"]
    assert set(report.skipped) == {"extra", "aux.1"}
    check_equal(model, folded, torch.randn(2, 3, 9, 7) + 0.3, atol=1e-5)
