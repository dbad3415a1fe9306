"""Rewrites of CSWinTT's encoder attention that compute the same function.

- :func:`split_heads` (paper A, Case C): every encoder layer's heads become separate
  sub-modules whose jobs a dispatcher runs — in order by default, or concurrently on a
  :class:`~headway.runtime.pool.StreamWorkerPool`.
- :func:`fuse_window_attention` (beyond the paper): no per-head partition copies and no
  permute-and-copy expansion. Window partition, search roll and cyclic key/value expansion are
  all one precomputed token index, so each head's Q, K′ and V′ are single gathers straight from
  the QKV projection; heads sharing a window size run as one batched matmul; the additive term
  (SR penalty, padding, relative bias) is built once per forward and shared by all layers.

Both replace only each layer's parameter-free ``attend`` child, so the transformed network
keeps its parameter names and loads the same state_dict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from headway.models.cswintt import (
    CSWinTT,
    CyclicWindowEncoderLayer,
    EncoderContext,
    SequentialHeads,
    WindowGeometry,
    window_head_attention,
)

HeadJob = Callable[[], torch.Tensor]


@dataclass
class TransformReport:
    """What a transform changed (``layers``), and what it left as it was and why (``skipped``)."""

    transform: str
    layers: int
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def run_in_order(jobs: list[HeadJob]) -> list[torch.Tensor]:
    """The default dispatcher: heads one after another (what the Python loop does)."""
    return [job() for job in jobs]


# ---------------------------------------------------------------------------------------------
# Split heads (Case C)
# ---------------------------------------------------------------------------------------------


class WindowHead(nn.Module):
    """One attention head as its own module: its channel slice, window size and shift."""

    def __init__(self, index: int, head_dim: int, window: int, shift: int) -> None:
        super().__init__()
        self.index = index
        self.channels = slice(index * head_dim, (index + 1) * head_dim)
        self.window = window
        self.shift = shift

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: EncoderContext,
        dropout: nn.Module,
    ) -> torch.Tensor:
        """q, k, v: the layer's full (L, B, d) projections; returns this head's (L, B, d/h)."""
        c = self.channels
        return window_head_attention(
            q[..., c],
            k[..., c],
            v[..., c],
            context.padding_mask,
            self.window,
            self.shift,
            context.biases.get(self.window),
            context.geometry,
            dropout,
        )

    def extra_repr(self) -> str:
        return f"head={self.index}, window={self.window}, shift={self.shift}"


class SplitHeads(nn.Module):
    """A layer's attention with every head a sub-module, run by ``dispatch`` (a list of jobs →
    their outputs in order: in order by default, or a pool's ``run_all``); the outputs are
    concatenated as the plain attention's."""

    def __init__(self, attend: SequentialHeads) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            WindowHead(i, attend.head_dim, w, s)
            for i, (w, s) in enumerate(zip(attend.window_sizes, attend.shifts, strict=True))
        )
        self.dispatch: Callable[[list[HeadJob]], list[torch.Tensor]] = run_in_order

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: EncoderContext,
        dropout: nn.Module,
    ) -> torch.Tensor:
        jobs = [partial(head, q, k, v, context, dropout) for head in self.heads]
        return torch.cat(self.dispatch(jobs), dim=-1)


def _plain_attention(layer: CyclicWindowEncoderLayer) -> SequentialHeads:
    if not isinstance(layer.attend, SequentialHeads):
        raise TypeError(
            f"the encoder's attention is already rewritten ({type(layer.attend).__name__}); "
            "transform the plain network"
        )
    return layer.attend


def split_heads(network: CSWinTT) -> tuple[CSWinTT, TransformReport]:
    """A copy of ``network`` whose encoder layers run their heads as separate sub-modules."""
    network = copy.deepcopy(network)
    layers = network.transformer.transformer
    for layer in layers:
        layer.attend = SplitHeads(_plain_attention(layer))
    report = TransformReport("split_heads", len(layers), [f"{network.config.num_heads} heads"])
    return network, report


def set_head_dispatch(
    network: CSWinTT, dispatch: Callable[[list[HeadJob]], list[torch.Tensor]]
) -> None:
    """Route the heads of every split layer through ``dispatch`` (e.g. ``pool.run_all``)."""
    for layer in network.transformer.transformer:
        if not isinstance(layer.attend, SplitHeads):
            raise TypeError("set_head_dispatch needs a network transformed by split_heads")
        layer.attend.dispatch = dispatch


# ---------------------------------------------------------------------------------------------
# Fused window attention (beyond the paper)
# ---------------------------------------------------------------------------------------------


def _token_order(geometry: WindowGeometry, window: int, shift: int) -> torch.Tensor:
    """(L,) token index of each position of the windowed sequence (windows, then w×w)."""
    tokens = torch.arange(geometry.num_tokens).view(-1, 1, 1)
    return geometry.partition(tokens, window, shift).reshape(-1)


def _shift_sources(window: int) -> torch.Tensor:
    """(w², w²): row a·w+b, column u·w+v → window position of roll(X, (a, b))[u, v]."""
    a, b, u, v = torch.meshgrid(*(torch.arange(window),) * 4, indexing="ij")
    return (((u - a) % window) * window + (v - b) % window).reshape(window * window, -1)


class WindowGroup(nn.Module):
    """The heads sharing one window size, with their gather/scatter indices as buffers.

    Indices address a head-major token buffer (H·L rows of one head's channels): row
    h·L + t is token t of head h. ``query_index`` lists, per head of the group, its tokens in
    windowed order (windows row-major, then the w×w positions; the search map rolled by the
    head's shift); ``key_index`` lists the rows of K′ (each window followed by its w² − 1
    cyclic rolls), so Q, K′ and V′ are single ``index_select`` calls."""

    def __init__(self, geometry: WindowGeometry, window: int, heads: list[int], shifts: list[int]):
        super().__init__()
        self.window = window
        self.num_heads = len(heads)
        num_tokens = geometry.num_tokens
        order = torch.stack([_token_order(geometry, window, s) for s in shifts])  # (G, L)
        per_window = order.view(len(heads), -1, window * window)  # (G, L/w², w²)
        keys = per_window[:, :, _shift_sources(window)].reshape(len(heads), -1)  # (G, L·w²)
        offset = torch.tensor(heads).view(-1, 1) * num_tokens
        self.register_buffer("query_index", (order + offset).reshape(-1), persistent=False)
        self.register_buffer("key_index", (keys + offset).reshape(-1), persistent=False)
        unshifted = _token_order(geometry, window, 0)
        self.register_buffer("unshifted_order", unshifted, persistent=False)


class FusedContext(NamedTuple):
    """Per forward: the additive attention term of every window size, (B or 1, L/w², L)."""

    additive: dict[int, torch.Tensor]


class FusedContextBuilder(nn.Module):
    """Builds, once per encoder forward, SR penalty / w² + padding (−inf) + relative bias."""

    def __init__(self, geometry: WindowGeometry, groups: nn.ModuleList) -> None:
        super().__init__()
        self.geometry = geometry
        self.groups = groups

    def forward(self, padding_mask: torch.Tensor, tables: dict[int, torch.Tensor]) -> FusedContext:
        additive = {}
        batch, num_tokens = padding_mask.shape
        for group in self.groups:
            w = group.window
            area = w * w
            base = self.geometry.penalty(w).float() / area
            if w in tables:
                base = base + self.geometry.bias(tables[w], w)
            else:
                base = base.expand(num_tokens // area, -1)
            padded = padding_mask[:, group.unshifted_order].view(batch, -1, area).all(dim=-1)
            padded = padded.repeat_interleave(area, dim=1)  # (B, L) key columns
            additive[w] = base.unsqueeze(0).masked_fill(padded.unsqueeze(1), float("-inf"))
        return FusedContext(additive)


class FusedHeads(nn.Module):
    """A layer's attention computing all heads with one gather per Q/K′/V′ and window size and
    one batched matmul pair per window size (``groups`` are shared by all layers)."""

    def __init__(self, attend: SequentialHeads, groups: nn.ModuleList) -> None:
        super().__init__()
        self.num_heads = len(attend.window_sizes)
        self.groups = groups

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: FusedContext,
        dropout: nn.Module,
    ) -> torch.Tensor:
        num_tokens, batch, d = q.shape
        heads = self.num_heads
        c = d // heads
        # (3, B, H·L, C), head-major: row h·L + t is token t of head h
        qkv = torch.stack((q, k, v)).view(3, num_tokens, batch, heads, c)
        qkv = qkv.permute(0, 2, 3, 1, 4).reshape(3, batch, heads * num_tokens, c)
        attended = torch.empty_like(qkv[0])
        for group in self.groups:
            additive = context.additive[group.window]
            if additive.shape[0] > 1:
                additive = additive.repeat_interleave(group.num_heads, dim=0)
            out = self.attend_group(group, qkv, additive.to(qkv.dtype), dropout)
            attended.index_copy_(1, group.query_index, out.to(attended.dtype))
        attended = attended.view(batch, heads, num_tokens, c).permute(2, 0, 1, 3)
        return attended.reshape(num_tokens, batch, d)

    def attend_group(
        self, group: WindowGroup, qkv: torch.Tensor, additive: torch.Tensor, dropout: nn.Module
    ) -> torch.Tensor:
        """One window size's heads: ``qkv`` (3, B, H·L, C) head-major (q already scaled by
        C^−½), ``additive`` (B·G or 1, L/w², L) → (B, G·L, C) in the order of
        ``group.query_index``."""
        q, k, v = qkv.unbind(0)
        batch, c = q.shape[0], q.shape[-1]
        area = group.window * group.window
        rows = batch * group.num_heads
        num_tokens = q.shape[1] // self.num_heads
        q_win = q.index_select(1, group.query_index).view(rows, -1, area * c)
        k_all = k.index_select(1, group.key_index).view(rows, num_tokens, area * c)
        v_all = v.index_select(1, group.key_index).view(rows, num_tokens, area * c)
        scores = torch.baddbmm(additive, q_win, k_all.transpose(1, 2), alpha=1.0 / area)
        weights = dropout(scores.softmax(dim=-1))
        return torch.bmm(weights, v_all).view(batch, -1, c)


def fuse_window_attention(
    network: CSWinTT,
    group_type: type[WindowGroup] = WindowGroup,
    attention_type: type[FusedHeads] = FusedHeads,
) -> tuple[CSWinTT, TransformReport]:
    """A copy of ``network`` whose encoder runs the fused window attention (``group_type`` and
    ``attention_type`` let a variant such as the spectral one reuse the rewrite)."""
    network = copy.deepcopy(network)
    transformer = network.transformer
    geometry = transformer.geometry
    config = network.config
    groups = nn.ModuleList()
    for w in sorted(set(config.window_sizes)):
        heads = [h for h, hw in enumerate(config.window_sizes) if hw == w]
        groups.append(group_type(geometry, w, heads, [config.shifts[h] for h in heads]))
    device = next(network.parameters()).device
    groups.to(device)
    layers = transformer.transformer
    for layer in layers:
        layer.attend = attention_type(_plain_attention(layer), groups)
    transformer.context_builder = FusedContextBuilder(geometry, groups)
    notes = [f"window {g.window}: {g.num_heads} heads batched" for g in groups]
    return network, TransformReport("fuse_window_attention", len(layers), notes)
