"""Running a model with the inference engines users already have, ONNX Runtime and OpenVINO,
through one path for every workload: export the (possibly transformed) module to ONNX once per
input shape, cache the file on disk, open an engine session, and call it like the module
(torch tensors in, torch tensors out).

Engines: ``onnxruntime`` (CPU execution provider), ``openvino`` (CPU, fp32 inference
precision) and ``openvino-bf16`` (CPU, bf16 inference-precision hint: OpenVINO runs matrix
products in bf16 where the processor has bf16 instructions, and in fp32 where it has not).
Both engines are optional: ``pip install 'headway[engines]'``.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headway.errors import InputError, first_line
from headway.io import (
    cache_root,
    discard_cached,
    locked_folder,
    manifest_matches,
    write_manifest,
)

INSTALL_HINT = "pip install 'headway[engines]'"


@dataclass(frozen=True)
class Engine:
    """One engine by name: the package it needs, its family (how a graph is opened and
    called: :func:`open_onnxruntime` or :func:`compile_openvino`) and OpenVINO's precision
    hint. A new engine of a known family is one row of :data:`ENGINE_TABLE`."""

    package: str
    family: str
    precision: str = "f32"


ENGINE_TABLE: dict[str, Engine] = {
    "onnxruntime": Engine("onnxruntime", "onnxruntime"),
    "openvino": Engine("openvino", "openvino", "f32"),
    "openvino-bf16": Engine("openvino", "openvino", "bf16"),
}
ENGINES = tuple(ENGINE_TABLE)
EXPORT_FORMAT = 1  # bump when the export recipe changes, so cached files are not reused
# one export at a time in this process (workers may meet new shapes together); other processes
# sharing the cache wait on its folder lock
_export_lock = threading.Lock()


# OpenVINO objects a run has finished with are kept this long before they may be freed. A
# request's ``wait`` returns when its result is ready, but the engine thread that ran it still
# holds its task for a moment; freeing the compiled model then either joins that thread from
# itself ("Resource deadlock avoided", an abort) or, holding the GIL, joins a thread that waits
# for the GIL to drop a Python callback (a hang). Both were reproduced here by running the
# chained runner in a loop; the cyclic collector frees such objects at any later allocation.
RETIRE_S = 1.0
_retired: list[tuple[float, list[Any]]] = []
_retired_lock = threading.Lock()


def retire(objects: list[Any]) -> None:
    """Keep ``objects`` (compiled models, infer requests, queues) alive for ``RETIRE_S``
    after a run, and free those retired earlier than that."""
    now = time.monotonic()
    with _retired_lock:
        _retired.append((now, objects))
        keep = [entry for entry in _retired if now - entry[0] < RETIRE_S]
        old = [entry for entry in _retired if now - entry[0] >= RETIRE_S]
        _retired[:] = keep
    del old  # freed here, long after their engine threads went idle


@atexit.register
def _free_retired() -> None:
    """At exit, let the last run's engine threads go idle before the objects go."""
    with _retired_lock:
        if _retired:
            time.sleep(max(0.0, RETIRE_S - (time.monotonic() - _retired[-1][0])))
        _retired.clear()


def engine_available(engine: str) -> bool:
    """Whether the package of ``engine`` (and the ONNX exporter's) can be imported."""
    check_engine_name(engine)
    package = ENGINE_TABLE[engine].package
    return all(importlib.util.find_spec(p) is not None for p in (package, "onnx"))


def check_engine_name(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")


def require_engine(engine: str) -> None:
    """A one-line error saying how to install ``engine`` when it is missing."""
    if not engine_available(engine):
        raise InputError(
            f"engine {engine!r} is not installed: {INSTALL_HINT} (installs ONNX Runtime, "
            "OpenVINO and the ONNX exporter's packages)"
        )


def default_cache_dir() -> Path:
    """Where exported graphs are kept: ``$HEADWAY_CACHE`` or ``~/.cache/headway``."""
    return cache_root() / "exports"


_PLAIN = (bool, int, float, str, type(None))


def _plain_settings(module: nn.Module) -> list[tuple[str, str, object]]:
    """Every submodule's plain attributes (numbers, strings, lists and tuples of them): the
    settings a forward may read that neither the repr nor the state dict shows (a pruning
    schedule's keep counts: without them a pruned DeiT and the dense one with the same weights
    shared one exported graph)."""

    def plain(value: object) -> bool:
        if isinstance(value, (list, tuple)):
            return all(plain(item) for item in value)
        return isinstance(value, _PLAIN)

    found = []
    for path, sub in module.named_modules():
        for name, value in sorted(vars(sub).items()):
            if name != "training" and not name.startswith("_") and plain(value):
                found.append((path, name, value))
    return found


def module_fingerprint(module: nn.Module, args: Sequence[torch.Tensor]) -> str:
    """Hash of what the exported graph depends on: the module's structure, its submodules'
    plain settings, every parameter and buffer value, the input shapes and dtypes, the torch
    version and the export recipe."""
    digest = hashlib.sha256()
    digest.update(f"{EXPORT_FORMAT}|{torch.__version__}|{module!r}".encode())
    digest.update(repr(_plain_settings(module)).encode())
    for name, tensor in [*module.state_dict().items(), *module.named_buffers()]:
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    for arg in args:
        digest.update(f"{arg.dtype}|{tuple(arg.shape)}".encode())
    return digest.hexdigest()[:24]


def export_onnx(
    module: nn.Module,
    args: Sequence[torch.Tensor],
    cache_dir: Path | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """The ONNX file of ``module`` for inputs shaped like ``args``: exported once, then reused
    from the cache (a rerun with the same weights and shapes exports nothing). With
    ``dynamic_batch`` the first dimension of every input and output is left free (a served
    model's dynamic batches run on one graph)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    suffix = "-batch" if dynamic_batch else ""
    path = folder / f"{type(module).__name__}-{module_fingerprint(module, args)}{suffix}.onnx"
    if manifest_matches(path):  # verified, never trusted: anything else is exported again
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"export cache {folder} cannot be made ({error.strerror}); point HEADWAY_CACHE "
            "at a writable folder"
        ) from None
    with _export_lock, locked_folder(folder, wait=True):
        if manifest_matches(path):  # another caller exported it while we waited
            return path
        discard_cached(path)  # a damaged or half-written entry, if any
        temporary = path.with_suffix(".onnx.tmp")
        # copies: tracing runs the module, and a module may write into its input
        inputs = tuple(a.detach().clone().contiguous() for a in args)
        axes = None
        if dynamic_batch:
            with torch.no_grad():
                outputs = module.eval()(*(a.clone() for a in inputs))
            count = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
            names = [f"input_{i}" for i in range(len(inputs))]
            output_names = [f"output_{i}" for i in range(count)]
            axes = {name: {0: "batch"} for name in [*names, *output_names]}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation notices of the exporter
            torch.onnx.export(
                module.eval(),
                inputs,
                str(temporary),
                dynamo=False,
                opset_version=18,
                do_constant_folding=True,
                **(
                    {"input_names": names, "output_names": output_names, "dynamic_axes": axes}
                    if axes
                    else {}
                ),
            )
        os.replace(temporary, path)
        write_manifest(path)
    return path


def _opened(path: Path, open_graph: Callable[[], Any]) -> Any:
    """An engine's session for ``path``, or one line naming the file when it cannot open it."""
    try:
        return open_graph()
    except Exception as error:  # both engines raise their own types for unreadable graphs
        raise InputError(f"the engine cannot open {path}: {first_line(error)}") from None


def open_onnxruntime(path: Path, threads: int | None = None, standalone: bool = False) -> Any:
    """The one place headway opens an ONNX Runtime session (the CPU provider). Its threads are
    the workload's choice:

    - a stage among others (the tracker's stages, the multi-model runtime's jobs, the server's
      models; ``standalone`` False): ``threads`` intra-op threads (default: torch's), one
      inter-op thread and no spin-waiting after a run, because torch's own operators or other
      sessions run between the calls and a spinning pool takes their cores (measured +14 ms
      per frame in the tracker);
    - a whole model called on its own (``accelerate``; ``standalone``): ONNX
      Runtime's own defaults, one thread per physical core, pinned, spin-waiting between runs
      (``threads``, when given, still sets the count). The stages' settings cost 8-38% on
      torchvision and timm models at batch 1 (``benchmarks/accelerate_peers.py``).

    One line naming the file when it cannot open it."""
    require_engine("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not standalone or threads is not None:
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
    if not standalone:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return _opened(
        path,
        lambda: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
    )


def compile_openvino(
    model: Path | Any,
    precision: str = "f32",
    threads: int | None = None,
    streams: int | None = None,
    hint: str | None = None,
    profiling: bool = False,
) -> Any:
    """The one place headway compiles for OpenVINO (CPU): a graph file or an ``ov.Model``,
    with the inference-precision hint (``f32`` or ``bf16``), and where given the threads, the
    streams and the performance hint (``profiling``: per-node times, for the benchmarks). One
    line naming the file when it cannot."""
    require_engine("openvino")
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
    if profiling:
        config["PERF_COUNT"] = True
    if hint is not None:
        config["PERFORMANCE_HINT"] = hint
    if streams is not None:
        config["NUM_STREAMS"] = streams
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if isinstance(model, Path):
        return _opened(model, lambda: ov.Core().compile_model(str(model), "CPU", config))
    return ov.Core().compile_model(model, "CPU", config)


def open_engine(
    engine: str,
    path: Path,
    threads: int | None = None,
    streams: int | None = None,
    hint: str | None = None,
    standalone: bool = False,
) -> Any:
    """The graph at ``path`` opened by ``engine`` (an ONNX Runtime session or an OpenVINO
    compiled model) through its family's one opener (``standalone``: a whole model called on
    its own, see :func:`open_onnxruntime`)."""
    check_engine_name(engine)
    row = ENGINE_TABLE[engine]
    if row.family == "onnxruntime":
        return open_onnxruntime(path, threads, standalone)
    return compile_openvino(path, row.precision, threads, streams, hint)


class EngineSession:
    """One exported graph opened by an engine; called with torch tensors, returns a list of
    torch tensors (CPU). Safe to call from several threads at once (the multi-model runtime's
    workers): ONNX Runtime sessions are, and each thread gets its own OpenVINO infer request.
    ``standalone``: a whole model called on its own, run with the engine's own thread
    defaults (ONNX Runtime's, see :func:`open_onnxruntime`; OpenVINO's under its LATENCY
    hint, as its users compile a model)."""

    def __init__(
        self, engine: str, onnx_path: Path, threads: int | None = None, standalone: bool = False
    ) -> None:
        require_engine(engine)
        self.engine = engine
        if not standalone:
            threads = threads or torch.get_num_threads()
        if ENGINE_TABLE[engine].family == "onnxruntime":
            self._session = open_engine(engine, onnx_path, threads, standalone=standalone)
            self._inputs = [i.name for i in self._session.get_inputs()]
            self._run: Callable[[list[Any]], list[Any]] = self._run_onnxruntime
        else:
            hint = "LATENCY" if standalone else None
            self._compiled = open_engine(engine, onnx_path, threads, hint=hint)
            self._outputs = list(self._compiled.outputs)
            self._requests = threading.local()  # an infer request serves one thread at a time
            self._run = self._run_openvino

    def _run_onnxruntime(self, arrays: list[Any]) -> list[Any]:
        return self._session.run(None, dict(zip(self._inputs, arrays, strict=True)))

    def _run_openvino(self, arrays: list[Any]) -> list[Any]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        results = request.infer(arrays)
        return [results[output] for output in self._outputs]

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        arrays = [a.detach().cpu().contiguous().numpy() for a in args]
        return [torch.from_numpy(out.copy()) for out in self._run(arrays)]


class EngineModule(nn.Module):
    """A module run by an engine: the same call as ``module`` (for the input shapes it was
    compiled for; other shapes are exported on first use and cached), single outputs
    unwrapped. Usable wherever the module was, e.g. as a job of the multi-model runtime.
    ``standalone``: a whole model called on its own (the engines' own thread defaults, see
    :class:`EngineSession`)."""

    def __init__(
        self,
        engine: str,
        module: nn.Module,
        cache_dir: Path | None = None,
        threads: int | None = None,
        standalone: bool = False,
    ) -> None:
        super().__init__()
        require_engine(engine)
        self.engine, self.cache_dir, self.threads = engine, cache_dir, threads
        self.standalone = standalone
        self.source = module.eval()
        self._sessions: dict[tuple[tuple[int, ...], ...], EngineSession] = {}
        self._lock = threading.Lock()

    def session_for(self, *args: torch.Tensor) -> EngineSession:
        key = tuple(tuple(a.shape) for a in args)
        with self._lock:  # two workers meeting a new shape export it once
            if key not in self._sessions:
                path = export_onnx(self.source, args, self.cache_dir)
                self._sessions[key] = EngineSession(
                    self.engine, path, self.threads, self.standalone
                )
            return self._sessions[key]

    def forward(self, *args: torch.Tensor) -> Any:
        outputs = self.session_for(*args)(*args)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def compile_module(
    engine: str,
    module: nn.Module,
    example: Sequence[torch.Tensor] | torch.Tensor,
    cache_dir: Path | None = None,
    threads: int | None = None,
    standalone: bool = False,
) -> EngineModule:
    """``module`` run by ``engine``, exported and opened now for inputs shaped like
    ``example`` (so the first real call is not the slow one).

    Args:
        engine: ``onnxruntime``, ``openvino`` or ``openvino-bf16``.
        module: any ``nn.Module`` the ONNX exporter can trace (a zoo CNN, a Tucker-decomposed
            CNN, DeiT with fixed masks, a CSWinTT stage).
        example: one input tensor or a sequence of them.
        cache_dir: where exported graphs are kept (default :func:`default_cache_dir`).
        threads: the engine's intra-op threads (default: torch's).
        standalone: a whole model called on its own: the engines' own thread defaults (not
            for stages among others, see :func:`open_onnxruntime`).
    """
    args = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    engine_module = EngineModule(engine, module, cache_dir, threads, standalone)
    engine_module.session_for(*args)
    return engine_module
