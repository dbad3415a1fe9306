"""``headway.accelerate``: any ``nn.Module`` made faster by headway's exact rewrites on the
fastest backend that still gives its answers — checked and timed the way ``--executor auto``
chooses for the tracker (:mod:`headway.tuning`).

Candidates are rewrites × backends: the module as it is, batch norms folded into their
convolutions (:func:`~headway.transforms.fold.fold_batchnorm`), folded with channels-last
memory, folded with oneDNN-packed linears (:func:`~headway.transforms.packing.pack_linear_weights`,
eager fp32 only); run eagerly, by torch.compile with freezing, by ONNX Runtime or OpenVINO
(when installed). ``precision="bf16"`` adds bf16 weights under autocast and OpenVINO's bf16
hint. Each candidate's outputs on the example inputs and on fresh probes are compared with the
module's own: the largest difference relative to the largest output value must be within
``tolerance``. The fastest that passes is returned, with the report of every candidate.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from headway.errors import InputError, first_line
from headway.runtime.deploy import (
    max_difference,
    output_scale,
    output_tensors,
    probe_inputs,
    reference_outputs,
)
from headway.tuning import (
    DEFAULT_BUDGET_S,
    Trial,
    TuningPlan,
    call_ms,
    check_tuning_options,
    plan_key,
    tune,
    weights_digest,
)
from headway.ways import Way, module_runner, why_not

if TYPE_CHECKING:
    from headway.runtime.int8 import Int8Module

# largest |Δ| relative to the largest |output| of the module itself
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
MAX_SHAPES = 4  # input shapes a result builds its way for (an engine's graph is ~45 MB each)
MAX_SIGNATURES = 64  # inputs remembered as the module's own to run
REFERENCE = Way()  # plain@eager: the module as it is
log = logging.getLogger(__name__)


def candidate_ways(precision: str) -> list[Way]:
    """The ways :func:`accelerate` tries, in order (rewrites of :data:`headway.ways.REWRITES`
    that apply to any module, on the backends that run one)."""
    fold, cl, pack = ("fold",), ("fold", "channels-last"), ("fold", "pack")
    fp32 = [REFERENCE, Way(fold), Way(cl), Way(pack), Way(fold, backend="openvino")]
    fp32 += [Way(fold, backend="onnxruntime"), Way(fold, backend="inductor")]
    fp32 += [Way(cl, backend="inductor")]
    if precision == "fp32":
        return fp32
    bf16 = [Way(fold, "bf16"), Way(cl, "bf16"), Way(fold, "bf16", "openvino")]
    return fp32 + bf16 + [Way(cl, "bf16", "inductor")]


class Accelerated(nn.Module):
    """The chosen way of running the module: called like it, and saved, copied and loaded
    like it. ``report`` says how it was chosen (``report.table()`` → header, rows).

    - ``state_dict()`` is the module's own (the same keys, once each), so the module's
      checkpoint loads into it; loading weights rebuilds the chosen way on them and checks
      it against the module again.
    - ``pickle``, ``torch.save`` and ``copy.deepcopy`` work: what is saved is the module and
      the plan, and the way is rebuilt when loaded (engines and compilers hold sessions and
      kernels that do not pickle). ``torch.load`` needs ``weights_only=False``, as for any
      saved module.
    - What the built way cannot follow is refused by name: moving or casting it (``.to``,
      ``.cuda``, ``.half``) and training mode. Accelerate the moved module instead.
    - ``parameters()`` is empty: the weights live in the built way, not in torch parameters.
    - Outputs keep the module's nesting (tuples, lists, dicts of tensors) on every backend.
    - New input shapes: the way builds for up to :data:`MAX_SHAPES` shapes (an engine exports
      a graph, inductor compiles), each checked against the module on its first call. Other
      dtypes or devices, shapes beyond that and a shape on which the way's answer differs run
      the module itself, with a warning.
    """

    def __init__(
        self,
        module: nn.Module,
        way: Way,
        example: tuple[torch.Tensor, ...],
        report: TuningPlan,
        built: tuple[Callable[..., Any], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        # kept out of torch's module tree: the state is the module's, the graph is the way's
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_way", way)
        object.__setattr__(self, "_specs", [(a.shape, a.dtype, a.device) for a in example])
        self.report = report
        self.training = False
        self._build(built)

    def _example(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return tuple(
            torch.randn(shape, generator=generator).to(dtype=dtype, device=device)
            if dtype.is_floating_point
            else torch.zeros(shape, dtype=dtype, device=device)
            for shape, dtype, device in self._specs
        )

    def _build(self, built: tuple[Callable[..., Any], nn.Module] | None = None) -> None:
        """The way on the module's current weights, checked against the module."""
        if built is None:
            example = self._example()
            built = module_runner(self._way, self._module, example)
            with torch.inference_mode():
                references = reference_outputs(self._module, [example])
                scale = max(float(o.abs().max()) for o in references[0]) or 1.0
                relative = max_difference(built[0], [example], references) / scale
            if relative > self.report.tolerance:
                raise InputError(
                    f"{self._way.name} on the new weights differs from the module by "
                    f"{relative:.1e} (tolerance {self.report.tolerance:.0e}); call "
                    "headway.accelerate on the module again"
                )
        object.__setattr__(self, "_run", built[0])
        object.__setattr__(self, "_held", built[1])
        # input signature → what runs it: the way (checked on its first call), or the module
        example_signature = _signature(self._example())
        object.__setattr__(self, "_runs", {example_signature: built[0]})
        object.__setattr__(self, "_runs_lock", threading.Lock())
        object.__setattr__(self, "_warned_full", False)

    def forward(self, *args: torch.Tensor) -> Any:
        signature = _signature(args)
        run = self._runs.get(signature)
        if run is None:
            return self._first_call(signature, args)
        return run(*args)

    def _first_call(self, signature: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
        """Inputs of a new shape: the way builds for them (an engine exports and opens a
        graph, inductor compiles) up to :data:`MAX_SHAPES` shapes, and its first answer is
        checked against the module's; other dtypes or devices, shapes beyond the bound, and
        answers that differ run the module itself, with a warning."""
        with self._runs_lock:
            if signature in self._runs:
                return self._runs[signature](*args)
            example = self._specs
            same_kind = len(args) == len(example) and all(
                isinstance(a, torch.Tensor) and (a.dtype, a.device) == (dtype, device)
                for a, (_, dtype, device) in zip(args, example, strict=True)
            )
            shapes = sum(1 for run in self._runs.values() if run is self._run)
            with torch.inference_mode():  # on copies: a module may write into its inputs
                expected = self._module(*(a.clone() if torch.is_tensor(a) else a for a in args))
            beyond = same_kind and shapes >= MAX_SHAPES
            if not same_kind:
                why = "inputs of another kind than the example's (dtype, device or count)"
            elif beyond:
                why = f"a shape beyond the {MAX_SHAPES} it builds for"
            else:
                log.info("%s: building for a new input shape %s", self._way.name, signature)
                with torch.inference_mode():
                    got = self._run(*args)
                references = [[o.float() for o in output_tensors(expected)]]
                relative = max_difference(lambda *_: got, [args], references) / output_scale(
                    references
                )
                if relative <= self.report.tolerance:
                    self._runs[signature] = self._run
                    return got
                why = f"a new shape on which it differs from the module by {relative:.1e}"
            if len(self._runs) < MAX_SIGNATURES:
                self._runs[signature] = self._module
            if not (beyond and self._warned_full):  # shapes beyond the bound: said once
                warnings.warn(
                    f"headway.accelerate ({self._way.name}) runs the module itself (eager, "
                    f"not accelerated) for {why}: {_describe(args)}",
                    stacklevel=4,
                )
                object.__setattr__(self, "_warned_full", self._warned_full or beyond)
            return expected

    # -- behaving like the module -------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        """The module as it was given (a copy: the caller's is never changed)."""
        return self._module

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        for key, value in self._module.state_dict(keep_vars=keep_vars).items():
            destination[prefix + key] = value

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        try:
            result = self._module.load_state_dict(own, strict=False)
        except RuntimeError as error:  # a shape that does not fit
            error_msgs.append(str(error))
            return
        missing_keys.extend(prefix + key for key in result.missing_keys)
        unexpected_keys.extend(prefix + key for key in result.unexpected_keys)
        self._build()  # the way on the new weights

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Accelerated:
        raise InputError(
            f"an accelerated module ({self._way.name}) cannot be moved or cast: its graph was "
            "built for the example's device and dtype; move or cast the module, then call "
            "headway.accelerate on it"
        )

    def train(self, mode: bool = True) -> Accelerated:
        if mode:
            raise InputError(
                f"an accelerated module ({self._way.name}) runs inference only; train the "
                "module itself, then call headway.accelerate on it"
            )
        return super().train(False)

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        return (_restore, (self._module, self._way, self._example(), self.report))


def _check_outputs(value: Any) -> None:
    """One line unless the module returns tensors: a tensor, or tuples, lists and dicts of
    them (what every backend can return in the module's own nesting)."""
    leaves = pytree.tree_leaves(value)
    others = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)})
    if others or not leaves:
        found = ", ".join(others) if others else "nothing"
        raise InputError(
            "the module must return tensors (a tensor, or tuples, lists and dicts of them) "
            f"to be accelerated; it returns {found}"
        )


def _signature(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        (tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else type(a)
        for a in args
    )


def _describe(args: Sequence[Any]) -> str:
    return ", ".join(
        f"{a.dtype} {list(a.shape)} on {a.device}" if isinstance(a, torch.Tensor) else repr(a)
        for a in args
    )


def _restore(
    module: nn.Module, way: Way, example: tuple[torch.Tensor, ...], report: TuningPlan
) -> Accelerated:
    """An :class:`Accelerated` loaded or copied: the way rebuilt on the module."""
    return Accelerated(module, way, example, report)


# priors of a first build, before one of its backend was measured in the same tuning
# (seconds, per module in the module's tree; measured here on torchvision/timm models)
BUILD_S_PER_MODULE = {"inductor": 0.15, "openvino": 0.02, "onnxruntime": 0.02}
TIMED_BLOCK_S = 0.1  # one timing pass is at least this long (at least 3 calls)


VALUE_READS = frozenset({"is_nonzero", "item", "_local_scalar_dense", "equal"})


class _ValueReads(TorchDispatchMode):
    """Records whether a module reads a tensor's value into Python (``bool(t)``,
    ``t.item()``, ``float(t)``, ``torch.equal``): an ``if`` on values, or a Python number
    computed from them. A traced graph (the engines') keeps what the trace read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: str | None = None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in VALUE_READS and self.read is None:
            self.read = name
        return func(*args, **(kwargs or {}))


class _ModuleTrial:
    """accelerate's side of :func:`headway.tuning.tune`: every way runs the module on the
    example and on ``probes`` fresh inputs like it; its largest |Δ| to the module's own
    outputs, relative to their largest value, must be within ``limit``. A timing pass is as
    many calls as fill :data:`TIMED_BLOCK_S` on the module itself (at least 3)."""

    def __init__(
        self, module: nn.Module, example: tuple[torch.Tensor, ...], probes: int, limit: float
    ) -> None:
        self.module, self.example, self.limit = module, example, limit
        self.ways = {way.name: way for way in candidate_ways("bf16")}
        self.inputs = [example, *(probe_inputs(example, seed) for seed in range(probes))]
        began = time.perf_counter()
        reads = _ValueReads()
        with torch.inference_mode():
            try:
                with reads:
                    first = module(*(a.clone() for a in example))
            except Exception as error:  # a shape, dtype or count the module does not take
                raise InputError(
                    f"the module cannot run on example_inputs ({_describe(example)}): "
                    f"{first_line(error)}"
                ) from None
            _check_outputs(first)
            self.reads_values = reads.read
            self.output_layout = str(pytree.tree_structure(first))
            self.references = [
                [o.float() for o in output_tensors(first)],
                *reference_outputs(module, self.inputs[1:]),
            ]
        self.call_s = (time.perf_counter() - began) / len(self.inputs)
        if probes:  # values of the other sign: a traced graph that fixed a branch differs there
            flipped = tuple(-a if a.is_floating_point() else a for a in example)
            try:
                with torch.inference_mode():
                    expected = reference_outputs(module, [flipped])[0]
            except Exception:  # inputs the module does not take: no such probe
                expected = []
            if expected and all(bool(torch.isfinite(o).all()) for o in expected):
                self.inputs.append(flipped)
                self.references.append(expected)
        self.calls = min(50, max(3, math.ceil(TIMED_BLOCK_S / max(self.call_s, 1e-6))))
        self.scale = max(float(o.abs().max()) for ref in self.references for o in ref) or 1.0
        self.size = sum(1 for _ in module.modules())

    def build(self, name: str) -> tuple[Callable[..., Any], nn.Module]:
        return module_runner(self.ways[name], self.module, self.example)

    def check(
        self, name: str, built: tuple[Callable[..., Any], nn.Module]
    ) -> tuple[dict[str, float], str | None]:
        with torch.inference_mode():
            relative = max_difference(built[0], self.inputs, self.references) / self.scale
        rejected = f"{relative:.1e} > {self.limit:.0e}" if relative > self.limit else None
        return {"max_abs_diff": relative}, rejected

    def time(self, built: tuple[Callable[..., Any], nn.Module]) -> list[float]:
        return call_ms(built[0], self.example, calls=self.calls)

    def skip(self, name: str) -> str | None:
        way = self.ways[name]
        if way.engine is not None and self.reads_values is not None:
            return (
                f"the module reads tensor values into Python ({self.reads_values}: an if on "
                "values, or a number from them); an exported graph keeps what the trace read"
            )
        return why_not(way, self.example[0].device)

    def cost(self, name: str, spent: Mapping[str, float]) -> float:
        """Seconds to build and check ``name`` (what the same backend took in this tuning,
        else a prior by the module's size) and to time it for the 2 rounds every timed
        candidate gets."""
        backend = self.ways[name].backend
        same = [s for n, s in spent.items() if n in self.ways and self.ways[n].backend == backend]
        checking = 2 * len(self.inputs) * self.call_s
        build = max(same) if same else BUILD_S_PER_MODULE.get(backend, 0.0) * self.size + checking
        return build + 2 * self.calls * self.call_s


def accelerate(
    module: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    tolerance: float | None = None,
    precision: str = "fp32",
    budget_s: float = DEFAULT_BUDGET_S,
    probes: int = 2,
    use_cache: bool = True,
    data: Any = None,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    max_drop: float | None = None,
    fine_tune: int | None = None,
    ways: Sequence[str] | None = None,
    approximations: Sequence[str] | None = None,
) -> Accelerated | Int8Module:
    """The fastest exact way to run ``module`` on inputs like ``example_inputs``; with
    ``max_drop``, the fastest way of the module or of an approximation of it (Tucker-2,
    sparse attention + token pruning, INT8 and their combinations) whose ``metric`` on
    ``data`` drops by at most ``max_drop`` (:mod:`headway.approximate`; ``report.frontier``
    has every candidate). An INT8 choice is an :class:`~headway.runtime.int8.Int8Module`
    (an OpenVINO graph: one CPU input, no weights to load into it).

    Args:
        module: any ``nn.Module`` (it is copied and run in eval mode; the caller's is never
            changed, not even its training flag).
        example_inputs: one tensor or a sequence (shapes and dtypes of the real inputs).
        tolerance: largest output difference allowed, relative to the largest output value
            (default 1e-4 fp32, 5e-2 bf16).
        precision: ``fp32``, or ``bf16`` to admit bf16 candidates too.
        budget_s: seconds for building, checking and timing. A candidate expected to overrun
            what is left (what its backend took already, else a prior by the module's size)
            is not started, and near-ties get more timings rather than a coin toss.
        probes: fresh inputs each candidate is checked on besides ``example_inputs`` (with any,
            also the example negated, where the module's answers to it are finite: a traced
            graph that fixed the branch of an ``if`` on values fails there).
        use_cache: reuse the plan of an earlier call on the same weights, shapes and machine.
        data: batches of ``(inputs, labels)`` or inputs alone, to score approximations on
            (with ``max_drop``).
        metric: ``metric(logits, labels) -> float``, higher is better; default top-1
            accuracy (a share in [0, 1]) with labels, else agreement with the module's top-1.
        max_drop: how much of ``metric`` an approximation may lose (e.g. 0.01: one point of
            top-1); None: exact ways only; 0: the exact path.
        fine_tune: steps of fine-tuning each approximation on ``data`` (needs labels; a
            quarter of the batches are then held out to score on).
        approximations: only these approximate candidates, by name (``"tucker2 macs:0.19"``)
            or kind (``"tucker2"``, ``"vit-sparse"``, ``"int8"``, ``"tucker2+int8"``,
            ``"vit-sparse+int8"``), as the report names them; a combination brings its base.
        ways: only these candidate ways (names as in the report, e.g. ``fold@onnxruntime``);
            the module as it is (``plain@eager``) is always the reference.
    """
    if max_drop is not None:
        from headway.approximate import accelerate_within, check_max_drop

        check_max_drop(max_drop)
        if data is None:
            raise InputError("max_drop needs data= to score the approximations on")
        single = isinstance(example_inputs, torch.Tensor)
        example = (example_inputs,) if single else tuple(example_inputs)  # type: ignore[arg-type]
        if not example or not all(isinstance(a, torch.Tensor) for a in example):
            raise InputError("example_inputs must be a tensor or a sequence of tensors")
        if not isinstance(module, nn.Module):
            raise InputError(f"module must be a torch.nn.Module, got {type(module).__name__}")

        def exact(
            target: nn.Module, inputs: Any, budget: float, only: Sequence[str] | None = None
        ) -> Accelerated:
            return accelerate(target, inputs, tolerance=tolerance, precision=precision,
                              budget_s=budget, probes=probes, use_cache=use_cache,
                              ways=only if only is not None else ways)  # fmt: skip

        cache_key = {
            "precision": precision,
            "tolerance": tolerance,
            "probes": probes,
            "ways": None if ways is None else sorted(ways),
        }
        return accelerate_within(
            module,
            tuple(a.detach().clone() for a in example),
            single,
            data=data,
            max_drop=max_drop,
            metric=metric,
            fine_tune=fine_tune,
            budget_s=budget_s,
            exact=exact,
            approximations=approximations,
            cache_key=cache_key if use_cache else None,
        )
    if data is not None or metric is not None or fine_tune is not None or approximations:
        raise InputError(
            "data=, metric=, fine_tune= and approximations= take effect with max_drop= only"
        )
    check_tuning_options(precision, tolerance, budget_s)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise InputError(f"probes must be a whole number ≥ 0, got {probes!r}")
    single = isinstance(example_inputs, torch.Tensor)
    example = (example_inputs,) if single else tuple(example_inputs)  # type: ignore[arg-type]
    if not example or not all(isinstance(a, torch.Tensor) for a in example):
        raise InputError("example_inputs must be a tensor or a sequence of tensors")
    example = tuple(a.detach().clone() for a in example)  # the caller's stay as they are
    limit = tolerance if tolerance is not None else TOLERANCE[precision]
    if not isinstance(module, nn.Module):
        raise InputError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    module = copy.deepcopy(module).eval()  # the caller's module keeps its mode and weights
    trial = _ModuleTrial(module, example, probes, limit)
    key = {"module": weights_digest(module), "precision": precision, "tolerance": limit}
    key["inputs"] = [[list(a.shape), str(a.dtype)] for a in example]
    key["class"] = f"{type(module).__module__}.{type(module).__qualname__}"
    key["outputs"] = trial.output_layout
    names = [way.name for way in candidate_ways(precision)]
    if ways is not None:
        unknown = sorted(set(ways) - set(names))
        if unknown:
            raise InputError(f"unknown ways {', '.join(unknown)}: choose from {', '.join(names)}")
        names = [name for name in names if name in ways or name == REFERENCE.name]
        key["ways"] = names
    plan, (run, held) = tune(
        names,
        Trial(trial.build, trial.check, trial.time, trial.skip, cost=trial.cost),
        plan_key(key),
        precision=precision,
        tolerance=limit,
        budget_s=budget_s,
        reference=REFERENCE.name,
        diff_label="max rel |Δ|",
        use_cache=use_cache,
        recheck=True,  # the key sees weights and structure, not the code of forward
    )
    return Accelerated(module, trial.ways[plan.chosen], example, plan, (run, held))


# -- the command's folder -------------------------------------------------------------------------


def accelerate_to_folder(
    module: nn.Module,
    example: torch.Tensor,
    data: Iterable[Any],
    out: Path,
    *,
    max_drop: float,
    fine_tune: int | None = None,
    budget_s: float = 120.0,
    formats: Sequence[str] = ("onnx",),
    name: str = "model",
    command: str = "",
    announce: Callable[[str], None] | None = None,
) -> Any:
    """``headway accelerate``: the fastest model within ``max_drop`` on ``data`` (see
    :func:`headway.approximate.accelerate_within`), exported to the new folder ``out`` in
    ``formats`` and verified against itself (``verification.json``), with the report
    (``frontier.json``, ``frontier.md``) and the plot (``frontier.png``). ``out`` is complete
    or absent."""
    import json

    from headway.approximate import FrontierReport
    from headway.io import atomic_write_text
    from headway.runtime.deploy import ExportPart, check_formats, check_target, export_parts
    from headway.runtime.int8 import Int8Module

    check_target(out)
    formats = check_formats(list(formats))
    fast = accelerate(
        module, example, data=data, max_drop=max_drop, fine_tune=fine_tune, budget_s=budget_s
    )
    frontier: FrontierReport = fast.report.frontier
    if announce is not None:
        announce(f"chose {frontier.chosen}; exporting it")

    def reports(staging: Path) -> None:
        atomic_write_text(staging / "frontier.json", json.dumps(frontier.to_json(), indent=2))
        header, rows = frontier.table()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        atomic_write_text(staging / "frontier.md", "\n".join(lines) + "\n")
        frontier.plot(staging / "frontier.png")

    description = {"chosen": frontier.chosen, "max_drop": max_drop, "metric": frontier.metric}
    graph = fast if isinstance(fast, Int8Module) else fast.module.eval()
    if isinstance(fast, Int8Module) and formats != ["openvino"]:
        if announce is not None:
            announce(f"an INT8 model is written as OpenVINO IR (its only form): {name}.xml")
        formats = ["openvino"]
    export_parts(
        [ExportPart(name, graph, (example,))],
        out,
        formats,
        command=command,
        description=description,
        extra=reports,
    )
    return frontier
