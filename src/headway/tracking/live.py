"""``headway.Tracker``: the tracker for an application's own frames, one at a time.

The application owns the frames (a video it decodes, a camera, a stream) and hands them over
as numpy arrays; :class:`FrameTracker` initialises on the first frame and a box, then returns a
:class:`TrackResult` per frame. It runs on the Python host: the C++ runner reads image files
itself, so its executors are refused by name.

``executor="auto"`` chooses like ``headway track --executor auto``, on the application's first
frames: a cached plan (same weights, machine, versions) is used from the first frame; without
one, eager tracks the first :data:`TUNE_FRAMES` frames while keeping them, then the candidates
are checked and timed on those frames, the chosen one replays them to reach the same state, and
tracks from there (the one slow :meth:`FrameTracker.update` call is that tuning).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import torch

from headway.errors import InputError
from headway.models.pretrained import builtin_weights_path, load_tracker_network
from headway.tracking import auto
from headway.tracking.auto import AUTO, FILES_ONLY, TIMED_FRAMES, WARM_FRAMES
from headway.tracking.backends import check_tracker_executor
from headway.tracking.crop import check_frame_size, check_init_box
from headway.tracking.executors import Executor, executor_names
from headway.tracking.settings import TrackerSettings
from headway.tracking.tracker import CSWinTTTracker
from headway.tuning import DEFAULT_BUDGET_S, TuningPlan, check_tuning_options

COLORS = ("bgr", "rgb")
CHECK_FRAMES = 4
# frames ``auto`` keeps to tune on: the first, then the checked and the timed ones
TUNE_FRAMES = 1 + max(CHECK_FRAMES, WARM_FRAMES + TIMED_FRAMES)


@dataclass(frozen=True)
class TrackResult:
    """One frame's answer: the box ``(x, y, w, h)`` in the frame's pixels, the confidence
    (sigmoid of the score head, 0–1), the wall milliseconds of the call, and its stages (ms)."""

    box: tuple[float, float, float, float]
    score: float
    ms: float
    stages: dict[str, float] = field(default_factory=dict)


def python_host_executors() -> list[str]:
    """The executors that take frames from the caller (every one the Python host runs)."""
    from headway.tracking.executors import EXECUTORS

    return [name for name, spec in EXECUTORS.items() if spec.host != "cpp"]


def check_frame_executor(name: str, device: torch.device) -> None:
    """One line for an executor that cannot take frames from the caller (the C++ runner's),
    besides :func:`check_tracker_executor`'s checks."""
    _, spec = check_tracker_executor(name, device)
    if spec.host == "cpp":
        hosted = ", ".join(n for n in executor_names() if n in python_host_executors())
        raise InputError(
            f"executor {name!r}: {FILES_ONLY}; headway.Tracker and video runs hand it frames "
            f"from memory, so use auto or one of {hosted} (or headway track on a dataset "
            "folder for the C++ runner)"
        )


def resolve_weights(checkpoint: str | Path | None, config: str) -> str | Path:
    """What :func:`load_tracker_network` takes for ``checkpoint``: ``"builtin"`` (the trained
    tiny tracker; the default for ``config="tiny"``), ``"random"``, or a file that must exist."""
    if checkpoint is None:
        checkpoint = "builtin" if config == "tiny" else "random"
    if str(checkpoint) == "builtin":
        if config != "tiny":
            raise InputError(
                f"the built-in trained weights are for config 'tiny', not {config!r}: pass "
                "checkpoint=<a .pth file> or checkpoint='random'"
            )
        return builtin_weights_path()
    if str(checkpoint) == "random":
        return "random"
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    return path


class FrameTracker:
    """CSWinTT over frames the application hands in (``headway.Tracker``).

    ``frame`` arguments are ``uint8`` arrays of shape (H, W, 3) in ``color`` order: ``"bgr"``
    as OpenCV reads them (the default) or ``"rgb"``; every frame has the first frame's size.
    Boxes are ``(x, y, w, h)`` in pixels, top-left corner first.
    """

    def __init__(
        self,
        config: str = "default",
        checkpoint: str | Path | None = None,
        executor: str = AUTO,
        precision: str = "fp32",
        device: str = "cpu",
        *,
        color: str = "bgr",
        seed: int = 0,
        settings: TrackerSettings | None = None,
        tolerance: float | None = None,
        tune_seconds: float = DEFAULT_BUDGET_S,
        on_candidate: Callable[[str], None] | None = None,
    ) -> None:
        """``checkpoint``: ``"builtin"`` (the trained tiny tracker, the default for
        ``config="tiny"``), a weights file, or ``"random"`` (the default for other configs:
        the boxes of random weights mean nothing). ``executor``: ``"auto"`` or a name of
        :func:`headway.tracking.executors.executor_names` that runs on the Python host.
        ``precision``, ``tolerance``, ``tune_seconds`` and ``on_candidate`` (told each
        candidate's name as it is tried) are for ``auto``."""
        if color not in COLORS:
            raise InputError(f"color must be one of {', '.join(COLORS)}, got {color!r}")
        self.color, self.precision, self.tolerance = color, precision, tolerance
        self.tune_seconds, self.on_candidate = tune_seconds, on_candidate
        self.device = torch.device(device)
        self.settings = settings or TrackerSettings()
        self.auto = executor == AUTO
        if self.auto:
            check_tuning_options(precision, tolerance, tune_seconds)
        else:
            check_frame_executor(executor, self.device)
        self.network = load_tracker_network(resolve_weights(checkpoint, config), seed, config)
        self.plan: TuningPlan | None = None
        if self.auto:
            self.plan = auto.cached_tracker_plan(self.network, self.device, precision, tolerance)
        self.executor = self.plan.chosen if self.plan else ("eager" if self.auto else executor)
        self._tracker: CSWinTTTracker | None = self._build(self.executor)
        self._kept: list[np.ndarray] = []  # auto's frames to tune on (no plan yet)
        self._init_box: list[float] = []
        self._shape: tuple[int, ...] | None = None

    def _build(self, name: str) -> CSWinTTTracker:
        _, spec = check_tracker_executor(name, self.device)
        return CSWinTTTracker(Executor(self.network, self.device, spec, name), self.settings)

    @property
    def tuning(self) -> bool:
        """True while ``auto`` still runs eager and keeps frames to tune on."""
        return self.auto and self.plan is None

    def _rgb(self, frame: np.ndarray, what: str) -> np.ndarray:
        if self._tracker is None:
            raise InputError("this tracker is closed")
        if not isinstance(frame, np.ndarray):
            raise InputError(f"{what} must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(
                f"{what} must be uint8 of shape (H, W, 3) in {self.color.upper()} order, got "
                f"{frame.dtype} {tuple(frame.shape)}"
            )
        check_frame_size(frame, self._shape, what)
        if self.color == "bgr":
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(frame)

    def init(self, frame: np.ndarray, box: tuple[float, ...] | list[float]) -> TrackResult:
        """Start on ``frame`` at ``box`` (x, y, w, h); a second call starts a new target."""
        began = time.perf_counter()
        self._shape = None
        image = self._rgb(frame, "the first frame")
        values = [float(v) for v in np.asarray(box, dtype=float).reshape(-1)]
        if len(values) != 4:
            raise InputError(f"box must be 4 numbers (x, y, w, h), got {len(values)}")
        check_init_box(np.asarray(values), image.shape, "headway.Tracker.init")
        self._shape = image.shape
        assert self._tracker is not None
        self._tracker.timer.finish_frame()
        self._tracker.initialize(image, values)
        self._init_box = values
        self._kept = [image] if self.tuning else []
        stages = self._tracker.timer.finish_frame()
        return TrackResult(tuple(values), 1.0, (time.perf_counter() - began) * 1e3, stages)  # type: ignore[arg-type]

    def update(self, frame: np.ndarray) -> TrackResult:
        """Track the next frame: its box, score and time."""
        began = time.perf_counter()
        if self._shape is None:
            raise InputError("call init(frame, box) before update(frame)")
        image = self._rgb(frame, "frame")
        tracker = self._tracker
        assert tracker is not None
        box, score = tracker.track(image)
        stages = tracker.timer.finish_frame()
        if self.tuning:
            self._kept.append(image)
            if len(self._kept) == TUNE_FRAMES:
                self._tune()
        return TrackResult(tuple(box), score, (time.perf_counter() - began) * 1e3, stages)  # type: ignore[arg-type]

    def _tune(self) -> None:
        """Choose on the kept frames, then bring the chosen tracker to the present frame."""
        plan, chosen = auto.tune_tracker(
            self.network,
            [],
            self._init_box,
            self.settings,
            self.device,
            self.precision,
            self.tolerance,
            self.tune_seconds,
            CHECK_FRAMES,
            on_candidate=self.on_candidate,
            images=self._kept,
        )
        assert isinstance(chosen, CSWinTTTracker)
        chosen.initialize(self._kept[0], self._init_box)
        for image in self._kept[1:]:
            chosen.track(image)
        chosen.timer.finish_frame()
        assert self._tracker is not None
        self._tracker.close()
        self._tracker, self.plan, self.executor, self._kept = chosen, plan, plan.chosen, []

    def close(self) -> None:
        """Release the executor's threads, graphs and sessions (a second call does nothing)."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def __enter__(self) -> FrameTracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._tracker is None else ("tuning" if self.tuning else "ready")
        return f"headway.Tracker(executor={self.executor!r}, {state})"
