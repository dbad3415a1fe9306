"""The CSWinTT tracking loop: initialise on the first box, then crop-search-regress every frame,
replacing the dynamic template when the confidence head allows it. Every stage is timed."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np
import torch

from headway.models.cswintt import CSWinTT, Features
from headway.runtime.device import StageTimer
from headway.tracking.crop import (
    Preprocessor,
    check_frame_size,
    check_init_box,
    clip_box,
    map_box_back,
    read_frame,
    sample_target,
)
from headway.tracking.datasets import Sequence
from headway.tracking.executors import Executor, build_executor
from headway.tracking.results import SequenceResult
from headway.tracking.settings import STAGES, TrackerSettings

__all__ = ["STAGES", "CSWinTTTracker", "TrackerSettings"]


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

    def encoder(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """The encoder stage as this tracker's executor runs it."""
        return self.executor.encoder(tokens, padding_mask)

    def run_sequence(
        self,
        sequence: Sequence,
        on_frame: Callable[[int], None] | None = None,
    ) -> SequenceResult:
        """Track a whole sequence from its first ground-truth box (one-pass evaluation)."""
        return self.run_frames(sequence.frames, sequence.init_box, on_frame, name=sequence.name)

    def run_frames(
        self,
        frames: Seq[str | Path],
        init_box: Seq[float],
        on_frame: Callable[[int], None] | None = None,
        name: str = "sequence",
        images: Seq[np.ndarray] | None = None,
    ) -> SequenceResult:
        """Track the image files ``frames`` from ``init_box`` (every frame read and checked),
        or the already decoded and checked ``images`` of those files."""
        if images is not None:
            return self._frame_loop(images.__getitem__, len(images), init_box, on_frame)
        first_shape: tuple[int, ...] | None = None

        def load(index: int) -> np.ndarray:
            nonlocal first_shape
            image = read_frame(frames[index])
            check_frame_size(image, None if index == 0 else first_shape, frames[index])
            if index == 0:
                first_shape = image.shape
                check_init_box(init_box, image.shape, f"{name} ({frames[0]})")
            return image

        return self._frame_loop(load, len(frames), init_box, on_frame)

    def _frame_loop(
        self,
        load: Callable[[int], np.ndarray],
        count: int,
        init_box: Seq[float],
        on_frame: Callable[[int], None] | None = None,
    ) -> SequenceResult:
        """The frame loop: frame ``i`` is ``load(i)`` (called inside the timed
        ``load_preprocess`` stage), the first initialises on ``init_box``, the others are
        tracked; ``on_frame(i)`` runs after each frame, outside its time."""
        boxes = np.zeros((count, 4))
        frame_times = np.zeros(count)
        stage_times: dict[str, list[float]] = {name: [] for name in STAGES}
        for index in range(count):
            began = time.perf_counter()
            with self.timer.stage("load_preprocess", host=True):
                image = load(index)
            if index == 0:
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
