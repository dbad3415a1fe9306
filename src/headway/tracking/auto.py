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

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from headway.errors import InputError
from headway.models.cswintt import CSWinTT
from headway.tracking.backends import Tracker, build_tracker, run_pass, tracked_ms
from headway.tracking.crop import check_frame_size, check_init_box, read_frame
from headway.tracking.executors import EXECUTORS, ExecutorSpec, resolve_executor
from headway.tracking.settings import TrackerSettings
from headway.tuning import (
    DEFAULT_BUDGET_S,
    Trial,
    TuningPlan,
    check_tuning_options,
    load_plan,
    plan_key,
    tune,
    weights_digest,
)
from headway.ways import slow_here, why_not

AUTO = "auto"
# encoder max |Δ| to eager (fp32 executors reorder sums only; bf16 keeps ~3 digits), and the
# largest box difference over the checked frames
TOLERANCE = {"fp32": 1e-3, "bf16": 0.25}
BOX_TOLERANCE_PX = {"fp32": 0.05, "bf16": 1.0}
# why the C++ host is no candidate for frames handed over in memory
FILES_ONLY = "headway-runner reads its frames from image files, not from the caller"
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
    """Why ``spec`` is not a candidate here, or None: :func:`headway.ways.why_not`, and what
    would only waste the budget (bf16 not asked for or emulated, no compiler, no runner)."""
    if spec.precision == "bf16" and precision == "fp32":
        return "bf16 (add --precision bf16)"
    reason = why_not(spec.way, device) or slow_here(spec.way, device)
    if reason is not None:
        return reason
    from headway.tracking.native.build import built_runner, find_compiler

    if spec.backend in ("inductor", "aoti") and find_compiler() is None:
        return "no C++ compiler for inductor"
    if spec.host == "cpp" and built_runner() is None:
        return "headway-runner not built (headway runner build)"
    return None


def _order(name: str) -> tuple[int, int]:
    """Build order: known graphs and backends in the orders above, new ones after them."""
    spec = EXECUTORS[name]

    def rank(value: str, order: tuple[str, ...]) -> int:
        return order.index(value) if value in order else len(order)

    return rank(spec.graph, _GRAPH_ORDER), rank(spec.backend, _BACKEND_ORDER)


class _TrackerTrial:
    """The tracker's side of :func:`headway.tuning.tune`: every candidate tracks the same
    first frames; eager's pass (the reference, checked first) reads and checks the frames and
    records the reference boxes and the encoder's input. Nothing is read for a cached plan."""

    def __init__(
        self,
        network: CSWinTT,
        settings: TrackerSettings | None,
        device: torch.device,
        frames: list[Path],
        init_box: list[float],
        check_frames: int,
        precision: str,
        tolerance: float,
        images: list[np.ndarray] | None = None,
    ) -> None:
        self.network, self.settings, self.device = network, settings, device
        self.frames, self.init_box, self.check_frames = frames, init_box, check_frames
        self.given = images
        self.precision = precision
        self.limits = (tolerance, BOX_TOLERANCE_PX[precision])
        self.paths: list[Path] = []
        self.images: list[np.ndarray] = []
        self.checked = 0
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reference_boxes = np.zeros((0, 4))
        self.reference = torch.zeros(0)

    def read(self) -> None:
        """Checked on the first ``check_frames`` tracked frames; timed on up to TIMED_FRAMES
        more, after WARM_FRAMES per pass (the C++ runner starts a fresh process, whose
        TorchScript graphs optimise themselves on their first calls, for every pass as for
        every sequence)."""
        count = max(self.check_frames, WARM_FRAMES + TIMED_FRAMES) + 1
        if self.given is not None:  # decoded frames from the caller (checked there)
            self.images = list(self.given[:count])
            self.paths = [Path(f"frame {index}") for index in range(len(self.images))]
        else:
            self.paths = list(self.frames[:count])
            self.images = [read_frame(path) for path in self.paths]
        for index, (image, path) in enumerate(zip(self.images, self.paths, strict=True)):
            check_frame_size(image, self.images[0].shape if index else None, path)
        where = f"--executor auto's first frame ({self.paths[0]})"
        check_init_box(self.init_box, self.images[0].shape, where)
        self.checked = min(self.check_frames + 1, len(self.images))

    def skip(self, name: str) -> str | None:
        spec = EXECUTORS[name]
        if self.given is not None and spec.host == "cpp":
            return FILES_ONLY
        return unusable_reason(spec, self.device, self.precision)

    def time(self, tracker: Tracker) -> list[float]:
        return self.one_pass(tracker, len(self.images))[1]

    def close(self, tracker: Tracker) -> None:
        tracker.close()

    def one_pass(self, tracker: Tracker, count: int) -> tuple[np.ndarray, list[float]]:
        """Boxes of the first ``count`` frames, and ms of the tracked ones after the warm-up."""
        result = run_pass(tracker, self.images[:count], self.paths, self.init_box)
        return result.boxes, list(tracked_ms(result, min(1 + WARM_FRAMES, count - 1)))

    def build(self, name: str) -> Tracker:
        return build_tracker(self.network, self.settings, self.device, name)

    def check(self, name: str, tracker: Tracker) -> tuple[dict[str, float], str | None]:
        if self.probe is None:  # the reference, checked first: read the frames, record
            self.read()
            return self._record(tracker)
        with torch.inference_mode():
            encoded = tracker.encoder(*self.probe).float()
            diff = float((encoded - self.reference).abs().max())
        boxes, _ = self.one_pass(tracker, self.checked)  # also the warm-up (compiling, exporting)
        box_diff = float(np.abs(boxes - self.reference_boxes).max())
        numbers = {"max_abs_diff": diff, "max_box_diff_px": box_diff}
        tolerance, box_tolerance = self.limits
        if diff <= tolerance and box_diff <= box_tolerance:
            return numbers, None
        return numbers, (
            f"max |Δ| {diff:.2e} (tolerance {tolerance:.0e}), box {box_diff:.3f} px "
            f"(tolerance {box_tolerance} px)"
        )

    def _record(self, eager: Tracker) -> tuple[dict[str, float], str | None]:
        probes: list[tuple[torch.Tensor, torch.Tensor]] = []
        executor = eager.executor  # type: ignore[attr-defined]
        run_encoder = executor.encoder

        def recording_encoder(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            if not probes:
                probes.append((tokens.clone(), mask.clone()))
            return run_encoder(tokens, mask)

        executor.encoder = recording_encoder
        try:
            self.reference_boxes, _ = self.one_pass(eager, self.checked)
        finally:
            del executor.encoder  # back to the method
        self.probe = probes[0]
        with torch.inference_mode():
            self.reference = run_encoder(*self.probe).float()
        return {"max_abs_diff": 0.0, "max_box_diff_px": 0.0}, None


def tracker_plan_key(
    network: CSWinTT,
    device: torch.device,
    precision: str,
    tolerance: float,
    candidates: list[str] | None,
    in_memory: bool,
) -> str:
    """The cache key of a tracker's plan: everything the choice depends on."""
    from headway.tracking.native.build import built_runner

    config = network.config
    return plan_key(
        {
            "network": weights_digest(network),
            "shapes": [config.template_size, config.search_size, config.num_templates],
            "precision": precision,
            "tolerance": tolerance,
            "device": str(device),
            "runner": str(built_runner()),
            "candidates": candidates,
            "frames": "memory" if in_memory else "files",
        }
    )


def cached_tracker_plan(
    network: CSWinTT, device: torch.device | str, precision: str, tolerance: float | None
) -> TuningPlan | None:
    """The plan an earlier tuning on frames in memory left for ``network`` here, or None."""
    tolerance = tolerance if tolerance is not None else TOLERANCE[precision]
    key = tracker_plan_key(network, torch.device(device), precision, tolerance, None, True)
    return load_plan(key, EXECUTORS.__contains__)


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
    images: list[np.ndarray] | None = None,
) -> tuple[TuningPlan, Tracker]:
    """Choose the executor for ``network`` on the frames ``frames`` (image files; the first
    ``check_frames`` + 1 are used, the first initialises on ``init_box``), or on ``images``
    (decoded RGB frames, already checked; then only the Python host's executors compete).
    Returns the plan and the chosen tracker, ready (the caller closes it). ``candidates``: only
    these (default: every executor of the table); ``eager`` is always the reference."""
    check_tuning_options(precision, tolerance, budget_s)
    if check_frames < 1 or len(images if images is not None else frames) < 2:
        raise InputError("--executor auto needs a sequence of at least 2 frames to check on")
    device = torch.device(device)
    tolerance = tolerance if tolerance is not None else TOLERANCE[precision]
    key = tracker_plan_key(network, device, precision, tolerance, candidates, images is not None)
    names = [resolve_executor(n)[0] for n in candidates] if candidates else list(EXECUTORS)
    ordered = ["eager", *sorted((n for n in dict.fromkeys(names) if n != "eager"), key=_order)]
    trial = _TrackerTrial(
        network, settings, device, frames, init_box, check_frames, precision, tolerance, images
    )
    return tune(
        ordered,
        Trial(trial.build, trial.check, trial.time, trial.skip, trial.close),
        key,
        precision=precision,
        tolerance=tolerance,
        budget_s=budget_s,
        reference="eager",
        use_cache=use_cache,
        on_candidate=on_candidate,
    )
