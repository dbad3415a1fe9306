"""One registry of the models headway knows: ``create_model(name, ...)`` builds any of them and
:func:`model_card` says what input it takes, how many classes it has and which weights ship
with headway.

Families: ``cnn`` (the zoo of paper B; names and parameter names follow torchvision, so
torchvision checkpoints load with :func:`headway.models.load_weights`), ``vit`` (DeiT, timm
names) and ``tracker`` (CSWinTT, the official checkpoint's names).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from headway.errors import InputError, first_line
from headway.models.classic import VGG, AlexNet, SqueezeNet
from headway.models.cswintt import CONFIGS, build_cswintt
from headway.models.deit import DEIT_CONFIGS, build_deit
from headway.models.inception import Inception3
from headway.models.regnet import REGNET_Y_32GF, RegNet
from headway.models.resnet import ResNet


@dataclass(frozen=True)
class ModelCard:
    """What headway knows about a model: how to build it, what input it expects, its classes,
    and the file of weights shipped in ``headway/weights/`` (None: none ship)."""

    builder: Callable[..., nn.Module]
    input_size: int = 224  # ImageNet side (DeiT: its image size; CSWinTT: its search crop)
    small_input_size: int | None = 32  # the CIFAR-style variant (``small_input=True``), if any
    num_classes: int | None = 1000  # None: not a classifier
    family: str = "cnn"
    weights: str | None = None


def _deit_card(name: str) -> ModelCard:
    config = DEIT_CONFIGS[name]
    return ModelCard(partial(build_deit, name), config.img_size, None, config.num_classes, "vit")


def _cswintt_card(name: str, weights: str | None = None) -> ModelCard:
    builder = partial(build_cswintt, name)
    return ModelCard(builder, CONFIGS[name].search_size, None, None, "tracker", weights)


MODELS: dict[str, ModelCard] = {
    "alexnet": ModelCard(AlexNet),
    "squeezenet1_1": ModelCard(SqueezeNet),
    "vgg16": ModelCard(partial(VGG, batch_norm=False)),
    "vgg16_bn": ModelCard(partial(VGG, batch_norm=True)),
    "resnet50": ModelCard(partial(ResNet, (3, 4, 6, 3))),
    "resnet152": ModelCard(partial(ResNet, (3, 8, 36, 3))),
    "inception_v3": ModelCard(Inception3, input_size=299),
    "regnet_y_32gf": ModelCard(partial(RegNet, REGNET_Y_32GF)),
    **{name: _deit_card(name) for name in DEIT_CONFIGS},
    "cswintt_default": _cswintt_card("default"),
    "cswintt_tiny": _cswintt_card("tiny", weights="tiny_tracker.pth"),
}


def list_models(family: str | None = "cnn") -> list[str]:
    """Names of one family (``cnn``, ``vit``, ``tracker``), or of every model with None."""
    return sorted(n for n, card in MODELS.items() if family is None or card.family == family)


def model_card(name: str) -> ModelCard:
    """The registry entry of ``name``; a one-line error naming the choices if unknown."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}: choose from {', '.join(list_models(None))}")
    return MODELS[name]


# Models from the libraries users already have, named ``source:name`` (random weights; load
# real ones with a checkpoint): the packages stay optional.
EXTERNAL_SOURCES = {
    "torchvision": "pip install torchvision",
    "timm": "pip install timm",
}


def is_external(name: str) -> bool:
    """Whether ``name`` is ``torchvision:<model>`` or ``timm:<model>``."""
    source, sep, model = name.partition(":")
    return bool(sep and model) and source in EXTERNAL_SOURCES


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # in sys.modules without a spec (a stand-in)
        return sys.modules.get(package) is not None


def check_model_name(name: str, family: str = "cnn") -> str:
    """``name`` if it is a registry model of ``family`` or an external ``source:model`` whose
    library is installed; a one-line error naming the choices (or how to install the library)
    otherwise, before any work."""
    if is_external(name):
        source = name.partition(":")[0]
        if not _installed(source):
            raise InputError(
                f"{name}: {source} is not installed ({EXTERNAL_SOURCES[source]}); headway's own "
                f"models need nothing extra: {', '.join(list_models(None))}"
            )
        return name
    if name in list_models(family):
        return name
    sources = ", ".join(f"{s}:<name>" for s in EXTERNAL_SOURCES)
    raise InputError(
        f"unknown model {name!r}: choose from {', '.join(list_models(family))}, or {sources}"
    )


def create_external(name: str, num_classes: int | None = None, **settings: Any) -> nn.Module:
    """``torchvision:<model>`` or ``timm:<model>`` built by that library with random weights
    (nothing is downloaded; pass real weights to :func:`~headway.models.load_weights`);
    ``settings`` go to its constructor (torchvision Inception-v3's ``transform_input``)."""
    source, _, model_name = name.partition(":")
    if source not in EXTERNAL_SOURCES or not model_name:
        raise InputError(f"{name!r} is not source:model with source in {sorted(EXTERNAL_SOURCES)}")
    try:
        library = importlib.import_module(
            "torchvision.models" if source == "torchvision" else "timm"
        )
    except ImportError:
        raise InputError(
            f"{name}: {source} is not installed ({EXTERNAL_SOURCES[source]}); headway's own "
            f"models need nothing extra: {', '.join(list_models(None))}"
        ) from None
    extra = {**settings, **({} if num_classes is None else {"num_classes": num_classes})}
    try:
        if source == "torchvision":
            return library.get_model(model_name, weights=None, **extra)
        return library.create_model(model_name, pretrained=False, **extra)
    except (ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"{name}: {source} cannot build it ({first_line(error)})") from None


def default_input_size(name: str, small_input: bool = False) -> int:
    """The image side ``name`` is meant for (its input size, or the small-input variant's;
    224 for an external model)."""
    if is_external(name):
        return 32 if small_input else 224
    card = model_card(name)
    if small_input:
        if card.small_input_size is None:
            raise InputError(f"{name} has no small-input variant")
        return card.small_input_size
    return card.input_size


def checkpoint_overrides(
    name: str, num_classes: int | None, small_input: bool, checkpoint: object | None
) -> dict[str, Any]:
    """Constructor settings a checkpoint implies: torchvision's Inception-v3 ImageNet weights
    expect its input transform (torchvision turns ``transform_input`` on when loading them), so
    it is on for a 1000-class inception_v3 checkpoint at full input size. One rule for every
    path that loads weights (compress, multirun, a saved decomposed model)."""
    if name not in ("inception_v3", "torchvision:inception_v3") or checkpoint is None:
        return {}
    if small_input:
        return {}
    default = 1000 if is_external(name) else model_card(name).num_classes
    classes = num_classes if num_classes is not None else default
    return {"transform_input": classes == 1000}


def random_model_and_input(
    name: str,
    small_input: bool = False,
    input_size: int | None = None,
    batch: int = 1,
    seed: int = 0,
    **overrides: Any,
) -> tuple[nn.Module, torch.Tensor, int]:
    """``name`` with the random weights of ``seed``, in eval mode, and a random input batch
    of ``batch`` images of its default (or ``input_size``) side, which it returns too (the
    global random state is left as it was). ``overrides`` go to :func:`create_model` (e.g.
    :func:`checkpoint_overrides` before loading a checkpoint)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = create_model(name, small_input=small_input, **overrides).eval()
        size = input_size or default_input_size(name, small_input)
        return module, torch.randn(batch, 3, size, size), size


def create_model(
    name: str, num_classes: int | None = None, small_input: bool = False, **overrides: Any
) -> nn.Module:
    """Build ``name`` with random weights.

    Args:
        name: a registry name (see :func:`list_models`), or ``torchvision:<model>`` /
            ``timm:<model>`` built by that library (optional packages; ``small_input`` and
            ``overrides`` do not apply there).
        num_classes: classifier outputs (default: the card's); not for trackers.
        small_input: the CIFAR-style 32×32 variant (CNN zoo only).
        overrides: constructor / configuration fields, e.g. ``width=0.25`` for VGG,
            ``width=16`` for ResNet, ``depth=6`` for DeiT.
    """
    if num_classes is not None and num_classes < 1:
        raise InputError(f"a classifier needs at least one class, got {num_classes}")
    if is_external(name):
        # torchvision's own Inception-v3 switch, which it turns on for ImageNet weights
        allowed = {"transform_input"} if name == "torchvision:inception_v3" else set()
        if set(overrides) - allowed:
            raise InputError(f"{name}: headway's overrides {sorted(overrides)} do not apply")
        return create_external(name, num_classes, **overrides)
    card = model_card(name)
    if card.family == "cnn":
        classes = card.num_classes if num_classes is None else num_classes
        arguments = {"num_classes": classes, "small_input": small_input, **overrides}
    else:
        if small_input:
            raise InputError(f"{name} has no small-input variant")
        if num_classes is not None and card.num_classes is None:
            raise InputError(f"{name} is not a classifier: it takes no number of classes")
        arguments = {**({"num_classes": num_classes} if num_classes else {}), **overrides}
    try:
        return card.builder(**arguments)
    except TypeError as error:
        raise InputError(f"model {name!r} does not accept {sorted(overrides)}: {error}") from None
