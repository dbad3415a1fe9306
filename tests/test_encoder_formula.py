"""The encoder layer against a slow, literal restatement of the spec's formulas (§1.5–1.6):
per head, per window, per cyclic shift, with explicit loops and no shared helpers."""

from __future__ import annotations

import math

import pytest
import torch

from headway.models.cswintt import CSWinTransformer, CSWinTTConfig, get_config


def roll_window(window: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """roll(X, (a, b))[u, v] = X[(u − a) mod w, (v − b) mod w] for X of shape (w, w, C)."""
    w = window.shape[0]
    out = torch.empty_like(window)
    for u in range(w):
        for v in range(w):
            out[u, v] = window[(u - a) % w, (v - b) % w]
    return out


def split_maps(tokens: torch.Tensor, shapes: tuple[tuple[int, int], ...]) -> list[torch.Tensor]:
    """(L, C) row-major token sequence → list of (H, W, C) maps."""
    maps, start = [], 0
    for h, w in shapes:
        maps.append(tokens[start : start + h * w].reshape(h, w, -1))
        start += h * w
    return maps


def shifted_search(grid: torch.Tensor, s: int) -> torch.Tensor:
    """new[i, j] = old[(i + s) mod H, (j + s) mod W]."""
    h, w = grid.shape[:2]
    out = torch.empty_like(grid)
    for i in range(h):
        for j in range(w):
            out[i, j] = grid[(i + s) % h, (j + s) % w]
    return out


def windows_of(grid: torch.Tensor, w: int) -> list[torch.Tensor]:
    """Non-overlapping w×w windows, row-major, each (w, w, C)."""
    h, wd = grid.shape[:2]
    return [grid[r : r + w, c : c + w] for r in range(0, h, w) for c in range(0, wd, w)]


def reference_head(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pad: torch.Tensor,
    w: int,
    s: int,
    table: torch.Tensor | None,
    shapes: tuple[tuple[int, int], ...],
) -> torch.Tensor:
    """One head for one batch element. q (scaled), k, v: (L, c); pad: (L,) bool → (L, c)."""
    last = len(shapes) - 1
    q_maps, k_maps, v_maps = (split_maps(x, shapes) for x in (q, k, v))
    pad_maps = split_maps(pad[:, None], shapes)
    if s:
        for maps in (q_maps, k_maps, v_maps):
            maps[last] = shifted_search(maps[last], s)
    q_win = [x for m in q_maps for x in windows_of(m, w)]
    k_win = [x for m in k_maps for x in windows_of(m, w)]
    v_win = [x for m in v_maps for x in windows_of(m, w)]
    pad_win = [bool(x.all()) for m in pad_maps for x in windows_of(m, w)]  # unshifted mask
    num_tokens = q.shape[0]
    n_rows = num_tokens // w
    m = [max(t / w, 1 - t / w) for t in range(w)]
    keys, values, penalty, padded = [], [], [], []
    for n in range(len(k_win)):
        for a in range(w):
            for b in range(w):
                keys.append(roll_window(k_win[n], a, b).reshape(-1))
                values.append(roll_window(v_win[n], a, b).reshape(-1))
                penalty.append(m[a] * m[b] - 1)
                padded.append(pad_win[n])
    keys_t, values_t = torch.stack(keys), torch.stack(values)
    out_windows = []
    for p, query in enumerate(q_win):
        scores = keys_t @ query.reshape(-1)
        scores = (scores + torch.tensor(penalty, dtype=scores.dtype)) / (w * w)
        scores[torch.tensor(padded)] = -math.inf
        if table is not None:
            for col in range(num_tokens):
                index = (p // w - col // w + n_rows - 1) * (2 * w - 1) + p % w - col % w + w - 1
                scores[col] = scores[col] + table[index]
        out_windows.append((scores.softmax(0) @ values_t).reshape(w, w, -1))
    out_maps, cursor = [], 0
    for index, (h, wd) in enumerate(shapes):
        grid = torch.empty(h, wd, q.shape[1], dtype=q.dtype)
        for r in range(0, h, w):
            for c in range(0, wd, w):
                grid[r : r + w, c : c + w] = out_windows[cursor]
                cursor += 1
        if index == last and s:
            unrolled = torch.empty_like(grid)
            for i in range(h):
                for j in range(wd):
                    unrolled[(i + s) % h, (j + s) % wd] = grid[i, j]
            grid = unrolled
        out_maps.append(grid.reshape(h * wd, -1))
    return torch.cat(out_maps)


def reference_layer(layer, tables, tokens, pad, config: CSWinTTConfig) -> torch.Tensor:
    """tokens (L, B, d) → (L, B, d) following §1.5 step by step."""
    d, heads = config.d_model, config.num_heads
    c = d // heads
    qkv = tokens @ layer.qkv_embedding.weight.t() + layer.qkv_embedding.bias
    q, k, v = qkv[..., :d] * c**-0.5, qkv[..., d : 2 * d], qkv[..., 2 * d :]
    out = torch.empty_like(tokens)
    for batch in range(tokens.shape[1]):
        per_head = []
        for h in range(heads):
            sl = slice(h * c, (h + 1) * c)
            w, s = config.window_sizes[h], config.shifts[h]
            per_head.append(
                reference_head(
                    q[:, batch, sl],
                    k[:, batch, sl],
                    v[:, batch, sl],
                    pad[batch],
                    w,
                    s,
                    tables.get(w),
                    config.map_shapes,
                )
            )
        out[:, batch] = torch.cat(per_head, dim=1)
    attended = out @ layer.output_linear.weight.t() + layer.output_linear.bias
    x = torch.nn.functional.layer_norm(
        tokens + attended, (d,), layer.norm1.weight, layer.norm1.bias, 1e-5
    )
    ffn = layer.feedforward[3](torch.relu(layer.feedforward[0](x)))
    return torch.nn.functional.layer_norm(x + ffn, (d,), layer.norm2.weight, layer.norm2.bias, 1e-5)


def make_padding(config: CSWinTTConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Padding on the right/bottom of each map, deep enough to pad whole 2×2 and 4×4 windows."""
    pad = torch.zeros(batch, config.num_tokens, dtype=torch.bool)
    start = 0
    for h, w in config.map_shapes:
        grid = torch.zeros(batch, h, w, dtype=torch.bool)
        for b in range(batch):
            cols = int(torch.randint(0, w // 2 + 1, (1,), generator=generator))
            rows = int(torch.randint(0, h // 2 + 1, (1,), generator=generator))
            if cols:
                grid[b, :, w - cols :] = True
            if rows:
                grid[b, h - rows :, :] = True
        pad[:, start : start + h * w] = grid.flatten(1)
        start += h * w
    return pad


@pytest.mark.parametrize("seed", [11, 12])
def test_encoder_layer_matches_spec_formulas(seed: int) -> None:
    config = get_config("tiny")  # 8 heads, windows 1,2,4,8 and shifts 0,0,0,0,0,1,2,4
    assert config.shifts == (0, 0, 0, 0, 0, 1, 2, 4)
    torch.manual_seed(seed)
    transformer = CSWinTransformer(config).double().eval()
    for table in transformer.bias_tables().values():
        torch.nn.init.normal_(table, std=0.5)
    for parameter in transformer.transformer[0].parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    generator = torch.Generator().manual_seed(seed)
    batch = 2
    tokens = (
        torch.randn(
            config.num_tokens, batch, config.d_model, dtype=torch.float64, generator=generator
        )
        + 0.5
    )
    pad = make_padding(config, batch, generator)
    layer = transformer.transformer[0]
    with torch.no_grad():
        fast = layer(tokens, transformer.encoder_context(pad))
        slow = reference_layer(layer, transformer.bias_tables(), tokens, pad, config)
    assert pad.any(), "the test needs padded tokens"
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


def test_default_geometry_constants() -> None:
    config = get_config("default")
    assert config.num_tokens == 704
    transformer = CSWinTransformer(config)
    sizes = {w: t.numel() for w, t in transformer.bias_tables().items()}
    assert sizes == {1: 1407, 2: 1317, 4: 1302}
    geometry = transformer.geometry
    expected = {
        2: [0, -0.5, -0.5, -0.75],
        4: [0, -0.25, -0.5, -0.25],
    }
    for w, first in expected.items():
        torch.testing.assert_close(geometry.penalty(w)[: len(first)].float(), torch.tensor(first))
    assert geometry.penalty(8).dtype == torch.float16
