"""ResNets with torchvision's parameter names: the truncated trunk with frozen batch norm that
trackers use (CSWinTT stops after ``layer3``) and the ImageNet classifiers ResNet-50/152.

Parameter and buffer names follow torchvision's ResNet so ImageNet and tracker checkpoints load
without renaming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, all stored as buffers.

    Checkpoints of detection/tracking models keep these four tensors as buffers and carry no
    ``num_batches_tracked``; a torchvision checkpoint that has one loads too (it is dropped).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """conv1 → bn1 → ReLU → maxpool → layer1..layerN (stride 4 · 2^(N-1), no fc, no layer4)."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 6),
        width: int = 64,
        norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if small_input:  # CIFAR-style stem: 3×3 stride 1, no max-pool
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        in_channels = width
        for stage, count in enumerate(blocks):
            stage_width = width * 2**stage
            stride = 1 if stage == 0 else 2
            layers = []
            for index in range(count):
                layers.append(
                    Bottleneck(in_channels, stage_width, stride if index == 0 else 1, norm_layer)
                )
                in_channels = stage_width * Bottleneck.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.out_channels = in_channels
        self.stride = (1 if small_input else 4) * 2 ** (len(blocks) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x


class ResNet(ResNetTrunk):
    """ImageNet ResNet classifier: the four-stage trunk, global average pool, ``fc``."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        num_classes: int = 1000,
        small_input: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__(blocks, width, nn.BatchNorm2d, small_input)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.out_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def layer_sequence(self) -> list[nn.Module]:
        """The forward pass as a list of layers whose composition equals ``self(x)`` in
        inference (blocks with internal branches stay whole): how a runtime cuts the model into
        jobs."""
        stages = [block for i in range(self.num_stages) for block in getattr(self, f"layer{i + 1}")]
        stem = [self.conv1, self.bn1, self.relu, self.maxpool]
        return [*stem, *stages, self.avgpool, nn.Flatten(1), self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(super().forward(x)), 1))
