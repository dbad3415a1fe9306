"""The CNN zoo: torchvision parameter names and counts, small-input variants, the registry."""

from __future__ import annotations

import pytest
import torch

from headway.errors import InputError
from headway.models import create_model, list_models, load_weights

# parameter counts of torchvision's ImageNet models (1000 classes)
TORCHVISION_PARAMETERS = {
    "alexnet": 61_100_840,
    "squeezenet1_1": 1_235_496,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "inception_v3": 27_161_264,
    "regnet_y_32gf": 145_046_770,
}

SAMPLE_KEYS = {
    "alexnet": ["features.10.weight", "classifier.6.bias"],
    "squeezenet1_1": ["features.12.expand3x3.weight", "classifier.1.weight"],
    "vgg16": ["features.28.weight", "classifier.3.weight"],
    "vgg16_bn": ["features.41.running_var", "features.40.weight"],
    "resnet50": ["layer4.2.conv3.weight", "layer1.0.downsample.1.num_batches_tracked", "fc.weight"],
    "resnet152": ["layer3.35.bn2.bias"],
    "inception_v3": ["Mixed_7c.branch3x3dbl_3b.bn.running_var", "AuxLogits.fc.weight"],
    "regnet_y_32gf": ["trunk_output.block4.block4-0.f.se.fc1.weight", "stem.0.weight"],
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMETERS))
def test_torchvision_names_and_counts(name: str) -> None:
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[name]
    state = model.state_dict()
    for key in SAMPLE_KEYS[name]:
        assert key in state, key
    if name in ("alexnet", "squeezenet1_1", "resnet50"):
        load_weights(create_model(name), state)  # a torchvision-layout state_dict loads strictly


@pytest.mark.parametrize(
    "name", [n for n in sorted(TORCHVISION_PARAMETERS) if n != "regnet_y_32gf"]
)
def test_small_input_variants_classify_32x32(name: str) -> None:
    overrides = {"width": 0.25} if name.startswith("vgg") else {}
    model = create_model(name, num_classes=10, small_input=True, **overrides).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_forward_shapes() -> None:
    with torch.no_grad():
        assert create_model("squeezenet1_1").eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        inception = create_model("inception_v3", num_classes=5).eval()
        assert inception(torch.randn(1, 3, 299, 299)).shape == (1, 5)


def test_registry_errors() -> None:
    assert "vgg16" in list_models()
    with pytest.raises(InputError, match="unknown model 'vgg19'"):
        create_model("vgg19")
    with pytest.raises(InputError, match="does not accept"):
        create_model("alexnet", depth=3)


SMALL_OVERRIDES = {
    "vgg16": {"width": 0.25},
    "vgg16_bn": {"width": 0.25},
    "resnet50": {"width": 16},
    "resnet152": {"width": 16},
}


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_states_its_layer_order(name: str) -> None:
    """The registry sweep: every CNN builds from its card, and its layer_sequence() composes
    to exactly the model's own output (the multi-DNN runtime relies on it)."""
    from headway.models.registry import default_input_size, model_card
    from headway.runtime.jobs import layer_sequence

    assert model_card(name).family == "cnn" and default_input_size(name, True) == 32
    torch.manual_seed(1)
    model = create_model(name, num_classes=10, small_input=True, **SMALL_OVERRIDES.get(name, {}))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, y = model(x), x
        for layer in layer_sequence(model):
            y = layer(y)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_one_registry_for_every_family() -> None:
    from headway.models.pretrained import builtin_weights_path
    from headway.models.registry import default_input_size, model_card

    assert set(list_models("vit")) == {"deit_tiny", "deit_small", "deit_base", "deit_digits"}
    assert set(list_models("tracker")) == {"cswintt_default", "cswintt_tiny"}
    assert default_input_size("inception_v3") == 299 and default_input_size("deit_tiny") == 224
    assert model_card("cswintt_tiny").weights and builtin_weights_path().is_file()
    assert create_model("deit_digits").config.num_classes == 10
    assert create_model("deit_tiny", num_classes=7, depth=2).config.depth == 2
    with pytest.raises(InputError, match="no small-input variant"):
        create_model("deit_tiny", small_input=True)
    with pytest.raises(InputError, match="not a classifier"):
        create_model("cswintt_tiny", num_classes=3)
    with pytest.raises(InputError, match="no weights ship"):
        builtin_weights_path("cswintt_default")


def test_external_models_come_from_their_library_or_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchvision is not in `make test`'s set-up: a stand-in ``torchvision.models`` module with
    ``get_model`` checks the plumbing (names, arguments, no downloads); without it, the error
    says how to install it."""
    import sys
    import types

    from headway.models.registry import check_model_name
    from headway.vision.serving import parse_models
    from test_fold import StandInResNet

    calls = []

    def get_model(name: str, weights: object = "default", **kwargs: object) -> torch.nn.Module:
        calls.append((name, weights, kwargs))
        return StandInResNet()

    with pytest.raises(InputError, match="or torchvision:<name>"):
        check_model_name("keras:resnet")
    # not installed (both entries: where torchvision is installed and already imported,
    # its submodule is found in sys.modules without the parent): named before any work
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(InputError, match=r"pip install torchvision"):
        create_model("torchvision:resnet50")
    with pytest.raises(InputError, match=r"torchvision is not installed"):
        parse_models("vgg16:2,torchvision:resnet50:2")
    fake = types.ModuleType("torchvision.models")
    fake.get_model = get_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", fake)
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))
    assert parse_models("torchvision:resnet50:2,vgg16") == [
        ("torchvision:resnet50", 2),
        ("vgg16", 1),
    ]
    assert parse_models("timm:deit_small_patch16_224") == [("timm:deit_small_patch16_224", 1)]
    model = create_model("torchvision:resnet50", num_classes=5)
    assert isinstance(model, StandInResNet)
    assert calls == [("resnet50", None, {"num_classes": 5})]  # weights=None: nothing downloaded
    create_model("torchvision:inception_v3", transform_input=True)  # its ImageNet weights' rule
    assert calls[-1] == ("inception_v3", None, {"transform_input": True})
