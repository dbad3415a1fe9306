"""One vocabulary for "a way to run" a model: which rewrites, at which precision, on which
backend. The tracker's executors (:mod:`headway.tracking.executors`), :func:`headway.accelerate`
and ``headway export`` all name their ways from the two tables here, so a new rewrite or
backend is one row that every front door offers.

A way is written ``REWRITE+REWRITE[+bf16]@BACKEND`` (``plain@eager`` when nothing is
rewritten). Rules that used to be restated in each front door live here once:

- a rewrite applies only under the backends and precisions of its row (channels-last is left
  to the engines, which choose their own layouts; packed oneDNN weights are eager fp32 only;
  the heads are split for a thread pool, forked for TorchScript);
- ``bf16`` on a torch backend is the ``bf16`` rewrite (matmul/conv weights in bf16, run under
  autocast); on an engine it is the engine's own precision hint;
- :func:`why_not` says in one line why a way cannot run on a device.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from headway.runtime.engines import (
    ENGINES,
    INSTALL_HINT,
    EngineModule,
    engine_available,
    require_engine,
)
from headway.transforms.fold import cast_matmul_weights, fold_batchnorm
from headway.transforms.fork import fork_heads
from headway.transforms.heads import fuse_window_attention, split_heads
from headway.transforms.packing import pack_linear_weights
from headway.transforms.spectral import spectral_window_attention

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Backend:
    """What calls the rewritten graph: ``kind`` is ``torch`` (runs under torch's autocast),
    ``engine`` (an ONNX engine with its own precision hint, CPU only) or ``native`` (the C++
    runner's frame loop)."""

    summary: str
    kind: str = "torch"
    cuda_only: bool = False

    @property
    def host(self) -> str:
        return "cpp" if self.kind == "native" else "python"


BACKENDS: dict[str, Backend] = {
    "eager": Backend("PyTorch, operator by operator"),
    "torchscript": Backend("traced to TorchScript once per input shape"),
    "inductor": Backend("torch.compile (inductor; freezing where the executor owns a copy)"),
    "cudagraph": Backend(
        "each stage captured once as a CUDA graph, then replayed (CUDA only)", cuda_only=True
    ),
    "onnxruntime": Backend("exported to ONNX per stage, run by ONNX Runtime (CPU)", "engine"),
    "openvino": Backend("exported to ONNX per stage, run by OpenVINO (CPU)", "engine"),
    "cpp": Backend("TorchScript stages run by the C++ runner headway-runner", "native"),
    "aoti": Backend(
        "AOTInductor packages (torch.export, freezing) run by headway-runner", "native"
    ),
}
ENGINE_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.kind == "engine")
NATIVE_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.kind == "native")
TORCH_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.kind == "torch")


def _channels_last(module: nn.Module) -> nn.Module:
    return module.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Rewrite:
    """One exact rewrite: ``apply`` returns a rewritten module (a copy, unless ``in_place``).
    It applies only under ``backends`` (None: all) and ``precisions``; elsewhere a way that
    names it runs without it."""

    apply: Callable[[nn.Module], nn.Module]
    summary: str
    backends: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS
    in_place: bool = False
    tracker_only: bool = False  # rewrites CSWinTT's attention (other modules have none)

    def applies(self, backend: str, precision: str) -> bool:
        return (self.backends is None or backend in self.backends) and (
            precision in self.precisions
        )


# in the order a way applies them (a way's name may list them in any order)
REWRITES: dict[str, Rewrite] = {
    "fuse": Rewrite(
        lambda m: fuse_window_attention(m)[0],  # type: ignore[arg-type]
        "fused window attention: one gather per Q/K'/V'",
        tracker_only=True,
    ),
    "spectral": Rewrite(
        lambda m: spectral_window_attention(m)[0],  # type: ignore[arg-type]
        "the w > 1 heads' rolled products per DFT bin of their window",
        tracker_only=True,
    ),
    "split": Rewrite(
        lambda m: split_heads(m)[0],  # type: ignore[arg-type]
        "every head its own sub-module, run on a pool of workers (Case C)",
        backends=tuple(b for b in BACKENDS if b != "torchscript"),
        tracker_only=True,
    ),
    "fork": Rewrite(
        lambda m: fork_heads(m)[0],  # type: ignore[arg-type]
        "every head its own traced sub-module, forked onto TorchScript's inter-op pool",
        backends=("torchscript",),
        tracker_only=True,
    ),
    "fold": Rewrite(lambda m: fold_batchnorm(m)[0], "batch norms folded into their convolutions"),
    "channels-last": Rewrite(
        _channels_last,
        "channels-last convolutions (the engines choose their own layouts)",
        backends=tuple(b for b in BACKENDS if BACKENDS[b].kind != "engine"),
        in_place=True,
    ),
    "pack": Rewrite(
        lambda m: pack_linear_weights(m)[0],
        "linears on packed oneDNN weights (neither serialise, export nor compile)",
        backends=("eager",),
        precisions=("fp32",),
    ),
    "bf16": Rewrite(
        lambda m: cast_matmul_weights(m, torch.bfloat16)[0],
        "matmul/conv weights in bf16, run under autocast (the precision bf16 on torch)",
        backends=TORCH_BACKENDS,
        precisions=("bf16",),
    ),
}


def check_rewrites(names: Sequence[str]) -> None:
    """One line naming an unknown rewrite (``bf16`` is a precision, not named by ways)."""
    for name in names:
        if name not in REWRITES or name == "bf16":
            choices = ", ".join(n for n in REWRITES if n != "bf16")
            raise ValueError(f"unknown rewrite {name!r}: choose from {choices}")


@dataclass(frozen=True)
class Way:
    """A way to run a model: ``rewrites`` (names of :data:`REWRITES`) at ``precision`` on
    ``backend``."""

    rewrites: tuple[str, ...] = ()
    precision: str = "fp32"
    backend: str = "eager"

    def __post_init__(self) -> None:
        check_rewrites(self.rewrites)
        if self.precision not in PRECISIONS or self.backend not in BACKENDS:
            raise ValueError(f"not a way: {self.precision!r} on {self.backend!r}")
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"not a way: no engine {self.engine!r} runs {self.precision}")

    @property
    def name(self) -> str:
        """``REWRITE+…[+bf16]@BACKEND`` (``plain`` for no rewrite)."""
        bf16 = "+bf16" if self.precision == "bf16" else ""
        return f"{'+'.join(self.rewrites) or 'plain'}{bf16}@{self.backend}"

    @functools.cached_property
    def steps(self) -> tuple[str, ...]:
        """The rewrites this way applies, in table order: those named that apply under its
        backend and precision, and ``bf16`` where the precision is bf16 on a torch backend."""
        named = {*self.rewrites, "bf16"}
        return tuple(
            name
            for name, rewrite in REWRITES.items()
            if name in named and rewrite.applies(self.backend, self.precision)
        )

    @property
    def host(self) -> str:
        """``cpp`` when headway-runner runs the frame loop, else ``python``."""
        return BACKENDS[self.backend].host

    @property
    def requires_cuda(self) -> bool:
        return BACKENDS[self.backend].cuda_only

    @property
    def cpu_only(self) -> bool:
        return BACKENDS[self.backend].kind == "engine"

    @property
    def engine(self) -> str | None:
        """The :mod:`headway.runtime.engines` name for the engine backends."""
        if self.backend not in ENGINE_BACKENDS:
            return None
        return self.backend + ("-bf16" if self.precision == "bf16" else "")

    @property
    def autocast(self) -> bool:
        """bf16 by torch autocast (the engines and the runner carry their own precision)."""
        return "bf16" in self.steps

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout the rewritten graph wants its image inputs in."""
        return torch.channels_last if "channels-last" in self.steps else torch.contiguous_format


def apply_rewrites(way: Way, module: nn.Module) -> nn.Module:
    """The module ``way`` runs: ``module`` itself when no rewrite applies, else a rewritten
    copy (``module`` is never changed)."""
    steps = way.steps
    if steps and REWRITES[steps[0]].in_place:
        module = copy.deepcopy(module)
    for name in steps:
        module = REWRITES[name].apply(module)
    return module


def why_not(way: Way, device: torch.device | str) -> str | None:
    """Why ``way`` cannot run on ``device`` here, in a few words, or None. (The C++ runner's
    own condition, a built runner, is the tracker host's to add.)"""
    device_type = torch.device(device).type
    if way.requires_cuda and device_type != "cuda":
        return "needs CUDA"
    if way.cpu_only and device_type != "cpu":
        return "runs on the CPU only"
    if way.engine is not None and not engine_available(way.engine):
        return f"not installed ({INSTALL_HINT})"
    return None


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (otherwise bf16 is emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def slow_here(way: Way, device: torch.device | str) -> str | None:
    """Why ``way`` runs here but slower than it should (bf16 emulated without bf16
    instructions), or None: not worth a candidate's time."""
    if way.autocast and torch.device(device).type == "cpu" and not cpu_has_bf16():
        return "no bf16 instructions on this CPU (emulated, slower)"
    return None


@contextlib.contextmanager
def precision_context(way: Way, device_type: str) -> Iterator[None]:
    """The context a way's calls run in: bf16 autocast where the way casts, else nothing."""
    if way.autocast:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    else:
        yield


def module_runner(
    way: Way, module: nn.Module, example: Sequence[torch.Tensor] | None = None
) -> tuple[Callable[..., Any], nn.Module]:
    """``module`` run ``way``: rewritten, then called by the backend, with inputs laid out
    and autocast as the way says. Returns the callable and the rewritten module it holds.
    Engines export and open now when ``example`` is given (else on the first call). For the
    torch backends eager and inductor, and the engines; the tracker's stage builders add the
    others. A whole module is called on its own, so the engines run with their own thread
    defaults (:func:`~headway.runtime.engines.open_onnxruntime`)."""
    rewritten = apply_rewrites(way, module)
    rewritten = (copy.deepcopy(module) if rewritten is module else rewritten).eval()
    if way.engine is not None:
        require_engine(way.engine)
        engine = EngineModule(way.engine, rewritten, standalone=True)
        if example is None:
            return engine, rewritten
        # copies: the export runs the module, and a module may write into its input
        engine.session_for(*(a.clone() for a in example))
        with torch.inference_mode():  # an engine returns a flat list: the module's nesting back
            structure = pytree.tree_structure(rewritten(*(a.clone() for a in example)))
        if structure.is_leaf():
            return engine, rewritten

        def nested(*args: torch.Tensor) -> Any:
            outputs = engine(*args)
            flat = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
            return pytree.tree_unflatten(flat, structure)

        return nested, rewritten
    if way.backend not in ("eager", "inductor"):
        raise ValueError(f"{way.name}: a module runs on eager, inductor or an engine")
    target: Callable[..., Any] = rewritten
    if way.backend == "inductor":
        target = torch.compile(rewritten, dynamic=False, options={"freezing": True})
    memory_format = way.memory_format

    def run(*args: torch.Tensor) -> Any:
        if memory_format is torch.channels_last:
            args = tuple(
                a.contiguous(memory_format=memory_format) if a.dim() == 4 else a for a in args
            )
        with precision_context(way, args[0].device.type if args else "cpu"):
            return target(*args)

    return run, rewritten
