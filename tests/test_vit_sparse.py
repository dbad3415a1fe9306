"""DeiT with timm names, static sparse masks and token pruning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headway.errors import InputError
from headway.models import load_weights
from headway.models.deit import build_deit
from headway.transforms.sparse_attention import (
    additive_masks,
    average_attention,
    masks_for_sparsity,
    sparsity,
    threshold_masks,
)
from headway.transforms.token_pruning import keep_counts, pruning_ratios
from headway.vision.data import load_imagenet_folder


@pytest.mark.parametrize(
    ("name", "parameters"),
    [("deit_tiny", 5_717_416), ("deit_small", 22_050_664), ("deit_base", 86_567_656)],
)
def test_deit_matches_timm_layout(name: str, parameters: int) -> None:
    model = build_deit(name)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert len(state) == 152
    for key in (
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.11.attn.qkv.bias",
        "blocks.0.mlp.fc2.weight",
        "norm.bias",
        "head.weight",
    ):
        assert key in state
    if name == "deit_tiny":  # the original checkpoints keep the weights under "model"
        load_weights(build_deit(name), {"model": state})


def digits_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_deit("deit_digits").eval()


def test_keep_all_mask_equals_dense_attention() -> None:
    model = digits_model()
    x = torch.randn(2, 3, 32, 32)
    full = torch.ones(6, 3, model.num_tokens, model.num_tokens, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_tokens(x, full), model.forward_tokens(x), rtol=0, atol=0
        )


def test_threshold_masks_by_hand() -> None:
    maps = torch.tensor([[[[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.1, 0.7, 0.2]]]])
    keep = threshold_masks(maps, 0.8)
    # CLS row and column always kept; row 1 keeps 0.6 + 0.3; row 2 keeps 0.7 + 0.2 (+ CLS column)
    assert keep[0, 0].tolist() == [[True, True, True], [True, True, False], [True, True, True]]
    vitcod = threshold_masks(maps, 0.5, extra=1)  # ViTCoD keeps one more than the crossing count
    assert vitcod[0, 0, 1].tolist() == [True, True, False]


def test_sparsity_targets_and_average_maps() -> None:
    model = digits_model()
    maps = average_attention(model, [torch.randn(4, 3, 32, 32) for _ in range(2)])
    assert maps.shape == (6, 3, 65, 65)
    torch.testing.assert_close(maps.sum(-1), torch.ones(6, 3, 65))
    for target in (0.5, 0.8):
        masks, _ = masks_for_sparsity(maps, target)
        assert abs(sparsity(masks) - target) < 0.02
        per_head, tau = masks_for_sparsity(maps, target, per_head=True)
        assert tau.shape == (6, 3)
        dropped = 1 - per_head.float().mean(dim=(-1, -2))
        assert (dropped - target).abs().max() < 0.05
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        masks_for_sparsity(maps, 1.0)


def test_pruning_schedule_meanings() -> None:
    ratios = pruning_ratios(12, 0.1, 0.9)
    assert ratios[:3] == [0, 0, 0] and ratios[3] == pytest.approx(0.1)
    assert ratios[-1] == pytest.approx(0.9)
    original = keep_counts(196, ratios)
    # layers 1-3 run on all tokens, layer 4 on floor(0.9 · 196) patches + CLS, layer 12 on 10%
    assert original[:3] == [197] * 3 and original[3] == 1 + 176 and original[-1] == 1 + 19
    mild = pruning_ratios(12, 0.1, 0.5)
    assert keep_counts(196, mild, of="remaining")[-1] < keep_counts(196, mild)[-1]
    with pytest.raises(InputError, match="no patch token"):  # compounding 0.1 → 0.9 leaves < 1
        keep_counts(196, ratios, of="remaining")
    with pytest.raises(InputError, match="start ≤ end"):
        pruning_ratios(12, 0.9, 0.1)
    with pytest.raises(InputError, match="first layer"):
        pruning_ratios(12, 0.1, 0.9, first_pruned=0)


def test_pruning_really_removes_tokens_and_composes_with_masks() -> None:
    model = digits_model()
    x = torch.randn(2, 3, 32, 32)
    counts = keep_counts(64, pruning_ratios(6, 0.2, 0.6))
    seen: list[int] = []
    with torch.no_grad():
        model.forward_tokens(
            x, keep_counts=counts, on_attention=lambda layer, p: seen.append(p.shape[-1])
        )
        masks = torch.ones(6, 3, 65, 65, dtype=torch.bool)
        torch.testing.assert_close(
            model.forward_tokens(x, masks, counts),
            model.forward_tokens(x, None, counts),
            rtol=0,
            atol=0,
        )
    assert seen == counts and counts[3] < 65  # every block runs on its scheduled count
    with pytest.raises(InputError, match="first block"):
        model.forward_tokens(x, keep_counts=[60] * 6)
    with pytest.raises(InputError, match="token counts"):
        model.forward_tokens(x, keep_counts=counts[:-1])


def _pruned_reference(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, counts: list[int]
) -> torch.Tensor:
    """One image at a time, tokens and masks picked with plain indexing: the slow, obvious
    version of forward_tokens' batched gathers."""
    features = []
    for image in images:
        x = model.embed(image[None])
        ids = torch.arange(x.shape[1])
        probs = None
        for layer, block in enumerate(model.blocks):
            if counts[layer] < len(ids):
                received = probs[0].sum(dim=(0, 1))
                received[0] = float("inf")
                survivors = received.topk(counts[layer]).indices.sort().values
                x, ids = x[:, survivors], ids[survivors]
            x, probs, _ = block(x, masks[layer][:, ids][:, :, ids].unsqueeze(0))
        features.append(model.norm(x)[:, 0])
    return torch.cat(features)


def test_batched_pruning_with_masks_matches_one_image_at_a_time() -> None:
    torch.manual_seed(11)
    model = build_deit("deit_digits").eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        maps = average_attention(model, [torch.randn(6, 3, 32, 32)])
        masks, _ = masks_for_sparsity(maps, 0.6)
        counts = keep_counts(64, pruning_ratios(6, 0.2, 0.7))
        expected = _pruned_reference(model, images, masks, counts)
        for form in (masks, additive_masks(masks)):  # boolean and additive masks agree
            got = model.forward_tokens(images, form, counts)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        unpruned = model.forward_tokens(images, masks)
        torch.testing.assert_close(
            model.forward_tokens(images, additive_masks(masks)), unpruned, rtol=1e-6, atol=1e-6
        )
    with pytest.raises(InputError, match="boolean"):
        additive_masks(masks.float())


def test_experiment_drivers_on_the_digits_configuration() -> None:
    from headway.experiments.vit import accuracy_table, flop_latency_breakdown, pruning_speedup
    from headway.vision.data import ClassificationData

    breakdown = flop_latency_breakdown("deit_digits", runs=1)
    assert breakdown["flops"]["linear"] > breakdown["flops"]["attention"] > 0
    assert all(v >= 0 for v in breakdown["ms"].values())
    (row,) = pruning_speedup("deit_digits", batches=(2,), prune=(0.2, 0.6), min_run_time=0.2)
    assert row["sparse_only_ms"] > 0 and row["sparse_pruned_ms"] > 0
    model = digits_model()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(40, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (40,), generator=generator)
    data = ClassificationData(
        images[:24], labels[:24], images[24:], labels[24:], [str(i) for i in range(10)]
    )
    table = accuracy_table(model, data, sparsities=(0.5,), prune=(0.2, 0.6))
    assert abs(table["rows"][0]["achieved"] - 0.5) < 0.02
    assert 0 <= table["rows"][0]["sparse_pruned"] <= 100


def _image_folder(root: Path, classes: tuple[str, ...], per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def test_imagenet_folder_preprocessing_and_class_indices(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs", ("3", "7"))
    data = load_imagenet_folder(root, size=32, calibration_fraction=0.5)
    assert data.train_images.shape[1:] == (3, 32, 32)
    assert len(data.train_labels) + len(data.test_labels) == 6
    assert set(torch.cat([data.train_labels, data.test_labels]).tolist()) == {3, 7}
    named = _image_folder(tmp_path / "named", ("n01", "n02"))
    with pytest.raises(InputError, match="class index"):
        load_imagenet_folder(named)
    class_map = tmp_path / "map.txt"
    class_map.write_text("n00 first\nn02 second\nn01 third\n")
    data = load_imagenet_folder(named, class_map, size=32)
    assert set(torch.cat([data.train_labels, data.test_labels]).tolist()) == {1, 2}
    class_map.write_text("n00\n")
    with pytest.raises(InputError, match="not in the class map"):
        load_imagenet_folder(named, class_map, size=32)


def test_vit_accuracy_on_a_user_folder_with_a_real_checkpoint_layout(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headway.cli import app

    root = _image_folder(tmp_path / "imgs", ("0", "1"))
    torch.manual_seed(0)
    checkpoint = tmp_path / "deit_tiny.pth"
    torch.save({"model": build_deit("deit_tiny").state_dict()}, checkpoint)
    args = [
        "vit",
        "accuracy",
        str(tmp_path / "out"),
        "--images",
        str(root),
        "--model",
        "deit_tiny",
        "--checkpoint",
        str(checkpoint),
        "--sparsities",
        "0.5",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "vit_accuracy.json").read_text())
    assert written["model"] == "deit_tiny" and len(written["rows"]) == 1
    missing = CliRunner().invoke(app, [*args[:7], "--sparsities", "0.5"])
    assert missing.exit_code == 1 and "needs --checkpoint" in missing.output


def test_fine_tuning_with_masks_leaves_the_model_alone() -> None:
    from headway.experiments.vit import accuracy_table
    from headway.vision.data import ClassificationData, digits
    from headway.vision.train import TrainSettings

    full = digits()
    data = ClassificationData(
        full.train_images[:64],
        full.train_labels[:64],
        full.test_images[:32],
        full.test_labels[:32],
        full.classes,
    )
    torch.manual_seed(0)
    model = build_deit("deit_digits").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tune = TrainSettings(epochs=1, lr=1e-3, optimizer="adam", batch_size=32)
    result = accuracy_table(model, data, (0.5,), finetune=tune)
    row = result["rows"][0]
    assert {"sparse_only_post_hoc", "sparse_only", "sparse_pruned"} <= set(row)
    assert result["finetune"]["epochs"] == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_imagenet_folder_takes_the_weights_own_normalisation(tmp_path: Path) -> None:
    """timm's vit_small expects mean = std = 0.5 (its pretrained_cfg), not ImageNet's."""
    root = _image_folder(tmp_path / "imgs", ("3", "7"))
    half = load_imagenet_folder(root, size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = torch.cat([half.train_images, half.test_images])
    assert images.min() >= -1.0 - 1e-6 and images.max() <= 1.0 + 1e-6
    imagenet = load_imagenet_folder(root, size=32)
    assert not torch.allclose(torch.cat([imagenet.train_images, imagenet.test_images]), images)


def test_vit_accuracy_model_without_images_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headway.cli import app

    result = CliRunner().invoke(
        app, ["vit", "accuracy", str(tmp_path / "o"), "--model", "deit_small"]
    )
    assert result.exit_code == 1
    assert "--model needs --images" in result.output
