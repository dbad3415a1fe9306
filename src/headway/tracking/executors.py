"""Executors: how the tracker's network stages run, as one table of data.

An executor is a point on four axes, written ``GRAPH[+bf16]@BACKEND``:

- **graph** — the network it runs: ``plain`` (as built), ``heads`` (every head its own
  sub-module, paper A's Case C), ``fused`` (fused window attention, batch norms folded,
  channels-last convolutions) or ``spectral`` (``fused`` with the w > 1 heads computed per DFT
  bin of their window; no rolled key/value copies, 4–33× fewer attention multiply-adds);
- **precision** — fp32, or ``+bf16`` (bfloat16 matmul/conv weights under autocast in torch; the
  bf16 inference-precision hint in OpenVINO);
- **backend** — what calls the graph: ``eager``, ``torchscript``, ``inductor`` (torch.compile),
  ``cudagraph``, the engines ``onnxruntime`` and ``openvino``, or the C++ runner ``cpp``
  (TorchScript stages) and ``aoti`` (AOTInductor packages);
- **host** — the frame loop: the Python tracker, or ``headway-runner`` for ``cpp``/``aoti``.

:data:`EXECUTORS` lists every supported point under its short name (``spectral-bf16`` is
``spectral+bf16@eager``); both spellings are accepted everywhere, and every list of names
(CLI help, benchmark defaults, reports, checks) is derived from the table. Every executor
exposes the same stage calls (``backbone``, ``merge``, ``encoder``, ``decoder``, ``box_head``,
``confidence``), so the tracker and the benchmark treat them alike. Executors that rewrite the
network work on a copy; all of them move the network to their device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from headway.errors import InputError, first_line
from headway.models.cswintt import CSWinTT, Features
from headway.runtime.deploy import ExportPart
from headway.runtime.engines import EngineModule, require_engine
from headway.runtime.pool import StreamWorkerPool
from headway.tracking.settings import STAGE_METHODS
from headway.transforms.heads import set_head_dispatch
from headway.ways import BACKENDS as WAY_BACKENDS
from headway.ways import (
    PRECISIONS,
    Way,
    apply_rewrites,
    cpu_has_bf16,
    precision_context,
    why_not,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Graph:
    """A network the tracker can run: the rewrites of :data:`headway.ways.REWRITES` that make
    it from the plain one (each applies where its row says: the heads are forked for
    TorchScript and split elsewhere, packing is eager fp32 only, the engines choose their own
    layouts)."""

    rewrites: tuple[str, ...]
    summary: str


GRAPHS: dict[str, Graph] = {
    "plain": Graph((), "the network as built"),
    "heads": Graph(("split", "fork"), "every head its own sub-module (Case C)"),
    "fused": Graph(
        ("fuse", "fold", "channels-last"),
        "fused window attention, folded batch norms, channels-last convolutions",
    ),
    "spectral": Graph(
        ("spectral", "fold", "channels-last", "pack"),
        "fused, with the w > 1 heads per DFT bin of their window",
    ),
}
BACKENDS = {name: backend.summary for name, backend in WAY_BACKENDS.items()}


@dataclass(frozen=True)
class ExecutorSpec:
    """One executor: its graph, precision and backend (the host follows from the backend);
    :attr:`way` is the same point in :mod:`headway.ways`' vocabulary, which answers the rest."""

    graph: str
    precision: str = "fp32"
    backend: str = "eager"
    summary: str = field(default="", compare=False)

    @functools.cached_property
    def way(self) -> Way:
        """Built once per spec: every stage call asks it for the precision context."""
        return Way(GRAPHS[self.graph].rewrites, self.precision, self.backend)

    @property
    def composed(self) -> str:
        """The ``GRAPH[+bf16]@BACKEND`` spelling."""
        bf16 = "+bf16" if self.precision == "bf16" else ""
        return f"{self.graph}{bf16}@{self.backend}"

    @property
    def host(self) -> str:
        """``cpp`` when headway-runner runs the frame loop, else ``python``."""
        return self.way.host

    @property
    def requires_cuda(self) -> bool:
        return self.way.requires_cuda

    @property
    def cpu_only(self) -> bool:
        return self.way.cpu_only

    @property
    def engine(self) -> str | None:
        """The :mod:`headway.runtime.engines` name for the engine backends."""
        return self.way.engine

    @property
    def autocast(self) -> bool:
        """bf16 by torch autocast (the engines and the runner carry their own precision)."""
        return self.way.autocast

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout the graph's backbone takes its images in."""
        return self.way.memory_format

    @property
    def owns_copy(self) -> bool:
        """Whether the executor runs a rewritten copy (so compiled weights cannot go stale)."""
        return self.graph != "plain"


EXECUTORS: dict[str, ExecutorSpec] = {
    "eager": ExecutorSpec(
        "plain", "fp32", "eager", "Case A: the plain modules, heads one after another"
    ),
    "scripted": ExecutorSpec(
        "plain", "fp32", "torchscript", "Case B: every stage traced to TorchScript"
    ),
    "compiled": ExecutorSpec("plain", "fp32", "inductor", "torch.compile of every stage"),
    "heads": ExecutorSpec(
        "heads", "fp32", "eager", "Case C: split heads on a pool of workers, one CUDA stream each"
    ),
    "scripted-fork": ExecutorSpec(
        "heads",
        "fp32",
        "torchscript",
        "Case C without the GIL: traced heads forked onto TorchScript's inter-op pool",
    ),
    "fused": ExecutorSpec(
        "fused", "fp32", "eager", "fused window attention, folded batch norms, channels-last"
    ),
    "fused-bf16": ExecutorSpec(
        "fused", "bf16", "eager", "fused with bfloat16 weights under autocast"
    ),
    "spectral": ExecutorSpec(
        "spectral",
        "fp32",
        "eager",
        "spectral attention, linears on packed oneDNN weights (fastest fp32 in torch on CPU)",
    ),
    "spectral-bf16": ExecutorSpec(
        "spectral", "bf16", "eager", "spectral attention with bfloat16 weights under autocast"
    ),
    "compiled-spectral": ExecutorSpec(
        "spectral", "fp32", "inductor", "spectral with every stage compiled (freezing)"
    ),
    "compiled-bf16": ExecutorSpec(
        "spectral", "bf16", "inductor", "spectral-bf16 with every stage compiled (freezing)"
    ),
    "cudagraph": ExecutorSpec(
        "fused", "fp32", "cudagraph", "fused with every stage a CUDA graph (CUDA only)"
    ),
    "cudagraph-bf16": ExecutorSpec(
        "fused", "bf16", "cudagraph", "cudagraph under bfloat16 autocast (CUDA only)"
    ),
    "onnxruntime": ExecutorSpec(
        "spectral",
        "fp32",
        "onnxruntime",
        "the spectral graph exported to ONNX, run by ONNX Runtime",
    ),
    "openvino": ExecutorSpec(
        "spectral", "fp32", "openvino", "the spectral graph run by OpenVINO (fp32)"
    ),
    "openvino-bf16": ExecutorSpec(
        "spectral", "bf16", "openvino", "the spectral graph run by OpenVINO with its bf16 hint"
    ),
    "cpp": ExecutorSpec(
        "plain", "fp32", "cpp", "Case B in the C++ runner: the plain network's TorchScript stages"
    ),
    "cpp-heads": ExecutorSpec(
        "heads",
        "fp32",
        "cpp",
        "Case C in the C++ runner: heads on std::threads, one CUDA stream each",
    ),
    "cpp-spectral": ExecutorSpec(
        "spectral", "fp32", "cpp", "the spectral network's TorchScript stages in the C++ runner"
    ),
    "cpp-aoti": ExecutorSpec(
        "spectral",
        "fp32",
        "aoti",
        "the spectral network compiled ahead of time by AOTInductor, in the C++ runner",
    ),
}


def executor_names(host: str | None = None) -> list[str]:
    """The short names in the table, optionally only those of one host (python or cpp)."""
    return [name for name, spec in EXECUTORS.items() if host in (None, spec.host)]


def comparison_executors(
    device: torch.device | str = "cpu", compiled: bool = False, runner: bool = False
) -> list[str]:
    """The executors a comparison runs by default, in table order: those with no compile step
    and no optional engine (eager and TorchScript backends), the CUDA-graph ones on a GPU, the
    C++ runner's TorchScript ones with ``runner`` (where it is built), and with ``compiled``
    the ones that compile first (inductor, and AOTInductor with ``runner``: minutes on a CPU)."""
    backends = {"eager", "torchscript"}
    backends |= {"cudagraph"} if torch.device(device).type == "cuda" else set()
    backends |= {"cpp"} if runner else set()
    backends |= ({"inductor"} | ({"aoti"} if runner else set())) if compiled else set()
    return [name for name, spec in EXECUTORS.items() if spec.backend in backends]


def _choices() -> str:
    return (
        f"choose from {', '.join(EXECUTORS)}, or GRAPH[+bf16]@BACKEND with GRAPH in "
        f"{', '.join(GRAPHS)} and BACKEND in {', '.join(BACKENDS)}"
    )


def parse_composed(text: str) -> ExecutorSpec:
    """``GRAPH[+bf16]@BACKEND`` → a spec (not yet checked against the table)."""
    graph_part, _, backend = text.partition("@")
    graph, _, precision = graph_part.partition("+")
    precision = precision or "fp32"
    if graph not in GRAPHS or backend not in BACKENDS or precision not in PRECISIONS:
        raise InputError(f"unknown executor {text!r}: {_choices()}")
    return ExecutorSpec(graph, precision, backend)


def resolve_executor(name: str) -> tuple[str, ExecutorSpec]:
    """The table's short name and spec for ``name`` (a short name or ``GRAPH[+bf16]@BACKEND``);
    one line naming the choices when it is unknown or not a supported combination."""
    if name in EXECUTORS:
        return name, EXECUTORS[name]
    if "@" not in name:
        raise InputError(f"unknown executor {name!r}: {_choices()}")
    wanted = parse_composed(name)
    for short, spec in EXECUTORS.items():
        if spec == wanted:
            return short, spec
    supported = ", ".join(spec.composed for spec in EXECUTORS.values())
    raise InputError(f"executor {name!r} is not a supported combination: choose from {supported}")


def check_executor(name: str, device: torch.device | str) -> ExecutorSpec:
    """The spec for ``name``, or one line saying why it cannot run here (unknown, CUDA-only on
    the CPU, an engine on a GPU or not installed: :func:`headway.ways.why_not`). The C++
    runner's own check (is it built?) is in :mod:`headway.tracking.backends`."""
    _, spec = resolve_executor(name)
    check_spec(spec, device, name)
    return spec


def check_spec(spec: ExecutorSpec, device: torch.device | str, name: str) -> None:
    """One line naming ``name`` when ``spec`` cannot run on ``device`` here."""
    reason = why_not(spec.way, device)
    if reason is None:
        return
    if spec.requires_cuda and torch.device(device).type != "cuda":
        reason += f" (device is {device}); on CPU use 'fused' or 'fused-bf16'"
    elif spec.cpu_only and torch.device(device).type != "cpu":
        reason += f" (device is {device})"
    if spec.engine is not None and reason.startswith("not installed"):
        require_engine(spec.engine)  # the engines' own line, with what it installs
    raise InputError(f"executor {name!r} {reason}")


def rewrite_network(spec: ExecutorSpec, network: CSWinTT) -> CSWinTT:
    """The network ``spec`` runs: ``network`` itself for the plain graph, else a rewritten copy
    (with its heads run in order; :class:`Executor` gives them a pool or a fork)."""
    return apply_rewrites(spec.way, network)  # type: ignore[return-value]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning line on stderr (through logging: no source line), once per process."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _warn_compile_failed(error: Exception, consequence: str) -> None:
    """One printed line saying that torch.compile failed, why, and what runs instead."""
    warnings.warn(
        f"torch.compile failed ({first_line(error)}); {consequence}", RuntimeWarning, stacklevel=4
    )


class Executor:
    """Runs the network's stages as ``spec`` says (graph, precision, backend)."""

    def __init__(
        self,
        network: CSWinTT,
        device: torch.device | str = "cpu",
        spec: ExecutorSpec | None = None,
        name: str | None = None,
    ) -> None:
        self.spec = spec or EXECUTORS["eager"]
        if self.spec.host != "python":
            raise InputError(
                f"executor {name or self.spec.composed!r} runs in the C++ runner: build it with "
                "headway.tracking.backends.build_tracker"
            )
        self.name = name or self.spec.composed
        self.device = torch.device(device)
        if self.spec.autocast and self.device.type == "cpu" and not cpu_has_bf16():
            _warn_once(
                f"executor {self.name!r}: this CPU has no bf16 instructions (AVX-512 BF16 or "
                "AMX), so bf16 runs emulated and slower than fp32; use 'fused' or 'openvino'"
            )
        self.dtype = torch.bfloat16 if self.spec.autocast else torch.float32
        self.memory_format = self.spec.memory_format
        self.config = network.config
        self._closers: list[Callable[[], None]] = []
        self.network = rewrite_network(self.spec, network).to(self.device).eval()
        if self.spec.graph == "heads" and self.spec.backend == "eager":
            pool = StreamWorkerPool(network.config.num_heads, self.device)
            set_head_dispatch(self.network, pool.run_all)
            self._closers.append(pool.shutdown)
        self.uncompiled: dict[str, Callable[..., Any]] = {
            stage: getattr(self.network, method) for stage, method in STAGE_METHODS.items()
        }
        self.compile_failed = False
        self.stages: dict[str, Callable[..., Any]] = _STAGE_BUILDERS[self.spec.backend](self)

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """Context every stage runs in (autocast for the bf16 torch executors)."""
        with precision_context(self.spec.way, self.device.type):
            yield

    def _run(self, stage: str, *args: torch.Tensor) -> Any:
        if self.spec.backend == "cudagraph":  # the graph already ran under the right precision
            return self.stages[stage](*args)
        if self.spec.backend == "inductor" and not self.compile_failed:
            try:
                with self.precision(), warnings.catch_warnings():
                    # inductor's note on mixed bf16/fp16 kernels
                    warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed")
                    return self.stages[stage](*args)
            except Exception as error:  # inductor raises many kinds (missing compiler, lowering)
                _warn_compile_failed(error, f"executor {self.name!r} runs its stages uncompiled")
                self.compile_failed = True
                self.stages = self.uncompiled
        with self.precision():
            return self.stages[stage](*args)

    # -- the stage API the tracker uses -------------------------------------------------------
    def backbone(self, images: torch.Tensor, padding_mask: torch.Tensor) -> Features:
        images = images.contiguous(memory_format=self.memory_format)
        return Features(*self._run("backbone", images, padding_mask))

    def merge(self, features: list[Features]) -> Features:
        return self.network.merge(features)

    def encoder(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", tokens, padding_mask)

    def decoder(self, memory: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self._run("decoder", memory, padding_mask)

    def box_head(self, memory: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        return self._run("box_head", memory, decoded).float()

    def confidence(self, decoded: torch.Tensor) -> torch.Tensor:
        return self._run("confidence", decoded).float()

    def close(self) -> None:
        """Release threads or graphs the executor holds."""
        for close in self._closers:
            close()
        self._closers.clear()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StageModule(nn.Module):
    """One stage method as a module of tensors, so TorchScript can trace it, ONNX and
    torch.export export it (the engines and the C++ runner use it too)."""

    def __init__(self, network: CSWinTT, method: str) -> None:
        super().__init__()
        self.network = network
        self.method = method

    def extra_repr(self) -> str:  # part of the exported graph's cache key
        return f"method={self.method}"

    def forward(self, *args: torch.Tensor) -> Any:
        out = getattr(self.network, self.method)(*args)
        return tuple(out) if isinstance(out, Features) else out


class _GraphedStage:
    """A stage captured as a CUDA graph per input shape: inputs are copied into static
    buffers, the graph is replayed, and the static outputs are cloned out."""

    def __init__(self, fn: Callable[..., Any], precision: Callable[[], Any]) -> None:
        self.fn = fn
        self.precision = precision
        self.graphs: dict[
            tuple[Any, ...], tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]
        ] = {}

    def __call__(self, *args: torch.Tensor) -> Any:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        if key not in self.graphs:
            static = [a.clone() for a in args]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), self.precision():
                for _ in range(2):  # warm-up outside the capture, as CUDA graphs require
                    self.fn(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), self.precision():
                output = self.fn(*static)
            self.graphs[key] = (graph, static, output)
        graph, static, output = self.graphs[key]
        for buffer, arg in zip(static, args, strict=True):
            buffer.copy_(arg)
        graph.replay()
        if isinstance(output, tuple):
            return type(output)(*(o.clone() for o in output))
        return output.clone()


def _traced_stages(executor: Executor) -> dict[str, Callable[..., Any]]:
    """Each stage traced to a TorchScript module on its first call for an input shape
    (templates and search region give the backbone two shapes), then the graph is executed.
    The heads graph forks its traced heads itself, so its stages are called as they are."""
    if executor.spec.graph == "heads":
        return dict(executor.uncompiled)
    traced: dict[tuple[str, tuple[tuple[int, ...], ...]], Callable[..., Any]] = {}

    def stage_runner(stage: str) -> Callable[..., Any]:
        module = StageModule(executor.network, STAGE_METHODS[stage])

        def run(*args: torch.Tensor) -> Any:
            key = (stage, tuple(tuple(a.shape) for a in args))
            graph = traced.get(key)
            if graph is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript
                    graph = torch.jit.trace(
                        module, tuple(a.clone() for a in args), check_trace=False
                    )
                traced[key] = graph
            return graph(*args)

        return run

    return {stage: stage_runner(stage) for stage in STAGE_METHODS}


def _compiled_stages(executor: Executor) -> dict[str, Callable[..., Any]]:
    """torch.compile of every stage; with inductor's freezing when the executor owns a copy
    (weights become constants: packed oneDNN weights, fused bias and activation). If
    compilation fails, :meth:`Executor._run` runs the same stages uncompiled (printed)."""
    options = {"freezing": True} if executor.spec.owns_copy else None
    return {
        stage: torch.compile(run, dynamic=False, options=options)
        for stage, run in executor.uncompiled.items()
    }


def _graphed_stages(executor: Executor) -> dict[str, Callable[..., Any]]:
    return {
        stage: _GraphedStage(fn, executor.precision) for stage, fn in executor.uncompiled.items()
    }


def _engine_stages(executor: Executor) -> dict[str, Callable[..., Any]]:
    """Every stage exported to ONNX once per input shape (cached on disk) and run by the engine
    (:mod:`headway.runtime.engines`, which says how to install a missing one). The spectral
    graph is faster in every engine than the exported eager one, and under OpenVINO's bf16
    hint it is also the correct one (see docs/executors.md)."""
    assert executor.spec.engine is not None
    return {
        stage: EngineModule(executor.spec.engine, StageModule(executor.network, method))
        for stage, method in STAGE_METHODS.items()
    }


_STAGE_BUILDERS: dict[str, Callable[[Executor], dict[str, Callable[..., Any]]]] = {
    "eager": lambda executor: dict(executor.uncompiled),
    "torchscript": _traced_stages,
    "inductor": _compiled_stages,
    "cudagraph": _graphed_stages,
    "onnxruntime": _engine_stages,
    "openvino": _engine_stages,
}


def build_executor(name: str, network: CSWinTT, device: torch.device | str = "cpu") -> Executor:
    """The executor ``name`` (short or ``GRAPH[+bf16]@BACKEND``) for ``network`` on ``device``."""
    short, spec = resolve_executor(name)
    check_spec(spec, device, name)
    return Executor(network, device, spec, short)


def stage_exports(network: CSWinTT, executor: str) -> list[ExportPart]:
    """The tracker's stages as ``executor``'s graph runs them (its graph rewrite; the precision
    and backend are the target runtime's business), with inputs of the tracker's shapes."""
    short, spec = resolve_executor(executor)
    if spec.graph == "heads":
        raise InputError(
            f"executor {short!r} splits heads into a thread pool: nothing of it exports as one "
            "graph; export 'eager', 'fused' or 'spectral'"
        )
    plain = ExecutorSpec(spec.graph, "fp32", "onnxruntime")  # the exportable form of the graph
    rewritten = rewrite_network(plain, network).eval()
    config = rewritten.config
    generator = torch.Generator().manual_seed(0)

    def images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.randn(1, 3, size, size, generator=generator)
        mask = torch.zeros(1, size, size, dtype=torch.bool)
        mask[:, : size // 8] = True
        return image, mask

    with torch.no_grad():
        template, search = images(config.template_size), images(config.search_size)
        features = [rewritten.forward_backbone(*template)] * config.num_templates
        merged = rewritten.merge([*features, rewritten.forward_backbone(*search)])
        memory = rewritten.forward_encoder(merged.tokens, merged.padding_mask)
        decoded = rewritten.forward_decoder(memory, merged.padding_mask)

    def stage(method: str) -> StageModule:
        return StageModule(rewritten, method)

    return [
        ExportPart("backbone_template", stage("forward_backbone"), template),
        ExportPart("backbone_search", stage("forward_backbone"), search),
        ExportPart("encoder", stage("forward_encoder"), (merged.tokens, merged.padding_mask)),
        ExportPart("decoder", stage("forward_decoder"), (memory, merged.padding_mask)),
        ExportPart("box_head", stage("forward_box_head"), (memory, decoded)),
        ExportPart("confidence", stage("forward_confidence"), (decoded,)),
    ]
