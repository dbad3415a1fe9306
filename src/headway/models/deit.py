"""DeiT (data-efficient image transformers) with timm's parameter names, so the original
Facebook checkpoints (weights under ``model``) and timm's load unchanged.

Attention is written out (no fused kernel) so per-head probabilities can be recorded, masked
with static sparse masks (keep = True) and scored for token pruning. A block can run on any
subset of tokens; :meth:`DeiT.forward_tokens` threads the surviving token ids through the
layers so static masks are indexed consistently after pruning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from headway.errors import InputError


@dataclass(frozen=True)
class DeiTConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    in_chans: int = 3
    norm_eps: float = 1e-6  # every LayerNorm's (timm's DeiT and ViT use 1e-6)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


DEIT_CONFIGS = {
    "deit_tiny": DeiTConfig(embed_dim=192, num_heads=3),
    "deit_small": DeiTConfig(embed_dim=384, num_heads=6),
    "deit_base": DeiTConfig(embed_dim=768, num_heads=12),
    # built-in data (32×32 digits): 8×8 patches of 4 px, same block structure, 6 layers
    "deit_digits": DeiTConfig(
        img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, num_classes=10
    ),
}

AttentionHook = Callable[[int, torch.Tensor], None]


class PatchEmbed(nn.Module):
    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_chans, config.embed_dim, config.patch_size, stride=config.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with explicit probabilities."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, D); ``keep`` broadcastable to (B, H, N, N): bool with True = attend, or a
        float additive mask (0 = attend, −inf = drop).
        Returns the output and the probabilities (B, H, N, N)."""
        out, probs = self.attend(x, keep)
        return self.proj(out), probs

    def attend(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything but the output projection: the heads' outputs (B, N, D) and the
        probabilities, so a caller can project only the rows it keeps."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if keep is not None:
            if keep.dtype == torch.bool:
                scores = scores.masked_fill(~keep, float("-inf"))
            else:
                scores = scores + keep  # one pass, no boolean temporaries
        probs = scores.softmax(dim=-1)
        return (probs @ v).transpose(1, 2).reshape(b, n, d), probs


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, survivors: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns the output, the attention probabilities and, when ``survivors`` is given,
        the (B, survivors) ids of the tokens kept for the next block — the ones that received
        the most attention here (class token always, in token order). The projection, residual
        and MLP then run on those tokens only: the others would be dropped before the next
        block anyway, and every one of these steps is per token, so the kept tokens' values
        are what the full block would give."""
        if survivors is None:
            attended, probs = self.attn(self.norm1(x), keep)
            x = x + attended
            return x + self.mlp(self.norm2(x)), probs, None
        heads_out, probs = self.attn.attend(self.norm1(x), keep)
        order = most_attended(probs, survivors)
        rows = order.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        x = torch.gather(x, 1, rows) + self.attn.proj(torch.gather(heads_out, 1, rows))
        return x + self.mlp(self.norm2(x)), probs, order


def most_attended(probs: torch.Tensor, count: int) -> torch.Tensor:
    """Ids (B, count) of the tokens that receive the most attention, summed over heads and
    queries; the class token (id 0) always, all in token order."""
    received = probs.sum(dim=(1, 2))  # (B, n)
    received[:, 0] = float("inf")
    order = received.topk(count, dim=1, sorted=False).indices
    return order.sort(dim=1).values


class DeiT(nn.Module):
    """Vision transformer with a class token (no distillation token)."""

    def __init__(self, config: DeiTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DEIT_CONFIGS["deit_tiny"]
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, config.norm_eps)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, config.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def num_tokens(self) -> int:
        return self.config.num_patches + 1

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward_tokens(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        keep_counts: list[int] | None = None,
        on_attention: AttentionHook | None = None,
        return_ids: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks; return the final CLS feature (B, D) and, with ``return_ids``, the
        original ids (B, n) of the tokens the last block ran on.

        ``masks`` (L, H, N, N) static masks: bool (True = keep) or, faster, their additive form
        (:func:`headway.transforms.sparse_attention.additive_masks`). ``keep_counts[l]`` is how
        many tokens (CLS included) block l runs on; the ones dropped before it are those that
        received the least attention in block l − 1, which already skips them after its
        attention (see :meth:`Block.forward`). None keeps all. ``on_attention(layer,
        probs)`` sees every block's probabilities."""
        x = self.embed(images)
        n_all = x.shape[1]
        if keep_counts is not None:
            if len(keep_counts) != len(self.blocks):
                raise InputError(f"{len(keep_counts)} token counts for {len(self.blocks)} blocks")
            if keep_counts[0] < n_all:
                raise InputError("the first block cannot be pruned: no attention scores it yet")
        flat_masks = None if masks is None else masks.flatten(2)  # (L, H, N·N)
        ids = None  # after the first pruning: (B, n) original ids of the surviving tokens
        pair_ids = None  # with masks: (B·n·n) flat mask indices of the surviving (query, key) pairs
        depth = len(self.blocks)
        for layer, block in enumerate(self.blocks):
            n_now = x.shape[1]
            keep = None
            if masks is not None:
                if pair_ids is None:
                    keep = masks[layer].unsqueeze(0)  # (1, H, N, N), broadcast over the batch
                else:
                    keep = flat_masks[layer].index_select(1, pair_ids)
                    keep = keep.view(-1, x.shape[0], n_now, n_now).transpose(0, 1)  # (B, H, n, n)
            survivors = None  # how many tokens the next block runs on, if fewer than now
            if keep_counts is not None and layer + 1 < depth and keep_counts[layer + 1] < n_now:
                survivors = keep_counts[layer + 1]
            x, probs, order = block(x, keep, survivors)
            if on_attention is not None:
                on_attention(layer, probs)
            if order is not None:
                ids = order if ids is None else torch.gather(ids, 1, order)
                if masks is not None:
                    pair_ids = (ids.unsqueeze(2) * n_all + ids.unsqueeze(1)).flatten()
        feature = self.norm(x)[:, 0]
        if not return_ids:
            return feature
        if ids is None:
            ids = torch.arange(n_all, device=x.device).expand(x.shape[0], n_all)
        return feature, ids

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_tokens(images))


def _pair_side(value: object, what: str) -> int:
    """The side of a square size given as an int or an (h, w) pair."""
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise InputError(f"a non-square {what} ({value!r}) is not supported")


def _layers_present(model: nn.Module, names: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The submodules among ``names`` that exist and are not ``nn.Identity`` (timm keeps unused
    optional layers as identities)."""
    present = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(module, nn.Identity):
            present.append((name, module))
    return present


def _vit_features(model: nn.Module) -> list[str]:
    """What a timm-style ViT has that headway's DeiT does not compute (empty: it adopts)."""
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("no class token")
    if getattr(model, "dist_token", None) is not None:
        problems.append("a distillation token (DeiT distilled)")
    if getattr(model, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(model, "global_pool", "token") != "token":
        problems.append(f"global_pool={model.global_pool!r} (headway reads the class token)")
    if getattr(model, "no_embed_class", False):
        problems.append("no_embed_class=True")
    if not isinstance(getattr(model, "norm", None), nn.LayerNorm):
        kind = type(getattr(model, "norm", None)).__name__
        problems.append(f"no final LayerNorm (norm is {kind}; final_norm=False)")
    for name, _ in _layers_present(model, ("norm_pre", "fc_norm", "patch_embed.norm")):
        problems.append(f"a {name} layer")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        problems.append("no linear classifier head")
    block = model.blocks[0]
    optional = ("ls1", "ls2", "attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm")
    for name, module in _layers_present(block, optional):
        problems.append(f"blocks use {name} ({type(module).__name__})")
    act = getattr(getattr(block, "mlp", None), "act", None)
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        problems.append(f"MLP activation {type(act).__name__} (headway's DeiT uses exact GELU)")
    if "Post" in type(block).__name__:  # timm's ResPostBlock: norm after each residual branch
        problems.append(f"post-norm blocks ({type(block).__name__})")
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) > 1:
        problems.append(f"LayerNorms with different eps ({', '.join(map(str, sorted(eps)))})")
    return problems


def adopt_vit(model: nn.Module) -> DeiT:
    """headway's :class:`DeiT` computing what ``model`` computes, with its weights: ``model``
    itself when it is one, else a timm-style ``VisionTransformer`` (DeiT, ViT with a class
    token: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks[i].{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``), read by its blocks and loaded
    strictly (timm's names are headway's). Sparse attention masks and token pruning then run on
    it as on headway's DeiT. Anything the DeiT function lacks is refused by name."""
    if isinstance(model, DeiT):
        return model
    name = f"{type(model).__module__}.{type(model).__name__}"
    missing = [a for a in ("patch_embed", "pos_embed", "blocks", "norm") if not hasattr(model, a)]
    if missing:
        raise InputError(f"{name} is not a vision transformer: it has no {', '.join(missing)}")
    problems = _vit_features(model)
    if problems:
        raise InputError(f"{name} cannot run as headway's DeiT: {'; '.join(problems)}")
    proj = model.patch_embed.proj
    block = model.blocks[0]
    dim = proj.out_channels
    config = DeiTConfig(
        img_size=_pair_side(getattr(model.patch_embed, "img_size", None), "image size"),
        patch_size=_pair_side(proj.kernel_size, "patch"),
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / dim,
        num_classes=model.head.out_features,
        in_chans=proj.in_channels,
        norm_eps=float(model.norm.eps),
    )
    adopted = DeiT(config)
    state = {k: v for k, v in model.state_dict().items()}
    from headway.models.checkpoint import load_weights  # a cycle at import time otherwise

    load_weights(adopted, state, strict=True)
    _check_same_function(model, adopted.eval(), config, name)
    return adopted.train(model.training)


def _check_same_function(model: nn.Module, adopted: DeiT, config: DeiTConfig, name: str) -> None:
    """Structure can hide a different computation (a block whose forward orders the same
    children otherwise): both run one probe image, and a difference beyond fp32 rounding is
    refused with its size."""
    was_training = model.training
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, config.in_chans, config.img_size, config.img_size, generator=generator)
    try:
        model.eval()
        with torch.no_grad():
            expected, got = model(probe), adopted(probe)
    finally:
        model.train(was_training)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        raise InputError(f"{name} cannot run as headway's DeiT: its output is not the logits")
    scale = float(expected.abs().max()) or 1.0
    difference = float((got - expected).abs().max()) / scale
    if difference > 1e-4:
        raise InputError(
            f"{name} cannot run as headway's DeiT: with its own weights headway's DeiT "
            f"computes something else (largest difference {difference:.1e} of the logits' size)"
        )


def build_deit(name: str = "deit_tiny", **overrides: object) -> DeiT:
    if name not in DEIT_CONFIGS:
        raise InputError(f"unknown DeiT {name!r}: choose from {', '.join(DEIT_CONFIGS)}")
    return DeiT(replace(DEIT_CONFIGS[name], **overrides))
