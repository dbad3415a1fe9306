"""A tracker served in sessions: the Open Inference Protocol's sequence parameters.

A request carries ``sequence_id`` (non-zero) and, on the first one, ``sequence_start``; the
last may carry ``sequence_end``, as tritonclient sends them (``client.infer(...,
sequence_id=7, sequence_start=True)``). The first request holds a frame (``FRAME``, uint8
H×W×3, in the model's ``color`` order) and the target's box (``BOX``, x, y, w, h); later
requests hold a frame and get back the box and its score (``SCORE``, 0–1).

Each session is its own tracker state (templates, last box, frame count) over one executor
the model loads once; sessions are isolated from one another, and requests run one at a time
on the model's own thread (one executor, no interleaving inside a frame). A session idle longer
than ``max_sequence_idle_microseconds`` expires; at most ``max_candidate_sequences`` are open,
and a start beyond that is refused with :class:`TooManySessions` (HTTP 429,
RESOURCE_EXHAUSTED) until one ends or expires.
"""

from __future__ import annotations

import collections
import logging
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from headway.errors import InputError, first_line
from headway.serving.config import ModelConfig, TensorSpec
from headway.serving.errors import (
    BadRequest,
    ModelFailure,
    ModelUnavailable,
    RequestTimeout,
    ServingError,
    TooManySessions,
)

log = logging.getLogger(__name__)

INPUTS = (TensorSpec("FRAME", "UINT8", (-1, -1, 3)), TensorSpec("BOX", "FP32", (4,)))
OUTPUTS = (TensorSpec("BOX", "FP32", (4,)), TensorSpec("SCORE", "FP32", (1,)))
EXPIRED_KEPT = 4096  # ids of expired sessions remembered, to say "expired" rather than "unknown"


@dataclass(frozen=True)
class SequenceControl:
    """The request's sequence parameters."""

    id: str
    start: bool = False
    end: bool = False


@dataclass
class _Session:
    tracker: Any  # a CSWinTTTracker over the model's shared executor
    shape: tuple[int, ...]
    last_used: float
    frames: int = 0


def _synthetic_frames() -> tuple[list[np.ndarray], list[float]]:
    """A short synthetic sequence for ``auto`` to check and time on at load time (what the
    executor does is the same on any frames; its answers are checked against eager's)."""
    from headway.tracking.crop import read_frame
    from headway.tracking.datasets import load_dataset
    from headway.tracking.live import TUNE_FRAMES
    from headway.tracking.synth import SynthSettings, synthesize

    with tempfile.TemporaryDirectory(prefix="headway-tune-") as root:
        synthesize(root, 1, 0, SynthSettings(frames=TUNE_FRAMES))
        sequence = load_dataset(Path(root), "otb")[0]
        images = [read_frame(path) for path in sequence.frames]
        return images, [float(v) for v in sequence.init_box]


class TrackerSessions:
    """One tracker model: its network and executor, loaded once, and its open sessions."""

    def __init__(self, config: ModelConfig, threads: int = 1) -> None:
        from headway.models.pretrained import load_tracker_network
        from headway.tracking.backends import check_tracker_executor
        from headway.tracking.executors import Executor
        from headway.tracking.live import check_frame_executor, resolve_weights

        self.config = config
        size = config.tracker_config
        checkpoint = config.checkpoint
        if (
            checkpoint is not None
            and config.folder is not None
            and checkpoint
            not in (
                "builtin",
                "random",
            )
        ):
            checkpoint = str((config.folder / checkpoint).resolve())
        network = load_tracker_network(resolve_weights(checkpoint, size), config.seed, size)
        self.plan = None
        if config.executor == "auto":
            from headway.tracking.auto import tune_tracker

            images, box = _synthetic_frames()
            self.plan, tuned = tune_tracker(network, [], box, images=images)
            self.executor = tuned.executor  # type: ignore[attr-defined]
        else:
            check_frame_executor(config.executor, torch.device("cpu"))
            short, spec = check_tracker_executor(config.executor, "cpu")
            self.executor = Executor(network, torch.device("cpu"), spec, short)
        self.executor_name = self.plan.chosen if self.plan else config.executor
        self.sessions: dict[str, _Session] = {}
        self.expired: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.worker = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"headway-{config.name}",
            initializer=torch.set_num_threads,
            initargs=(threads,),
        )
        self.closed = False

    @property
    def idle_s(self) -> float:
        return self.config.sequence_batching.max_idle_us / 1e6

    # --- requests ----------------------------------------------------------------------------
    def submit(
        self,
        inputs: Mapping[str, Any],
        sequence: SequenceControl | None,
        timeout: float | None,
    ) -> Future[dict[str, np.ndarray]]:
        """Check the request's form now (one line naming what is wrong), then run it on the
        model's thread in arrival order."""
        name = self.config.name
        if sequence is None or sequence.id in ("", "0"):
            raise BadRequest(
                f"model {name!r} tracks in sessions: give a non-zero sequence_id (and "
                "sequence_start on a session's first request)"
            )
        frame = _frame(inputs, name)
        box = None
        if sequence.start:
            if "BOX" not in inputs:
                raise BadRequest(f"model {name!r}: a session's first request needs BOX (x,y,w,h)")
            box = np.asarray(_array(inputs["BOX"]), dtype=np.float64).reshape(-1)
            if box.size != 4:
                raise BadRequest(f"model {name!r}: BOX holds {box.size} values; give x, y, w, h")
        elif "BOX" in inputs:
            raise BadRequest(
                f"model {name!r}: BOX is only read on a session's first request "
                "(sequence_start); later requests send FRAME alone"
            )
        unknown = sorted(set(inputs) - {"FRAME", "BOX"})
        if unknown:
            raise BadRequest(f"model {name!r} has no input {unknown[0]!r} (its inputs: FRAME, BOX)")
        if self.config.color == "bgr":
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        deadline = time.monotonic() + timeout if timeout is not None else None
        if self.closed:
            raise ModelUnavailable(f"model {name!r} is closed")
        return self.worker.submit(self._run, frame, box, sequence, deadline)

    def _run(
        self,
        frame: np.ndarray,
        box: np.ndarray | None,
        sequence: SequenceControl,
        deadline: float | None,
    ) -> dict[str, np.ndarray]:
        name = self.config.name
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise RequestTimeout(f"model {name!r}: the request's timeout expired before its turn")
        self._expire(now)
        try:
            if box is not None:
                outputs = self._start(frame, box, sequence, now)
            else:
                outputs = self._track(frame, sequence, now)
        except InputError as error:
            raise BadRequest(f"model {name!r}, sequence {sequence.id}: {error}") from None
        except ServingError:
            raise
        except Exception as error:  # the executor failed: this session cannot go on
            self.sessions.pop(sequence.id, None)
            raise ModelFailure(f"model {name!r} failed: {first_line(error)}") from None
        if sequence.end:
            self.sessions.pop(sequence.id, None)
        return outputs

    def _expire(self, now: float) -> None:
        for key, session in list(self.sessions.items()):
            if now - session.last_used > self.idle_s:
                del self.sessions[key]
                self.expired[key] = now
        while len(self.expired) > EXPIRED_KEPT:
            self.expired.popitem(last=False)

    def _start(
        self, frame: np.ndarray, box: np.ndarray, sequence: SequenceControl, now: float
    ) -> dict[str, np.ndarray]:
        from headway.tracking.crop import check_frame_size, check_init_box
        from headway.tracking.tracker import CSWinTTTracker

        limit = self.config.sequence_batching.max_sequences
        if sequence.id not in self.sessions and len(self.sessions) >= limit:
            raise TooManySessions(
                f"model {self.config.name!r}: {limit} sessions are open, its "
                "max_candidate_sequences; end one (sequence_end) or wait for one to expire "
                f"({self.idle_s:g} s idle)"
            )
        check_frame_size(frame, None, "FRAME")
        check_init_box(box, frame.shape, "BOX")
        tracker = self.sessions[sequence.id].tracker if sequence.id in self.sessions else None
        tracker = tracker or CSWinTTTracker(self.executor)
        tracker.initialize(frame, [float(v) for v in box])
        tracker.timer.finish_frame()
        self.sessions[sequence.id] = _Session(tracker, frame.shape, now)
        self.expired.pop(sequence.id, None)
        return {"BOX": box.astype(np.float32), "SCORE": np.ones(1, np.float32)}

    def _track(
        self, frame: np.ndarray, sequence: SequenceControl, now: float
    ) -> dict[str, np.ndarray]:
        from headway.tracking.crop import check_frame_size

        session = self.sessions.get(sequence.id)
        if session is None:
            if sequence.id in self.expired:
                raise BadRequest(
                    f"model {self.config.name!r}: sequence {sequence.id} expired after "
                    f"{self.idle_s:g} s idle; start it again with sequence_start and a BOX"
                )
            raise BadRequest(
                f"model {self.config.name!r}: sequence {sequence.id} has no session; its first "
                "request needs sequence_start and a BOX"
            )
        check_frame_size(frame, session.shape, "FRAME")
        box, score = session.tracker.track(frame)
        session.tracker.timer.finish_frame()
        session.last_used, session.frames = now, session.frames + 1
        return {"BOX": np.asarray(box, np.float32), "SCORE": np.asarray([score], np.float32)}

    # --- stopping ----------------------------------------------------------------------------
    def open_sessions(self) -> int:
        return len(self.sessions)

    def close(self, wait: bool = True) -> None:
        """Finish the queued requests (``wait``), then release the executor."""
        self.closed = True
        self.worker.shutdown(wait=wait, cancel_futures=not wait)
        self.sessions.clear()
        self.executor.close()


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _frame(inputs: Mapping[str, Any], model: str) -> np.ndarray:
    if not isinstance(inputs, Mapping) or "FRAME" not in inputs:
        raise BadRequest(f"model {model!r}: every request needs FRAME (uint8, H×W×3)")
    frame = _array(inputs["FRAME"])
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise BadRequest(
            f"model {model!r}: FRAME must be UINT8 of shape [H, W, 3], got {frame.dtype} "
            f"{list(frame.shape)}"
        )
    return np.ascontiguousarray(frame)


def sequence_control(parameters: Mapping[str, Any]) -> SequenceControl | None:
    """The sequence parameters of a request's ``parameters`` (None when it has none); one line
    for a value of the wrong kind."""
    if "sequence_id" not in parameters:
        if parameters.get("sequence_start") or parameters.get("sequence_end"):
            raise BadRequest("sequence_start and sequence_end need a sequence_id")
        return None
    value = parameters["sequence_id"]
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise BadRequest(f"sequence_id must be an unsigned integer or a string, got {value!r}")
    if isinstance(value, int) and not 0 <= value < 2**64:
        raise BadRequest(f"sequence_id must be an unsigned 64-bit integer, got {value}")
    flags = []
    for key in ("sequence_start", "sequence_end"):
        flag = parameters.get(key, False)
        if not isinstance(flag, bool):
            raise BadRequest(f"{key} must be true or false, got {flag!r}")
        flags.append(flag)
    return SequenceControl(str(value), *flags)
