"""Cyclic-shift window attention computed in the frequency domain of each window.

CSWinTT's w > 1 heads score a query window against every key window *and each of its w² cyclic
rolls*: score(n, m, s) = Σ_x Q_n[x] · K_m[x − s] over the w×w positions x (indices mod w), and
return Σ_{m,s} A(n, m, s) · V_m[x − s]. Both are cyclic correlations/convolutions over the
window, so the 2-D DFT of the window turns them into one product per frequency:

    score(n, m, ·) = IDFT_s( Σ_c Q̂_n[f, c] · conj(K̂_m[f, c]) )
    out_n[f]       = Σ_m Â(n, m, f) · V̂_m[f]          (Â = DFT_s of the weights)

The plain path materialises the w²-fold rolled keys and values (a gather of L·w² rows per head)
and scores L/w² query windows against L rolled key windows over w²·c values: L²·c
multiply-adds per product whatever w is. Here
keys and values are never copied, and the products cost (R + 4·P)·(L/w²)²·c, where R bins of
the w×w spectrum are real (R = 4 for even w) and P = (w² − R)/2 are complex pairs: 4× fewer
multiply-adds for w = 2, 9× for w = 4, 33× for w = 8. The spectrum is kept real (cosine and
sine parts, fixed w²×w² basis matrices), so the network stays plain matmuls that every
exporter and engine takes. Softmax, the SR penalty, padding and relative bias act on the
scores of every (m, s) exactly as before; only the order of floating-point sums changes.

Heads with w = 1 have no rolls and keep the fused path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from headway.models.cswintt import CSWinTT, WindowGeometry
from headway.transforms.heads import (
    FusedHeads,
    TransformReport,
    WindowGroup,
    fuse_window_attention,
)


def spectrum_bins(window: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Frequencies of the w×w DFT: the self-conjugate ones (real spectrum for real input),
    and one representative of every conjugate pair f, −f."""
    real, pairs, seen = [], [], set()
    for f in ((a, b) for a in range(window) for b in range(window)):
        if f in seen:
            continue
        partner = ((-f[0]) % window, (-f[1]) % window)
        seen.update((f, partner))
        (real if partner == f else pairs).append(f)
    return real, pairs


def spectral_bases(window: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(forward, inverse, R, P) for real inputs over the w² positions x = u·w + v.

    ``forward`` (w² × w²) maps positions to features [Re of R real bins | Re of P pairs |
    Im of P pairs] of X̂[f] = Σ_x X[x]·e^{−iθ(f, x)}; ``inverse`` maps features back to
    positions (the inverse DFT, each pair counted for both its members), so inverse @ forward = I.
    Built in float64, returned in float32."""
    real, pairs = spectrum_bins(window)
    bins = real + pairs + pairs
    positions = [(u, v) for u in range(window) for v in range(window)]
    area = window * window
    forward = torch.empty(area, area, dtype=torch.float64)
    inverse = torch.empty(area, area, dtype=torch.float64)
    for row, (fa, fb) in enumerate(bins):
        imaginary = row >= len(real) + len(pairs)
        weight = 1.0 if row < len(real) else 2.0
        for col, (u, v) in enumerate(positions):
            theta = 2 * math.pi * (fa * u + fb * v) / window
            forward[row, col] = -math.sin(theta) if imaginary else math.cos(theta)
            inverse[col, row] = weight * (-math.sin(theta) if imaginary else math.cos(theta))
    inverse /= area
    return forward.float(), inverse.float(), len(real), len(pairs)


class SpectralWindowGroup(WindowGroup):
    """A :class:`WindowGroup` that also holds its window's DFT bases (non-persistent buffers)."""

    def __init__(
        self, geometry: WindowGeometry, window: int, heads: list[int], shifts: list[int]
    ) -> None:
        super().__init__(geometry, window, heads, shifts)
        forward, inverse, self.real_bins, self.pair_bins = spectral_bases(window)
        self.register_buffer("forward_basis", forward, persistent=False)
        self.register_buffer("inverse_basis", inverse, persistent=False)


def _to_spectrum(basis: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(rows, N, w², c) → (rows, w², N, c): the window axis mapped to spectral features."""
    rows, count, area, channels = windows.shape
    flat = windows.transpose(1, 2).reshape(rows, area, count * channels)
    return torch.matmul(basis, flat).view(rows, area, count, channels)


def _pair_operand(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """[[re, im], [−im, re]] stacked along the row axis: one real matmul with [a_re | a_im]
    gives [Re, Im] of a complex product (see the callers for which side is conjugated)."""
    return torch.cat((torch.cat((re, im), dim=-1), torch.cat((-im, re), dim=-1)), dim=-2)


class SpectralHeads(FusedHeads):
    """The fused attention with every w > 1 group's attention computed per DFT bin."""

    def attend_group(
        self, group: WindowGroup, qkv: torch.Tensor, additive: torch.Tensor, dropout: nn.Module
    ) -> torch.Tensor:
        if group.window == 1 or not isinstance(group, SpectralWindowGroup):
            return super().attend_group(group, qkv, additive, dropout)
        batch, c = qkv.shape[1], qkv.shape[-1]
        area = group.window * group.window
        rows = batch * group.num_heads
        count = qkv.shape[2] // (self.num_heads * area)  # windows per head: L / w²
        real, pairs = group.real_bins, group.pair_bins
        forward_basis = group.forward_basis.to(qkv.dtype)
        inverse_basis = group.inverse_basis.to(qkv.dtype)
        # Q, K and V windows in one gather, their spectra in one product: (3, rows, w², N, c).
        windows = qkv.index_select(2, group.query_index).view(3 * rows, count, area, c)
        qf, kf, vf = _to_spectrum(forward_basis, windows).view(3, rows, area, count, c).unbind(0)
        # Scores per bin: P[f] = Σ_c Q̂[f] · conj(K̂[f]).
        cut = (real, pairs, pairs)
        q_re, q_pre, q_pim = qf.split(cut, dim=1)
        k_re, k_pre, k_pim = kf.split(cut, dim=1)
        features = torch.matmul(q_re, k_re.transpose(-1, -2))  # (rows, R, N, N)
        if pairs:  # w = 2 has real bins only
            pair_scores = torch.matmul(  # (rows, P, N, 2N): [Re | Im]
                torch.cat((q_pre, q_pim), dim=-1), _pair_operand(k_pre, k_pim).transpose(-1, -2)
            )
            features = torch.cat((features, *pair_scores.split(count, dim=-1)), dim=1)
        # Back to the shifts: (rows, w², N·N) → (rows, N, N·w²), key columns m·w² + s.
        scores = torch.matmul(inverse_basis, features.reshape(rows, area, -1))
        scores = scores.view(rows, area, count, count).permute(0, 2, 3, 1)
        scores = torch.add(additive, scores.reshape(rows, count, -1), alpha=1.0 / area)
        weights = dropout(scores.softmax(dim=-1))
        # Weights to the spectrum over s, then out[f] = Σ_m Â[f] · V̂_m[f].
        wf = torch.matmul(weights.view(rows, count * count, area), forward_basis.t())
        wf = wf.view(rows, count, count, area).permute(0, 3, 1, 2)  # (rows, w², N, N)
        w_re, w_pre, w_pim = wf.split(cut, dim=1)
        v_re, v_pre, v_pim = vf.split(cut, dim=1)
        features = torch.matmul(w_re, v_re)  # (rows, R, N, c)
        if pairs:
            pair_out = torch.matmul(  # (rows, P, N, 2c): [Re | Im]
                torch.cat((w_pre, w_pim), dim=-1), _pair_operand(v_pre, v_pim)
            )
            features = torch.cat((features, *pair_out.split(c, dim=-1)), dim=1)
        out = torch.matmul(inverse_basis, features.reshape(rows, area, -1))
        return out.view(rows, area, count, c).transpose(1, 2).reshape(batch, -1, c)


def spectral_window_attention(network: CSWinTT) -> tuple[CSWinTT, TransformReport]:
    """A copy of ``network`` whose encoder runs the fused window attention with the w > 1
    heads computed per DFT bin of the window (no rolled key/value copies)."""
    network, report = fuse_window_attention(
        network, group_type=SpectralWindowGroup, attention_type=SpectralHeads
    )
    report.transform = "spectral_window_attention"
    for group in network.transformer.context_builder.groups:
        if group.window > 1:
            full = group.window**4
            spectral = group.real_bins + 4 * group.pair_bins
            report.notes.append(
                f"window {group.window}: score/value products {full / spectral:.1f}x fewer "
                "multiply-adds"
            )
    return network, report
