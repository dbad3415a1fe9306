"""Executors: how the tracker's network stages run, selectable by name.

| name | what runs |
|---|---|
| ``eager`` | Case A: the plain modules, heads one after another in Python |
| ``scripted`` | Case B: every stage traced to TorchScript once per input shape, then called |
| ``compiled`` | torch.compile of every stage (falls back to ``scripted``, with a warning) |
| ``heads`` | Case C: split heads dispatched to a pool of workers, one CUDA stream each |
| ``scripted-fork`` | Case C without the GIL: traced heads forked onto TorchScript's inter-op pool |
| ``fused`` | fused window attention (one gather per Q/K′/V′, heads batched per window size), |
|  | batch norms folded into the convolutions, channels-last convolutions |
| ``fused-bf16`` | ``fused`` with bfloat16 weights under autocast (AVX-512 BF16, tensor cores) |
| ``spectral`` | ``fused`` with the w > 1 heads computed per DFT bin of their window (no rolled |
|  | key/value copies; 4–33× fewer attention multiply-adds) and the linear layers run by |
|  | oneDNN on packed weights: the fastest fp32 path on CPU |
| ``spectral-bf16`` | spectral attention with bfloat16 weights under autocast |
| ``compiled-spectral`` | ``spectral`` with every stage compiled (torch.compile, freezing) |
| ``compiled-bf16`` | ``spectral-bf16`` with every stage compiled the same way |
| ``cudagraph`` | ``fused`` with each stage captured once as a CUDA graph, then replayed |
| ``cudagraph-bf16`` | ``cudagraph`` under bfloat16 autocast (CUDA only) |
| ``onnxruntime`` | the ``spectral`` network exported to ONNX per stage and run by ONNX Runtime |
| ``openvino`` | the same graphs run by OpenVINO (fp32) |
| ``openvino-bf16`` | the same graphs run by OpenVINO with its bf16 precision hint |

Every executor exposes the same stage calls (``backbone``, ``merge``, ``encoder``, ``decoder``,
``box_head``, ``confidence``), so the tracker and the benchmark treat them alike. Executors that
rewrite the network work on a copy; all of them move the network to their device.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from headway.errors import InputError
from headway.models.cswintt import CSWinTT, Features
from headway.runtime.engines import EngineModule, require_engine
from headway.runtime.pool import StreamWorkerPool
from headway.transforms.fold import cast_matmul_weights, fold_batchnorm
from headway.transforms.fork import fork_heads
from headway.transforms.heads import fuse_window_attention, set_head_dispatch, split_heads
from headway.transforms.packing import pack_linear_weights
from headway.transforms.spectral import spectral_window_attention

log = logging.getLogger(__name__)

STAGE_METHODS = {
    "backbone": "forward_backbone",
    "encoder": "forward_encoder",
    "decoder": "forward_decoder",
    "box_head": "forward_box_head",
    "confidence": "forward_confidence",
}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning line on stderr (through logging: no source line), once per process."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (otherwise bf16 is emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Executor:
    """Case A: calls the network's stage methods as they are."""

    name: ClassVar[str] = "eager"
    requires_cuda: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float32
    memory_format: ClassVar[torch.memory_format] = torch.contiguous_format

    def __init__(self, network: CSWinTT, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and not _cpu_has_bf16():
            _warn_once(
                f"executor {self.name!r}: this CPU has no bf16 instructions (AVX-512 BF16 or "
                "AMX), so bf16 runs emulated and slower than fp32; use 'fused' or 'openvino'"
            )
        self.config = network.config
        self.network = self.prepare(network).to(self.device).eval()
        self.stages: dict[str, Callable[..., Any]] = {
            stage: getattr(self.network, method) for stage, method in STAGE_METHODS.items()
        }

    def prepare(self, network: CSWinTT) -> CSWinTT:
        """The network this executor runs (a transformed copy, or the network itself)."""
        return network

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """Context every stage runs in (autocast for the bf16 executors)."""
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def _run(self, stage: str, *args: torch.Tensor) -> Any:
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


class ScriptedExecutor(Executor):
    """Case B: each stage traced to a TorchScript module on its first call for an input shape
    (templates and search region give the backbone two shapes), then the graph is executed."""

    name = "scripted"

    def __init__(self, network: CSWinTT, device: torch.device | str = "cpu") -> None:
        super().__init__(network, device)
        self._traced: dict[tuple[str, tuple[tuple[int, ...], ...]], Callable[..., Any]] = {}
        self.stages = {stage: self._traced_stage(stage) for stage in STAGE_METHODS}

    def _traced_stage(self, stage: str) -> Callable[..., Any]:
        module = StageModule(self.network, STAGE_METHODS[stage])

        def run(*args: torch.Tensor) -> Any:
            key = (stage, tuple(tuple(a.shape) for a in args))
            traced = self._traced.get(key)
            if traced is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript
                    traced = torch.jit.trace(
                        module, tuple(a.clone() for a in args), check_trace=False
                    )
                self._traced[key] = traced
            return traced(*args)

        return run


def _warn_compile_failed(error: Exception, consequence: str) -> None:
    """One printed line saying that torch.compile failed, why, and what runs instead."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    warnings.warn(f"torch.compile failed ({message}); {consequence}", RuntimeWarning, stacklevel=4)


class CompiledExecutor(Executor):
    """torch.compile of every stage; if compilation fails, falls back to tracing (printed)."""

    name = "compiled"

    def __init__(self, network: CSWinTT, device: torch.device | str = "cpu") -> None:
        super().__init__(network, device)
        self.fallback: ScriptedExecutor | None = None
        self.stages = {
            stage: torch.compile(getattr(self.network, method), dynamic=False)
            for stage, method in STAGE_METHODS.items()
        }

    def _run(self, stage: str, *args: torch.Tensor) -> Any:
        if self.fallback is not None:
            return self.fallback._run(stage, *args)
        try:
            return super()._run(stage, *args)
        except Exception as error:  # inductor raises many kinds (missing compiler, lowering)
            _warn_compile_failed(error, "executor 'compiled' falls back to 'scripted'")
            self.fallback = ScriptedExecutor(self.network, self.device)
            return self.fallback._run(stage, *args)


class HeadParallelExecutor(Executor):
    """Case C: split heads; each layer's head jobs go through the pool's FIFO queue to workers
    that own one CUDA stream each (no streams on CPU)."""

    name = "heads"

    def prepare(self, network: CSWinTT) -> CSWinTT:
        split, _ = split_heads(network)
        self.pool = StreamWorkerPool(network.config.num_heads, self.device)
        set_head_dispatch(split, self.pool.run_all)
        return split

    def close(self) -> None:
        self.pool.shutdown()


class ForkedHeadsExecutor(Executor):
    """Case C without the GIL: split heads traced once per shape and forked onto TorchScript's
    C++ inter-op pool by a scripted dispatcher (:func:`~headway.transforms.fork.fork_heads`)."""

    name = "scripted-fork"

    def prepare(self, network: CSWinTT) -> CSWinTT:
        return fork_heads(network)[0]


class FusedExecutor(Executor):
    """Fused window attention (:func:`~headway.transforms.heads.fuse_window_attention`),
    batch norms folded into convolutions and channels-last convolutions."""

    name = "fused"
    memory_format = torch.channels_last
    attention: ClassVar[Callable[[CSWinTT], tuple[CSWinTT, Any]]] = staticmethod(
        fuse_window_attention
    )

    def prepare(self, network: CSWinTT) -> CSWinTT:
        fused, _ = self.attention(network)
        folded, _ = fold_batchnorm(fused)
        return folded.to(memory_format=torch.channels_last)


class SpectralExecutor(FusedExecutor):
    """``fused`` with the w > 1 heads computed per DFT bin of the window
    (:func:`~headway.transforms.spectral.spectral_window_attention`: no rolled key/value
    copies, 4–33× fewer attention multiply-adds) and the linear layers run by oneDNN on packed
    weights (:func:`~headway.transforms.packing.pack_linear_weights`)."""

    name = "spectral"
    attention = staticmethod(spectral_window_attention)

    def prepare(self, network: CSWinTT) -> CSWinTT:
        return pack_linear_weights(super().prepare(network))[0]


class FusedBF16Executor(FusedExecutor):
    """``fused`` with matmul/conv weights stored in bfloat16, run under autocast."""

    name = "fused-bf16"
    dtype = torch.bfloat16

    def prepare(self, network: CSWinTT) -> CSWinTT:
        return cast_matmul_weights(super().prepare(network), self.dtype)[0]


class SpectralBF16Executor(FusedBF16Executor):
    """``fused-bf16`` with the spectral window attention (bf16 weights, autocast; the linear
    layers stay PyTorch's, whose bf16 path already runs on oneDNN)."""

    name = "spectral-bf16"
    attention = staticmethod(spectral_window_attention)


class _CompiledStages:
    """Mixin: every stage compiled by torch.compile with inductor's freezing (weights become
    constants, so convolutions and linears get oneDNN's packed weights and fused bias /
    activation; the executor owns its copy of the network, so they cannot change). If
    compilation fails, the same stages run uncompiled (printed warning)."""

    name: ClassVar[str]
    uncompiled_name: ClassVar[str]

    def __init__(self, network: CSWinTT, device: torch.device | str = "cpu") -> None:
        super().__init__(network, device)  # type: ignore[call-arg]
        self.uncompiled = dict(self.stages)
        self.compile_failed = False
        self.stages = {
            stage: torch.compile(run, dynamic=False, options={"freezing": True})
            for stage, run in self.uncompiled.items()
        }

    def _run(self, stage: str, *args: torch.Tensor) -> Any:
        if not self.compile_failed:
            try:
                with warnings.catch_warnings():  # inductor's note on mixed bf16/fp16 kernels
                    warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed")
                    return super()._run(stage, *args)  # type: ignore[misc]
            except Exception as error:  # inductor raises many kinds (missing compiler, lowering)
                _warn_compile_failed(
                    error,
                    f"executor {self.name!r} runs the {self.uncompiled_name!r} stages uncompiled",
                )
                self.compile_failed = True
                self.stages = self.uncompiled
        return super()._run(stage, *args)  # type: ignore[misc]


class CompiledSpectralExecutor(_CompiledStages, FusedExecutor):
    """The ``spectral`` network (with PyTorch's linears: inductor packs them itself) with every
    stage compiled: inductor fuses the elementwise work around the products and, with freezing,
    gives the convolutions and linears packed weights and fused post-ops."""

    name = "compiled-spectral"
    uncompiled_name = "spectral"
    attention = staticmethod(spectral_window_attention)


class CompiledBF16Executor(_CompiledStages, SpectralBF16Executor):
    """``spectral-bf16`` with every stage compiled as in ``compiled-spectral``: inductor fuses
    the elementwise work, casts and gathers around the matrix products."""

    name = "compiled-bf16"
    uncompiled_name = "spectral-bf16"


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


class CudaGraphExecutor(FusedExecutor):
    """``fused`` with every stage captured as a CUDA graph (CUDA only)."""

    name = "cudagraph"
    requires_cuda = True

    def __init__(self, network: CSWinTT, device: torch.device | str = "cuda") -> None:
        super().__init__(network, device)
        self.stages = {
            stage: _GraphedStage(fn, self.precision) for stage, fn in self.stages.items()
        }

    def _run(self, stage: str, *args: torch.Tensor) -> Any:
        return self.stages[stage](*args)  # the graph already ran under the right precision


class CudaGraphBF16Executor(CudaGraphExecutor):
    name = "cudagraph-bf16"
    dtype = torch.bfloat16

    def prepare(self, network: CSWinTT) -> CSWinTT:
        return cast_matmul_weights(super().prepare(network), self.dtype)[0]


class EngineExecutor(Executor):
    """The ``spectral`` network (spectral window attention, folded batch norms) exported to
    ONNX stage by stage, once per input shape (cached on disk), and run by an inference engine
    (:mod:`headway.runtime.engines`). The rewritten graph is faster in every engine than the
    exported eager one, and under OpenVINO's bf16 hint it is also the correct one (the eager
    graph's w = 2 heads go wrong there; see docs/executors.md)."""

    name = "onnxruntime"
    engine: ClassVar[str] = "onnxruntime"

    def __init__(self, network: CSWinTT, device: torch.device | str = "cpu") -> None:
        super().__init__(network, device)
        self.stages = {  # EngineModule says how to install a missing engine
            stage: EngineModule(self.engine, StageModule(self.network, method))
            for stage, method in STAGE_METHODS.items()
        }

    def prepare(self, network: CSWinTT) -> CSWinTT:
        spectral, _ = spectral_window_attention(network)
        return fold_batchnorm(spectral)[0]


class OpenVINOExecutor(EngineExecutor):
    """``onnxruntime``'s exported graphs run by OpenVINO in fp32."""

    name = "openvino"
    engine = "openvino"


class OpenVINOBF16Executor(EngineExecutor):
    """The same graphs run by OpenVINO with its bf16 inference-precision hint."""

    name = "openvino-bf16"
    engine = "openvino-bf16"


EXECUTORS: dict[str, type[Executor]] = {
    cls.name: cls
    for cls in (
        Executor,
        ScriptedExecutor,
        CompiledExecutor,
        HeadParallelExecutor,
        ForkedHeadsExecutor,
        FusedExecutor,
        FusedBF16Executor,
        SpectralExecutor,
        SpectralBF16Executor,
        CompiledSpectralExecutor,
        CompiledBF16Executor,
        CudaGraphExecutor,
        CudaGraphBF16Executor,
        EngineExecutor,
        OpenVINOExecutor,
        OpenVINOBF16Executor,
    )
}


def check_executor(name: str, device: torch.device | str) -> type[Executor]:
    """The executor class for ``name``, or a clear error (unknown name, CUDA-only on CPU)."""
    if name not in EXECUTORS:
        raise InputError(f"unknown executor {name!r}: choose from {', '.join(EXECUTORS)}")
    cls = EXECUTORS[name]
    if issubclass(cls, EngineExecutor):
        if torch.device(device).type != "cpu":
            raise InputError(f"executor {name!r} runs on the CPU only (device is {device})")
        require_engine(cls.engine)
    if cls.requires_cuda and torch.device(device).type != "cuda":
        raise InputError(
            f"executor {name!r} needs CUDA (device is {device}); on CPU use 'fused' or 'fused-bf16'"
        )
    return cls


def build_executor(name: str, network: CSWinTT, device: torch.device | str = "cpu") -> Executor:
    """Instantiate the executor ``name`` for ``network`` on ``device``."""
    return check_executor(name, device)(network, device)
