"""Loading official CSWinTT weights: key names and shapes from the spec, strictness, layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headway.errors import InputError
from headway.models import CheckpointMismatchError, build_cswintt, load_weights


def official_key_shapes() -> dict[str, tuple[int, ...]]:
    """The released checkpoint's keys and shapes, written out from the spec (§3)."""
    keys: dict[str, tuple[int, ...]] = {}
    body = "backbone.0.body."

    def frozen_bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (n,)

    keys[body + "conv1.weight"] = (64, 3, 7, 7)
    frozen_bn(body + "bn1", 64)
    for layer, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256)), start=1):
        for i in range(blocks):
            cin = (64, 256, 512)[layer - 1] if i == 0 else 4 * width
            p = f"{body}layer{layer}.{i}."
            keys[p + "conv1.weight"] = (width, cin, 1, 1)
            frozen_bn(p + "bn1", width)
            keys[p + "conv2.weight"] = (width, width, 3, 3)
            frozen_bn(p + "bn2", width)
            keys[p + "conv3.weight"] = (4 * width, width, 1, 1)
            frozen_bn(p + "bn3", 4 * width)
            if i == 0:
                keys[p + "downsample.0.weight"] = (4 * width, cin, 1, 1)
                frozen_bn(p + "downsample.1", 4 * width)
    keys["transformer.rel_bias_table1"] = (1407,)
    keys["transformer.rel_bias_table2"] = (1317,)
    keys["transformer.rel_bias_table4"] = (1302,)
    for i in range(6):
        p = f"transformer.transformer.{i}."
        keys[p + "qkv_embedding.weight"] = (768, 256)
        keys[p + "qkv_embedding.bias"] = (768,)
        keys[p + "output_linear.weight"] = (256, 256)
        keys[p + "output_linear.bias"] = (256,)
        keys[p + "feedforward.0.weight"] = (2048, 256)
        keys[p + "feedforward.0.bias"] = (2048,)
        keys[p + "feedforward.3.weight"] = (256, 2048)
        keys[p + "feedforward.3.bias"] = (256,)
        for norm in ("norm1", "norm2"):
            keys[p + norm + ".weight"] = (256,)
            keys[p + norm + ".bias"] = (256,)
    for i in range(6):
        p = f"transformer.transformer_post.{i}."
        for attn in ("self_attn", "multihead_attn"):
            keys[p + attn + ".in_proj_weight"] = (768, 256)
            keys[p + attn + ".in_proj_bias"] = (768,)
            keys[p + attn + ".out_proj.weight"] = (256, 256)
            keys[p + attn + ".out_proj.bias"] = (256,)
        keys[p + "linear1.weight"] = (2048, 256)
        keys[p + "linear1.bias"] = (2048,)
        keys[p + "linear2.weight"] = (256, 2048)
        keys[p + "linear2.bias"] = (256,)
        for norm in ("norm1", "norm2", "norm3"):
            keys[p + norm + ".weight"] = (256,)
            keys[p + norm + ".bias"] = (256,)
    keys["transformer.post_norm.weight"] = (256,)
    keys["transformer.post_norm.bias"] = (256,)
    for branch in ("tl", "br"):
        for k, (cin, cout) in enumerate(((256, 256), (256, 128), (128, 64), (64, 32)), start=1):
            p = f"box_head.conv{k}_{branch}."
            keys[p + "0.weight"] = (cout, cin, 3, 3)
            keys[p + "0.bias"] = (cout,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                keys[p + "1." + name] = (cout,)
            keys[p + "1.num_batches_tracked"] = ()
        keys[f"box_head.conv5_{branch}.weight"] = (1, 32, 1, 1)
        keys[f"box_head.conv5_{branch}.bias"] = (1,)
    keys["query_embed.weight"] = (1, 256)
    keys["bottleneck.weight"] = (256, 1024, 1, 1)
    keys["bottleneck.bias"] = (256,)
    for i, shape in enumerate(((256, 256), (256, 256), (1, 256))):
        keys[f"cls_head.layers.{i}.weight"] = shape
        keys[f"cls_head.layers.{i}.bias"] = (shape[0],)
    return keys


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_key_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.int64)
        else:
            state[key] = torch.rand(shape, generator=generator) + 0.1
    return state


@pytest.fixture(scope="module")
def default_model() -> torch.nn.Module:
    return build_cswintt("default")


def test_spec_lists_469_keys_and_the_published_counts() -> None:
    shapes = official_key_shapes()
    assert len(shapes) == 469
    model = build_cswintt("default")
    assert sum(p.numel() for p in model.parameters()) == 28_231_421
    assert len(list(model.parameters())) == 273


def test_official_state_dict_loads_strictly(default_model: torch.nn.Module) -> None:
    state = official_state_dict()
    load_weights(default_model, state)
    loaded = default_model.state_dict()
    assert set(loaded) == set(state)
    for key in ("transformer.rel_bias_table2", "backbone.0.body.layer3.5.bn3.running_var"):
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)


def test_training_checkpoint_layout_and_module_prefix(
    default_model: torch.nn.Module, tmp_path: Path
) -> None:
    state = official_state_dict(seed=1)
    path = tmp_path / "CSWinTT_ep0500.pth.tar"
    torch.save({"epoch": 500, "net": {f"module.{k}": v for k, v in state.items()}}, path)
    load_weights(default_model, path)
    torch.testing.assert_close(
        default_model.state_dict()["query_embed.weight"], state["query_embed.weight"]
    )


def test_mismatch_lists_missing_unexpected_and_wrong_shape(
    default_model: torch.nn.Module,
) -> None:
    state = official_state_dict()
    del state["transformer.rel_bias_table4"]
    state["transformer.rel_bias_table8"] = torch.zeros(10)
    state["bottleneck.weight"] = torch.zeros(256, 2048, 1, 1)
    before = default_model.state_dict()["query_embed.weight"].clone()
    state["query_embed.weight"] = before + 1
    with pytest.raises(CheckpointMismatchError) as caught:
        load_weights(default_model, state)
    message = str(caught.value)
    assert "1 missing: transformer.rel_bias_table4" in message
    assert "1 unexpected: transformer.rel_bias_table8" in message
    assert "bottleneck.weight (checkpoint [256, 2048, 1, 1], model [256, 1024, 1, 1])" in message
    # nothing was loaded from the rejected checkpoint
    torch.testing.assert_close(default_model.state_dict()["query_embed.weight"], before)


def test_unreadable_checkpoint_file(tmp_path: Path, default_model: torch.nn.Module) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        load_weights(default_model, path)
    with pytest.raises(InputError, match="does not exist"):
        load_weights(default_model, tmp_path / "absent.pth")


def test_checkpoints_without_num_batches_tracked_load_as_torch_accepts_them() -> None:
    from headway.models import create_model

    torch.manual_seed(3)
    model = create_model("resnet50", num_classes=10, small_input=True, width=16)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    copy = create_model("resnet50", num_classes=10, small_input=True, width=16)
    copy.load_state_dict(state, strict=True)  # torch's own strict loading accepts it
    load_weights(copy, state)
    for key, value in state.items():
        torch.testing.assert_close(copy.state_dict()[key], value, rtol=0, atol=0)
    del state["fc.weight"]  # a real mismatch is still listed
    with pytest.raises(CheckpointMismatchError, match=r"1 missing: fc\.weight"):
        load_weights(copy, state)
