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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.deploy import max_difference, probe_inputs, reference_outputs
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

# largest |Δ| relative to the largest |output| of the module itself
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
REFERENCE = Way()  # plain@eager: the module as it is


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

    def forward(self, *args: torch.Tensor) -> Any:
        return self._run(*args)

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


def _restore(
    module: nn.Module, way: Way, example: tuple[torch.Tensor, ...], report: TuningPlan
) -> Accelerated:
    """An :class:`Accelerated` loaded or copied: the way rebuilt on the module."""
    return Accelerated(module, way, example, report)


class _ModuleTrial:
    """accelerate's side of :func:`headway.tuning.tune`: every way runs the module on the
    example and on ``probes`` fresh inputs like it; its largest |Δ| to the module's own
    outputs, relative to their largest value, must be within ``limit``."""

    def __init__(
        self, module: nn.Module, example: tuple[torch.Tensor, ...], probes: int, limit: float
    ) -> None:
        self.module, self.example, self.limit = module, example, limit
        self.ways = {way.name: way for way in candidate_ways("bf16")}
        self.inputs = [example, *(probe_inputs(example, seed) for seed in range(probes))]
        with torch.inference_mode():
            self.references = reference_outputs(module, self.inputs)
        self.scale = max(float(o.abs().max()) for ref in self.references for o in ref) or 1.0

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
        return call_ms(built[0], self.example, calls=3)

    def skip(self, name: str) -> str | None:
        return why_not(self.ways[name], self.example[0].device)


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
        module: any ``nn.Module`` (it is copied and run in eval mode; the caller's is never
            changed, not even its training flag).
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
    single = isinstance(example_inputs, torch.Tensor)
    example = (example_inputs,) if single else tuple(example_inputs)  # type: ignore[arg-type]
    if not example or not all(isinstance(a, torch.Tensor) for a in example):
        raise InputError("example_inputs must be a tensor or a sequence of tensors")
    limit = tolerance if tolerance is not None else TOLERANCE[precision]
    if not isinstance(module, nn.Module):
        raise InputError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    module = copy.deepcopy(module).eval()  # the caller's module keeps its mode and weights
    key = {"module": weights_digest(module), "precision": precision, "tolerance": limit}
    key["inputs"] = [[list(a.shape), str(a.dtype)] for a in example]
    trial = _ModuleTrial(module, example, probes, limit)
    plan, (run, held) = tune(
        [way.name for way in candidate_ways(precision)],
        Trial(trial.build, trial.check, trial.time, trial.skip),
        plan_key(key),
        precision=precision,
        tolerance=limit,
        budget_s=budget_s,
        reference=REFERENCE.name,
        diff_label="max rel |Δ|",
        use_cache=use_cache,
    )
    return Accelerated(module, trial.ways[plan.chosen], example, plan, (run, held))
