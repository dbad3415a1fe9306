"""The CSWinTT tracking loop: initialise on the first box, then crop-search-regress every frame,
replacing the dynamic template when the confidence head allows it. Every stage is timed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from headway.errors import InputError
from headway.models.cswintt import CSWinTT, Features
from headway.runtime.device import StageTimer
from headway.tracking.crop import (
    Preprocessor,
    check_init_box,
    clip_box,
    map_box_back,
    read_frame,
    sample_target,
)
from headway.tracking.datasets import Sequence
from headway.tracking.executors import EXECUTORS, Executor, build_executor, check_executor
from headway.tracking.results import SequenceResult

if TYPE_CHECKING:
    from headway.native.runner import NativeTracker

# The paper's Table 1 rows, then the occasional template refresh.
STAGES = ("load_preprocess", "backbone", "encoder", "decoder", "box_head", "template_update")


@dataclass(frozen=True)
class TrackerSettings:
    """Test-time settings (the official ``TEST`` yaml block)."""

    template_factor: float = 2.0
    search_factor: float = 5.0
    update_interval: int = 200
    confidence_threshold: float = 0.5
    box_margin: float = 10.0

    def __post_init__(self) -> None:
        if self.update_interval < 1:
            raise InputError(f"update interval must be ≥ 1, got {self.update_interval}")


class CSWinTTTracker:
    """Runs a :class:`CSWinTT` network over image sequences (one target, no re-initialisation)."""

    def __init__(
        self,
        network: CSWinTT | Executor,
        settings: TrackerSettings | None = None,
        device: torch.device | str = "cpu",
        executor: str = "eager",
    ) -> None:
        """``network`` is run by the executor named ``executor`` (see
        :mod:`headway.tracking.executors`), or pass a ready :class:`Executor`."""
        self.device = torch.device(device)
        if isinstance(network, Executor):
            self.executor = network
            self.device = network.device
        else:
            self.executor = build_executor(executor, network, self.device)
        self.settings = settings or TrackerSettings()
        self.template_size = self.executor.config.template_size
        self.search_size = self.executor.config.search_size
        self.preprocess = Preprocessor(self.device)
        self.timer = StageTimer(self.device)
        self.templates: list[Features] = []
        self.state: list[float] = []
        self.frame_id = 0
        self.template_updates = 0

    def _template_features(self, image: np.ndarray, box: list[float]) -> Features:
        crop, _, mask = sample_target(image, box, self.settings.template_factor, self.template_size)
        return self.executor.backbone(*self.preprocess(crop, mask))

    @torch.inference_mode()
    def initialize(self, image: np.ndarray, box: list[float]) -> None:
        """Crop the initial template; it doubles as the first dynamic template."""
        with self.timer.stage("backbone"):
            first = self._template_features(image, box)
        self.templates = [first] * self.executor.config.num_templates
        self.state = [float(v) for v in box]
        self.frame_id = 0
        self.template_updates = 0

    @torch.inference_mode()
    def track(self, image: np.ndarray) -> tuple[list[float], float]:
        """Track one frame; returns the new [x, y, w, h] and the confidence (sigmoid)."""
        self.frame_id += 1
        timer, executor = self.timer, self.executor
        with timer.stage("load_preprocess", host=True):
            crop, resize_factor, mask = sample_target(
                image, self.state, self.settings.search_factor, self.search_size
            )
            search_image, search_mask = self.preprocess(crop, mask)
        with timer.stage("backbone"):
            search = executor.backbone(search_image, search_mask)
            merged = executor.merge([*self.templates, search])
        with timer.stage("encoder"):
            memory = executor.encoder(merged.tokens, merged.padding_mask)
        with timer.stage("decoder"):
            decoded = executor.decoder(memory, merged.padding_mask)
        with timer.stage("box_head"):
            boxes = executor.box_head(memory, decoded)
            logit = executor.confidence(decoded)
            box = (boxes.view(-1, 4).mean(dim=0) * self.search_size / resize_factor).tolist()
            confidence = float(torch.sigmoid(logit).view(-1)[0])
        height, width = image.shape[:2]
        self.state = clip_box(
            map_box_back(box, self.state, resize_factor, self.search_size),
            height,
            width,
            self.settings.box_margin,
        )
        if (
            self.frame_id % self.settings.update_interval == 0
            and confidence > self.settings.confidence_threshold
        ):
            with timer.stage("template_update"):
                self.templates[-1] = self._template_features(image, self.state)
            self.template_updates += 1
        return list(self.state), confidence

    def close(self) -> None:
        """Release the executor's threads or graphs."""
        self.executor.close()

    def run_sequence(
        self,
        sequence: Sequence,
        on_frame: Callable[[int], None] | None = None,
    ) -> SequenceResult:
        """Track a whole sequence from its first ground-truth box (one-pass evaluation)."""
        boxes = np.zeros((len(sequence), 4))
        frame_times = np.zeros(len(sequence))
        stage_times: dict[str, list[float]] = {name: [] for name in STAGES}
        for index, frame_path in enumerate(sequence.frames):
            began = time.perf_counter()
            with self.timer.stage("load_preprocess", host=True):
                image = read_frame(frame_path)
            if index == 0:
                init_box = sequence.init_box
                check_init_box(init_box, image.shape, f"{sequence.name} ({frame_path})")
                self.initialize(image, [float(v) for v in init_box])
                boxes[0] = init_box
            else:
                boxes[index] = self.track(image)[0]
            frame_times[index] = time.perf_counter() - began
            measured = self.timer.finish_frame()
            for name in STAGES:
                stage_times[name].append(measured.get(name, 0.0))
            if on_frame is not None:
                on_frame(index)
        return SequenceResult(boxes, frame_times, stage_times, self.template_updates)


def tracker_executor_names() -> list[str]:
    """Every executor name ``headway track`` accepts: the Python ones, then the C++ runner's."""
    from headway.native.export import NATIVE_EXECUTORS

    return [*EXECUTORS, *NATIVE_EXECUTORS]


def check_tracker_executor(name: str, device: torch.device | str) -> None:
    """A clear error for an unknown executor, a CUDA-only one on the CPU, an engine that is
    not installed, or a C++ executor whose runner is not built."""
    from headway.native.build import require_runner
    from headway.native.export import NATIVE_EXECUTORS

    if name not in NATIVE_EXECUTORS:
        if name not in EXECUTORS:
            names = ", ".join(tracker_executor_names())
            raise InputError(f"unknown executor {name!r}: choose from {names}")
        check_executor(name, device)
        return
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"executor {name!r} on {device}: this torch has no CUDA device")
    require_runner()


def build_tracker(
    network: CSWinTT,
    settings: TrackerSettings | None = None,
    device: torch.device | str = "cpu",
    executor: str = "eager",
) -> CSWinTTTracker | NativeTracker:
    """The tracker for ``executor``: :class:`CSWinTTTracker` for the Python executors, the C++
    runner's :class:`~headway.native.runner.NativeTracker` for the ``cpp*`` executors. Both
    have ``run_sequence`` and ``close``."""
    from headway.native.export import NATIVE_EXECUTORS
    from headway.native.runner import NativeTracker

    check_tracker_executor(executor, device)
    if executor in NATIVE_EXECUTORS:
        return NativeTracker(network, settings, device, executor)
    return CSWinTTTracker(network, settings, device, executor)
