"""AlexNet, SqueezeNet 1.1 and VGG-16 (with and without batch norm), with torchvision's
parameter names so torchvision checkpoints load unchanged.

``small_input=True`` gives CIFAR-style variants for 32×32 images: the same layer list (so a
decomposition or a job split treats both alike) with strides, pooling and classifier widths
that suit the small input. Their classifier shapes differ from the ImageNet ones, so ImageNet
checkpoints load only into ``small_input=False`` models.
"""

from __future__ import annotations

import torch
from torch import nn


class AlexNet(nn.Module):
    """torchvision's AlexNet (one-tower variant, 61.1 M parameters at 1000 classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, small_input: bool = False):
        super().__init__()
        first = (
            nn.Conv2d(3, 64, 3, stride=1, padding=1)
            if small_input
            else nn.Conv2d(3, 64, 11, stride=4, padding=2)
        )
        self.features = nn.Sequential(
            first,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2) if not small_input else nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2) if not small_input else nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2) if not small_input else nn.MaxPool2d(2),
        )
        pooled = 2 if small_input else 6
        hidden = 1024 if small_input else 4096
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * pooled * pooled, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def layer_sequence(self) -> list[nn.Module]:
        """The forward pass as a list of layers whose composition equals ``self(x)`` in
        inference (blocks with internal branches stay whole): how a runtime cuts the model into
        jobs."""
        return [*self.features, self.avgpool, nn.Flatten(1), *self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Fire(nn.Module):
    """SqueezeNet's fire module: 1×1 squeeze, then parallel 1×1 and 3×3 expands."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1 (1.24 M parameters at 1000 classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, small_input: bool = False):
        super().__init__()
        stride = 1 if small_input else 2
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=stride, padding=1 if small_input else 0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is final_conv:
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.constant_(module.bias, 0)

    def layer_sequence(self) -> list[nn.Module]:
        """The forward pass as a list of layers whose composition equals ``self(x)`` in
        inference (blocks with internal branches stay whole): how a runtime cuts the model into
        jobs."""
        return [*self.features, *self.classifier, nn.Flatten(1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


VGG16_LAYOUT: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]


class VGG(nn.Module):
    """torchvision's VGG; ``batch_norm`` gives vgg16_bn (138.4 M parameters at 1000 classes)."""

    def __init__(
        self,
        num_classes: int = 1000,
        batch_norm: bool = False,
        dropout: float = 0.5,
        small_input: bool = False,
        layout: list[int | str] | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in layout or VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = max(8, int(item * width))
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        pooled = 1 if small_input else 7
        hidden = 512 if small_input else 4096
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pooled * pooled, hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear) and not small_input:
                # torchvision's init; with the narrow small-input classifier it would shrink
                # the signal ~100x, so those layers keep PyTorch's default initialisation
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

    def layer_sequence(self) -> list[nn.Module]:
        """The forward pass as a list of layers whose composition equals ``self(x)`` in
        inference (blocks with internal branches stay whole): how a runtime cuts the model into
        jobs."""
        return [*self.features, self.avgpool, nn.Flatten(1), *self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
