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
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop, self.proj, self.proj_drop = (
            nn.Dropout(0.0),
            nn.Linear(dim, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class TimmMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), TimmAttention(dim, heads)
        self.ls1, self.drop_path1 = nn.Identity(), nn.Identity()
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), TimmMlp(dim, 4 * dim)
        self.ls2, self.drop_path2 = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TimmPatchEmbed(nn.Module):
    def __init__(self, img: int, patch: int, dim: int) -> None:
        super().__init__()
        self.img_size, self.patch_size = (img, img), (patch, patch)
        self.proj, self.norm = nn.Conv2d(3, dim, patch, stride=patch), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class TimmVisionTransformer(nn.Module):
    """timm's VisionTransformer layout (global_pool='token', one prefix token)."""

    def __init__(self, img: int = 32, patch: int = 8, dim: int = 48, depth: int = 4) -> None:
        super().__init__()
        self.global_pool, self.num_prefix_tokens, self.no_embed_class = "token", 1, False
        self.patch_embed = TimmPatchEmbed(img, patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.reg_token = None
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.pos_drop, self.norm_pre = nn.Dropout(0.0), nn.Identity()
        self.blocks = nn.Sequential(*(TimmBlock(dim, 3) for _ in range(depth)))
        self.norm, self.fc_norm = nn.LayerNorm(dim, eps=1e-6), nn.Identity()
        self.head_drop, self.head = nn.Dropout(0.0), nn.Linear(dim, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.norm_pre(self.pos_drop(x))))
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))


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


def test_what_headways_deit_does_not_compute_is_refused_by_name() -> None:
    model = TimmVisionTransformer()
    model.blocks[0].ls1 = nn.Linear(48, 48)  # stands for timm's LayerScale
    with pytest.raises(InputError, match="blocks use ls1"):
        adopt_vit(model)
    model = TimmVisionTransformer()
    model.dist_token = nn.Parameter(torch.zeros(1, 1, 48))
    model.global_pool = "avg"
    with pytest.raises(InputError, match=r"distillation token.*global_pool='avg'"):
        adopt_vit(model)
    with pytest.raises(InputError, match="not a vision transformer"):
        adopt_vit(nn.Linear(2, 2))
    model = TimmVisionTransformer()
    model.norm = nn.Identity()  # timm's final_norm=False
    with pytest.raises(InputError, match="no final LayerNorm"):
        adopt_vit(model)


def test_real_timm_deit_small_is_adopted() -> None:
    timm = pytest.importorskip("timm", reason="timm not installed")
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
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
