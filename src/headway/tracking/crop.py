"""Image side of the tracker: reading frames, square crops around the target with a padding
mask, ImageNet normalisation, and mapping a predicted box back to the image."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from headway.errors import FrameError, InputError
from headway.tracking.settings import IMAGENET_MEAN, IMAGENET_STD

# A first box larger than this many image sides cannot be a target in the image, and its
# crop (several times the box) would ask for an absurd amount of memory.
MAX_BOX_TO_IMAGE = 4


# The smallest frame side the tracker takes: a box keeps ``box_margin`` (10) pixels inside the
# image, so smaller frames give boxes outside them (the C++ runner has the same limit).
MIN_FRAME_SIDE = 16

_stderr_lock = threading.Lock()
_caught: Any = None  # one file that catches stderr around JPEG decodes, opened on first use


def read_frame(path: Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3) with the pixels as stored (an EXIF orientation tag
    is not applied: libjpeg in the C++ runner does not, and the benchmarks' boxes are drawn on
    the stored pixels); a clear error when missing, empty, truncated or damaged."""
    if not Path(path).is_file():
        raise FrameError(f"{path}: frame is missing")
    data = Path(path).read_bytes()
    if not data:
        raise FrameError(f"{path}: frame is empty (0 bytes)")
    if _truncated(data):
        raise FrameError(f"{path}: frame is truncated (the image file ends before its data)")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    buffer = np.frombuffer(data, dtype=np.uint8)
    if data[:2] == b"\xff\xd8":
        image, warning = _decode_jpeg_reporting_damage(buffer, flags)
        if warning:
            raise FrameError(f"{path}: frame is damaged (libjpeg: {warning})")
    else:
        image = cv2.imdecode(buffer, flags)
    if image is None:
        raise FrameError(f"{path}: frame cannot be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_jpeg_reporting_damage(buffer: np.ndarray, flags: int) -> tuple[Any, str]:
    """Decode a JPEG with OpenCV and return libjpeg's damage warning, if any. libjpeg prints
    "Corrupt JPEG data: …" to the process's stderr and fills the rest of the frame with grey;
    OpenCV offers no other way to hear it, so stderr is caught around the call (one decode at
    a time; any other text that lands there meanwhile is passed on). Extraneous bytes before a
    marker leave the image whole (cameras write them) and are not damage."""
    global _caught
    with _stderr_lock:
        if _caught is None:  # once, not per frame: this runs in the tracking loop
            _caught = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the process
        _caught.seek(0)
        _caught.truncate()
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(_caught.fileno(), 2)
            image = cv2.imdecode(buffer, flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        _caught.seek(0)
        text = _caught.read().decode("utf-8", "replace")
    damage, other = "", []
    for line in text.splitlines():
        harmless = "extraneous bytes before marker" in line
        if not damage and not harmless and ("Corrupt JPEG" in line or "Premature end" in line):
            damage = line.strip()
        elif line.strip() and not harmless:
            other.append(line)
    if other:
        sys.stderr.write("\n".join(other) + "\n")
    return image, damage


def check_frame_size(image: np.ndarray, first_shape: tuple[int, ...] | None, path: Path) -> None:
    """A frame is at least ``MIN_FRAME_SIDE`` pixels per side and, after the first, the size
    of the sequence's first frame (boxes are tracked in one image coordinate system)."""
    height, width = image.shape[:2]
    if width < MIN_FRAME_SIDE or height < MIN_FRAME_SIDE:
        raise InputError(
            f"{path}: frame is {width}x{height}; the tracker needs at least {MIN_FRAME_SIDE} "
            "pixels per side"
        )
    if first_shape is not None and tuple(first_shape[:2]) != (height, width):
        raise InputError(
            f"{path}: frame is {width}x{height} but the sequence's first frame is "
            f"{first_shape[1]}x{first_shape[0]}"
        )


def _truncated(data: bytes) -> bool:
    """True for a JPEG without an end-of-image marker after its last scan, or a PNG without
    its end chunk: decoders fill the missing part with grey and only warn."""
    if data[:2] == b"\xff\xd8":  # JPEG: entropy-coded data never holds FF D9 (FF is stuffed)
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def check_init_box(box: np.ndarray, image_shape: tuple[int, ...], where: str) -> None:
    """The first box must have positive size and overlap the image."""
    x, y, w, h = (float(v) for v in box)
    box = [x, y, w, h]  # shown as plain numbers, whatever array it came in
    height, width = image_shape[:2]
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"{where}: initial box {list(box)} is not finite")
    if w <= 0 or h <= 0:
        raise InputError(f"{where}: initial box {list(box)} has zero or negative size")
    if w > MAX_BOX_TO_IMAGE * width or h > MAX_BOX_TO_IMAGE * height:
        raise InputError(
            f"{where}: initial box {list(box)} is more than {MAX_BOX_TO_IMAGE}× the "
            f"{width}x{height} image (wrong units or a swapped column?)"
        )
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise InputError(
            f"{where}: initial box {list(box)} lies outside the {width}x{height} image"
        )


def sample_target(
    image: np.ndarray, box: np.ndarray | list[float], factor: float, output_size: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """Square crop of side ceil(sqrt(w·h)·factor) centred on ``box``, zero-padded where it leaves
    the image, resized to ``output_size``. Returns (crop, resize_factor, padding mask)."""
    x, y, w, h = (float(v) for v in box)
    crop_size = math.ceil(math.sqrt(w * h) * factor)
    if crop_size < 1:
        raise InputError(f"box {list(box)} is too small to crop")
    x1 = round(x + 0.5 * w - crop_size * 0.5)
    y1 = round(y + 0.5 * h - crop_size * 0.5)
    x2, y2 = x1 + crop_size, y1 + crop_size
    height, width = image.shape[:2]
    x1_pad, y1_pad = max(0, -x1), max(0, -y1)
    x2_pad, y2_pad = max(x2 - width + 1, 0), max(y2 - height + 1, 0)
    inside = image[y1 + y1_pad : y2 - y2_pad, x1 + x1_pad : x2 - x2_pad]
    if inside.size == 0:
        padded = np.zeros((crop_size, crop_size, 3), dtype=image.dtype)
        mask = np.ones((crop_size, crop_size), dtype=np.float32)
    else:
        padded = cv2.copyMakeBorder(
            inside, y1_pad, y2_pad, x1_pad, x2_pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
        mask = np.ones(padded.shape[:2], dtype=np.float32)
        mask[y1_pad : padded.shape[0] - y2_pad, x1_pad : padded.shape[1] - x2_pad] = 0
    crop = cv2.resize(padded, (output_size, output_size))
    mask = cv2.resize(mask, (output_size, output_size)) != 0
    return crop, output_size / crop_size, mask


class Preprocessor:
    """uint8 RGB crop + bool mask → normalised (1, 3, H, W) float tensor and (1, H, W) mask."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def __call__(self, crop: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(crop).to(self.device).permute(2, 0, 1).unsqueeze(0).float()
        image = (image / 255.0 - self.mean) / self.std
        return image, torch.from_numpy(mask).to(self.device).unsqueeze(0)


def map_box_back(
    box: list[float], previous_state: list[float], resize_factor: float, search_size: int
) -> list[float]:
    """(cx, cy, w, h) in the search crop (original scale) → [x, y, w, h] in the image."""
    cx_prev = previous_state[0] + 0.5 * previous_state[2]
    cy_prev = previous_state[1] + 0.5 * previous_state[3]
    cx, cy, w, h = box
    half_side = 0.5 * search_size / resize_factor
    cx_image = cx + (cx_prev - half_side)
    cy_image = cy + (cy_prev - half_side)
    return [cx_image - 0.5 * w, cy_image - 0.5 * h, w, h]


def clip_box(box: list[float], height: int, width: int, margin: float = 0) -> list[float]:
    """Keep at least ``margin`` pixels of the box inside the image, and a size ≥ ``margin``."""
    x1, y1, w, h = box
    x2, y2 = x1 + w, y1 + h
    x1 = min(max(0, x1), width - margin)
    x2 = min(max(margin, x2), width)
    y1 = min(max(0, y1), height - margin)
    y2 = min(max(margin, y2), height)
    return [x1, y1, max(margin, x2 - x1), max(margin, y2 - y1)]
