"""``adopt_vit`` on real timm ViTs (random weights, perturbed so every layer matters): the
largest logit difference between timm's model and headway's DeiT, relative to the largest
logit, then masks + token pruning run on the adopted model. Run in an environment with timm
(not ``make test``'s):

    PYTHONPATH=src python benchmarks/adopt_vit_timm.py
"""

from __future__ import annotations

import timm
import torch

from headway.errors import InputError
from headway.models.deit import adopt_vit
from headway.transforms.sparse_attention import average_attention, masks_for_sparsity
from headway.transforms.token_pruning import keep_counts, pruning_ratios

CASES = [
    ("deit_small_patch16_224", {}),
    ("deit3_small_patch16_224", {}),
    ("deit_tiny_distilled_patch16_224", {}),
    (
        "vit_tiny_patch16_224",
        dict(reg_tokens=4, global_pool="avg", qk_norm=True, img_size=(160, 224)),
    ),
    ("vit_small_patch14_reg4_dinov2", dict(img_size=224)),
    ("vit_base_patch16_clip_224", {}),
    ("vit_medium_patch16_gap_256", {}),
    ("vit_small_patch16_224", dict(qkv_bias=False)),
    ("vit_tiny_patch16_224", dict(final_norm=False)),
    ("vit_base_patch16_siglip_224", {}),
    ("vit_relpos_small_patch16_224", {}),
]


def main() -> None:
    print("model | options | result")
    for name, options in CASES:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **options).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        height, width = model.patch_embed.img_size
        x = torch.randn(2, 3, height, width)
        try:
            deit = adopt_vit(model).eval()
        except InputError as error:
            print(f"{name} | {options} | refused: {error}")
            continue
        config = deit.config
        with torch.inference_mode():
            expected, got = model(x), deit(x)
            masks, _ = masks_for_sparsity(
                average_attention(model, [x]), 0.5, prefix=config.num_prefix_tokens
            )
            ratios = pruning_ratios(config.depth, 0.1, 0.5)
            counts = keep_counts(config.num_patches, ratios, prefix=config.num_prefix_tokens)
            pruned = deit.classify(deit.forward_tokens(x, masks, counts))
        relative = float((got - expected).abs().max() / expected.abs().max())
        finite = bool(torch.isfinite(pruned).all())
        print(
            f"{name} | {options} | {relative:.1e} of the logits; masks + pruning finite: {finite}"
        )


if __name__ == "__main__":
    main()
