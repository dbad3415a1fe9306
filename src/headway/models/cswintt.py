"""CSWinTT (CVPR 2022): a transformer tracker whose encoder heads attend over cyclically shifted
windows of different sizes.

The network is split along the paper's stages so each can be timed and swapped on its own:
backbone (+ input projection), encoder, decoder, box head, confidence head. Module and parameter
names follow the official release, so its checkpoints load strictly (see ``checkpoint.py``).
Reproduced quirks (they matter for the released weights): the shifted heads use the *unshifted*
padding mask, the relative bias indexes the flattened token order, the spatially-regularised
penalty is added before the 1/w² scaling, w = 8 has no bias, all layers are post-norm, and the
corner grid has no half-cell offset. The unused sine position encoding is omitted (it is never
consumed, so outputs are bit-identical without it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from headway.errors import InputError
from headway.models.resnet import FrozenBatchNorm2d, ResNetTrunk


@dataclass(frozen=True)
class CSWinTTConfig:
    """Sizes that build the network (the official yaml's model and data fields)."""

    template_size: int = 128
    search_size: int = 384
    num_templates: int = 2
    backbone_blocks: tuple[int, ...] = (3, 4, 6)
    backbone_width: int = 64
    d_model: int = 256
    num_heads: int = 8
    window_sizes: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)
    biased_window_sizes: tuple[int, ...] = (1, 2, 4)
    dim_feedforward: int = 2048
    dropout: float = 0.1
    enc_layers: int = 6
    dec_layers: int = 6
    head_channels: int = 256
    cls_layers: int = 3
    name: str = field(default="custom", compare=False)

    @property
    def stride(self) -> int:
        return 4 * 2 ** (len(self.backbone_blocks) - 1)

    @property
    def template_grid(self) -> int:
        return self.template_size // self.stride

    @property
    def search_grid(self) -> int:
        return self.search_size // self.stride

    @property
    def map_shapes(self) -> tuple[tuple[int, int], ...]:
        """Token grids in sequence order: every template, then the search region."""
        t, s = self.template_grid, self.search_grid
        return (*([(t, t)] * self.num_templates), (s, s))

    @property
    def num_tokens(self) -> int:
        return sum(h * w for h, w in self.map_shapes)

    @property
    def shifts(self) -> tuple[int, ...]:
        """Heads in the second half shift the search map by w // 2 (so w = 1 gets 0)."""
        half = self.num_heads // 2
        return tuple(w // 2 if i >= half else 0 for i, w in enumerate(self.window_sizes))

    def validate(self) -> None:
        """Raise ValueError when the sizes cannot build the window attention."""
        problems = []
        if len(self.window_sizes) != self.num_heads:
            problems.append(f"{len(self.window_sizes)} window sizes for {self.num_heads} heads")
        if self.d_model % self.num_heads:
            problems.append(f"d_model {self.d_model} is not divisible by {self.num_heads} heads")
        for size_name, size in (("template", self.template_size), ("search", self.search_size)):
            if size % self.stride:
                problems.append(f"{size_name} size {size} is not a multiple of {self.stride}")
        largest = max(self.window_sizes)
        for grid in (self.template_grid, self.search_grid):
            if grid % largest:
                problems.append(f"token grid {grid} is not divisible by window size {largest}")
        if problems:
            raise InputError("invalid CSWinTT configuration: " + "; ".join(problems))


CONFIGS: dict[str, CSWinTTConfig] = {
    "default": CSWinTTConfig(name="default"),
    "tiny": CSWinTTConfig(
        name="tiny",
        search_size=256,
        backbone_blocks=(1, 1, 1),
        backbone_width=16,
        d_model=64,
        dim_feedforward=256,
        enc_layers=2,
        dec_layers=2,
        head_channels=64,
    ),
}


def get_config(name: str, **overrides: object) -> CSWinTTConfig:
    """Named configuration with optional field overrides."""
    if name not in CONFIGS:
        raise InputError(f"unknown CSWinTT configuration {name!r}; choose from {sorted(CONFIGS)}")
    config = replace(CONFIGS[name], **overrides) if overrides else CONFIGS[name]
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------
# Window geometry: constants recomputed at build time (never stored in checkpoints)
# ---------------------------------------------------------------------------------------------


def cyclic_shift_meshes(window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index meshes (w², w²) for the official expansion ``K[:, :, rows, cols]``: entry
    (r1, r2) reads window row (c1 − r1_row) and column (c2 − r2_row) (negative wraps), where
    position r = (row, col). Regrouped as (a1, a2 | c1, c2) this is roll(K_n, (a1, a2))."""
    row, col = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    offset = (col - row).reshape(-1) % window
    rows, cols = torch.meshgrid(offset, offset, indexing="ij")
    return rows, cols


def spatial_penalty(window: int, num_windows: int) -> torch.Tensor:
    """Per key column n·w²+a·w+b: m_a·m_b − 1 with m_t = max(t/w, 1 − t/w); 0 when unshifted."""
    t = torch.arange(window, dtype=torch.float32) / window
    m = torch.maximum(t, 1 - t)
    per_shift = (m[:, None] * m[None, :] - 1).reshape(-1)
    return per_shift.repeat(num_windows)


def relative_bias_index(window: int, num_tokens: int) -> torch.Tensor:
    """(L, num_tokens) index into the bias table, treating the flattened sequence as an
    N×w grid (N = num_tokens / w) — the official "flattened-grid" relative position."""
    num_rows = num_tokens // window
    num_windows = num_tokens // (window * window)
    p = torch.arange(num_windows)[:, None]
    q = torch.arange(num_tokens)[None, :]
    row = p // window - q // window + num_rows - 1
    col = p % window - q % window + window - 1
    return row * (2 * window - 1) + col


def relative_bias_table_size(window: int, num_tokens: int) -> int:
    num_rows = num_tokens // window
    num_windows = num_tokens // (window * window)
    return (2 * window - 1) * (num_rows + -(-num_windows // window) - 1)


def window_partition(grid: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B, H/w · W/w, w·w·C), windows row-major, each flattened (row, col, C)."""
    b, h, w, c = grid.shape
    grid = grid.view(b, h // window, window, w // window, window, c)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window * c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, n, w·w·C) → (B, H, W, C)."""
    b = windows.shape[0]
    grid = windows.view(b, height // window, width // window, window, window, -1)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(b, height, width, -1)


class WindowGeometry(nn.Module):
    """How the token sequence (templates then search) is cut into each window size's windows.

    Holds the constants every encoder layer shares: cyclic-shift gather indices, the SR penalty
    and the relative-bias indices, as non-persistent buffers so they follow ``.to(device)``.
    """

    def __init__(self, config: CSWinTTConfig) -> None:
        super().__init__()
        self.map_shapes = config.map_shapes
        self.num_tokens = config.num_tokens
        self.window_sizes = tuple(sorted(set(config.window_sizes)))
        for w in self.window_sizes:
            num_windows = self.num_tokens // (w * w)
            rows, cols = cyclic_shift_meshes(w)
            self.register_buffer(f"shift_rows{w}", rows, persistent=False)
            self.register_buffer(f"shift_cols{w}", cols, persistent=False)
            self.register_buffer(
                f"penalty{w}", spatial_penalty(w, num_windows).half(), persistent=False
            )
            self.register_buffer(
                f"bias_index{w}", relative_bias_index(w, self.num_tokens), persistent=False
            )

    def partition(self, tokens: torch.Tensor, window: int, shift: int) -> torch.Tensor:
        """(L, B, C) tokens → (B, L/w², w²·C) windows; the search map is rolled by −shift first."""
        if window == 1:
            return tokens.transpose(0, 1)
        parts = []
        start = 0
        last = len(self.map_shapes) - 1
        for index, (h, w) in enumerate(self.map_shapes):
            grid = (
                tokens[start : start + h * w].permute(1, 0, 2).reshape(-1, h, w, tokens.shape[-1])
            )
            if index == last and shift:
                grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
            parts.append(window_partition(grid, window))
            start += h * w
        return torch.cat(parts, dim=1)

    def reverse(self, windows: torch.Tensor, window: int, shift: int) -> torch.Tensor:
        """(B, L/w², w²·C) windows → (L, B, C) tokens; the search map is rolled back by +shift."""
        if window == 1:
            return windows.transpose(0, 1)
        parts = []
        start = 0
        last = len(self.map_shapes) - 1
        for index, (h, w) in enumerate(self.map_shapes):
            count = (h // window) * (w // window)
            grid = window_reverse(windows[:, start : start + count], window, h, w)
            if index == last and shift:
                grid = torch.roll(grid, shifts=(shift, shift), dims=(1, 2))
            parts.append(grid.flatten(1, 2).permute(1, 0, 2))
            start += count
        return torch.cat(parts, dim=0)

    def expand_shifts(self, windows: torch.Tensor, window: int) -> torch.Tensor:
        """(B, n, w²·C) → (B, n·w², w²·C): every window followed by its w² − 1 cyclic rolls.

        Done as the official code does it (a mesh gather, then a permute and a copy), which is
        the data movement the faster executors remove."""
        b, n, _ = windows.shape
        grid = windows.view(b, n, window, window, -1)
        rows, cols = getattr(self, f"shift_rows{window}"), getattr(self, f"shift_cols{window}")
        expanded = grid[:, :, rows, cols].view(b, n, window, window, window, window, -1)
        return expanded.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, n * window * window, -1)

    def padded_keys(self, padding_mask: torch.Tensor, window: int) -> torch.Tensor:
        """(B, L) token padding → (B, L) key-column padding: a window's w² columns are padded iff
        all its tokens are. Uses the unshifted mask even for shifted heads (official quirk)."""
        flags = self.partition(padding_mask.t().unsqueeze(-1), window, shift=0)
        padded_window = flags.all(dim=-1)
        return padded_window.repeat_interleave(window * window, dim=1)

    def penalty(self, window: int) -> torch.Tensor:
        return getattr(self, f"penalty{window}")

    def bias(self, table: torch.Tensor, window: int) -> torch.Tensor:
        return table[getattr(self, f"bias_index{window}")]


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class EncoderContext(NamedTuple):
    """What every encoder layer of one forward shares."""

    padding_mask: torch.Tensor  # (B, L), True = padding
    biases: dict[int, torch.Tensor]  # window size → (L/w², L) relative-position bias
    geometry: WindowGeometry


def window_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor,
    window: int,
    shift: int,
    bias: torch.Tensor | None,
    geometry: WindowGeometry,
    dropout: nn.Module,
) -> torch.Tensor:
    """Attention of one head. q (already scaled), k, v: (L, B, head_dim) → (L, B, head_dim).

    ``bias`` is the head's (L/w², L) relative-position bias, or None (w = 8)."""
    q_win = geometry.partition(q, window, shift)
    k_win = geometry.partition(k, window, shift)
    v_win = geometry.partition(v, window, shift)
    padded = geometry.padded_keys(padding_mask, window)
    if window == 1:
        scores = torch.matmul(q_win, k_win.transpose(1, 2))
    else:
        k_win = geometry.expand_shifts(k_win, window)
        v_win = geometry.expand_shifts(v_win, window)
        scores = torch.matmul(q_win, k_win.transpose(1, 2))
        scores = (scores + geometry.penalty(window)) / (window * window)
    scores = scores.masked_fill(padded.unsqueeze(1), float("-inf"))
    if bias is not None:
        scores = scores + bias
    weights = dropout(scores.softmax(dim=-1))
    return geometry.reverse(torch.matmul(weights, v_win), window, shift)


class SequentialHeads(nn.Module):
    """The layer's attention as the official code runs it (Case A): heads one after another in
    a Python loop, each building its own shifted key/value copies. Parameter-free, so the
    rewrites of :mod:`headway.transforms` replace it without touching the layer's weights."""

    def __init__(
        self, head_dim: int, window_sizes: tuple[int, ...], shifts: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.window_sizes = window_sizes
        self.shifts = shifts

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: EncoderContext,
        dropout: nn.Module,
    ) -> torch.Tensor:
        """q (scaled), k, v (L, B, d) → the heads' outputs concatenated, (L, B, d)."""
        padding_mask, biases, geometry = context
        heads = []
        for h, (window, shift) in enumerate(zip(self.window_sizes, self.shifts, strict=True)):
            channels = slice(h * self.head_dim, (h + 1) * self.head_dim)
            heads.append(
                window_head_attention(
                    q[..., channels],
                    k[..., channels],
                    v[..., channels],
                    padding_mask,
                    window,
                    shift,
                    biases.get(window),
                    geometry,
                    dropout,
                )
            )
        return torch.cat(heads, dim=-1)


class CyclicWindowEncoderLayer(nn.Module):
    """One post-norm encoder layer: QKV projection, per-head cyclic-shift window attention
    (the ``attend`` child: :class:`SequentialHeads` as built, replaced by the transforms), then
    output projection and FFN."""

    def __init__(self, config: CSWinTTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.window_sizes = config.window_sizes
        self.shifts = config.shifts
        self.qkv_embedding = nn.Linear(d, 3 * d)
        self.output_linear = nn.Linear(d, d)
        self.feedforward = nn.Sequential(
            nn.Linear(d, config.dim_feedforward),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.dim_feedforward, d),
            nn.Dropout(config.dropout),
        )
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(config.dropout)
        self.attention_dropout = nn.Dropout(config.dropout)
        self.attend: nn.Module = SequentialHeads(self.head_dim, self.window_sizes, self.shifts)

    def forward(self, tokens: torch.Tensor, context: Any) -> torch.Tensor:
        """tokens (L, B, d) → (L, B, d); ``context`` is what the encoder built once for all
        layers (:class:`EncoderContext` for the plain attention: the padding mask (B, L), the
        relative-position biases and the window geometry)."""
        q, k, v = self.project(tokens)
        return self.finish(tokens, self.attend(q, k, v, context, self.attention_dropout))

    def project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (L, B, d) → q (scaled by head_dim^−½), k, v, each (L, B, d)."""
        q, k, v = self.qkv_embedding(tokens).chunk(3, dim=-1)
        return q * self.head_dim**-0.5, k, v

    def finish(self, tokens: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after the heads: output projection, residual, norm, FFN, norm."""
        tokens = self.norm1(tokens + self.dropout1(self.output_linear(attended)))
        return self.norm2(tokens + self.feedforward(tokens))


# ---------------------------------------------------------------------------------------------
# Decoder (DETR/STARK style, post-norm)
# ---------------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """Self-attention over the queries, cross-attention to the encoder memory, FFN."""

    def __init__(self, config: CSWinTTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = nn.MultiheadAttention(d, config.num_heads, dropout=config.dropout)
        self.multihead_attn = nn.MultiheadAttention(d, config.num_heads, dropout=config.dropout)
        self.linear1 = nn.Linear(d, config.dim_feedforward)
        self.linear2 = nn.Linear(config.dim_feedforward, d)
        self.dropout = nn.Dropout(config.dropout)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.dropout)
        self.dropout3 = nn.Dropout(config.dropout)

    def forward(
        self,
        target: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        q = k = target + query_pos
        attended = self.self_attn(q, k, value=target, need_weights=False)[0]
        target = self.norm1(target + self.dropout1(attended))
        attended = self.multihead_attn(
            target + query_pos,
            memory,
            value=memory,
            key_padding_mask=memory_padding_mask,
            need_weights=False,
        )[0]
        target = self.norm2(target + self.dropout2(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(target))))
        return self.norm3(target + self.dropout3(ffn))


class CSWinTransformer(nn.Module):
    """Encoder (``transformer``), decoder (``transformer_post``), shared relative-bias tables."""

    def __init__(self, config: CSWinTTConfig) -> None:
        super().__init__()
        self.geometry = WindowGeometry(config)
        self.biased_window_sizes = tuple(
            w for w in config.biased_window_sizes if w in config.window_sizes
        )
        for w in self.biased_window_sizes:
            size = relative_bias_table_size(w, config.num_tokens)
            table = nn.Parameter(torch.empty(size))
            nn.init.trunc_normal_(table, std=0.02)
            self.register_parameter(f"rel_bias_table{w}", table)
        self.transformer = nn.ModuleList(
            CyclicWindowEncoderLayer(config) for _ in range(config.enc_layers)
        )
        self.transformer_post = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.dec_layers)
        )
        self.post_norm = nn.LayerNorm(config.d_model)
        self.context_builder: nn.Module | None = None

    def bias_tables(self) -> dict[int, torch.Tensor]:
        return {w: getattr(self, f"rel_bias_table{w}") for w in self.biased_window_sizes}

    def relative_biases(self) -> dict[int, torch.Tensor]:
        """Per window size, the (L/w², L) bias looked up from its table (once per forward, as
        the official code does; all six layers share it)."""
        return {w: self.geometry.bias(t, w) for w, t in self.bias_tables().items()}

    def encoder_context(self, padding_mask: torch.Tensor) -> object:
        """What the layers share in one forward. A transform that replaces the layers may set
        ``context_builder`` (a module called with the padding mask and the bias tables) to
        precompute something else once per forward."""
        if self.context_builder is not None:
            return self.context_builder(padding_mask, self.bias_tables())
        return EncoderContext(padding_mask, self.relative_biases(), self.geometry)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        context = self.encoder_context(padding_mask)
        for layer in self.transformer:
            tokens = layer(tokens, context)
        return tokens

    def decode(
        self, memory: torch.Tensor, padding_mask: torch.Tensor, query_embed: torch.Tensor
    ) -> torch.Tensor:
        batch = memory.shape[1]
        query_pos = query_embed.unsqueeze(1).expand(-1, batch, -1)
        target = torch.zeros_like(query_pos)
        for layer in self.transformer_post:
            target = layer(target, memory, padding_mask, query_pos)
        return self.post_norm(target)


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


class CornerHead(nn.Module):
    """STARK-S corner predictor: two conv towers → top-left and bottom-right score maps →
    soft-argmax over cell top-left coordinates (no half-cell offset, as in the official code)."""

    def __init__(self, in_channels: int, channels: int, feat_size: int, stride: int) -> None:
        super().__init__()
        widths = [in_channels, channels, channels // 2, channels // 4, channels // 8]
        for branch in ("tl", "br"):
            for k in range(1, 5):
                self.add_module(f"conv{k}_{branch}", _conv_bn_relu(widths[k - 1], widths[k]))
            self.add_module(f"conv5_{branch}", nn.Conv2d(widths[4], 1, 1))
        self.feat_size = feat_size
        self.image_size = feat_size * stride
        cells = torch.arange(feat_size * feat_size)
        self.register_buffer("coord_x", (cells % feat_size * stride).float(), persistent=False)
        self.register_buffer("coord_y", (cells // feat_size * stride).float(), persistent=False)

    def _score(self, features: torch.Tensor, branch: str) -> torch.Tensor:
        for k in range(1, 5):
            features = getattr(self, f"conv{k}_{branch}")(features)
        return getattr(self, f"conv5_{branch}")(features)

    def _soft_argmax(self, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob = score.flatten(1).softmax(dim=1)
        return (prob * self.coord_x).sum(dim=1), (prob * self.coord_y).sum(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, 4) boxes (x1, y1, x2, y2) normalised to the search crop."""
        x_tl, y_tl = self._soft_argmax(self._score(features, "tl"))
        x_br, y_br = self._soft_argmax(self._score(features, "br"))
        return torch.stack((x_tl, y_tl, x_br, y_br), dim=1) / self.image_size


class MLP(nn.Module):
    """Linear layers with ReLU between them (the confidence head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


# ---------------------------------------------------------------------------------------------
# The whole network
# ---------------------------------------------------------------------------------------------


class Features(NamedTuple):
    """Projected backbone output of one or more images as a token sequence."""

    tokens: torch.Tensor  # (HW, B, d)
    padding_mask: torch.Tensor  # (B, HW), True = padding


class Backbone(nn.Module):
    """Holds the ResNet trunk under ``body`` (checkpoint prefix ``backbone.0.body``)."""

    def __init__(self, config: CSWinTTConfig) -> None:
        super().__init__()
        self.body = ResNetTrunk(config.backbone_blocks, config.backbone_width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class CSWinTT(nn.Module):
    """The CSWinTT network. Use the stage methods to time or replace stages individually."""

    def __init__(self, config: CSWinTTConfig | None = None) -> None:
        super().__init__()
        config = config or CONFIGS["default"]
        config.validate()
        self.config = config
        self.backbone = nn.ModuleList([Backbone(config)])
        self.bottleneck = nn.Conv2d(self.backbone[0].body.out_channels, config.d_model, 1)
        self.transformer = CSWinTransformer(config)
        self.query_embed = nn.Embedding(1, config.d_model)
        self.box_head = CornerHead(
            config.d_model, config.head_channels, config.search_grid, config.stride
        )
        self.cls_head = MLP(config.d_model, config.d_model, 1, config.cls_layers)
        self._reset_transformer_parameters()

    def _reset_transformer_parameters(self) -> None:
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    # -- stages ------------------------------------------------------------------------------
    def forward_backbone(self, images: torch.Tensor, padding_mask: torch.Tensor) -> Features:
        """Images (B, 3, H, W) normalised, pixel padding mask (B, H, W) → projected tokens."""
        feature_map = self.bottleneck(self.backbone[0](images))
        grid_mask = F.interpolate(padding_mask[:, None].float(), size=feature_map.shape[-2:])
        tokens = feature_map.flatten(2).permute(2, 0, 1)
        return Features(tokens, grid_mask[:, 0].to(torch.bool).flatten(1))

    def forward_encoder(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.transformer.encode(tokens, padding_mask)

    def forward_decoder(self, memory: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.transformer.decode(memory, padding_mask, self.query_embed.weight)

    def forward_box_head(self, memory: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """Fuse the search tokens with the decoded query and regress (B, 1, 4) cx, cy, w, h."""
        search_len = self.config.search_grid**2
        search = memory[-search_len:].transpose(0, 1)  # (B, HW, d)
        attention = torch.matmul(search, decoded.permute(1, 2, 0))  # (B, HW, 1)
        fused = (search * attention).transpose(1, 2)  # (B, d, HW)
        grid = self.config.search_grid
        fused = fused.reshape(-1, self.config.d_model, grid, grid)
        return box_xyxy_to_cxcywh(self.box_head(fused)).unsqueeze(1)

    def forward_confidence(self, decoded: torch.Tensor) -> torch.Tensor:
        """Confidence logit (B, 1) of the decoded query (sigmoid > 0.5 allows a template update)."""
        return self.cls_head(decoded)[-1]

    # -- whole network -----------------------------------------------------------------------
    def merge(self, features: list[Features]) -> Features:
        """Concatenate templates and search region into one sequence."""
        tokens = torch.cat([f.tokens for f in features], dim=0)
        mask = torch.cat([f.padding_mask for f in features], dim=1)
        return Features(tokens, mask)

    def forward_transformer(self, features: list[Features]) -> dict[str, torch.Tensor]:
        merged = self.merge(features)
        memory = self.forward_encoder(merged.tokens, merged.padding_mask)
        decoded = self.forward_decoder(memory, merged.padding_mask)
        return {
            "pred_boxes": self.forward_box_head(memory, decoded),
            "pred_logits": self.forward_confidence(decoded),
        }

    def forward(
        self,
        templates: list[tuple[torch.Tensor, torch.Tensor]],
        search: tuple[torch.Tensor, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """templates: [(images, masks)] × num_templates; search: (images, masks)."""
        features = [self.forward_backbone(img, mask) for img, mask in [*templates, search]]
        return self.forward_transformer(features)


def build_cswintt(config: str | CSWinTTConfig = "default", **overrides: object) -> CSWinTT:
    """Build CSWinTT from a configuration name (``default``, ``tiny``) or a config object."""
    if isinstance(config, str):
        config = get_config(config, **overrides)
    elif overrides:
        config = replace(config, **overrides)
    return CSWinTT(config)


__all__ = [
    "CONFIGS",
    "CSWinTT",
    "CSWinTTConfig",
    "CornerHead",
    "CyclicWindowEncoderLayer",
    "EncoderContext",
    "Features",
    "FrozenBatchNorm2d",
    "WindowGeometry",
    "build_cswintt",
    "get_config",
    "window_head_attention",
]
