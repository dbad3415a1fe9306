"""Loading a served model: its network (zoo, torchvision/timm, a ``headway export`` folder or
a module), cut into paper B's jobs, each job run by the configured backend on batches of any
size up to ``max_batch_size``, and checked against eager PyTorch before it serves.

A job is a function from a tuple of numpy arrays to a tuple of numpy arrays, so torch jobs and
engine jobs chain alike and a worker never holds a framework object across jobs.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headway.errors import InputError, first_line
from headway.io import read_json_file
from headway.runtime.deploy import max_difference, output_tensors, probe_inputs
from headway.runtime.engines import engine_available, export_onnx, open_engine
from headway.runtime.jobs import split_jobs
from headway.serving.config import DATATYPES, ModelConfig, TensorSpec, datatype_of

Arrays = tuple[np.ndarray, ...]
Job = Callable[[Arrays], Arrays]
TOLERANCE = 1e-4  # largest |Δ| to eager, relative to the largest output value (fp32)
BF16_TOLERANCE = 5e-2


@dataclass
class Graph:
    """One loaded model: its jobs in order, its tensors (with the batch dimension left out
    when batched) and what was measured when it was loaded."""

    config: ModelConfig
    jobs: list[Job]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str
    notes: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def run(self, arrays: Arrays) -> Arrays:
        """Every job in order on one thread (the path checks and the benchmark use)."""
        for job in self.jobs:
            arrays = job(arrays)
        return arrays

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()


# ---------------------------------------------------------------------------------------------
# the network


def source_network(config: ModelConfig) -> tuple[nn.Module | None, Path | None, Arrays]:
    """(module, export folder, example arrays at batch 1 or unbatched)."""
    if config.module is not None:
        if not isinstance(config.module, nn.Module):
            raise InputError(f"model {config.name!r}: module must be an nn.Module")
        if not config.inputs:
            raise InputError(f"model {config.name!r}: a module needs its input specs (dims)")
        return config.module.eval(), None, _example_from_specs(config)
    source = config.source
    folder = config.folder or Path.cwd()
    if "/" in source or source.startswith("."):
        export = (folder / source).resolve()
        return None, export, _example_from_export(config, export)
    from headway.vision.serving import ModelSpec, build_model

    checkpoint = config.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_absolute():
        checkpoint = str(folder / checkpoint)
    spec = ModelSpec(
        source,
        config.num_classes,
        config.input_size <= 64,
        config.input_size,
        config.tucker,
        config.seed,
        None,
        checkpoint,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, example = build_model(spec)
    arrays = (example.numpy(),) if config.batched else (example[0].numpy(),)
    if config.inputs:
        arrays = _example_from_specs(config)
    return model, None, arrays


def _example_from_specs(config: ModelConfig) -> Arrays:
    generator = np.random.default_rng(config.seed)
    arrays = []
    for spec in config.inputs:
        if any(d < 0 for d in spec.dims):
            raise InputError(
                f"model {config.name!r}: input {spec.name!r} has a free dim; give sizes to load it"
            )
        shape = ((1,) if config.batched else ()) + spec.dims
        kind = DATATYPES[spec.datatype]
        if np.issubdtype(kind, np.floating):
            arrays.append(generator.standard_normal(shape).astype(kind))
        else:
            arrays.append(generator.integers(0, 2, shape).astype(kind))
    return tuple(arrays)


EXPORT_FILES = {"openvino": ".xml", "onnxruntime": ".onnx", "torch": ".pt"}


def _export_record(config: ModelConfig, export: Path) -> dict[str, Any]:
    record = read_json_file(export / "verification.json", "export record")
    parts = sorted({entry.get("part") for entry in record.get("files", {}).values()})
    if len(parts) != 1:
        raise InputError(
            f"model {config.name!r}: export {export} has {len(parts)} parts "
            f"({', '.join(map(str, parts))}); a served model is one graph"
        )
    return record


def _example_from_export(config: ModelConfig, export: Path) -> Arrays:
    if not export.is_dir():
        raise InputError(f"model {config.name!r}: export folder {export} does not exist")
    record = _export_record(config, export)
    entry = next(iter(record["files"].values()))
    shapes = entry["inputs"]
    generator = np.random.default_rng(config.seed)
    arrays = tuple(generator.standard_normal(shape).astype(np.float32) for shape in shapes)
    if not config.batched:
        return arrays
    return tuple(a[:1] for a in arrays)


# ---------------------------------------------------------------------------------------------
# jobs per backend


def _torch_jobs(model: nn.Module, config: ModelConfig, example: Arrays) -> list[Job]:
    tensors = tuple(torch.from_numpy(a) for a in example)
    if not config.batched:
        modules: list[nn.Module] = [_Unbatched(model)]
    elif config.job_policy == "jobs:1" or len(tensors) != 1:
        modules = [model]
    else:
        modules = list(split_jobs(model, config.job_policy, tensors[0]))
    bf16 = config.precision == "bf16"

    def job_of(module: nn.Module) -> Job:
        def run(arrays: Arrays) -> Arrays:
            inputs = [torch.from_numpy(a) for a in arrays]
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                outputs = output_tensors(module(*inputs))
            return tuple(o.float().numpy() if bf16 else o.numpy() for o in outputs)

        return run

    return [job_of(m) for m in modules]


def _engine_job(engine: str, path: Path, threads: int, streams: int) -> tuple[Job, Callable]:
    """A job running the graph at ``path``; with the function that releases it."""
    if engine == "onnxruntime":
        session = open_engine("onnxruntime", path, threads)
        names = [i.name for i in session.get_inputs()]

        def run_onnxruntime(arrays: Arrays) -> Arrays:
            return tuple(session.run(None, dict(zip(names, arrays, strict=True))))

        return run_onnxruntime, lambda: None
    compiled = open_engine(engine, path, threads * streams, streams, "THROUGHPUT")
    outputs = list(compiled.outputs)
    local = threading.local()  # an infer request serves one thread at a time

    def run_openvino(arrays: Arrays) -> Arrays:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        results = request.infer(list(arrays))
        return tuple(np.array(results[o], copy=True) for o in outputs)

    return run_openvino, lambda: None


def _graph_jobs(
    config: ModelConfig,
    backend: str,
    model: nn.Module | None,
    export: Path | None,
    example: Arrays,
    threads: int,
    streams: int,
) -> tuple[list[Job], list[Callable]]:
    engine = "openvino-bf16" if backend == "openvino" and config.precision == "bf16" else backend
    if backend not in ("openvino", "onnxruntime", "torch"):
        raise InputError(f"model {config.name!r}: unknown backend {backend!r}")
    if backend != "torch" and not engine_available(backend):
        raise InputError(
            f"model {config.name!r}: backend {backend} is not installed (pip install "
            "'headway[engines]')"
        )
    if backend == "onnxruntime" and config.precision == "bf16":
        raise InputError(f"model {config.name!r}: onnxruntime has no bf16 engine here")
    if export is not None:
        return _export_jobs(config, backend, export, threads, streams)
    assert model is not None
    if backend == "torch":
        return _torch_jobs(model, config, example), []
    tensors = tuple(torch.from_numpy(a) for a in example)
    if not config.batched:
        modules: list[nn.Module] = [_Unbatched(model)]
    elif config.job_policy == "jobs:1" or len(tensors) != 1:
        modules = [model]
    else:
        modules = list(split_jobs(model, config.job_policy, tensors[0]))
    jobs, closers, x = [], [], tensors
    for module in modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = export_onnx(module, x, dynamic_batch=config.batched)
        job, close = _engine_job(engine, path, threads, streams)
        jobs.append(job)
        closers.append(close)
        with torch.inference_mode():
            x = tuple(output_tensors(module(*x)))
    return jobs, closers


class _Unbatched(nn.Module):
    """A batch-1 network called with unbatched inputs (Triton's ``max_batch_size: 0``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs = self.model(*(x.unsqueeze(0) for x in inputs))
        if isinstance(outputs, torch.Tensor):
            return outputs.squeeze(0)
        return tuple(o.squeeze(0) for o in outputs)


def _export_jobs(
    config: ModelConfig, backend: str, export: Path, threads: int, streams: int
) -> tuple[list[Job], list[Callable]]:
    suffix = EXPORT_FILES[backend]
    files = [export / name for name in _export_record(config, export)["files"]]
    chosen = [f for f in files if f.suffix == suffix]
    if not chosen:
        have = ", ".join(sorted(f.suffix for f in files))
        raise InputError(
            f"model {config.name!r}: export {export} has no {suffix} file for backend {backend} "
            f"(it has {have})"
        )
    path = chosen[0]
    if backend == "torch":
        loaded = torch.jit.load(str(path))

        def run_script(arrays: Arrays) -> Arrays:
            with torch.inference_mode():
                outputs = output_tensors(loaded(*(torch.from_numpy(a) for a in arrays)))
            return tuple(o.numpy() for o in outputs)

        return [run_script], []
    job, close = _engine_job(backend, path, threads, streams)
    return [job], [close]


# ---------------------------------------------------------------------------------------------
# loading and checking


def _specs(
    given: tuple[TensorSpec, ...], arrays: Arrays, stem: str, batched: bool, what: str
) -> tuple[TensorSpec, ...]:
    if given and len(given) != len(arrays):
        raise InputError(f"{what}: the config names {len(given)} but the model has {len(arrays)}")
    names = [g.name for g in given] or (
        [stem] if len(arrays) == 1 else [f"{stem}_{i}" for i in range(len(arrays))]
    )
    return tuple(
        TensorSpec(name, datatype_of(a), tuple(a.shape[1:] if batched else a.shape))
        for name, a in zip(names, arrays, strict=True)
    )


def _reference(
    model: nn.Module | None, jobs_run: Callable[[Arrays], Arrays], example: Arrays, batched: bool
) -> Callable[[Arrays], Arrays]:
    """Eager PyTorch on the network (or, for an export, the export's own verified file)."""
    if model is None:
        return jobs_run

    def eager(arrays: Arrays) -> Arrays:
        inputs = [torch.from_numpy(a) for a in arrays]
        if not batched:
            inputs = [x.unsqueeze(0) for x in inputs]
        with torch.inference_mode():
            outputs = output_tensors(model(*inputs))
        return tuple((o if batched else o.squeeze(0)).float().numpy() for o in outputs)

    return eager


def check_graph(
    graph: Graph, reference: Callable[[Arrays], Arrays], example: Arrays, tolerance: float
) -> float:
    """Largest |Δ| to ``reference`` (relative to its largest value) on the example, on fresh
    probes and, when batched, on a full batch of distinct rows; one line when it is over."""
    inputs = [
        example,
        tuple(p.numpy() for p in probe_inputs(tuple(map(torch.from_numpy, example)), 1)),
    ]
    if graph.config.batched and graph.config.max_batch_size > 1:
        size = graph.config.max_batch_size
        rows = [probe_inputs(tuple(map(torch.from_numpy, example)), 10 + i) for i in range(size)]
        inputs.append(tuple(torch.cat(parts).numpy() for parts in zip(*rows, strict=True)))

    def as_torch(run: Callable[[Arrays], Arrays]) -> Callable[..., list[torch.Tensor]]:
        return lambda *xs: [
            torch.from_numpy(np.asarray(o)) for o in run(tuple(x.numpy() for x in xs))
        ]

    probes = [tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays) for arrays in inputs]
    references = [as_torch(reference)(*p) for p in probes]
    scale = max(float(np.abs(r.numpy()).max()) for ref in references for r in ref) or 1.0
    try:
        difference = max_difference(as_torch(graph.run), probes, references) / scale
    except Exception as error:  # engines raise their own types on shapes they cannot take
        raise InputError(
            f"model {graph.config.name!r} on {graph.backend} failed on its check inputs "
            f"(batch sizes 1 and {graph.config.max_batch_size}): {first_line(error)}"
        ) from None
    if not difference <= tolerance:
        raise InputError(
            f"model {graph.config.name!r} on {graph.backend} differs from eager PyTorch by "
            f"{difference:.1e} (relative), over {tolerance:.0e}"
        )
    return difference


def build_checked(
    config: ModelConfig,
    backend: str,
    model: nn.Module | None,
    export: Path | None,
    example: Arrays,
    workers: int,
    threads: int,
    tolerance: float,
) -> Graph:
    """``config``'s model on ``backend``, checked; released again if the check fails."""
    jobs, closers = _graph_jobs(config, backend, model, export, example, threads, workers)
    graph = Graph(config, jobs, (), (), backend, closers=closers)
    try:
        outputs = graph.run(example)
        graph.inputs = _specs(
            config.inputs, example, "input", config.batched, f"model {config.name!r} inputs"
        )
        graph.outputs = _specs(
            config.outputs, outputs, "output", config.batched, f"model {config.name!r} outputs"
        )
        reference = _reference(model, graph.run, example, config.batched)
        graph.notes["max_rel_diff"] = check_graph(graph, reference, example, tolerance)
    except BaseException:
        graph.close()
        raise
    return graph
