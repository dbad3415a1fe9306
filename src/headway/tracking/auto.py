"""``--executor auto``: the fastest executor of the table that still tracks as ``eager`` does.

Candidates are the executors usable here (extras installed, runner built, a C++ compiler for
the compiled ones, bf16 instructions for the bf16 ones, CUDA for the CUDA ones). Each is built
and checked against ``eager`` on the run's own first frames — the encoder's largest difference
on the same input and the largest box difference over the frames — and those within tolerance
are timed interleaved on the same frames; the fastest is chosen. fp32 candidates by default;
``precision="bf16"`` admits the bf16 ones at their documented tolerance. The plan is cached
(:mod:`headway.tuning`), so a rerun on the same weights, machine and versions does not tune.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from headway.errors import InputError
from headway.models.cswintt import CSWinTT
from headway.runtime.engines import INSTALL_HINT, engine_available
from headway.tracking.backends import build_tracker, run_pass, tracked_ms, tracker_encoder
from headway.tracking.crop import check_frame_size, check_init_box, read_frame
from headway.tracking.executors import EXECUTORS, ExecutorSpec, cpu_has_bf16, resolve_executor
from headway.tracking.settings import TrackerSettings
from headway.tracking.tracker import CSWinTTTracker
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

AUTO = "auto"
# encoder max |Δ| to eager (fp32 executors reorder sums only; bf16 keeps ~3 digits), and the
# largest box difference over the checked frames
TOLERANCE = {"fp32": 1e-3, "bf16": 0.25}
BOX_TOLERANCE_PX = {"fp32": 0.05, "bf16": 1.0}
WARM_FRAMES = 2  # tracked frames of a timing pass not timed
TIMED_FRAMES = 6
# build order: the graphs fastest on a CPU first, then the backends cheapest to build, so a
# short budget still sees the likely winners (the heads graph, Case C, is last: its threads
# cannot overlap on a CPU)
_GRAPH_ORDER = ("spectral", "fused", "plain", "heads")
_BACKEND_ORDER = (
    "eager",
    "openvino",
    "onnxruntime",
    "cpp",
    "torchscript",
    "cudagraph",
    "inductor",
    "aoti",
)


def unusable_reason(spec: ExecutorSpec, device: torch.device, precision: str) -> str | None:
    """Why ``spec`` is not a candidate here, or None."""
    if spec.precision == "bf16" and precision == "fp32":
        return "bf16 (add --precision bf16)"
    if spec.requires_cuda and device.type != "cuda":
        return "needs CUDA"
    if spec.cpu_only and device.type != "cpu":
        return "CPU only"
    if spec.autocast and device.type == "cpu" and not cpu_has_bf16():
        return "no bf16 instructions on this CPU (emulated, slower)"
    if spec.engine is not None and not engine_available(spec.engine):
        return f"not installed ({INSTALL_HINT})"
    from headway.native.build import built_runner, find_compiler

    if spec.backend in ("inductor", "aoti") and find_compiler() is None:
        return "no C++ compiler for inductor"
    if spec.host == "cpp" and built_runner() is None:
        return "headway-runner not built (headway runner build)"
    return None


def _order(name: str) -> tuple[int, int]:
    spec = EXECUTORS[name]
    return _GRAPH_ORDER.index(spec.graph), _BACKEND_ORDER.index(spec.backend)


def tune_tracker(
    network: CSWinTT,
    frames: list[Path],
    init_box: list[float],
    settings: TrackerSettings | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    tolerance: float | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    check_frames: int = 4,
    use_cache: bool = True,
    on_candidate: Callable[[str], None] | None = None,
    candidates: list[str] | None = None,
) -> tuple[TuningPlan, CSWinTTTracker | object]:
    """Choose the executor for ``network`` on the frames ``frames`` (image files; the first
    ``check_frames`` + 1 are used, the first initialises on ``init_box``). Returns the plan and
    the chosen tracker, ready (the caller closes it). ``candidates``: only these (default:
    every executor of the table); ``eager`` is always the reference."""
    check_tuning_options(precision, tolerance, budget_s)
    if check_frames < 1 or len(frames) < 2:
        raise InputError("--executor auto needs a sequence of at least 2 frames to check on")
    device = torch.device(device)
    tolerance = tolerance if tolerance is not None else TOLERANCE[precision]
    box_tolerance = BOX_TOLERANCE_PX[precision]
    config = network.config
    from headway.native.build import built_runner

    key = plan_key(
        {
            "network": weights_digest(network),
            "shapes": [config.template_size, config.search_size, config.num_templates],
            "precision": precision,
            "tolerance": tolerance,
            "device": str(device),
            "runner": str(built_runner()),
            "candidates": candidates,
        }
    )
    if use_cache:
        plan = load_plan(key, lambda name: name in EXECUTORS)
        if plan is not None:
            return plan, build_tracker(network, settings, device, plan.chosen)

    began = time.perf_counter()
    # checked on the first check_frames tracked frames; timed on up to TIMED_FRAMES more,
    # after WARM_FRAMES per pass (the C++ runner starts a fresh process, whose TorchScript
    # graphs optimise themselves on their first calls, for every pass as for every sequence)
    paths = list(frames[: max(check_frames, WARM_FRAMES + TIMED_FRAMES) + 1])
    images = [read_frame(path) for path in paths]
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        check_frame_size(image, images[0].shape if index else None, path)
    check_init_box(init_box, images[0].shape, f"--executor auto's first frame ({paths[0]})")

    def one_pass(tracker: object, count: int) -> tuple[np.ndarray, list[float]]:
        """Boxes of the first ``count`` frames, and ms of the tracked ones after the warm-up."""
        result = run_pass(tracker, images[:count], paths, init_box)  # type: ignore[arg-type]
        return result.boxes, list(tracked_ms(result, min(1 + WARM_FRAMES, count - 1)))

    checked = min(check_frames + 1, len(images))

    results: dict[str, CandidateResult] = {}
    trackers: dict[str, object] = {}
    eager = build_tracker(network, settings, device, "eager")
    assert isinstance(eager, CSWinTTTracker)
    trackers["eager"] = eager
    probe: list[tuple[torch.Tensor, torch.Tensor]] = []
    run_encoder = eager.executor.encoder

    def recording_encoder(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not probe:
            probe.append((tokens.clone(), mask.clone()))
        return run_encoder(tokens, mask)

    eager.executor.encoder = recording_encoder  # type: ignore[method-assign]
    reference_boxes, _ = one_pass(eager, checked)
    del eager.executor.encoder  # back to the method
    tokens, mask = probe[0]
    with torch.inference_mode():
        reference = run_encoder(tokens, mask).float()
    results["eager"] = CandidateResult("eager", "passed", max_abs_diff=0.0, max_box_diff_px=0.0)

    names = [resolve_executor(n)[0] for n in candidates] if candidates else list(EXECUTORS)
    for name in sorted((n for n in dict.fromkeys(names) if n != "eager"), key=_order):
        reason = unusable_reason(EXECUTORS[name], device, precision)
        if reason is not None:
            results[name] = CandidateResult(name, "skipped", reason)
            continue
        if time.perf_counter() - began > budget_s:
            results[name] = CandidateResult(name, "skipped", "tuning budget spent")
            continue
        if on_candidate is not None:
            on_candidate(name)
        built = time.perf_counter()
        try:
            tracker = build_tracker(network, settings, device, name)
        except Exception as error:  # an engine, compiler or runner may fail in many ways
            results[name] = CandidateResult(name, "failed", first_line(error))
            continue
        try:
            with torch.inference_mode():
                encoder = tracker_encoder(tracker)
                diff = float((encoder(tokens, mask).float() - reference).abs().max())
            boxes, _ = one_pass(
                tracker, checked
            )  # also the warm-up (tracing, compiling, exporting)
        except Exception as error:
            tracker.close()  # type: ignore[attr-defined]
            results[name] = CandidateResult(name, "failed", first_line(error))
            continue
        box_diff = float(np.abs(boxes - reference_boxes).max())
        result = CandidateResult(
            name,
            "passed",
            max_abs_diff=diff,
            max_box_diff_px=box_diff,
            build_s=time.perf_counter() - built,
        )
        if not (diff <= tolerance and box_diff <= box_tolerance):
            result.status = "rejected"
            result.reason = (
                f"max |Δ| {diff:.2e} (tolerance {tolerance:.0e}), box {box_diff:.3f} px "
                f"(tolerance {box_tolerance} px)"
            )
            tracker.close()  # type: ignore[attr-defined]
        else:
            trackers[name] = tracker
        results[name] = result

    chosen = choose_fastest(
        results,
        {name: (lambda t=t: one_pass(t, len(images))[1]) for name, t in trackers.items()},
        max(budget_s - (time.perf_counter() - began), 0.0),
    )
    for name, tracker in trackers.items():
        if name != chosen:
            tracker.close()  # type: ignore[attr-defined]
    plan = TuningPlan(
        chosen=chosen,
        precision=precision,
        tolerance=tolerance,
        budget_s=budget_s,
        tune_s=time.perf_counter() - began,
        key=key,
        candidates=list(results.values()),
    )
    save_plan(plan)
    return plan, trackers[chosen]
