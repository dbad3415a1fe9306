"""Choosing the fastest way to run a model that still gives its answers: candidates are checked
against a reference, the ones within tolerance are timed interleaved within a budget, and the
plan is cached under a key of everything the choice depends on. ``--executor auto`` (the
tracker) and :func:`headway.accelerate` (any module) both decide this way.

A cached plan carries a hash of its own content; a plan that does not match it (edited,
truncated, another format) is never trusted: it is reported in one line and tuned again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from headway.errors import InputError, first_line
from headway.io import atomic_write_text, cache_root

log = logging.getLogger(__name__)

PLAN_FORMAT = 2  # bump when what a plan holds changes, so older plans are tuned again
PRECISIONS = ("fp32", "bf16")
DEFAULT_BUDGET_S = 60.0


@dataclass
class CandidateResult:
    """One candidate's fate: ``chosen``, ``passed`` (checked, timed, slower), ``rejected`` (its
    answers differ beyond tolerance), ``failed`` (did not build or run), ``skipped`` (not
    usable here, or the budget ran out before it), with the reason and its numbers."""

    name: str
    status: str
    reason: str = ""
    max_abs_diff: float | None = None
    max_box_diff_px: float | None = None
    median_ms: float | None = None
    build_s: float | None = None


@dataclass
class TuningPlan:
    """The decision and how it was reached (what run.json and the command print)."""

    chosen: str
    precision: str
    tolerance: float
    budget_s: float
    tune_s: float
    key: str
    candidates: list[CandidateResult] = field(default_factory=list)
    cached: bool = False
    reference: str = "eager"
    diff_label: str = "max |Δ|"
    frontier: Any = None  # accelerate with max_drop: the approximate candidates' report

    def table(self, skipped: bool = True) -> tuple[list[str], list[list[str]]]:
        """Header and rows: one per candidate, fastest timed first (``skipped``: with those not
        tried)."""
        header = ["candidate", "status", "median ms", f"vs {self.reference}", self.diff_label]
        boxes = any(c.max_box_diff_px is not None for c in self.candidates)
        header += ["max Δbox px"] if boxes else []
        timed = [c for c in self.candidates if c.median_ms is not None]
        reference = next((c.median_ms for c in timed if c.name == self.reference), None)
        reference = reference or (max(c.median_ms for c in timed) if timed else None)
        order = sorted(self.candidates, key=lambda c: (c.median_ms is None, c.median_ms or 0.0))
        rows = []
        for c in order:
            if c.status == "skipped" and not skipped:
                continue
            ratio = f"{reference / c.median_ms:.2f}×" if c.median_ms and reference else ""
            rows.append(
                [
                    c.name,
                    c.status + (f": {c.reason}" if c.reason else ""),
                    f"{c.median_ms:.2f}" if c.median_ms is not None else "",
                    ratio,
                    f"{c.max_abs_diff:.2e}" if c.max_abs_diff is not None else "",
                ]
                + ([f"{c.max_box_diff_px:.3f}" if c.max_box_diff_px is not None else ""] * boxes)
            )
        return header, rows

    def skipped(self) -> list[str]:
        """``reason: name, name`` for the candidates not tried, one line per reason."""
        reasons: dict[str, list[str]] = {}
        for c in self.candidates:
            if c.status == "skipped":
                reasons.setdefault(c.reason, []).append(c.name)
        return [f"{reason}: {', '.join(names)}" for reason, names in reasons.items()]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuningPlan:
        fields = dict(data)
        fields["candidates"] = [CandidateResult(**c) for c in fields.get("candidates", [])]
        return cls(**fields)


def check_tuning_options(precision: str, tolerance: float | None, budget_s: float) -> None:
    """One line for a precision other than fp32/bf16, a tolerance ≤ 0 or not finite, or a
    budget ≤ 0 or not finite."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise InputError(f"tolerance must be a finite number > 0, got {tolerance}")
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise InputError(f"tuning budget must be a finite number of seconds > 0, got {budget_s}")


def cpu_model_and_flags() -> tuple[str, str]:
    """The CPU's model name and its ``flags`` line from /proc/cpuinfo (the platform's
    processor or machine name and "" where there is no such file)."""
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.machine():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return cpu, flags


def machine_signature() -> dict[str, str]:
    """What the speed of a choice depends on besides the model: CPU model and instruction
    flags, thread count, torch and engine versions."""
    cpu, flags_line = cpu_model_and_flags()
    flags = hashlib.sha256(flags_line.encode()).hexdigest()[:16] if flags_line else ""
    versions = {}
    for package in ("onnxruntime", "openvino"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        **versions,
    }


def weights_digest(module: torch.nn.Module) -> str:
    """Hash of a module's structure and every parameter and buffer value."""
    digest = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(tensor.shape)}".encode())
        if value.numel():
            digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def plan_key(parts: Mapping[str, Any]) -> str:
    """The cache key of a plan: a hash of what the choice depends on (``parts``: the model's
    digest, input shapes, precision, tolerance, device …) and this machine's signature."""
    text = json.dumps({**parts, **machine_signature(), "format": PLAN_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _plan_path(key: str) -> Path:
    return cache_root() / "plans" / f"{key}.json"


def _content_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def load_plan(key: str, known: Callable[[str], bool]) -> TuningPlan | None:
    """The cached plan for ``key``, or None when there is none or it cannot be trusted (then
    one warning line says so and the caller tunes again). ``known`` says whether a chosen name
    can still be built."""
    path = _plan_path(key)
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        record, digest = stored["plan"], stored["sha256"]
        if digest != _content_hash(record) or record.get("key") != key:
            raise ValueError("its content does not match its hash")
        plan = TuningPlan.from_json(record)
        if not known(plan.chosen):
            raise ValueError(f"it chose {plan.chosen!r}, which is not available")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        log.warning("tuning plan %s cannot be trusted (%s): tuning again", path, first_line(error))
        return None
    plan.cached = True
    return plan


def save_plan(plan: TuningPlan) -> Path:
    """Cache ``plan`` (written atomically, with the hash of its content)."""
    record = {**plan.to_json(), "cached": False}
    path = _plan_path(plan.key)
    try:
        atomic_write_text(
            path, json.dumps({"plan": record, "sha256": _content_hash(record)}, indent=2)
        )
    except OSError as error:  # a cache that cannot be written costs a rerun its tuning only
        log.warning("tuning plan not cached (%s: %s)", path, error.strerror or error)
    except InputError as error:  # the same, as io's one line (read-only, full, a file there)
        log.warning("tuning plan not cached (%s)", error)
    return path


SETTLE_S = 0.05  # pause between two variants' passes (benchmarks/engine_wake.py)
SETTLE_ENV = "HEADWAY_SETTLE_MS"  # another pause, in ms (0: none; the tests check no timings)


def settle_s() -> float:
    """The pause between two variants' passes: :data:`SETTLE_S`, or ``$HEADWAY_SETTLE_MS``."""
    value = os.environ.get(SETTLE_ENV)
    if value is None or not value.strip():
        return SETTLE_S
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1.0
    if not math.isfinite(milliseconds) or milliseconds < 0:
        raise InputError(f"{SETTLE_ENV} must be a number of milliseconds ≥ 0, got {value!r}")
    return milliseconds / 1000


def interleaved_samples(
    runs: Mapping[str, Callable[[], list[float]]],
    budget_s: float,
    min_rounds: int = 2,
    max_rounds: int | None = 6,
) -> dict[str, list[float]]:
    """The one interleaved timer: each round calls every ``runs[name]()`` once (it returns
    the times of the frames, calls or blocks it timed), in alternating order so a drift of the
    machine's speed hits all alike; rounds go on while the budget lasts (at least
    ``min_rounds``, at most ``max_rounds``). Returns every name's times.

    Each variant is timed after a pause (:func:`settle_s`) once another one ran (not counted
    in the budget): a runtime's threads spin-wait for tens of milliseconds after its last
    call, and whatever ran right after ONNX Runtime was timed on contended cores (OpenVINO
    INT8 after it: 13-14 ms a call for three calls instead of 7.4-7.6;
    ``benchmarks/engine_wake.py``). Deployed alone a model never runs in another engine's
    wake, so the comparison must not either."""
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    pause = settle_s()
    began = time.perf_counter()
    paused = 0.0
    last: str | None = None
    round_index = 0
    while max_rounds is None or round_index < max_rounds:
        if round_index >= min_rounds and time.perf_counter() - began - paused > budget_s:
            break
        for name in names if round_index % 2 == 0 else names[::-1]:
            if pause and last is not None and name != last:
                time.sleep(pause)
                paused += pause
            samples[name] += runs[name]()
            last = name
        round_index += 1
    return samples


def time_interleaved(
    runs: Mapping[str, Callable[[], list[float]]],
    budget_s: float,
    min_rounds: int = 2,
    max_rounds: int | None = 6,
) -> dict[str, float]:
    """The median per name of :func:`interleaved_samples`."""
    samples = interleaved_samples(runs, budget_s, min_rounds, max_rounds)
    return {name: float(np.median(values)) for name, values in samples.items()}


def interleaved_medians(
    variants: Mapping[str, Callable[[], object]],
    min_run_time: float = 2.0,
    block_seconds: float = 0.05,
    min_rounds: int = 7,
) -> dict[str, float]:
    """Median seconds per call of each variant: :func:`time_interleaved` over blocks of about
    ``block_seconds`` of calls (torch.utils.benchmark timers) until every variant has had
    ``min_run_time`` seconds (and ``min_rounds`` blocks)."""
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()
    blocks: dict[str, Callable[[], list[float]]] = {}
    for name, run in variants.items():
        timer = Timer("run()", globals={"run": run}, num_threads=threads)
        timer.timeit(number=1)  # warm-up: first-call allocations, lazy initialisation
        number = max(1, int(block_seconds / max(timer.timeit(number=1).mean, 1e-9)))
        blocks[name] = lambda timer=timer, number=number: [timer.timeit(number=number).mean]
    return time_interleaved(blocks, min_run_time * len(blocks), min_rounds, max_rounds=None)


def call_ms(run: Callable[..., Any], args: Sequence[Any], calls: int = 3) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``run(*args)`` (under inference mode): one
    timing pass of a candidate that is called like a module."""
    times = []
    with torch.inference_mode():
        for _ in range(calls):
            began = time.perf_counter()
            run(*args)
            times.append((time.perf_counter() - began) * 1e3)
    return times


CONTENDER = 0.15  # candidates this close to the fastest get more rounds while the budget lasts
NEAR_TIE = 0.03  # the two fastest this close (relative) are timed again, just the two
TIE = 0.01  # still this close after that: the one listed first (the simpler way) is kept


def choose_fastest(
    results: Mapping[str, CandidateResult],
    runs: Mapping[str, Callable[[], list[float]]],
    budget_s: float,
) -> str:
    """Time the candidates that passed their check (``runs``, in the order they were listed)
    interleaved within ``budget_s``, record each median in ``results``, mark the fastest
    ``chosen`` and return its name.

    Every candidate gets at least 2 rounds; those within :data:`CONTENDER` of the fastest get
    up to 6 more while the budget lasts, so the choice rests on more timings where it is
    close. A near-tie (the two fastest within :data:`NEAR_TIE`) is not left to a few calls'
    noise: the two are timed again, alone, for at least 2 more rounds, and decided on all
    their times; within :data:`TIE` after that, the one listed first is kept and the other
    says why."""
    began = time.perf_counter()

    def left() -> float:
        return max(budget_s - (time.perf_counter() - began), 0.0)

    def timed_again(names: list[str], min_rounds: int) -> None:
        more = interleaved_samples({n: runs[n] for n in names}, left(), min_rounds, 6)
        for name in names:
            samples[name] += more[name]
            medians[name] = float(np.median(samples[name]))

    samples = interleaved_samples(runs, budget_s)
    medians = {name: float(np.median(values)) for name, values in samples.items()}
    fastest = min(medians.values())
    contenders = [n for n in runs if medians[n] <= fastest * (1 + CONTENDER)]
    if len(contenders) > 1:
        timed_again(contenders, 0)
    chosen = min(medians, key=medians.__getitem__)
    runner_up = min((n for n in medians if n != chosen), key=medians.__getitem__, default=None)
    if runner_up is not None and medians[runner_up] <= medians[chosen] * (1 + NEAR_TIE):
        first, second = (name for name in runs if name in (chosen, runner_up))  # listed order
        timed_again([first, second], 2)
        chosen = second if medians[second] < medians[first] * (1 - TIE) else first
        other = second if chosen == first else first
        gap = 100 * (medians[other] / medians[chosen] - 1)
        timings = len(samples[other])
        results[other].reason = f"a near-tie with {chosen}: {gap:+.1f}% on {timings} timings"
    for name, median in medians.items():
        results[name].median_ms = median
    results[chosen].status = "chosen"
    return chosen


Built = TypeVar("Built")


@dataclass
class Trial(Generic[Built]):
    """What :func:`tune` needs to know of one kind of candidate.

    - ``build(name)``: the candidate, ready to check (raises when it cannot be built);
    - ``check(name, built)``: its numbers against the reference (``max_abs_diff``, …) and why
      it is rejected, or None when it is within tolerance (raises when it cannot run);
    - ``time(built)``: one timing pass, in milliseconds per call or frame;
    - ``skip(name)``: why it is not a candidate here, or None;
    - ``close(built)``: release what it holds (threads, processes) when it is not chosen;
    - ``cost(name, spent)``: the seconds it is expected to take to build, check and time,
      given what the candidates tried so far took (``spent``: name → seconds), or None when
      it cannot say; a candidate that would overrun the budget is not started.
    """

    build: Callable[[str], Built]
    check: Callable[[str, Built], tuple[dict[str, float], str | None]]
    time: Callable[[Built], list[float]]
    skip: Callable[[str], str | None] = lambda name: None
    close: Callable[[Built], None] = lambda built: None
    cost: Callable[[str, Mapping[str, float]], float | None] = lambda name, spent: None


def tune(
    candidates: Sequence[str],
    trial: Trial[Built],
    key: str,
    *,
    precision: str,
    tolerance: float,
    budget_s: float,
    reference: str,
    diff_label: str = "max |Δ|",
    use_cache: bool = True,
    on_candidate: Callable[[str], None] | None = None,
    recheck: bool = False,
) -> tuple[TuningPlan, Built]:
    """The one tuning loop: the plan cached under ``key`` (its choice built and, with
    ``recheck``, checked again: a key cannot see everything the answers depend on, such as a
    module's code), or each
    candidate in turn skipped, built, checked (``reference`` first: a failure there is raised),
    then those within tolerance timed interleaved within what is left of ``budget_s``; the
    fastest is chosen, the others closed, and the plan cached. A candidate is not started
    once the budget is spent, or when the trial expects it to overrun what is left (a build
    already started cannot be stopped)."""
    if use_cache:
        cached = load_plan(key, candidates.__contains__)
        if cached is not None:
            reason = trial.skip(cached.chosen) if cached.chosen != reference else None
            if reason is None:
                try:
                    built = trial.build(cached.chosen)
                except Exception as error:  # built before, not now: choose again
                    reason = first_line(error)
                else:
                    rejected = trial.check(cached.chosen, built)[1] if recheck else None
                    if rejected is None:
                        return cached, built
                    reason = f"it now differs from the reference: {rejected}"
                    trial.close(built)
            log.warning(
                "the cached plan chose %s, which cannot run here now (%s): tuning again",
                cached.chosen,
                reason,
            )
    began = time.perf_counter()
    results: dict[str, CandidateResult] = {}
    kept: dict[str, Built] = {}
    spent: dict[str, float] = {}
    for name in dict.fromkeys([reference, *candidates]):
        reason = trial.skip(name) if name != reference else None
        elapsed = time.perf_counter() - began
        if reason is None and name != reference and elapsed > budget_s:
            reason = "tuning budget spent"
        if reason is None and name != reference:
            expected = trial.cost(name, spent)
            if expected is not None and elapsed + expected > budget_s:
                reason = f"would overrun the tuning budget (about {expected:.0f} s)"
        if reason is not None:
            results[name] = CandidateResult(name, "skipped", reason)
            continue
        if on_candidate is not None and name != reference:
            on_candidate(name)
        started = time.perf_counter()
        built: Built | None = None
        try:
            built = trial.build(name)
            numbers, rejected = trial.check(name, built)
        except Exception as error:  # engines, compilers and the runner fail in many ways
            spent[name] = time.perf_counter() - started
            if built is not None:
                trial.close(built)
            if name == reference:
                raise
            results[name] = CandidateResult(name, "failed", first_line(error))
            continue
        spent[name] = time.perf_counter() - started
        result = CandidateResult(name, "passed", build_s=spent[name])
        for field_name, value in numbers.items():
            setattr(result, field_name, value)
        if rejected is not None:
            result.status, result.reason = "rejected", rejected
            trial.close(built)
        else:
            kept[name] = built
        results[name] = result
    if not kept:  # the reference itself rejected: its answers are not repeatable
        reasons = "; ".join(f"{r.name}: {r.status} ({r.reason})" for r in results.values())
        raise InputError(f"no way of running the model meets the tolerance: {reasons}")
    chosen = choose_fastest(
        results,
        {name: (lambda b=built: trial.time(b)) for name, built in kept.items()},
        max(budget_s - (time.perf_counter() - began), 0.0),
    )
    for name, built in kept.items():
        if name != chosen:
            trial.close(built)
    plan = TuningPlan(
        chosen=chosen,
        precision=precision,
        tolerance=tolerance,
        budget_s=budget_s,
        tune_s=time.perf_counter() - began,
        key=key,
        candidates=list(results.values()),
        reference=reference,
        diff_label=diff_label,
    )
    save_plan(plan)
    return plan, kept[chosen]
