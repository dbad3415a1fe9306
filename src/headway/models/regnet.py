"""RegNetY with torchvision's parameter names (RegNetY-32GF: 145.0 M parameters at 1000
classes). Stage widths and depths come from the quantised linear rule of Radosavovic et al.
(w_0, w_a, w_m, depth), as torchvision derives them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

QUANT = 8


@dataclass(frozen=True)
class RegNetParams:
    """The design-space parameters of one RegNet."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    se_ratio: float | None = 0.25
    stem_width: int = 32

    def stages(self) -> list[tuple[int, int, int]]:
        """(width, depth, group width) per stage, made compatible as torchvision does."""
        widths_cont = [i * self.w_a + self.w_0 for i in range(self.depth)]
        capacity = [round(math.log(w / self.w_0) / math.log(self.w_m)) for w in widths_cont]
        block_widths = [int(round(self.w_0 * self.w_m**c / QUANT) * QUANT) for c in capacity]
        stages: list[list[int]] = []
        for width in block_widths:
            if stages and stages[-1][0] == width:
                stages[-1][1] += 1
            else:
                stages.append([width, 1])
        result = []
        for width, depth in stages:
            group = min(self.group_width, width)
            width = _make_divisible(width, group)
            result.append((width, depth, group))
        return result


def _make_divisible(value: float, divisor: int) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


REGNET_Y_32GF = RegNetParams(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232)


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


class ResBottleneckBlock(nn.Module):
    """x + f(x), f = 1×1 → grouped 3×3 (stride) → SE → 1×1; a 1×1 projection when shapes
    change."""

    def __init__(
        self, width_in: int, width_out: int, stride: int, group_width: int, se_ratio: float | None
    ) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = _conv_bn(width_in, width_out, 1, stride, relu=False)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = _conv_bn(width_in, width_out, 1)
        layers["b"] = _conv_bn(width_out, width_out, 3, stride, groups=width_out // group_width)
        if se_ratio:
            layers["se"] = SqueezeExcitation(width_out, round(se_ratio * width_in))
        layers["c"] = _conv_bn(width_out, width_out, 1, relu=False)
        self.f = nn.Sequential(layers)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    """torchvision's RegNet layout: ``stem``, ``trunk_output.block{s}.block{s}-{i}``, ``fc``."""

    def __init__(
        self,
        params: RegNetParams = REGNET_Y_32GF,
        num_classes: int = 1000,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.stem = _conv_bn(3, params.stem_width, 3, stride=1 if small_input else 2)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        width_in = params.stem_width
        for index, (width, depth, group) in enumerate(params.stages(), start=1):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(depth):
                blocks[f"block{index}-{i}"] = ResBottleneckBlock(
                    width_in if i == 0 else width,
                    width,
                    2 if i == 0 else 1,
                    group,
                    params.se_ratio,
                )
            stages[f"block{index}"] = nn.Sequential(blocks)
            width_in = width
        self.trunk_output = nn.Sequential(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)

    def layer_sequence(self) -> list[nn.Module]:
        """The forward pass as a list of layers whose composition equals ``self(x)`` in
        inference (blocks with internal branches stay whole): how a runtime cuts the model into
        jobs."""
        blocks = [block for stage in self.trunk_output for block in stage]
        return [self.stem, *blocks, self.avgpool, nn.Flatten(1), self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk_output(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))
