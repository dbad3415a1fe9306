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

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class DeiTConfig:
    """The plain DeiT by default; the other fields are the variants of timm's
    ``VisionTransformer`` that :func:`adopt_vit` takes (DeiT-III, distilled DeiT, DINOv2 with
    registers, average pooling, qk-norm, non-square images)."""

    img_size: Size = 224  # (height, width) when not square
    patch_size: Size = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    in_chans: int = 3
    norm_eps: float = 1e-6  # every LayerNorm's (timm's DeiT and ViT use 1e-6)
    class_token: bool = True  # False: no prefix token at all (timm's "gap" ViTs, avg pool)
    dist_token: bool = False  # distilled DeiT: a second prefix token with its own head
    reg_tokens: int = 0  # register tokens after the class token (DINOv2 "reg" models)
    no_embed_class: bool = False  # position embeddings for the patches only (DeiT-III)
    global_pool: str = "token"  # "token": the class token; "avg": mean of the patch tokens
    pre_norm: bool = False  # LayerNorm before the blocks (timm's norm_pre, CLIP)
    final_norm: bool = True  # LayerNorm after the blocks
    fc_norm: bool = False  # LayerNorm after pooling (timm's default with "avg")
    layer_scale: bool = False  # per-channel scales on both residual branches (DeiT-III)
    qk_norm: bool = False  # LayerNorm over each head's queries and keys
    qkv_bias: bool = True
    patch_bias: bool = True  # CLIP's patch embedding has none

    @property
    def grid(self) -> tuple[int, int]:
        (height, width), (ph, pw) = _hw(self.img_size), _hw(self.patch_size)
        return height // ph, width // pw

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, the distillation token, registers."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def image_hw(self) -> tuple[int, int]:
        return _hw(self.img_size)


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
        patch = _hw(config.patch_size)
        self.proj = nn.Conv2d(
            config.in_chans, config.embed_dim, patch, stride=patch, bias=config.patch_bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with explicit probabilities."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if qk_norm:
            self.q_norm = nn.LayerNorm(self.head_dim, eps=eps)
            self.k_norm = nn.LayerNorm(self.head_dim, eps=eps)
        self.qk_norm = qk_norm
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
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
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


class LayerScale(nn.Module):
    """A learned per-channel scale (timm's ``LayerScale``, parameter ``gamma``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        eps: float = 1e-6,
        *,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        layer_scale: bool = False,
        prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls1: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()
        self.ls2: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()
        self.prefix_tokens = prefix_tokens  # never pruned

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, survivors: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns the output, the attention probabilities and, when ``survivors`` is given,
        the (B, survivors) ids of the tokens kept for the next block — the ones that received
        the most attention here (prefix tokens always, in token order). The projection,
        residual and MLP then run on those tokens only: the others would be dropped before the
        next block anyway, and every one of these steps is per token, so the kept tokens'
        values are what the full block would give."""
        if survivors is None:
            attended, probs = self.attn(self.norm1(x), keep)
            x = x + self.ls1(attended)
            return x + self.ls2(self.mlp(self.norm2(x))), probs, None
        heads_out, probs = self.attn.attend(self.norm1(x), keep)
        order = most_attended(probs, survivors, self.prefix_tokens)
        rows = order.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        attended = self.attn.proj(torch.gather(heads_out, 1, rows))
        x = torch.gather(x, 1, rows) + self.ls1(attended)
        return x + self.ls2(self.mlp(self.norm2(x))), probs, order


def most_attended(probs: torch.Tensor, count: int, prefix_tokens: int = 1) -> torch.Tensor:
    """Ids (B, count) of the tokens that receive the most attention, summed over heads and
    queries; the prefix tokens (the class token, id 0, and any distillation or register
    tokens after it) always, all in token order."""
    received = probs.sum(dim=(1, 2))  # (B, n)
    received[:, :prefix_tokens] = float("inf")
    order = received.topk(count, dim=1, sorted=False).indices
    return order.sort(dim=1).values


class DeiT(nn.Module):
    """Vision transformer with a class token (and, by its config, the variants of timm's
    ``VisionTransformer`` that :func:`adopt_vit` takes), with timm's parameter names."""

    def __init__(self, config: DeiTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DEIT_CONFIGS["deit_tiny"]
        if config.global_pool not in ("token", "avg"):
            raise InputError(f"global_pool must be 'token' or 'avg', got {config.global_pool!r}")
        if config.global_pool == "token" and not config.class_token:
            raise InputError("global_pool='token' needs the class token")
        dim = config.embed_dim
        prefix = config.num_prefix_tokens
        self.patch_embed = PatchEmbed(config)
        if config.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if config.dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        if config.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, dim))
        embedded = config.num_patches + (0 if config.no_embed_class else prefix)
        self.pos_embed = nn.Parameter(torch.zeros(1, embedded, dim))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                config.mlp_ratio,
                config.norm_eps,
                qkv_bias=config.qkv_bias,
                qk_norm=config.qk_norm,
                layer_scale=config.layer_scale,
                prefix_tokens=prefix,
            )
            for _ in range(config.depth)
        )
        eps = config.norm_eps
        if config.pre_norm:
            self.norm_pre = nn.LayerNorm(dim, eps=eps)
        self.norm = nn.LayerNorm(dim, eps=eps) if config.final_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(dim, eps=eps) if config.fc_norm else nn.Identity()
        # num_classes 0: a feature extractor (timm's DINOv2), the pooled feature is the output
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes else nn.Identity()
        if config.dist_token:
            self.head_dist = (
                nn.Linear(dim, config.num_classes) if config.num_classes else nn.Identity()
            )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if config.class_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def num_tokens(self) -> int:
        return self.config.num_patches + self.config.num_prefix_tokens

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images)
        batch = tokens.shape[0]
        prefix = [self.cls_token.expand(batch, -1, -1)] if self.config.class_token else []
        if self.config.dist_token:
            prefix.append(self.dist_token.expand(batch, -1, -1))
        if self.config.reg_tokens:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        if self.config.no_embed_class:
            x = torch.cat([*prefix, tokens + self.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, tokens], dim=1) + self.pos_embed
        return self.norm_pre(x) if self.config.pre_norm else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The feature the head reads: the class token (B, D), with a distillation token both
        (B, 2, D), or with ``global_pool="avg"`` the mean of the patch tokens still present."""
        if self.config.global_pool == "avg":
            return x[:, self.config.num_prefix_tokens :].mean(dim=1)
        if self.config.dist_token:
            return x[:, :2]
        return x[:, 0]

    def classify(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`forward_tokens`'s feature; a distilled model averages its two
        heads, as timm's does at inference."""
        feature = self.fc_norm(feature)
        if self.config.dist_token and self.config.global_pool == "token":
            return (self.head(feature[:, 0]) + self.head_dist(feature[:, 1])) / 2
        return self.head(feature)

    def forward_tokens(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        keep_counts: list[int] | None = None,
        on_attention: AttentionHook | None = None,
        return_ids: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks; return the final feature (:meth:`pool`: the class token's, (B, D))
        and, with ``return_ids``, the original ids (B, n) of the tokens the last block ran on.

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
            prefix = self.config.num_prefix_tokens
            if min(keep_counts) <= prefix:
                raise InputError(
                    f"every block keeps the {prefix} prefix token(s) and at least one patch: "
                    f"got counts {list(keep_counts)}"
                )
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
        feature = self.pool(self.norm(x))
        if not return_ids:
            return feature
        if ids is None:
            ids = torch.arange(n_all, device=x.device).expand(x.shape[0], n_all)
        return feature, ids

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.forward_tokens(images))


def _pair(value: object, what: str) -> tuple[int, int]:
    """An (h, w) pair from an int or a pair."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise InputError(f"cannot read the {what} from {value!r}")


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


def _is_layer_norm(module: object) -> bool:
    """A plain LayerNorm over the last dimension with its affine parameters (timm's own
    ``LayerNorm`` subclasses torch's and computes the same)."""
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine


def _is_layer_scale(module: nn.Module) -> bool:
    """timm's ``LayerScale``: ``x * gamma`` with one gamma per channel."""
    gamma = getattr(module, "gamma", None)
    return (
        isinstance(gamma, torch.Tensor)
        and gamma.dim() == 1
        and [name for name, _ in module.named_parameters()] == ["gamma"]
        and "LayerScale" in type(module).__name__
        and "2d" not in type(module).__name__
    )


def _block_features(block: nn.Module) -> list[str]:
    """What one timm-style block has that headway's :class:`Block` does not compute."""
    kind = type(block).__name__
    if "Parallel" in kind:  # timm's ParallelScalingBlock / ParallelThingsBlock
        return [f"parallel blocks ({kind})"]
    parts = [p for p in ("norm1", "attn", "norm2", "mlp") if not hasattr(block, p)]
    if parts:
        return [f"blocks without {', '.join(parts)} ({kind})"]
    problems = []
    for name in ("norm1", "norm2"):
        if not _is_layer_norm(getattr(block, name)):
            problems.append(f"blocks use {name} ({type(getattr(block, name)).__name__})")
    for name, module in _layers_present(block, ("ls1", "ls2")):
        if not _is_layer_scale(module):
            problems.append(f"blocks use {name} ({type(module).__name__})")
    for name, module in _layers_present(block, ("attn.q_norm", "attn.k_norm")):
        if not _is_layer_norm(module):
            problems.append(f"blocks use {name} ({type(module).__name__})")
    for name, module in _layers_present(block, ("attn.norm", "mlp.norm")):
        problems.append(f"blocks use {name} ({type(module).__name__})")
    if getattr(block.attn, "gate", None) is not None:
        problems.append("gated attention (attn.gate)")
    act = getattr(block.mlp, "act", None)
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        problems.append(f"MLP activation {type(act).__name__} (headway's DeiT uses exact GELU)")
    if "Post" in kind:  # timm's ResPostBlock: norm after each residual branch
        problems.append(f"post-norm blocks ({kind})")
    return problems


def _vit_features(model: nn.Module) -> list[str]:
    """What a timm-style ViT has that headway's DeiT does not compute (empty: it adopts)."""
    problems = []
    pool = getattr(model, "global_pool", "token")
    if pool not in ("token", "avg"):
        problems.append(f"global_pool={pool!r} (headway reads the class token or the mean)")
    if pool == "token" and getattr(model, "cls_token", None) is None:
        problems.append("no class token to read (global_pool='token')")
    if getattr(model, "attn_pool", None) is not None:
        problems.append("attention pooling (global_pool='map')")
    if getattr(model, "pool_include_prefix", False):
        problems.append("pooling that includes the prefix tokens")
    if getattr(model, "dist_token", None) is not None:
        if pool != "token":
            problems.append(f"a distillation token with global_pool={pool!r}")
        if getattr(model, "reg_token", None) is not None:
            problems.append("both a distillation token and register tokens")
        if not isinstance(getattr(model, "head_dist", None), (nn.Linear, nn.Identity)):
            problems.append("a distillation token without a linear head_dist")
    if getattr(model, "dynamic_img_size", False):
        problems.append("dynamic_img_size=True (headway's DeiT is built for one image size)")
    for name in ("norm", "fc_norm", "norm_pre"):
        layer = getattr(model, name, None)
        if not (layer is None or _is_layer_norm(layer) or isinstance(layer, nn.Identity)):
            problems.append(f"a {name} of type {type(layer).__name__}")
    for name, _ in _layers_present(model, ("patch_embed.norm",)):
        problems.append(f"a {name} layer")
    head = getattr(model, "head", None)
    if not isinstance(head, (nn.Linear, nn.Identity)):
        problems.append(f"a head of type {type(head).__name__} (not a linear classifier)")
    for block in model.blocks:
        problems += [p for p in _block_features(block) if p not in problems]
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) > 1:
        problems.append(f"LayerNorms with different eps ({', '.join(map(str, sorted(eps)))})")
    return problems


def adopt_vit(model: nn.Module) -> DeiT:
    """headway's :class:`DeiT` computing what ``model`` computes, with its weights: ``model``
    itself when it is one, else a timm-style ``VisionTransformer`` (``patch_embed.proj``,
    ``cls_token``, ``pos_embed``, ``blocks[i].{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
    mlp.fc2}``, ``norm``, ``head``), read by its blocks and loaded strictly (timm's names are
    headway's). It takes DeiT and ViT, and the variants the method applies to: LayerScale
    (DeiT-III), a distillation token (distilled DeiT), register tokens, no class token,
    position embeddings without the prefix (``no_embed_class``), average pooling with
    ``fc_norm``, ``norm_pre`` (CLIP), no final norm, no classifier (features), qk-norm, qkv
    without bias, non-square images and patches. Sparse attention
    masks and token pruning then run on it as on headway's DeiT (prefix tokens are never
    pruned). Anything the DeiT function lacks is refused by name."""
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
    reg_token = getattr(model, "reg_token", None)
    head = model.head
    config = DeiTConfig(
        img_size=_pair(getattr(model.patch_embed, "img_size", None), "image size"),
        patch_size=_pair(proj.kernel_size, "patch size"),
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / dim,
        num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        in_chans=proj.in_channels,
        norm_eps=float(block.norm1.eps),
        class_token=getattr(model, "cls_token", None) is not None,
        dist_token=getattr(model, "dist_token", None) is not None,
        reg_tokens=0 if reg_token is None else int(reg_token.shape[1]),
        no_embed_class=bool(getattr(model, "no_embed_class", False)),
        global_pool=getattr(model, "global_pool", "token"),
        pre_norm=_is_layer_norm(getattr(model, "norm_pre", None)),
        final_norm=_is_layer_norm(model.norm),
        fc_norm=_is_layer_norm(getattr(model, "fc_norm", None)),
        layer_scale=bool(_layers_present(block, ("ls1",))),
        qk_norm=bool(_layers_present(block, ("attn.q_norm",))),
        qkv_bias=block.attn.qkv.bias is not None,
        patch_bias=proj.bias is not None,
    )
    if (
        config.image_hw[0] % _hw(config.patch_size)[0]
        or config.image_hw[1] % _hw(config.patch_size)[1]
    ):
        raise InputError(
            f"{name} cannot run as headway's DeiT: image size {config.image_hw} is not a "
            f"multiple of the patch size {config.patch_size}"
        )
    adopted = DeiT(config)
    state = {k: v for k, v in model.state_dict().items()}
    from headway.models.checkpoint import load_weights  # a cycle at import time otherwise

    try:
        load_weights(adopted, state, strict=True)
    except (InputError, RuntimeError) as error:
        raise InputError(
            f"{name} cannot run as headway's DeiT: its weights differ ({error})"
        ) from None
    _check_same_function(model, adopted.eval(), config, name)
    return adopted.train(model.training)


def _check_same_function(model: nn.Module, adopted: DeiT, config: DeiTConfig, name: str) -> None:
    """Structure can hide a different computation (a block whose forward orders the same
    children otherwise): both run one probe image, and a difference beyond fp32 rounding is
    refused with its size."""
    was_training = model.training
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, config.in_chans, *config.image_hw, generator=generator)
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
