"""The CNN serving workload of paper B: which zoo models to serve (``ModelSpec``), building and
optionally Tucker-decomposing them, cutting them into jobs, and running them one way through
the generic runtime (:mod:`headway.runtime.multi_model`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from headway.errors import InputError, first_line
from headway.measure import torch_threads
from headway.models.checkpoint import load_weights
from headway.models.registry import (
    check_model_name,
    checkpoint_overrides,
    create_model,
    is_external,
    list_models,
)
from headway.runtime.engines import compile_module
from headway.runtime.jobs import ModelInstance, split_jobs
from headway.runtime.multi_model import (
    RunResult,
    run_batched,
    run_multiprocess,
    run_multithread,
    run_sequential,
)
from headway.transforms.tucker import decompose_model


@dataclass(frozen=True)
class ModelSpec:
    """How a process builds its model: zoo name (or ``torchvision:``/``timm:`` name), classes,
    input, optional checkpoint, optional Tucker rank rule, optional inference engine that runs
    its jobs (:mod:`headway.runtime.engines`)."""

    model: str
    num_classes: int = 10
    small_input: bool = True
    input_size: int = 32
    decomposed: str | None = None
    seed: int = 0
    engine: str | None = None
    checkpoint: str | None = None  # weights loaded (strictly) before decomposing

    @classmethod
    def sized(
        cls,
        model: str,
        input_size: int,
        decomposed: str | None = None,
        engine: str | None = None,
        checkpoint: str | None = None,
    ) -> ModelSpec:
        """``model`` for ``input_size`` images: the small-input 10-class variant up to 64 px,
        the 1000-class one above (``headway multirun``'s rule)."""
        small = input_size <= 64
        return cls(
            model, 10 if small else 1000, small, input_size, decomposed, 0, engine, checkpoint
        )


DEFAULT_POLICY = "jobs:8"
# the engines' MT runner: every engine call costs ~0.6 ms of core time beyond its compute
# here, so whole models serve the most requests (docs/benchmarks.md, "Multi-DNN on the
# engines")
ENGINE_POLICY = "jobs:1"


def build_model(spec: ModelSpec) -> tuple[nn.Module, torch.Tensor]:
    """Deterministically build (and optionally decompose) ``spec``'s model; with its request."""
    with torch.random.fork_rng():  # the weights depend on the seed alone; global state kept
        torch.manual_seed(spec.seed)
        small = spec.small_input and not is_external(spec.model)  # external: as the library builds
        extra = checkpoint_overrides(spec.model, spec.num_classes, small, spec.checkpoint)
        model = create_model(
            spec.model, num_classes=spec.num_classes, small_input=small, **extra
        ).eval()
    if spec.checkpoint is not None:
        load_weights(model, spec.checkpoint)
    example = torch.randn(
        1, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(spec.seed)
    )
    try:
        with torch.inference_mode():
            model(example)
    except RuntimeError as error:
        first = first_line(error)
        raise InputError(
            f"{spec.model} cannot run on a {spec.input_size}×{spec.input_size} input: {first}"
        ) from None
    if spec.decomposed:
        model, _ = decompose_model(model, example, spec.decomposed)
    return model.eval(), example


def build_instance(
    spec: ModelSpec, name: str, policy: str = DEFAULT_POLICY, open_engine: bool = True
) -> ModelInstance:
    """``spec``'s model cut into jobs, run by ``spec.engine`` unless ``open_engine`` is False
    (the chained runner opens them itself)."""
    model, example = build_model(spec)
    jobs = split_jobs(model, policy, example)
    if spec.engine and open_engine:
        jobs = _engine_jobs(spec.engine, jobs, example)
    return ModelInstance(name, jobs, example)


def _engine_jobs(engine: str, jobs: list[nn.Module], example: torch.Tensor) -> list[nn.Module]:
    """Each job exported and opened by ``engine`` for the input it receives (other batch sizes,
    as coalescing makes, are exported on first use)."""
    compiled, x = [], example
    for job in jobs:
        compiled.append(compile_module(engine, job, x))
        with torch.no_grad():
            x = job(x)
    return compiled


def run_mode(
    mode: str,
    specs: dict[str, ModelSpec],
    requests: int,
    workers: int = 2,
    threads: int = 1,
    policy: str | None = None,
    device: torch.device | str = "cpu",
    rate: float | None = None,
    coalesce: int = 1,
) -> RunResult:
    """Run the instances in ``specs`` (name → spec) one way: ``mt``, ``mp``, ``seq`` or
    ``batched`` (``coalesce`` applies to ``mt``). In-process modes build each distinct spec
    once and let its copies share the weights (inference only reads them); ``mp`` builds one
    model per process. ``mt`` with an engine chains the engine's asynchronous jobs
    (:func:`headway.runtime.chained.run_chained`, ``workers`` engine streams of ``threads``
    threads each; ONNX Runtime with coalescing keeps the threaded runner); ``policy``
    defaults to ``jobs:8``, or whole models on an engine."""
    if mode not in ("mt", "mp", "seq", "batched"):
        raise InputError(f"unknown mode {mode!r}: use mt, mp, seq or batched")
    engines = {spec.engine for spec in specs.values()}
    if len(engines) > 1:
        raise InputError("every instance runs on one engine (or none) in a run")
    engine = engines.pop() if engines else None
    if policy is None:
        policy = ENGINE_POLICY if engine else DEFAULT_POLICY
    if mode == "mp":
        builders = {
            name: partial(build_instance, spec, name, "layers") for name, spec in specs.items()
        }
        return run_multiprocess(builders, requests, threads, device=device)
    # the chained runner coalesces on OpenVINO; ONNX Runtime coalesces in the threaded runner
    chained = (
        mode == "mt" and engine is not None and (coalesce == 1 or engine.startswith("openvino"))
    )
    device = torch.device(device)
    built: dict[ModelSpec, ModelInstance] = {}
    instances = []
    for name, spec in specs.items():
        if spec not in built:
            built[spec] = build_instance(spec, spec.model, policy, open_engine=not chained)
        shared = built[spec]
        instances.append(
            ModelInstance(name, [job.to(device) for job in shared.jobs], shared.example.to(device))
        )
    if chained:
        from headway.runtime.chained import run_chained

        return run_chained(
            instances, requests, engine, workers, threads, rate=rate, coalesce=coalesce
        )
    # seq and batched get the cores of MT's workers; every mode restores the caller's count
    with torch_threads(threads if mode == "mt" else threads * workers):
        if mode == "mt":
            return run_multithread(instances, requests, workers, device, rate, threads, coalesce)
        return (run_sequential if mode == "seq" else run_batched)(instances, requests)


def run_peer(
    specs: dict[str, ModelSpec], requests: int, precision: str = "f32", hint: str = "THROUGHPUT"
) -> RunResult:
    """The same instances served by plain OpenVINO as its users run it
    (:func:`headway.runtime.peers.run_openvino_peer`): each distinct model converted by
    ``ov.convert_model`` once, one asynchronous request per instance. ``spec.engine`` is
    ignored (the precision says what OpenVINO runs)."""
    from headway.runtime.peers import run_openvino_peer

    built: dict[ModelSpec, tuple[nn.Module, torch.Tensor]] = {}
    for spec in specs.values():
        if spec not in built:
            built[spec] = build_model(spec)
    builders = {spec: (lambda m=model: m) for spec, (model, _) in built.items()}
    models = {name: (builders[spec], built[spec][1]) for name, spec in specs.items()}
    return run_openvino_peer(models, requests, precision, hint)


def parse_models(text: str) -> list[tuple[str, int]]:
    """``vgg16:3,resnet152:1`` → [("vgg16", 3), ("resnet152", 1)]; external models keep their
    source: ``torchvision:resnet50:2`` → [("torchvision:resnet50", 2)]."""
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        head, sep, tail = item.rpartition(":")
        if sep and (head in list_models() or is_external(head)):
            name, count = head, tail  # vgg16:3, torchvision:resnet50:2
        else:
            name, count = item, ""  # vgg16, torchvision:resnet50
        check_model_name(name)
        try:
            copies = int(count or 1)
        except ValueError:
            raise InputError(f"{item!r}: the count must be an integer") from None
        if copies < 1:
            raise InputError(f"{item!r}: the count must be at least 1")
        pairs.append((name, copies))
    if not pairs:
        raise InputError("no models given")
    return pairs


def instance_names(pairs: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(instance name, model) for every copy: vgg16#0, vgg16#1, ..."""
    return [(f"{name}#{i}", name) for name, copies in pairs for i in range(copies)]


def instances_table(result: RunResult, names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a run: each instance's mean and p95 latency and requests served
    (``failed`` where it served none)."""
    summary = result.summary()
    rows = []
    for name in names:
        row = summary.get(name)
        if row is None:
            rows.append([name, "failed", "", "0"])
        else:
            rows.append(
                [name, f"{row['mean_ms']:.2f}", f"{row['p95_ms']:.2f}", str(row["requests"])]
            )
    return ["instance", "mean ms", "p95 ms", "requests"], rows
