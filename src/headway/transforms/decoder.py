"""The decoder's cross-attention keys and values in one product.

CSWinTT's decoder runs one query through six layers, and each layer's cross-attention projects
the same encoder memory (704 tokens × d_model on the default configuration) to its keys and
values: six separate 704×256·256×512 products that hold nearly all of the decoder's FLOPs,
each too small to reach the matmul rate, with matrix-vector products between them. Every
key/value projection depends only on the memory, so all of them can run first, as one
704×256·256×3072 product; each layer then reads its slice. The sums are the same dot
products, so the answers equal the plain decoder's to rounding (checked in the tests).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from headway.models.cswintt import CSWinTT, DecoderLayer
from headway.transforms.heads import TransformReport


def _cross_attention(
    attention: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    padding_mask: torch.Tensor,
) -> torch.Tensor:
    """``attention`` on already projected ``key`` and ``value`` (S, B, d), as
    ``nn.MultiheadAttention`` computes it in eval mode."""
    targets, batch, d = query.shape
    heads = attention.num_heads
    head_dim = d // heads
    bias = attention.in_proj_bias[:d] if attention.in_proj_bias is not None else None
    q = F.linear(query, attention.in_proj_weight[:d], bias)
    q = q.reshape(targets, batch * heads, head_dim).transpose(0, 1)
    k = key.reshape(key.shape[0], batch * heads, head_dim).transpose(0, 1)
    v = value.reshape(value.shape[0], batch * heads, head_dim).transpose(0, 1)
    masked = padding_mask.view(batch, 1, 1, -1).expand(-1, heads, -1, -1)
    masked = masked.reshape(batch * heads, 1, -1)
    additive = torch.zeros(masked.shape, dtype=q.dtype, device=q.device)
    additive = additive.masked_fill(masked, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    return attention.out_proj(out.transpose(0, 1).reshape(targets, batch, d))


def _layer(
    layer: DecoderLayer,
    target: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    padding_mask: torch.Tensor,
    query_pos: torch.Tensor,
) -> torch.Tensor:
    """:meth:`DecoderLayer.forward` in eval mode, its cross-attention on projected keys and
    values."""
    q = target + query_pos
    attended = layer.self_attn(q, q, value=target, need_weights=False)[0]
    target = layer.norm1(target + attended)
    attended = _cross_attention(layer.multihead_attn, target + query_pos, key, value, padding_mask)
    target = layer.norm2(target + attended)
    return layer.norm3(target + layer.linear2(F.relu(layer.linear1(target))))


class HoistedDecoder(nn.Module):
    """The decoder with every layer's cross-attention key/value projection in one product
    (set as the transformer's ``decoder_override``)."""

    def __init__(self, layers: nn.ModuleList, post_norm: nn.LayerNorm, d_model: int) -> None:
        super().__init__()
        self.layers = layers
        self.post_norm = post_norm
        self.d_model = d_model
        weights, biases = [], []
        for layer in layers:
            attention = layer.multihead_attn
            weights.append(attention.in_proj_weight[d_model:].detach())
            bias = attention.in_proj_bias
            biases.append(bias[d_model:].detach() if bias is not None else torch.zeros(2 * d_model))
        self.register_buffer("kv_weight", torch.cat(weights).clone())
        self.register_buffer("kv_bias", torch.cat(biases).clone())

    def forward(
        self, memory: torch.Tensor, padding_mask: torch.Tensor, query_embed: torch.Tensor
    ) -> torch.Tensor:
        batch, d = memory.shape[1], self.d_model
        query_pos = query_embed.unsqueeze(1).expand(-1, batch, -1)
        target = torch.zeros_like(query_pos)
        projected = F.linear(memory, self.kv_weight, self.kv_bias)  # (S, B, layers × 2d)
        for index, layer in enumerate(self.layers):
            key = projected[..., 2 * index * d : (2 * index + 1) * d]
            value = projected[..., (2 * index + 1) * d : (2 * index + 2) * d]
            target = _layer(layer, target, key, value, padding_mask, query_pos)
        return self.post_norm(target)


def hoist_decoder_kv(network: CSWinTT) -> tuple[CSWinTT, TransformReport]:
    """A copy of ``network`` whose decoder projects the memory to every layer's keys and
    values in one product."""
    network = copy.deepcopy(network)
    transformer = network.transformer
    layers = transformer.transformer_post
    transformer.decoder_override = HoistedDecoder(
        layers, transformer.post_norm, network.config.d_model
    ).to(next(network.parameters()).device)
    width = 2 * network.config.d_model * len(layers)
    notes = [f"{len(layers)} layers' keys and values: one product of width {width}"]
    return network, TransformReport("hoist_decoder_kv", len(layers), notes)
