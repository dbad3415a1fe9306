"""timm-style ViTs through adopt_vit: a stand-in written here with timm's VisionTransformer
structure and names (timm is not installed by `make test`; the real timm DeiT-Small is checked
when it is) gives the same logits as headway's DeiT with its weights, and masks + pruning run on
it exactly as on headway's DeiT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headway.errors import InputError
from headway.models.deit import DeiT, DeiTConfig, adopt_vit
from headway.transforms.sparse_attention import average_attention, masks_for_sparsity
from headway.transforms.token_pruning import keep_counts, pruning_ratios


class TimmAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool = False, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        norm = (lambda: nn.LayerNorm(self.head_dim, eps=1e-6)) if qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()
        self.attn_drop, self.proj, self.proj_drop = (
            nn.Dropout(0.0),
            nn.Linear(dim, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class TimmMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class LayerScale(nn.Module):
    """timm's LayerScale: one learned scale per channel."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(0.1 + torch.rand(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TimmBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        layer_scale: bool = False,
        qk_norm: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, heads, qk_norm, qkv_bias)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), TimmMlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TimmPatchEmbed(nn.Module):
    def __init__(self, img: int | tuple[int, int], patch: int, dim: int) -> None:
        super().__init__()
        self.img_size = (img, img) if isinstance(img, int) else img
        self.patch_size = (patch, patch)
        self.proj, self.norm = nn.Conv2d(3, dim, patch, stride=patch), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class TimmVisionTransformer(nn.Module):
    """timm's VisionTransformer layout: by default global_pool='token' and one prefix token;
    the options are the variants adopt_vit takes (DeiT-III's LayerScale and no_embed_class,
    register tokens, average pooling with fc_norm, qk-norm, qkv without bias, non-square
    images)."""

    def __init__(
        self,
        img: int | tuple[int, int] = 32,
        patch: int = 8,
        dim: int = 48,
        depth: int = 4,
        *,
        layer_scale: bool = False,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        global_pool: str = "token",
        qk_norm: bool = False,
        qkv_bias: bool = True,
        class_token: bool = True,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.global_pool, self.no_embed_class = global_pool, no_embed_class
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.patch_embed = TimmPatchEmbed(img, patch, dim)
        height, width = self.patch_embed.img_size
        patches = (height // patch) * (width // patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if class_token else None
        self.reg_token = nn.Parameter(torch.randn(1, reg_tokens, dim)) if reg_tokens else None
        embedded = patches if no_embed_class else patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, embedded, dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.norm_pre = nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity()
        self.blocks = nn.Sequential(
            *(TimmBlock(dim, 3, layer_scale, qk_norm, qkv_bias) for _ in range(depth))
        )
        final = global_pool == "token"  # timm: fc_norm instead of norm for "avg"
        self.norm = nn.LayerNorm(dim, eps=1e-6) if final else nn.Identity()
        self.fc_norm = nn.Identity() if final else nn.LayerNorm(dim, eps=1e-6)
        self.head_drop, self.head = nn.Dropout(0.0), nn.Linear(dim, 7)

    def prefix(self, batch: int) -> list[torch.Tensor]:
        tokens = [] if self.cls_token is None else [self.cls_token.expand(batch, -1, -1)]
        if self.reg_token is not None:
            tokens.append(self.reg_token.expand(batch, -1, -1))
        return tokens

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.no_embed_class:
            x = torch.cat([*self.prefix(x.shape[0]), x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*self.prefix(x.shape[0]), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(self.norm_pre(self.pos_drop(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        pooled = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(1)
        return self.head(self.head_drop(self.fc_norm(pooled)))


class TimmDistilled(TimmVisionTransformer):
    """timm's VisionTransformerDistilled: a distillation token after the class token and a
    second head; at inference the two heads' logits are averaged."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        dim = self.cls_token.shape[-1]
        self.num_prefix_tokens = 2
        self.dist_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        patches = self.pos_embed.shape[1] - 1
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 2, dim) * 0.02)
        self.head_dist = nn.Linear(dim, 7)

    def prefix(self, batch: int) -> list[torch.Tensor]:
        return [self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


def test_a_timm_structured_vit_is_adopted_with_its_function_and_weights() -> None:
    torch.manual_seed(40)
    timm_like = TimmVisionTransformer().eval()
    x = torch.randn(3, 3, 32, 32)
    deit = adopt_vit(timm_like).eval()
    assert isinstance(deit, DeiT) and deit.config.depth == 4 and deit.config.num_classes == 7
    with torch.inference_mode():
        torch.testing.assert_close(deit(x), timm_like(x), rtol=0, atol=1e-5)
    assert adopt_vit(deit) is deit


def test_masks_and_pruning_on_the_timm_object_equal_headways_deit() -> None:
    torch.manual_seed(41)
    timm_like = TimmVisionTransformer().eval()
    reference = DeiT(DeiTConfig(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3,
                                num_classes=7)).eval()  # fmt: skip
    reference.load_state_dict(timm_like.state_dict())
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    maps = average_attention(timm_like, batches)  # accepts the timm object itself
    torch.testing.assert_close(maps, average_attention(reference, batches), rtol=0, atol=1e-6)
    masks, _ = masks_for_sparsity(maps, 0.5)
    counts = keep_counts(16, pruning_ratios(4, 0.1, 0.5, first_pruned=1))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        got = adopt_vit(timm_like).forward_tokens(x, masks, counts)
        torch.testing.assert_close(
            got, reference.forward_tokens(x, masks, counts), rtol=0, atol=1e-5
        )


VARIANTS = {
    "layer_scale+no_embed_class (DeiT-III)": dict(layer_scale=True, no_embed_class=True),
    "registers (DINOv2 reg)": dict(reg_tokens=4, no_embed_class=True, layer_scale=True),
    "registers, embedded": dict(reg_tokens=2),
    "avg pool + fc_norm": dict(global_pool="avg"),
    "qk_norm, no qkv bias": dict(qk_norm=True, qkv_bias=False),
    "non-square image": dict(img=(24, 40)),
    "no class token, avg pool": dict(class_token=False, global_pool="avg"),
    "norm_pre (CLIP)": dict(pre_norm=True),
    "everything": dict(
        img=(40, 24), layer_scale=True, reg_tokens=3, global_pool="avg", qk_norm=True
    ),
}


@pytest.mark.parametrize("options", list(VARIANTS.values()), ids=list(VARIANTS))
def test_timm_vit_variants_are_adopted_exactly_and_prune_around_their_prefix(
    options: dict,
) -> None:
    """Each variant: the same logits as timm's layout with its weights; masks keep the prefix
    tokens' rows and columns; pruning never drops a prefix token; and with nothing pruned or
    masked, the pruned path is the model."""
    torch.manual_seed(43)
    timm_like = TimmVisionTransformer(**options).eval()
    deit = adopt_vit(timm_like).eval()
    prefix = deit.config.num_prefix_tokens
    assert prefix == timm_like.num_prefix_tokens
    height, width = timm_like.patch_embed.img_size
    x = torch.randn(3, 3, height, width)
    with torch.inference_mode():
        torch.testing.assert_close(deit(x), timm_like(x), rtol=0, atol=1e-5)
    _check_masks_and_pruning(deit, timm_like, x)


def _check_masks_and_pruning(deit: DeiT, original: nn.Module, x: torch.Tensor) -> None:
    config = deit.config
    prefix = config.num_prefix_tokens
    maps = average_attention(original, [torch.randn(4, *x.shape[1:]) for _ in range(2)])
    assert maps.shape[-1] == config.num_patches + prefix
    masks, _ = masks_for_sparsity(maps, 0.5, prefix=prefix)
    assert bool(masks[..., :prefix, :].all()) and bool(masks[..., :, :prefix].all())
    ratios = pruning_ratios(config.depth, 0.3, 0.6, first_pruned=1)
    counts = keep_counts(config.num_patches, ratios, prefix=prefix)
    with torch.inference_mode():
        feature, ids = deit.forward_tokens(x, masks, counts, return_ids=True)
        assert ids.shape == (x.shape[0], counts[-1])
        assert bool((ids[:, :prefix] == torch.arange(prefix)).all())  # never pruned
        assert torch.isfinite(deit.classify(feature)).all()
        everything = [config.num_patches + prefix] * config.depth
        torch.testing.assert_close(
            deit.classify(deit.forward_tokens(x, None, everything)),
            original(x),
            rtol=0,
            atol=1e-5,
        )


def test_a_distilled_deit_averages_its_two_heads_and_keeps_both_tokens() -> None:
    torch.manual_seed(44)
    distilled = TimmDistilled().eval()
    deit = adopt_vit(distilled).eval()
    assert deit.config.dist_token and deit.config.num_prefix_tokens == 2
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(deit(x), distilled(x), rtol=0, atol=1e-5)
    _check_masks_and_pruning(deit, distilled, x)


def test_too_few_tokens_for_the_prefix_is_one_line() -> None:
    deit = adopt_vit(TimmVisionTransformer(reg_tokens=4).eval())
    counts = [deit.num_tokens] + [5] * 3  # 5 tokens: the 5 prefix tokens and no patch
    with pytest.raises(InputError, match="keeps the 5 prefix token"):
        deit.forward_tokens(torch.randn(1, 3, 32, 32), None, counts)


def test_what_headways_deit_does_not_compute_is_refused_by_name() -> None:
    model = TimmVisionTransformer()
    model.blocks[0].ls1 = nn.Linear(48, 48)  # not a per-channel scale
    with pytest.raises(InputError, match=r"blocks use ls1 \(Linear\)"):
        adopt_vit(model)
    model = TimmVisionTransformer()
    model.global_pool = "max"
    with pytest.raises(InputError, match="global_pool='max'"):
        adopt_vit(model)
    model = TimmVisionTransformer()
    model.blocks[0].attn.q_norm = nn.BatchNorm1d(16)
    with pytest.raises(InputError, match=r"attn.q_norm \(BatchNorm1d\)"):
        adopt_vit(model)
    model = TimmVisionTransformer()
    model.dist_token = nn.Parameter(torch.zeros(1, 1, 48))
    model.global_pool = "avg"
    with pytest.raises(InputError, match=r"distillation token.*global_pool='avg'"):
        adopt_vit(model)
    with pytest.raises(InputError, match="not a vision transformer"):
        adopt_vit(nn.Linear(2, 2))
    model = TimmVisionTransformer()
    model.blocks[1].norm2 = nn.GroupNorm(1, 48)
    with pytest.raises(InputError, match=r"blocks use norm2 \(GroupNorm\)"):
        adopt_vit(model)


def test_no_final_norm_and_no_classifier_are_adopted() -> None:
    """timm's final_norm=False (it raised AttributeError on the missing eps) and num_classes=0
    (DINOv2's feature extractors: the pooled feature is the output)."""
    torch.manual_seed(45)
    model = TimmVisionTransformer().eval()
    model.norm = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    deit = adopt_vit(model).eval()
    assert not deit.config.final_norm
    with torch.inference_mode():
        torch.testing.assert_close(deit(x), model(x), rtol=0, atol=1e-5)
    model.head = nn.Identity()
    deit = adopt_vit(model).eval()
    assert deit.config.num_classes == 0
    with torch.inference_mode():
        torch.testing.assert_close(deit(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, options",
    [
        ("deit_small_patch16_224", {}),
        ("deit3_small_patch16_224", {}),
        ("deit_tiny_distilled_patch16_224", {}),
        ("vit_base_patch16_clip_224", dict(depth=2)),
        ("vit_medium_patch16_gap_256", dict(depth=2)),
        ("vit_small_patch14_reg4_dinov2", dict(img_size=224, depth=2)),
        (
            "vit_tiny_patch16_224",
            dict(reg_tokens=4, global_pool="avg", qk_norm=True, img_size=(160, 224)),
        ),
    ],
)
def test_real_timm_vits_are_adopted(name: str, options: dict) -> None:
    timm = pytest.importorskip("timm", reason="timm not installed")
    model = timm.create_model(name, pretrained=False, **options).eval()
    height, width = model.patch_embed.img_size
    x = torch.randn(1, 3, height, width)
    with torch.inference_mode():
        torch.testing.assert_close(adopt_vit(model)(x), model(x), rtol=0, atol=1e-4)


class ResPostBlock(TimmBlock):
    """timm's post-norm block: the same children, each branch normalised after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


class ReorderedBlock(TimmBlock):
    """A block of the same children whose forward computes something else, under a name that
    says nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(x + self.attn(self.norm1(x))))


def test_post_norm_and_other_functions_are_refused_and_eps_is_carried() -> None:
    """A post-norm timm ViT was adopted with logits 1.93x their size off; eps 1e-5 was read as
    1e-6 (3.6e-3 relative)."""
    torch.manual_seed(42)
    post = TimmVisionTransformer()
    post.blocks = nn.Sequential(*(ResPostBlock(48, 3) for _ in range(4)))
    with pytest.raises(InputError, match=r"post-norm blocks \(ResPostBlock\)"):
        adopt_vit(post)
    reordered = TimmVisionTransformer()
    reordered.blocks = nn.Sequential(*(ReorderedBlock(48, 3) for _ in range(4)))
    with pytest.raises(InputError, match="computes something else"):
        adopt_vit(reordered)
    wide_eps = TimmVisionTransformer().eval()
    for module in wide_eps.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = 1e-5
    deit = adopt_vit(wide_eps).eval()
    assert deit.config.norm_eps == 1e-5
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(deit(x), wide_eps(x), rtol=0, atol=1e-5)
    mixed = TimmVisionTransformer()
    mixed.norm.eps = 1e-5
    with pytest.raises(InputError, match="LayerNorms with different eps"):
        adopt_vit(mixed)
