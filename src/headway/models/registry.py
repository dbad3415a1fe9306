"""Named model constructors: ``create_model(name, num_classes=..., small_input=..., **overrides)``.

Names follow torchvision (``vgg16_bn``, ``resnet152``, ``regnet_y_32gf``...), and so do the
parameter names of every model, so torchvision checkpoints load with
:func:`headway.models.load_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from headway.errors import InputError
from headway.models.classic import VGG, AlexNet, SqueezeNet
from headway.models.inception import Inception3
from headway.models.regnet import REGNET_Y_32GF, RegNet
from headway.models.resnet import ResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNet,
    "squeezenet1_1": SqueezeNet,
    "vgg16": partial(VGG, batch_norm=False),
    "vgg16_bn": partial(VGG, batch_norm=True),
    "resnet50": partial(ResNet, (3, 4, 6, 3)),
    "resnet152": partial(ResNet, (3, 8, 36, 3)),
    "inception_v3": Inception3,
    "regnet_y_32gf": partial(RegNet, REGNET_Y_32GF),
}


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(
    name: str, num_classes: int = 1000, small_input: bool = False, **overrides: Any
) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs; ``small_input`` for 32×32 images.
    ``overrides`` go to the constructor (e.g. ``width=0.25`` for VGG, ``width=16`` for ResNet).
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}: choose from {', '.join(list_models())}")
    try:
        return MODELS[name](num_classes=num_classes, small_input=small_input, **overrides)
    except TypeError as error:
        raise InputError(f"model {name!r} does not accept {sorted(overrides)}: {error}") from None
