"""Synthetic tracking sequences in the OTB layout: the built-in default data.

Each sequence shows a textured target moving over a cluttered background with smooth scale and
aspect change, a slow change of brightness, a similar-looking distractor, a partial occlusion,
and a stretch where the target touches (and slightly leaves) the frame border. Optionally the
target's own texture changes gradually (``appearance_change``: the case the dynamic template is
for). Everything is drawn from ``numpy.random.default_rng([seed, index])``, so a seed always
gives the same files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from headway.errors import InputError
from headway.io import atomic_write_bytes, atomic_write_text, make_folder


@dataclass(frozen=True)
class SynthSettings:
    """Sizes of the generated sequences."""

    frames: int = 60
    width: int = 320
    height: int = 240
    min_target: int = 28
    max_target: int = 56
    jpeg_quality: int = 92
    appearance_change: float = 0.0  # share of the target texture replaced by the last frame

    def __post_init__(self) -> None:
        if not 0.0 <= self.appearance_change <= 1.0:
            raise InputError(f"appearance change must be in [0, 1], got {self.appearance_change}")


@dataclass
class SequenceEvents:
    """When the sequence's hard cases happen (frame indices, 0-based)."""

    occlusion: tuple[int, int]
    border_frame: int
    distractor: bool = True


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A colourful pattern of gratings and blobs (float32 RGB in [0, 255])."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    field = np.zeros((size, size), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(-6, 6, 2)
        field += np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    for _ in range(4):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
        field += 1.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    colours = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    low, mid, high = colours
    weight = field[..., None]
    texture = np.where(
        weight < 0.5, low + (mid - low) * weight * 2, mid + (high - mid) * (weight - 0.5) * 2
    )
    edge = np.ones((size, size), np.float32)
    edge[[0, 1, -2, -1], :] = edge[:, [0, 1, -2, -1]] = 0.6
    return texture * edge[..., None]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour noise with random rectangles and discs (clutter)."""
    coarse = rng.uniform(40, 215, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(25, 40)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, 28))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + size, y + int(rng.integers(4, 28))), colour, -1)
        else:
            cv2.circle(image, (x, y), size // 2, colour, -1)
    return cv2.GaussianBlur(image, (3, 3), 0)


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Draw ``patch`` with its top-left at (x, y), cut where it leaves the canvas."""
    height, width = canvas.shape[:2]
    ph, pw = patch.shape[:2]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + pw, width), min(y + ph, height)
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = patch[y1 - y : y2 - y, x1 - x : x2 - x]


def _waypoint_path(
    rng: np.random.Generator, frames: int, low: np.ndarray, high: np.ndarray, border_frame: int
) -> np.ndarray:
    """Smooth centre path through random waypoints, one of them on a frame border."""
    count = max(3, frames // 20 + 2)
    keys = np.linspace(0, frames - 1, count)
    points = rng.uniform(low, high, (count, 2))
    border_key = int(np.argmin(np.abs(keys - border_frame)))
    axis = int(rng.integers(0, 2))
    points[border_key, axis] = low[axis] if rng.random() < 0.5 else high[axis]
    t = np.arange(frames)
    segment = np.clip(np.searchsorted(keys, t, side="right") - 1, 0, count - 2)
    local = (t - keys[segment]) / (keys[segment + 1] - keys[segment])
    smooth = local * local * (3 - 2 * local)
    return points[segment] + (points[segment + 1] - points[segment]) * smooth[:, None]


def render_sequence(
    rng: np.random.Generator, settings: SynthSettings
) -> tuple[list[np.ndarray], np.ndarray, SequenceEvents]:
    """Frames (RGB uint8) and ground-truth boxes [x, y, w, h] of one sequence."""
    n, width, height = settings.frames, settings.width, settings.height
    background = _background(rng, width, height)
    target, distractor = _texture(rng), _texture(rng)
    distractor = 0.5 * distractor + 0.5 * target[::-1]  # similar colours, different layout
    base = rng.uniform(settings.min_target, settings.max_target)
    aspect0 = rng.uniform(0.6, 1.6)
    t = np.arange(n)
    scale = np.exp(0.3 * np.sin(2 * np.pi * t / rng.uniform(40, 90) + rng.uniform(0, 6)))
    aspect = aspect0 * np.exp(0.25 * np.sin(2 * np.pi * t / rng.uniform(50, 110)))
    widths, heights = base * scale * np.sqrt(aspect), base * scale / np.sqrt(aspect)
    brightness = 1 + 0.25 * np.sin(2 * np.pi * t / rng.uniform(60, 120) + rng.uniform(0, 6))
    margin = 0.3 * max(widths.max(), heights.max())
    low = np.array([margin, margin])
    high = np.array([width - margin, height - margin])
    border_frame = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
    centre = _waypoint_path(rng, n, low, high, border_frame)
    distractor_centre = _waypoint_path(rng, n, low, high, int(rng.integers(0, n)))
    occ_len = max(2, n // 6)
    occ_start = int(rng.integers(1, max(2, n - occ_len)))
    occluder = _texture(rng, 16)
    # Drawn last so that sequences without appearance change keep their old random stream.
    changed = _texture(rng) if settings.appearance_change > 0 else target
    morph = settings.appearance_change * t / max(n - 1, 1)

    frames, boxes = [], []
    for i in range(n):
        canvas = background.copy()
        look = target if morph[i] == 0 else (1 - morph[i]) * target + morph[i] * changed
        w, h = round(widths[i]), round(heights[i])
        dx, dy = (distractor_centre[i] - [w / 2, h / 2]).round().astype(int)
        _paste(canvas, cv2.resize(distractor, (w, h)) * brightness[i], int(dx), int(dy))
        x, y = (centre[i] - [w / 2, h / 2]).round().astype(int)
        _paste(canvas, np.clip(cv2.resize(look, (w, h)) * brightness[i], 0, 255), int(x), int(y))
        if occ_start <= i < occ_start + occ_len:
            progress = (i - occ_start + 0.5) / occ_len
            ow, oh = round(0.45 * w), round(1.5 * h)
            ox = round(x - ow + progress * (w + ow))
            _paste(canvas, cv2.resize(occluder, (ow, oh)), int(ox), int(y - 0.25 * h))
        noisy = canvas + rng.normal(0, 3, canvas.shape).astype(np.float32)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
        x1, y1 = max(int(x), 0), max(int(y), 0)
        x2, y2 = min(int(x) + w, width), min(int(y) + h, height)
        boxes.append([x1, y1, x2 - x1, y2 - y1])
    events = SequenceEvents((occ_start, occ_start + occ_len), border_frame)
    return frames, np.asarray(boxes, dtype=np.float64), events


def synthesize(
    out: str | Path,
    sequences: int = 4,
    seed: int = 0,
    settings: SynthSettings | None = None,
    on_sequence: Callable[[int], None] | None = None,
    video: bool = False,
) -> list[str]:
    """Write ``sequences`` synthetic sequences under ``out`` in the OTB layout; return names.
    ``video``: also each sequence's frames as ``<name>/<name>.mp4`` (for ``headway track
    VIDEO --box``; the first line of its ground truth is the box).

    Ground truth is written after the frames, so a sequence cut short has no ground truth and
    is regenerated on the next call; a new sequence that fails (a full disk, Ctrl-C) is removed,
    and so is ``out`` when this call made it and it is empty.
    """
    if sequences < 1:
        raise InputError(f"sequences must be ≥ 1, got {sequences}")
    settings = settings or SynthSettings()
    if settings.frames < 2:
        raise InputError(f"frames must be ≥ 2, got {settings.frames}")
    out = Path(out)
    out_was_there = out.exists()
    names, manifest = [], {}
    for index in range(sequences):
        name = f"synth{seed:04d}_{index:03d}"
        frames, boxes, events = render_sequence(np.random.default_rng([seed, index]), settings)
        folder = out / name
        folder_was_there = folder.exists()
        try:
            _write_sequence(folder, name, frames, boxes, settings, video)
        except BaseException:  # a full disk, Ctrl-C: no new half-written sequence stays
            if not folder_was_there:
                shutil.rmtree(folder, ignore_errors=True)
            if not out_was_there and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
        names.append(name)
        manifest[name] = asdict(events)
        if on_sequence is not None:
            on_sequence(index)
    info = {"seed": seed, "settings": asdict(settings), "sequences": manifest}
    atomic_write_text(out / "synth.json", json.dumps(info, indent=2))
    return names


def _write_sequence(
    folder: Path,
    name: str,
    frames: list[np.ndarray],
    boxes: Any,
    settings: SynthSettings,
    video: bool,
) -> None:
    """One sequence's frames, then (so a sequence cut short has none) its ground truth."""
    images = make_folder(folder / "img")
    (folder / "groundtruth_rect.txt").unlink(missing_ok=True)  # until the frames are whole
    written = set()
    quality = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
    for number, frame in enumerate(frames, start=1):
        path = images / f"{number:04d}.jpg"
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), quality)
        if not ok:
            raise InputError(f"{path}: OpenCV could not encode the frame")
        atomic_write_bytes(path, encoded.tobytes())
        written.add(path.name)
    for stale in images.iterdir():  # frames of an earlier, longer sequence of this name
        if stale.name not in written and stale.is_file():
            stale.unlink()
    if video:
        write_video(folder / f"{name}.mp4", frames)
    lines = "".join(",".join(str(int(v)) for v in box) + "\n" for box in boxes)
    atomic_write_text(folder / "groundtruth_rect.txt", lines)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> None:
    """RGB ``frames`` as a video at ``path`` (written beside it, then renamed)."""
    from headway.tracking.video import VideoFile

    height, width = frames[0].shape[:2]
    video = VideoFile(path, fps, (width, height), "synthetic video")
    try:
        for frame in frames:
            video.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    except BaseException:
        video.abandon()
        raise
    video.finish()
