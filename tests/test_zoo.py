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
