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

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.deploy import output_tensors, probe_inputs
from headway.runtime.engines import INSTALL_HINT, compile_module, engine_available
from headway.transforms.fold import cast_matmul_weights, fold_batchnorm
from headway.transforms.packing import pack_linear_weights
from headway.tuning import (
    DEFAULT_BUDGET_S,
    CandidateResult,
    TuningPlan,
    check_tuning_options,
    choose_fastest,
    first_line,
    load_plan,
    plan_key,
    save_plan,
    weights_digest,
)

# largest |Δ| relative to the largest |output| of the module itself
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


@dataclass(frozen=True)
class _Candidate:
    rewrite: str  # plain, fold, fold+cl, fold+pack
    backend: str  # eager, inductor, onnxruntime, openvino
    precision: str = "fp32"

    @property
    def name(self) -> str:
        bf16 = "+bf16" if self.precision == "bf16" else ""
        return f"{self.rewrite}{bf16}@{self.backend}"


def _candidates(precision: str) -> list[_Candidate]:
    fp32 = [
        _Candidate("plain", "eager"),
        _Candidate("fold", "eager"),
        _Candidate("fold+cl", "eager"),
        _Candidate("fold+pack", "eager"),
        _Candidate("fold", "openvino"),
        _Candidate("fold", "onnxruntime"),
        _Candidate("fold", "inductor"),
        _Candidate("fold+cl", "inductor"),
    ]
    if precision == "fp32":
        return fp32
    bf16 = [
        _Candidate("fold", "eager", "bf16"),
        _Candidate("fold+cl", "eager", "bf16"),
        _Candidate("fold", "openvino", "bf16"),
        _Candidate("fold+cl", "inductor", "bf16"),
    ]
    return fp32 + bf16


class Accelerated(nn.Module):
    """The chosen way of running the module: called like it. ``report`` says how it was
    chosen (``report.table()`` → header, rows)."""

    def __init__(self, run: Callable[..., Any], held: nn.Module | None, report: TuningPlan):
        super().__init__()
        self._run = run
        self.held = held  # the rewritten module the callable runs (kept alive)
        self.report = report

    def forward(self, *args: torch.Tensor) -> Any:
        return self._run(*args)


def _build(
    candidate: _Candidate, module: nn.Module, example: tuple[torch.Tensor, ...]
) -> tuple[Callable[..., Any], nn.Module]:
    """The callable of ``candidate`` (compiled or exported now, on ``example``)."""
    rewritten = copy.deepcopy(module).eval()
    if candidate.rewrite != "plain":
        rewritten = fold_batchnorm(rewritten)[0]
    channels_last = candidate.rewrite == "fold+cl"
    if channels_last:
        rewritten = rewritten.to(memory_format=torch.channels_last)
    if candidate.rewrite == "fold+pack":
        rewritten = pack_linear_weights(rewritten)[0]
    autocast = candidate.precision == "bf16" and candidate.backend in ("eager", "inductor")
    if autocast:
        rewritten = cast_matmul_weights(rewritten, torch.bfloat16)[0]
    if candidate.backend in ("onnxruntime", "openvino"):
        engine = candidate.backend + ("-bf16" if candidate.precision == "bf16" else "")
        if not engine_available(engine):
            raise InputError(f"not installed ({INSTALL_HINT})")
        return compile_module(engine, rewritten, example), rewritten
    target: Callable[..., Any] = rewritten
    if candidate.backend == "inductor":
        target = torch.compile(rewritten, dynamic=False, options={"freezing": True})

    def run(*args: torch.Tensor) -> Any:
        if channels_last:
            args = tuple(
                a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args
            )
        with (
            torch.autocast(args[0].device.type, dtype=torch.bfloat16)
            if autocast
            else contextlib.nullcontext()
        ):
            return target(*args)

    return run, rewritten


@contextlib.contextmanager
def _inference() -> Iterator[None]:
    with torch.inference_mode():
        yield


def accelerate(
    module: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    tolerance: float | None = None,
    precision: str = "fp32",
    budget_s: float = DEFAULT_BUDGET_S,
    probes: int = 2,
    use_cache: bool = True,
) -> Accelerated:
    """The fastest exact way to run ``module`` on inputs like ``example_inputs``.

    Args:
        module: any ``nn.Module`` in eval mode semantics (it is copied, never changed).
        example_inputs: one tensor or a sequence (shapes and dtypes of the real inputs).
        tolerance: largest output difference allowed, relative to the largest output value
            (default 1e-4 fp32, 5e-2 bf16).
        precision: ``fp32``, or ``bf16`` to admit bf16 candidates too.
        budget_s: seconds for building, checking and timing (a compile already started ends).
        probes: fresh inputs each candidate is checked on besides ``example_inputs``.
        use_cache: reuse the plan of an earlier call on the same weights, shapes and machine.
    """
    check_tuning_options(precision, tolerance, budget_s)
    if probes < 0:
        raise InputError(f"probes must be ≥ 0, got {probes}")
    example = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    if not example or not all(isinstance(a, torch.Tensor) for a in example):
        raise InputError("example_inputs must be a tensor or a sequence of tensors")
    tolerance = tolerance if tolerance is not None else TOLERANCE[precision]
    module = module.eval()
    inputs = [example, *(probe_inputs(example, seed) for seed in range(probes))]
    with _inference():
        references = [[o.float() for o in output_tensors(module(*args))] for args in inputs]
    scale = max(float(o.abs().max()) for ref in references for o in ref) or 1.0
    candidates = {c.name: c for c in _candidates(precision)}
    key = plan_key(
        {
            "module": weights_digest(module),
            "inputs": [[list(a.shape), str(a.dtype)] for a in example],
            "precision": precision,
            "tolerance": tolerance,
        }
    )
    if use_cache:
        plan = load_plan(key, candidates.__contains__)
        if plan is not None:
            run, held = _build(candidates[plan.chosen], module, example)
            return Accelerated(run, held, plan)

    began = time.perf_counter()
    results: dict[str, CandidateResult] = {}
    built: dict[str, tuple[Callable[..., Any], nn.Module]] = {}
    for name, candidate in candidates.items():
        if time.perf_counter() - began > budget_s:
            results[name] = CandidateResult(name, "skipped", "tuning budget spent")
            continue
        started = time.perf_counter()
        try:
            run, held = _build(candidate, module, example)
            diff = 0.0
            with _inference():
                for args, expected in zip(inputs, references, strict=True):
                    got = output_tensors(run(*args))
                    for g, e in zip(got, expected, strict=True):
                        diff = max(diff, float((g.float() - e).abs().max()))
        except Exception as error:  # compilers and exporters raise many kinds
            status = "skipped" if "not installed" in first_line(error) else "failed"
            results[name] = CandidateResult(name, status, first_line(error))
            continue
        relative = diff / scale
        result = CandidateResult(
            name, "passed", max_abs_diff=relative, build_s=time.perf_counter() - started
        )
        if relative > tolerance:
            result.status, result.reason = "rejected", f"{relative:.1e} > {tolerance:.0e}"
        else:
            built[name] = (run, held)
        results[name] = result

    def timed(run: Callable[..., Any]) -> Callable[[], list[float]]:
        def calls() -> list[float]:
            times = []
            with _inference():
                for _ in range(3):
                    began_call = time.perf_counter()
                    run(*example)
                    times.append((time.perf_counter() - began_call) * 1e3)
            return times

        return calls

    if not built:
        reasons = "; ".join(f"{r.name}: {r.status} ({r.reason})" for r in results.values())
        raise InputError(f"no way of running the module meets the tolerance: {reasons}")
    chosen = choose_fastest(
        results,
        {name: timed(run) for name, (run, _) in built.items()},
        max(budget_s - (time.perf_counter() - began), 0.0),
    )
    plan = TuningPlan(
        chosen=chosen,
        precision=precision,
        tolerance=tolerance,
        budget_s=budget_s,
        tune_s=time.perf_counter() - began,
        key=key,
        candidates=list(results.values()),
        reference="plain@eager",
        diff_label="max rel |Δ|",
    )
    save_plan(plan)
    run, held = built[chosen]
    return Accelerated(run, held, plan)
