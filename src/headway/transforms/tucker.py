"""Tucker-2 decomposition of convolutions (paper B; Kim et al., ICLR 2016).

A K×K convolution W (T×S×K×K) is factored along its output- and input-channel modes only:
W ≈ core ×₀ U_out ×₁ U_in, which runs as three convolutions
1×1 (S→R_in) → K×K core (R_in→R_out, with the original stride, padding, dilation and padding
mode) → 1×1 (R_out→T, with the original bias). The factorisation is TensorLy's
``partial_tucker`` (HOOI) on the PyTorch backend.

Rank rules (``rank=`` strings):
- ``vbmf`` / ``vbmf:F`` — EVBMF on the two channel unfoldings (Nakajima et al.), weakened as in
  MUSCO: r = R − F·(R − r_vbmf) (F = 1 is plain EVBMF, default 0.75);
- ``energy:F`` — the smallest rank keeping fraction F of each unfolding's squared singular values;
- ``ratio:F`` — F × the channel count;
- ``rank:R`` — R for every layer (an error where R exceeds a layer's channels);
- ``macs:F`` — one channel ratio for all layers, bisected so the whole model keeps ≈ F of its
  multiply-accumulates.
Ranks are clamped to [min_rank, channels]. A layer whose decomposition would not save MACs is
left alone and reported as skipped, as are 1×1, grouped and depthwise convolutions.

MACs are multiply-accumulates of convolutions and linear layers at the real input size, counted
by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs ÷ 2); biases, norms and activations are not
counted.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorly as tl
import torch
from scipy.optimize import brentq, minimize_scalar
from tensorly.decomposition import partial_tucker
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from headway.errors import InputError, NotApplicable, first_line
from headway.io import atomic_torch_save, atomic_write_text, read_torch_file

# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Conv + linear multiply-accumulates of one forward (FlopCounterMode FLOPs ÷ 2)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    model.train(was_training)
    return counter.get_total_flops() // 2


def conv_macs(conv: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    """MACs of one convolution producing an ``out_hw`` map (per image)."""
    kh, kw = conv.kernel_size
    return out_hw[0] * out_hw[1] * kh * kw * conv.in_channels // conv.groups * conv.out_channels


def tucker2_macs(
    conv: nn.Conv2d, rank_in: int, rank_out: int, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> int:
    """MACs of the three convolutions replacing ``conv``: the first 1×1 runs at the input
    resolution, the core and the last 1×1 at the output resolution."""
    kh, kw = conv.kernel_size
    return (
        in_hw[0] * in_hw[1] * conv.in_channels * rank_in
        + out_hw[0] * out_hw[1] * kh * kw * rank_in * rank_out
        + out_hw[0] * out_hw[1] * rank_out * conv.out_channels
    )


def tucker2_params(conv: nn.Conv2d, rank_in: int, rank_out: int) -> int:
    kh, kw = conv.kernel_size
    bias = conv.out_channels if conv.bias is not None else 0
    return (
        conv.in_channels * rank_in
        + kh * kw * rank_in * rank_out
        + rank_out * conv.out_channels
        + bias
    )


# ---------------------------------------------------------------------------------------------
# Rank selection
# ---------------------------------------------------------------------------------------------


def _phi(z: float) -> float:
    return math.log1p(z) / z - 0.5


# How singular values and vectors are computed: "gram" (default) eigendecomposes the smaller
# Gram matrix in float64; "full" is a full SVD (numpy for the rank rules, TensorLy's
# truncated_svd in HOOI), kept to measure the difference (headway bench tucker --only svd).
SVD_SOLVERS = ("gram", "full")
_SOLVER: ContextVar[str] = ContextVar("headway_tucker_svd", default="gram")


def squared_singular_values(matrix: np.ndarray) -> np.ndarray:
    """σ², largest first. By default the eigenvalues of the smaller Gram matrix (float64): the
    rank rules need only these, and an eigendecomposition of C×C is far cheaper than an SVD of
    C × (C·K²)."""
    y = np.asarray(matrix, dtype=np.float64)
    if _SOLVER.get() == "full":
        return np.linalg.svd(y, compute_uv=False) ** 2
    gram = y @ y.T if y.shape[0] <= y.shape[1] else y.T @ y
    return np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)


def gram_svd(
    matrix: torch.Tensor, n_eigenvecs: int | None = None, **_: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD through the eigendecomposition of the smaller Gram matrix in float64: the
    same leading singular triplets as a full SVD for the C × (C·K²) unfoldings HOOI factorises,
    at a fraction of the cost. Passed to TensorLy's ``partial_tucker`` as its ``svd``."""
    rows, cols = matrix.shape
    k = n_eigenvecs or min(rows, cols)
    m = matrix.double()
    small = m @ m.T if rows <= cols else m.T @ m
    values, vectors = torch.linalg.eigh(small)
    sigma = values.flip(0)[:k].clamp_min(0).sqrt()
    safe = sigma.clamp_min(torch.finfo(torch.float64).tiny)
    leading = vectors.flip(1)[:, :k]
    if rows <= cols:
        u, v = leading, (leading.T @ m) / safe[:, None]
    else:
        v = leading.T
        u = (m @ leading) / safe[None, :]
    return u.to(matrix.dtype), sigma.to(matrix.dtype), v.to(matrix.dtype)


def evbmf_rank(matrix: np.ndarray) -> int:
    """Rank that empirical variational Bayesian matrix factorisation keeps (noise variance
    estimated), following the spec's section C."""
    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    length, width = y.shape
    alpha = length / width
    tau_bar = brentq(lambda t: _phi(t) + _phi(t / alpha), 1e-6, 1e6)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s2 = squared_singular_values(y)
    s = np.sqrt(s2)
    if s2.sum() == 0:
        return 0

    def tau(x: np.ndarray) -> np.ndarray:
        b = x - (1 + alpha)
        return 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))

    def objective(sigma2: float) -> float:
        x = s2 / (width * sigma2)
        kept = x > x_bar
        psi0 = x - np.log(x)
        t = tau(x[kept])
        psi1 = np.log(t + 1) + alpha * np.log(t / alpha + 1) - t
        return float(psi0.sum() + psi1.sum())

    upper = s2.sum() / (length * width)
    e_bar = min(math.ceil(length / (1 + alpha)) - 1, length)
    tail = s2[e_bar:]
    lower = max(
        s2[e_bar] / (width * x_bar) if e_bar < length else 0.0,
        tail.mean() / width if tail.size else 0.0,
    )
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        sigma2 = minimize_scalar(objective, bounds=(lower, upper), method="bounded").x
    threshold = math.sqrt(width * sigma2 * x_bar)
    return int((s > threshold).sum())


def energy_rank(matrix: np.ndarray, fraction: float) -> int:
    s2 = squared_singular_values(np.asarray(matrix, dtype=np.float64))
    cumulative = np.cumsum(s2) / s2.sum()
    return int(np.searchsorted(cumulative, fraction - 1e-12) + 1)


@dataclass(frozen=True)
class RankRule:
    """A parsed ``rank=`` string."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> RankRule:
        kind, _, value = text.partition(":")
        defaults = {"vbmf": 0.75}
        if kind not in ("vbmf", "energy", "ratio", "rank", "macs"):
            raise InputError(
                f"unknown rank rule {text!r}: use vbmf[:F], energy:F, ratio:F, rank:R or macs:F"
            )
        if not value and kind not in defaults:
            raise InputError(f"rank rule {kind!r} needs a value, e.g. {kind}:0.5")
        try:
            number = float(value) if value else defaults[kind]
        except ValueError:
            raise InputError(f"rank rule {text!r}: {value!r} is not a number") from None
        if kind == "rank" and (number < 1 or number != int(number)):
            raise InputError(f"rank:{value} must be a positive integer")
        if kind in ("vbmf", "energy", "ratio") and not 0 < number <= 1:
            raise InputError(f"rank rule {text!r}: the value must be in (0, 1]")
        if kind == "macs" and not 0 < number < 1:
            raise InputError(f"rank rule {text!r}: the MAC fraction must be in (0, 1)")
        return cls(kind, number)


def _unfoldings(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    w = weight.detach().double().cpu().numpy()
    out_mode = w.reshape(w.shape[0], -1)
    in_mode = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    return in_mode, out_mode


def layer_ranks(conv: nn.Conv2d, rule: RankRule, min_rank: int, name: str) -> tuple[int, int]:
    """(R_in, R_out) for one convolution under ``rule`` (not ``macs``), clamped."""
    channels = (conv.in_channels, conv.out_channels)
    if rule.kind == "rank":
        rank = int(rule.value)
        if rank > min(channels):
            raise InputError(
                f"rank {rank} exceeds the channels of layer {name} "
                f"({conv.in_channels} in, {conv.out_channels} out)"
            )
        ranks = (rank, rank)
    elif rule.kind == "ratio":
        ranks = tuple(math.ceil(rule.value * c) for c in channels)
    elif rule.kind == "energy":
        ranks = tuple(energy_rank(m, rule.value) for m in _unfoldings(conv.weight))
    else:  # vbmf, weakened
        ranks = tuple(
            round(c - rule.value * (c - evbmf_rank(m)))
            for c, m in zip(channels, _unfoldings(conv.weight), strict=True)
        )
    return tuple(min(c, max(min_rank, r)) for c, r in zip(channels, ranks, strict=True))


# ---------------------------------------------------------------------------------------------
# Decomposition
# ---------------------------------------------------------------------------------------------


def tucker2_conv(conv: nn.Conv2d, rank_in: int, rank_out: int) -> nn.Sequential:
    """Three convolutions approximating ``conv`` (Tucker-2 by HOOI): the structure of
    :func:`tucker2_shell` with the factors and core copied in."""
    with tl.backend_context("pytorch"):  # scoped: the caller's TensorLy backend is kept
        (core, (u_out, u_in)), _ = partial_tucker(
            conv.weight.detach().float(),
            rank=[rank_out, rank_in],
            modes=[0, 1],
            init="svd",
            svd=gram_svd if _SOLVER.get() == "gram" else "truncated_svd",
        )
    replacement = tucker2_shell(conv, rank_in, rank_out)
    first, middle, last = replacement
    with torch.no_grad():
        first.weight.copy_(u_in.t().reshape(rank_in, conv.in_channels, 1, 1))
        middle.weight.copy_(core)
        last.weight.copy_(u_out.reshape(conv.out_channels, rank_out, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return replacement.to(device=conv.weight.device, dtype=conv.weight.dtype)


@dataclass
class LayerReport:
    """One convolution: what was done and what it costs before and after."""

    name: str
    status: str  # "decomposed" or "skipped"
    reason: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    rank_in: int = 0
    rank_out: int = 0
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    weight_error: float = float("nan")
    output_error: float = float("nan")


@dataclass
class TuckerReport:
    """Per-layer rows plus model totals (MACs per image at the example's size)."""

    rule: str
    layers: list[LayerReport] = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0

    @property
    def mac_reduction(self) -> float:
        return 1 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["mac_reduction"] = self.mac_reduction
        data["mac_convention"] = "conv + linear multiply-accumulates per image (FLOPs / 2)"
        return data


def _conv_shapes(
    model: nn.Module, example: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input and output of every Conv2d on the example batch (for sizes and output errors)."""
    records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            records[name] = (inputs[0].detach().clone(), output.detach().clone())

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(recorder(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as error:
        size = "×".join(str(v) for v in example.shape[-2:])
        raise InputError(f"the model cannot run on a {size} input: {first_line(error)}") from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return records


def _runtime_padding(conv: nn.Conv2d) -> bool:
    """timm's ``Conv2dSame``: TensorFlow "same" padding computed from each input, then a plain
    convolution; the core of its decomposition keeps that forward."""
    return type(conv).__name__ == "Conv2dSame"


def _skip_reason(conv: nn.Conv2d) -> str | None:
    if type(conv).forward is not nn.Conv2d.forward and not _runtime_padding(conv):
        return f"{type(conv).__name__} has a forward of its own (not a plain convolution)"
    if conv.groups != 1:
        return "depthwise" if conv.groups == conv.in_channels else "grouped"
    if conv.kernel_size == (1, 1):
        return "1x1 kernel"
    return None


def decompose_model(
    model: nn.Module,
    example: torch.Tensor,
    rank: str = "vbmf",
    min_rank: int = 4,
    in_place: bool = False,
    on_layer: Callable[[str], None] | None = None,
    svd: str = "gram",
) -> tuple[nn.Module, TuckerReport]:
    """Tucker-2-decompose every eligible convolution of ``model`` (a copy unless ``in_place``).

    ``example`` is a representative input batch: it fixes the map sizes for MAC counts and is
    the probe for each layer's relative output error. ``svd`` picks how singular values and
    vectors are computed (:data:`SVD_SOLVERS`; the same ranks and factors either way).
    """
    if svd not in SVD_SOLVERS:
        raise InputError(f"unknown svd solver {svd!r}: choose from {', '.join(SVD_SOLVERS)}")
    token = _SOLVER.set(svd)
    try:
        return _decompose(model, example, rank, min_rank, in_place, on_layer)
    finally:
        _SOLVER.reset(token)


def _decompose(
    model: nn.Module,
    example: torch.Tensor,
    rank: str,
    min_rank: int,
    in_place: bool,
    on_layer: Callable[[str], None] | None,
) -> tuple[nn.Module, TuckerReport]:
    rule = RankRule.parse(rank)
    if min_rank < 1:
        raise InputError(f"min_rank must be ≥ 1, got {min_rank}")
    target = model if in_place else copy.deepcopy(model)
    records = _conv_shapes(target, example)
    convs = [(n, m) for n, m in target.named_modules() if isinstance(m, nn.Conv2d) and n in records]
    candidates = [(n, m) for n, m in convs if _skip_reason(m) is None]
    if not candidates:
        raise InputError("the model has no decomposable convolution (K×K, groups = 1)")
    batch = example.shape[0]
    report = TuckerReport(rank, macs_before=count_macs(target, example) // batch)
    report.params_before = sum(p.numel() for p in target.parameters())

    def sizes(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
        x, y = records[name]
        return tuple(x.shape[-2:]), tuple(y.shape[-2:])

    ranks: dict[str, tuple[int, int]] = {}
    if rule.kind == "macs":
        ranks = _ranks_for_mac_budget(candidates, sizes, rule.value, report.macs_before, min_rank)
    else:
        for name, conv in candidates:
            ranks[name] = layer_ranks(conv, rule, min_rank, name)

    for name, conv in convs:
        in_hw, out_hw = sizes(name)
        row = LayerReport(
            name,
            "skipped",
            "",
            conv.in_channels,
            conv.out_channels,
            tuple(conv.kernel_size),
            macs_before=conv_macs(conv, out_hw),
            params_before=conv.weight.numel(),
        )
        row.reason = _skip_reason(conv) or ""
        if not row.reason:
            rank_in, rank_out = ranks[name]
            after = tucker2_macs(conv, rank_in, rank_out, in_hw, out_hw)
            if after >= row.macs_before:
                row.reason = f"no MAC saving at ranks ({rank_in}, {rank_out})"
        if row.reason:
            row.macs_after, row.params_after = row.macs_before, row.params_before
            report.layers.append(row)
            continue
        if on_layer is not None:
            on_layer(name)
        replacement = tucker2_conv(conv, rank_in, rank_out)
        x, y = records[name]
        with torch.no_grad():
            approx = replacement(x)
            row.output_error = float((approx - y).norm() / y.norm().clamp_min(1e-12))
            restored = _restore_weight(replacement)
            row.weight_error = float(
                (restored - conv.weight).norm() / conv.weight.norm().clamp_min(1e-12)
            )
        row.status, row.reason = "decomposed", ""
        row.rank_in, row.rank_out = rank_in, rank_out
        row.macs_after = tucker2_macs(conv, rank_in, rank_out, in_hw, out_hw)
        row.params_after = tucker2_params(conv, rank_in, rank_out)
        target.set_submodule(name, replacement)
        report.layers.append(row)
    report.macs_after = count_macs(target, example) // batch
    report.params_after = sum(p.numel() for p in target.parameters())
    return target, report


def _restore_weight(replacement: nn.Sequential) -> torch.Tensor:
    """The K×K kernel that the three convolutions compute together."""
    first, middle, last = replacement[0].weight[:, :, 0, 0], replacement[1].weight, replacement[2]
    core_in = torch.einsum("rskl,si->rikl", middle, first)
    return torch.einsum("or,rikl->oikl", last.weight[:, :, 0, 0], core_in)


def _ranks_for_mac_budget(
    candidates: list[tuple[str, nn.Conv2d]],
    sizes: Callable[[str], tuple[tuple[int, int], tuple[int, int]]],
    fraction: float,
    total_macs: int,
    min_rank: int,
) -> dict[str, tuple[int, int]]:
    """One channel ratio for all layers, bisected so the model keeps ≈ ``fraction`` of MACs
    (layers that would not save MACs keep their original cost)."""

    def plan(ratio: float) -> tuple[int, dict[str, tuple[int, int]]]:
        saved = 0
        ranks = {}
        for name, conv in candidates:
            in_hw, out_hw = sizes(name)
            r = tuple(
                min(c, max(min_rank, math.ceil(ratio * c)))
                for c in (conv.in_channels, conv.out_channels)
            )
            ranks[name] = r
            saved += max(0, conv_macs(conv, out_hw) - tucker2_macs(conv, *r, in_hw, out_hw))
        return total_macs - saved, ranks

    low, high = 0.0, 1.0
    best = plan(low)
    if best[0] > fraction * total_macs:
        decomposable = total_macs - best[0]
        raise NotApplicable(
            f"macs:{fraction} is below what Tucker-2 can reach: at the minimum rank the model "
            f"keeps {best[0] / total_macs:.1%} of its MACs ({decomposable:,} saved)"
        )
    for _ in range(40):
        middle = (low + high) / 2
        macs, ranks = plan(middle)
        if macs <= fraction * total_macs:
            low, best = middle, (macs, ranks)
        else:
            high = middle
    return best[1]


# ---------------------------------------------------------------------------------------------
# Saving and loading decomposed models
# ---------------------------------------------------------------------------------------------


def tucker2_shell(conv: nn.Conv2d, rank_in: int, rank_out: int) -> nn.Sequential:
    """The three-convolution structure for ``conv`` at the given ranks (weights to be loaded).
    A convolution that pads at run time (timm's ``Conv2dSame``) keeps its class for the core:
    the bias-free 1×1 in front maps zeros to zeros, so padding after it is the same."""
    if _runtime_padding(conv):
        core = copy.deepcopy(conv)
        kh, kw = conv.kernel_size
        core.in_channels, core.out_channels = rank_in, rank_out
        core.weight = nn.Parameter(conv.weight.new_empty(rank_out, rank_in, kh, kw))
        core.register_parameter("bias", None)
    else:
        core = nn.Conv2d(
            rank_in,
            rank_out,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            padding_mode=conv.padding_mode,
            bias=False,
        )
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, rank_in, 1, bias=False),
        core,
        nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None),
    )


def decomposed_ranks(report: TuckerReport) -> dict[str, list[int]]:
    return {r.name: [r.rank_in, r.rank_out] for r in report.layers if r.status == "decomposed"}


def apply_ranks(model: nn.Module, ranks: dict[str, list[int]]) -> nn.Module:
    """Replace the named convolutions of ``model`` by empty Tucker-2 structures, in place."""
    for name, (rank_in, rank_out) in ranks.items():
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            raise InputError(f"the model has no layer {name!r} to decompose") from None
        if not isinstance(conv, nn.Conv2d):
            raise InputError(f"layer {name!r} is not a convolution")
        model.set_submodule(name, tucker2_shell(conv, rank_in, rank_out))
    return model


def check_decomposed_path(path: Path) -> None:
    """The model file and its report (``<path>.json`` with the suffix replaced) must differ."""
    if path.suffix == ".json":
        raise InputError(
            f"{path}: the decomposed model cannot be saved as .json (its report is written "
            "beside it as .json); use e.g. .pt"
        )


def save_decomposed(
    path: str | Path,
    model: nn.Module,
    report: TuckerReport,
    name: str,
    num_classes: int,
    small_input: bool,
) -> None:
    """Save a decomposed zoo model as its spec, ranks and state_dict (no pickled code), plus the
    report as JSON beside it; :func:`load_decomposed` rebuilds it."""
    path = Path(path)
    check_decomposed_path(path)
    payload = {
        "model": name,
        "num_classes": num_classes,
        "small_input": small_input,
        "ranks": decomposed_ranks(report),
        "transform_input": bool(getattr(model, "transform_input", False)),  # Inception-v3's
        "state_dict": model.state_dict(),
    }
    atomic_torch_save(path, payload)
    atomic_write_text(path.with_suffix(".json"), json.dumps(report.to_json(), indent=2))


def load_decomposed(path: str | Path) -> nn.Module:
    """Rebuild a model saved by ``headway compress tucker --out`` (weights only, no pickle)."""
    from headway.models.registry import create_model

    payload = read_torch_file(path, "decomposed model")
    extra = {"transform_input": True} if payload.get("transform_input") else {}
    model = create_model(
        payload["model"],
        num_classes=payload["num_classes"],
        small_input=payload["small_input"],
        **extra,
    )
    apply_ranks(model, payload["ranks"])
    from headway.models.checkpoint import check_finite

    check_finite(payload["state_dict"], str(path))
    model.load_state_dict(payload["state_dict"])
    return model
