"""Tracking one target through a video, a folder of images, a camera or a stream URL.

Frames come from OpenCV (its FFmpeg for files and URLs, V4L2 for cameras) or from image files,
and are tracked by :class:`headway.tracking.live.FrameTracker`. Every check that can fail
(the source opens, its first frame decodes, the box lies in it, the render file can be
written) runs before anything is written. Results go to the run folder in the pytracking
layout, with ``run.json`` naming the source; a stream that stops early, or a run stopped with
Ctrl-C, keeps the boxes tracked so far and ``run.json`` says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from headway.errors import InputError
from headway.io import atomic_write_text, check_file_targets, locked_folder, read_json_file
from headway.tracking.crop import check_frame_size, check_init_box, read_frame
from headway.tracking.results import SequenceResult, result_file_names, write_sequence_result
from headway.tracking.settings import STAGES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# the container each render suffix gets, and the codec OpenCV's FFmpeg writes into it
RENDER_CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


@dataclass
class SourceInfo:
    """Where the frames come from, as run.json records it."""

    kind: str  # file, folder, camera or url
    location: str
    fps: float | None = None
    frames: int | None = None  # as the container declares it (None: unknown, a live source)
    width: int = 0
    height: int = 0
    sha256: str | None = None  # of a file's bytes


@dataclass
class FrameRange:
    """Which source frames are tracked: from ``start`` to ``end`` (exclusive, None: to the
    end), every ``every``-th one."""

    start: int = 0
    end: int | None = None
    every: int = 1

    def __post_init__(self) -> None:
        if self.start < 0:
            raise InputError(f"--start must be ≥ 0, got {self.start}")
        if self.every < 1:
            raise InputError(f"--every must be ≥ 1, got {self.every}")
        if self.end is not None and self.end <= self.start + 1:
            raise InputError(
                f"--end {self.end} leaves fewer than 2 frames after --start {self.start}; "
                "a track needs a first frame and one more"
            )

    def count(self, declared: int | None) -> int | None:
        """How many frames the range tracks of a source of ``declared`` frames (None:
        unknown)."""
        last = declared if self.end is None else (min(self.end, declared) if declared else self.end)
        if last is None:
            return None
        return max(0, (last - 1 - self.start) // self.every + 1)

    def wanted(self, index: int) -> bool:
        return index >= self.start and (index - self.start) % self.every == 0

    def done(self, index: int) -> bool:
        return self.end is not None and index >= self.end


class FrameSource:
    """An open source of RGB frames: ``read()`` gives the next frame or None at its end; after
    None, ``stopped`` holds why, when it ended before its declared length (or a live source
    stopped)."""

    def __init__(self, info: SourceInfo) -> None:
        self.info = info
        self.stopped: str | None = None
        self.read_count = 0

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def skip(self) -> bool:
        """Pass one frame without decoding it where the source allows; False at the end."""
        return self.read() is not None

    def close(self) -> None:
        """Release the file, camera or connection."""


class CaptureSource(FrameSource):
    """A file, camera or URL through ``cv2.VideoCapture``."""

    def __init__(self, capture: cv2.VideoCapture, info: SourceInfo) -> None:
        super().__init__(info)
        self.capture = capture
        self.pending: np.ndarray | None = None  # the first frame, decoded when it was opened

    def _note_end(self) -> None:
        declared = self.info.frames
        if self.info.kind in ("camera", "url") and declared is None:  # live: an end is a stop
            self.stopped = f"the {self.info.kind} stopped sending frames after {self.read_count}"
        elif declared is not None and self.read_count < declared:
            self.stopped = (
                f"the video ended after {self.read_count} of the {declared} frames its "
                "container declares (truncated or damaged)"
            )

    def read(self) -> np.ndarray | None:
        if self.pending is not None:
            frame, self.pending = self.pending, None
        else:
            ok, frame = self.capture.read()
            if not ok or frame is None:
                self._note_end()
                return None
        self.read_count += 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def skip(self) -> bool:
        if self.pending is not None:
            self.pending = None
        elif not self.capture.grab():
            self._note_end()
            return False
        self.read_count += 1
        return True

    def close(self) -> None:
        self.capture.release()


class FolderSource(FrameSource):
    """Image files of a folder, in natural order of their names (``frame2`` before
    ``frame10``), whatever the names are."""

    def __init__(self, paths: list[Path], info: SourceInfo) -> None:
        super().__init__(info)
        self.paths = paths

    def read(self) -> np.ndarray | None:
        if self.read_count >= len(self.paths):
            return None
        image = read_frame(self.paths[self.read_count])
        self.read_count += 1
        return image

    def skip(self) -> bool:
        if self.read_count >= len(self.paths):
            return False
        self.read_count += 1
        return True


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _why_unopenable(path: Path) -> str:
    """One line for a file OpenCV's FFmpeg cannot open: PyAV (headway[video]) tells a missing
    codec from a file that is no video; without it the line names both."""
    if path.stat().st_size == 0:
        return f"{path}: the video file is empty (0 bytes)"
    try:
        import av
    except ImportError:
        return (
            f"{path}: OpenCV's FFmpeg cannot read this file (not a video, damaged, or a codec it "
            "lacks; pip install 'headway[video]' to be told which)"
        )
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return f"{path}: the file holds no video stream"
            stream = container.streams.video[0]
            for _ in container.decode(stream):
                break
    except av.error.DecoderNotFoundError:
        return f"{path}: no decoder for its video codec in this FFmpeg build"
    except av.error.FFmpegError as error:
        return f"{path}: not a readable video ({error.strerror or type(error).__name__})"
    return f"{path}: OpenCV's FFmpeg cannot open this video, though FFmpeg reads it"


def _capture_info(capture: cv2.VideoCapture, kind: str, location: str) -> SourceInfo:
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return SourceInfo(
        kind,
        location,
        fps if math.isfinite(fps) and fps > 0 else None,
        count if count > 0 else None,
    )


def _first_frame(source: CaptureSource, what: str) -> None:
    ok, frame = source.capture.read()
    if not ok or frame is None:
        source.close()
        raise InputError(f"{what}: opened, but no frame could be decoded from it")
    source.pending = frame
    source.info.height, source.info.width = frame.shape[:2]


def open_source(source: str | None, camera: int | None = None) -> FrameSource:
    """Open a video file, a folder of images, a camera (``camera``) or a URL OpenCV opens, and
    decode its first frame; one line when any of it fails (nothing is left open then)."""
    if camera is not None:
        if source is not None:
            raise InputError("give a video, a folder or a URL, or --camera N, not both")
        if camera < 0:
            raise InputError(f"--camera must be ≥ 0, got {camera}")
        capture = cv2.VideoCapture(camera)
        if not capture.isOpened():
            capture.release()
            raise InputError(f"camera {camera}: no such camera here, or it is in use")
        opened = CaptureSource(capture, SourceInfo("camera", f"camera {camera}"))
        opened.info.fps = _capture_info(capture, "camera", "").fps
        _first_frame(opened, f"camera {camera}")
        return opened
    if source is None:
        raise InputError("give a video file, a folder of images, a URL, or --camera N")
    if "://" in source:
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise InputError(f"{source}: OpenCV's FFmpeg cannot open this URL")
        info = _capture_info(capture, "url", source)  # a live stream declares no length
        opened = CaptureSource(capture, info)
        _first_frame(opened, source)
        return opened
    path = Path(source)
    if path.is_dir():
        return _open_folder(path)
    if not path.exists():
        raise InputError(f"{path}: no such video file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: the video file is not readable (permissions)")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise InputError(_why_unopenable(path))
    info = _capture_info(capture, "file", str(path.resolve()))
    opened = CaptureSource(capture, info)
    try:
        _first_frame(opened, str(path))
    except InputError:
        raise InputError(_why_unopenable(path)) from None
    info.sha256 = file_digest(path)
    return opened


def _open_folder(path: Path) -> FolderSource:
    paths = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=_natural_key,
    )
    if not paths:
        raise InputError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    first = read_frame(paths[0])
    info = SourceInfo("folder", str(path.resolve()), None, len(paths), *first.shape[1::-1])
    return FolderSource(paths, info)


def parse_box(text: str) -> list[float]:
    """``x,y,w,h`` (commas or spaces, as a ground-truth line has them) as four numbers; one
    line otherwise (the box's own checks come with the first frame)."""
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers x,y,w,h") from None
    if len(values) != 4:
        raise InputError(f"--box {text!r}: expected four numbers x,y,w,h, got {len(values)}")
    return values


def result_name(source: FrameSource) -> str:
    """The name of the run's result files: the video's or folder's stem, ``camera0``,
    ``stream``."""
    info = source.info
    if info.kind == "camera":
        return info.location.replace(" ", "")
    if info.kind == "url":
        return "stream"
    stem = Path(info.location).stem if info.kind == "file" else Path(info.location).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "video"


class VideoFile:
    """A video written under a hidden name beside ``target`` and renamed by :meth:`finish`,
    so a file at the target is always whole (:meth:`abandon` leaves nothing). The container
    comes from the suffix (:data:`RENDER_CODECS`); frames are BGR, as OpenCV writes them."""

    def __init__(self, target: Path, fps: float, size: tuple[int, int], what: str) -> None:
        check_render_target(target, what)
        suffix = target.suffix.lower()
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.partial = target.with_name(f".{target.stem}.partial{suffix}")
        fourcc = cv2.VideoWriter_fourcc(*RENDER_CODECS[suffix])
        self.writer = cv2.VideoWriter(str(self.partial), fourcc, fps, size)
        if not self.writer.isOpened():
            self.abandon()
            raise InputError(f"{what} {target}: OpenCV cannot write this video here")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    def finish(self) -> None:
        self.writer.release()
        os.replace(self.partial, self.target)

    def abandon(self) -> None:
        self.writer.release()
        self.partial.unlink(missing_ok=True)


class Renderer(VideoFile):
    """The annotated video of a run: every frame with its box and score drawn."""

    def __init__(self, target: Path, fps: float, size: tuple[int, int]) -> None:
        super().__init__(target, fps, size, "--render")

    def draw(self, image: np.ndarray, box: list[float], score: float | None) -> None:
        frame = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        x, y, w, h = (round(v) for v in box)
        thickness = max(2, round(min(frame.shape[:2]) / 240))
        cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 255, 0), thickness)
        label = "init" if score is None else f"{score:.2f}"
        cv2.putText(
            frame, label, (x, max(y - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1
        )
        self.write(frame)


@dataclass
class VideoRun:
    """What :func:`track_video` did."""

    name: str
    boxes: np.ndarray
    scores: list[float]
    source_indices: list[int]
    seconds: float
    complete: bool
    frame_ms: list[float]  # wall ms of every tracked frame
    stages: dict[str, list[float]]  # ms per stage per tracked frame
    stopped: str | None = None
    rendered: Path | None = None
    executor: str = "eager"
    notes: dict[str, object] = field(default_factory=dict)

    def median_ms(self) -> float:
        """Median ms of the tracked frames after the first (auto's one tuning frame is an
        outlier the median ignores)."""
        return float(np.median(self.frame_ms[1:])) if len(self.frame_ms) > 1 else 0.0


def track_video(
    source: FrameSource,
    box: list[float],
    out: Path,
    make_tracker: Callable[[], object],
    frames: FrameRange | None = None,
    render: Path | None = None,
    on_frame: Callable[[int, float], None] | None = None,
    settings: dict[str, object] | None = None,
) -> VideoRun:
    """Track ``source`` from ``box`` on its first chosen frame and write the run to ``out``.

    ``make_tracker()`` builds the :class:`~headway.tracking.live.FrameTracker` (called after
    the checks, so a bad box costs no weights or tuning, and before anything is written;
    frames are handed to it as RGB). ``on_frame(k, fps)`` runs after each tracked frame. The
    source and the tracker are closed at the end; a folder this call made is removed when the
    run fails (a stream that stops or Ctrl-C is not a failure: its boxes are written).
    """
    frames = frames or FrameRange()
    name = result_name(source)
    created = not out.exists()
    tracker: object | None = None
    try:
        check_file_targets(out, ["run.json", f"{name}_scores.txt", *result_file_names(name)])
        identity = _identity(source, frames, settings or {})
        _check_earlier_run(out, identity)
        if render is not None:
            check_render_target(render)
        first = _seek_first(source, frames)
        where = f"{source.info.location} (frame {frames.start})"
        check_init_box(box, first.shape, where)
        tracker = make_tracker()  # weights and executor: before anything is written
        out.mkdir(parents=True, exist_ok=True)
        with locked_folder(out):
            fps = (source.info.fps or 30.0) / frames.every
            renderer = Renderer(render, fps, (first.shape[1], first.shape[0])) if render else None
            try:
                run = _frame_loop(source, first, box, tracker, frames, renderer, on_frame)
            except BaseException:
                if renderer is not None:
                    renderer.abandon()
                raise
            run.name = name
            if renderer is not None:
                renderer.finish()
                run.rendered = render
            run.executor = str(getattr(tracker, "executor", "eager"))
            plan = getattr(tracker, "plan", None)
            if plan is not None:
                run.notes["auto"] = plan.to_json()
            _write_run(out, run, source, frames, settings or {})
            return run
    except BaseException:
        if created:  # a folder this call made holds nothing of a failed run
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if tracker is not None:
            tracker.close()  # type: ignore[attr-defined]
        source.close()


def _identity(
    source: FrameSource, frames: FrameRange, settings: dict[str, object]
) -> dict[str, object]:
    """What makes two video runs the same run: the source, the frame range, the settings."""
    info = source.info
    return json.loads(
        json.dumps(
            {
                "source": {"kind": info.kind, "location": info.location, "sha256": info.sha256},
                "range": {"start": frames.start, "end": frames.end, "every": frames.every},
                "settings": settings,
            },
            default=str,
        )
    )


def _check_earlier_run(out: Path, identity: dict[str, object]) -> None:
    """A folder holding another run (a dataset run, another source, range or settings) is
    refused in one line; the same run is tracked again and replaced."""
    path = out / "run.json"
    if not path.exists():
        return
    record = read_json_file(path, "run record")
    earlier = record.get("run") if record.get("kind") == "video" else None
    if not isinstance(earlier, dict):
        raise InputError(f"{out} holds a dataset run (its run.json); give another --out")
    for key in identity:
        if earlier.get(key) != identity[key]:
            raise InputError(
                f"{out} holds a video run with another {key} ({earlier.get(key)} there, "
                f"{identity[key]} now); give another --out"
            )


def check_render_target(target: Path, what: str = "--render") -> None:
    """One line for a video file headway cannot write: an unknown suffix, a folder there."""
    if target.suffix.lower() not in RENDER_CODECS:
        raise InputError(
            f"{what} {target}: use one of {', '.join(RENDER_CODECS)} (the container is chosen "
            "by the suffix)"
        )
    if target.is_dir():
        raise InputError(f"{what} {target} is a folder")


def _seek_first(source: FrameSource, frames: FrameRange) -> np.ndarray:
    for _ in range(frames.start):
        if not source.skip():
            raise InputError(
                f"{source.info.location}: --start {frames.start} is past its end "
                f"({source.read_count} frames)"
            )
    first = source.read()
    if first is None:
        raise InputError(f"{source.info.location}: --start {frames.start} is past its end")
    check_frame_size(first, None, source.info.location)
    return first


def _frame_loop(
    source: FrameSource,
    first: np.ndarray,
    box: list[float],
    tracker: object,
    frames: FrameRange,
    renderer: Renderer | None,
    on_frame: Callable[[int, float], None] | None,
) -> VideoRun:
    """Track until the source or the range ends, or Ctrl-C; keep every box tracked."""
    began = time.perf_counter()
    result = tracker.init(first, box)  # type: ignore[attr-defined]
    boxes, scores, indices = [list(result.box)], [float("nan")], [frames.start]
    frame_ms = [result.ms]
    stages = {name: [result.stages.get(name, 0.0)] for name in STAGES}
    if renderer is not None:
        renderer.draw(first, box, None)
    stopped: str | None = None
    index = frames.start
    last = time.perf_counter()
    try:
        while True:
            index += 1
            if frames.done(index):
                break
            if not frames.wanted(index):
                if not source.skip():
                    break
                continue
            image = source.read()
            if image is None:
                break
            result = tracker.update(image)  # type: ignore[attr-defined]
            boxes.append(list(result.box))
            scores.append(result.score)
            indices.append(index)
            frame_ms.append(result.ms)
            for name in STAGES:
                stages[name].append(result.stages.get(name, 0.0))
            if renderer is not None:
                renderer.draw(image, list(result.box), result.score)
            now = time.perf_counter()
            if on_frame is not None:
                on_frame(len(boxes), 1.0 / max(now - last, 1e-9))
            last = now
        stopped = source.stopped
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C)"
    except InputError as error:  # a frame of another size, a damaged image in a folder
        stopped = f"{source.info.location} frame {index}: {error}"
    seconds = time.perf_counter() - began
    return VideoRun(
        "", np.asarray(boxes), scores, indices, seconds, stopped is None, frame_ms, stages, stopped
    )


def _write_run(
    out: Path,
    run: VideoRun,
    source: FrameSource,
    frames: FrameRange,
    settings: dict[str, object],
) -> None:
    """Times, stages and boxes (pytracking layout, boxes last), then run.json."""
    result = SequenceResult(run.boxes, np.asarray(run.frame_ms) / 1e3, run.stages)
    write_sequence_result(out, run.name, result, "otb")
    pairs = zip(run.source_indices, run.scores, strict=True)
    scores = "".join(f"{index}\t{score:.4f}\n" for index, score in pairs)
    atomic_write_text(out / f"{run.name}_scores.txt", scores)
    record = {
        "kind": "video",
        "run": _identity(source, frames, settings),  # compared by a rerun into the folder
        "source": asdict(source.info),
        "frames": {
            "start": frames.start,
            "end": frames.end,
            "every": frames.every,
            "tracked": len(run.boxes),
            "read": source.read_count,
        },
        "complete": run.complete,
        "stopped": run.stopped,
        "executor": run.executor,
        "seconds": round(run.seconds, 3),
        "rendered": str(run.rendered) if run.rendered else None,
        "settings": settings,
        **run.notes,
    }
    atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
