"""Tracking with ``headway-runner``: the network exported once per tracker, every sequence
tracked by the C++ process, its results read back into the same :class:`SequenceResult` the
Python tracker returns (so ``headway track``, resuming, scoring and Ray work unchanged)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import warnings
import weakref
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headway.errors import InputError
from headway.models.cswintt import CSWinTT
from headway.tracking.datasets import Sequence
from headway.tracking.native.build import require_runner
from headway.tracking.native.stages import export_native_model, native_spec
from headway.tracking.results import SequenceResult
from headway.tracking.settings import IMAGENET_MEAN, IMAGENET_STD, STAGES, TrackerSettings


class NativeRunError(InputError):
    """The runner failed for a reason other than bad input: its exit status (or the signal
    that ended it) and the tail of what it printed, in one line."""


def _ending(status: int, output: Path) -> str:
    """How the runner ended, in words: a signal by name, an exit status, or silence."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    if status != 0:
        return f"failed (exit status {status})"
    return f"exited 0 without writing its results ({output.name})"


def _tail(lines: list[str], keep: int = 3) -> str:
    """The last lines the runner printed, joined on one line (or that it printed nothing)."""
    return " | ".join(lines[-keep:])[-600:] if lines else "it printed nothing"


class NativeTracker:
    """Same use as :class:`~headway.tracking.tracker.CSWinTTTracker` (``run_sequence``,
    ``close``), but every frame is tracked by the C++ runner."""

    def __init__(
        self,
        network: CSWinTT,
        settings: TrackerSettings | None = None,
        device: torch.device | str = "cpu",
        executor: str = "cpp",
        head_threads: int = 0,
        intra_op_threads: int | None = None,
        head_intra_op_threads: int = 0,
    ) -> None:
        """``head_threads``: workers of ``cpp-heads``' pool (0: one per head);
        ``intra_op_threads``: LibTorch's threads in the runner (default: this process's);
        ``head_intra_op_threads``: each worker's own (0: as many as the runner's, which keeps
        every product blocked as in the eager network, so boxes stay bit-identical; fewer
        oversubscribe the cores less but sum in another order)."""
        self.spec = native_spec(executor)
        self.binary = require_runner()
        self.device = torch.device(device)
        self.settings = settings or TrackerSettings()
        self.executor_name = executor
        self.head_threads = head_threads
        self.head_intra_op_threads = head_intra_op_threads
        self.intra_op_threads = intra_op_threads or torch.get_num_threads()
        self.config = network.config
        self._folder = Path(tempfile.mkdtemp(prefix="headway-native-"))
        self._remove = weakref.finalize(self, shutil.rmtree, self._folder, True)
        network = network.to(self.device).eval()
        self.model_dir = export_native_model(network, self._folder / "model", executor)

    @torch.inference_mode()
    def encoder(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """The exported encoder run in this process (the files the runner loads), for checks."""

        def load(name: str) -> Any:
            package = self.model_dir / f"{name}.pt2"
            if package.exists():  # cpp-aoti
                return torch._inductor.aoti_load_package(str(package))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's notice
                return torch.jit.load(self.model_dir / f"{name}.pt", map_location=self.device)

        if self.spec.graph != "heads":
            return load("encoder")(tokens, padding_mask)
        x = tokens
        for layer in range(self.config.enc_layers):
            q, k, v = load(f"layer{layer}_project")(x)
            heads = [
                load(f"layer{layer}_head{h}")(q, k, v, padding_mask)
                for h in range(self.config.num_heads)
            ]
            x = load(f"layer{layer}_finish")(x, torch.cat(heads, dim=-1))
        return x

    def run_job(
        self,
        frames: Seq[str | Path],
        init_box: Seq[float],
        name: str = "sequence",
        on_frame: Callable[[int], None] | None = None,
        results_dir: Path | None = None,
        delimiter: str = "tab",
    ) -> dict[str, Any]:
        """Track ``frames`` from ``init_box``; the runner's raw output (full-precision boxes,
        confidences, per-frame seconds, read and stage milliseconds). With ``results_dir`` the
        runner also writes the result files there itself (``delimiter``: tab or comma)."""
        output = self._folder / "output.json"
        output.unlink(missing_ok=True)
        s = self.settings
        lines = {
            "model": str(self.model_dir),
            "mode": "heads" if self.spec.graph == "heads" else "stages",
            "template_factor": repr(s.template_factor),
            "search_factor": repr(s.search_factor),
            "update_interval": str(s.update_interval),
            "confidence_threshold": repr(s.confidence_threshold),
            "box_margin": repr(s.box_margin),
            "mean": " ".join(repr(v) for v in IMAGENET_MEAN),
            "std": " ".join(repr(v) for v in IMAGENET_STD),
            "init_box": " ".join(repr(float(v)) for v in init_box),
            "intra_op_threads": str(self.intra_op_threads),
            "head_threads": str(self.head_threads),
            "head_intra_op_threads": str(self.head_intra_op_threads),
            "output": str(output),
            "name": name,
            "progress": "1",
        }
        if results_dir is not None:
            Path(results_dir).mkdir(parents=True, exist_ok=True)
            lines.update(results_dir=str(results_dir), delimiter=delimiter)
        job = "".join(f"{k} {v}\n" for k, v in lines.items())
        job += "".join(f"frame {Path(f)}\n" for f in frames)
        job_file = self._folder / "job.txt"
        job_file.write_text(job)
        try:
            process = subprocess.Popen(
                [str(self.binary), "track", str(job_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except OSError as error:
            raise NativeRunError(
                f"headway-runner {self.binary} cannot be started ({error.strerror}); run "
                "`headway runner build --force`"
            ) from None
        messages = []
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("frame ") and line[6:].strip().isdigit():
                if on_frame is not None:
                    on_frame(int(line[6:]) - 1)
            else:
                messages.append(line.rstrip())
        status = process.wait()
        said = [m.removeprefix("headway-runner: ") for m in messages if m.strip()]
        if status == 2:
            raise InputError("; ".join(said) or "headway-runner refused its input")
        if status != 0 or not output.is_file():
            raise NativeRunError(f"headway-runner {_ending(status, output)}: {_tail(said)}")
        try:
            return json.loads(output.read_text())
        except (ValueError, UnicodeDecodeError):
            raise NativeRunError(
                f"headway-runner wrote unreadable results to {output}: {_tail(said)}"
            ) from None

    def run_frames(
        self,
        frames: Seq[str | Path],
        init_box: Seq[float],
        on_frame: Callable[[int], None] | None = None,
        name: str = "sequence",
        images: Seq[np.ndarray] | None = None,
    ) -> SequenceResult:
        """The frame loop of :meth:`CSWinTTTracker.run_frames`, run by the C++ runner over the
        image files ``frames`` (it reads them itself, so decoded ``images`` only say how many:
        ``read_ms`` says how long each read took)."""
        if images is not None:
            frames = list(frames)[: len(images)]
        raw = self.run_job(frames, [float(v) for v in init_box], name, on_frame)
        return SequenceResult(
            np.asarray(raw["boxes"], dtype=np.float64).reshape(-1, 4),
            np.asarray(raw["frame_seconds"], dtype=np.float64),
            {stage: list(raw["stage_ms"][stage]) for stage in STAGES},
            int(raw["template_updates"]),
            np.asarray(raw["read_ms"], dtype=np.float64),
        )

    def run_sequence(
        self, sequence: Sequence, on_frame: Callable[[int], None] | None = None
    ) -> SequenceResult:
        """Track a whole sequence from its first ground-truth box (one-pass evaluation)."""
        return self.run_frames(sequence.frames, sequence.init_box, on_frame, name=sequence.name)

    def close(self) -> None:
        """Remove the exported model (also done when the tracker is collected)."""
        self._remove()

    def __enter__(self) -> NativeTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
