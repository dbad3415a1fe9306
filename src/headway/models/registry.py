"""Named model constructors: ``create_model(name, num_classes=..., small_input=..., **overrides)``.

Names follow torchvision (``vgg16_bn``, ``resnet152``, ``regnet_y_32gf``...), and so do the
parameter names of every model, so torchvision checkpoints load with
:func:`headway.models.load_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from headway.errors import InputError
from headway.models.classic import VGG, AlexNet, SqueezeNet
from headway.models.inception import Inception3
from headway.models.regnet import REGNET_Y_32GF, RegNet
from headway.models.resnet import ResNet


@dataclass(frozen=True)
class ModelCard:
    """What headway knows about a zoo model: how to build it and what input it expects."""

    builder: Callable[..., nn.Module]
    input_size: int = 224  # ImageNet side
    small_input_size: int = 32  # the CIFAR-style variant (``small_input=True``)
    num_classes: int = 1000


MODELS: dict[str, ModelCard] = {
    "alexnet": ModelCard(AlexNet),
    "squeezenet1_1": ModelCard(SqueezeNet),
    "vgg16": ModelCard(partial(VGG, batch_norm=False)),
    "vgg16_bn": ModelCard(partial(VGG, batch_norm=True)),
    "resnet50": ModelCard(partial(ResNet, (3, 4, 6, 3))),
    "resnet152": ModelCard(partial(ResNet, (3, 8, 36, 3))),
    "inception_v3": ModelCard(Inception3, input_size=299),
    "regnet_y_32gf": ModelCard(partial(RegNet, REGNET_Y_32GF)),
}


def list_models() -> list[str]:
    return sorted(MODELS)


def model_card(name: str) -> ModelCard:
    """The registry entry of ``name``; a one-line error naming the choices if unknown."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}: choose from {', '.join(list_models())}")
    return MODELS[name]


def default_input_size(name: str, small_input: bool = False) -> int:
    """The image side ``name`` is meant for (ImageNet size, or the small-input variant's)."""
    card = model_card(name)
    return card.small_input_size if small_input else card.input_size


def create_model(
    name: str, num_classes: int | None = None, small_input: bool = False, **overrides: Any
) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs (default: the card's); ``small_input`` for
    32×32 images. ``overrides`` go to the constructor (e.g. ``width=0.25`` for VGG,
    ``width=16`` for ResNet).
    """
    card = model_card(name)
    classes = card.num_classes if num_classes is None else num_classes
    if classes < 1:
        raise InputError(f"a classifier needs at least one class, got {classes}")
    try:
        return card.builder(num_classes=classes, small_input=small_input, **overrides)
    except TypeError as error:
        raise InputError(f"model {name!r} does not accept {sorted(overrides)}: {error}") from None
