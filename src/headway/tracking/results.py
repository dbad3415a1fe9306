"""Result files in the pytracking layout: ``<run>/<seq>.txt`` (one box per frame),
``<seq>_time.txt`` (seconds per frame) and headway's ``<seq>_stages.json`` (per-stage ms).

Every file is written to a temporary name and renamed, so a file that exists is complete; the
box file is written last, so its presence marks a finished sequence and a rerun can skip it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headway.errors import InputError
from headway.io import atomic_write_text, read_json_file, read_number_rows


@dataclass
class SequenceResult:
    """Boxes [x, y, w, h] per frame, wall time per frame (s), per-stage times (ms) per frame,
    and, from hosts that read the image files themselves, the read time per frame (ms)."""

    boxes: np.ndarray
    frame_times: np.ndarray
    stage_times: dict[str, list[float]] = field(default_factory=dict)
    template_updates: int = 0
    read_ms: np.ndarray | None = None


# CSWinTT's writer: comma-separated for got10k/trackingnet, tab-separated otherwise. headway keeps
# three decimals everywhere (the official tab files truncate to integers, which loses accuracy).
DELIMITERS = {"got10k": ",", "trackingnet": ","}


def result_file_names(name: str) -> tuple[str, str, str]:
    """The files a tracked sequence leaves in its run folder: boxes, times, stage times."""
    return f"{name}.txt", f"{name}_time.txt", f"{name}_stages.json"


def box_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.txt"


def is_complete(run_dir: Path, name: str, num_frames: int) -> bool:
    """True when the sequence's box file exists with one line per frame."""
    path = box_path(run_dir, name)
    if not path.is_file():
        return False
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]  # bytes: see eval
    return len(lines) == num_frames


def write_sequence_result(
    run_dir: Path, name: str, result: SequenceResult, dataset_format: str
) -> None:
    """Write time, stage and box files (boxes last: they mark completion)."""
    delimiter = DELIMITERS.get(dataset_format, "\t")
    times = "".join(f"{t:.6f}\n" for t in result.frame_times)
    atomic_write_text(run_dir / f"{name}_time.txt", times)
    stages = {"template_updates": result.template_updates, "stage_ms": result.stage_times}
    atomic_write_text(run_dir / f"{name}_stages.json", json.dumps(stages))
    rows = "".join(delimiter.join(f"{v:.3f}" for v in box) + "\n" for box in result.boxes)
    atomic_write_text(box_path(run_dir, name), rows)


def read_boxes_file(path: Path) -> np.ndarray:
    """Read a result file written by headway or pytracking (tab or comma separated); NaN rows
    are kept for each convention's rule, infinite values and text are refused with the line."""
    if not path.is_file() and not path.is_dir():
        raise InputError(f"{path}: result file is missing")
    return read_number_rows(path, 4, "result file")


def read_stage_times(run_dir: Path, name: str) -> dict[str, Any] | None:
    path = run_dir / f"{name}_stages.json"
    return read_json_file(path, "stage times") if path.exists() else None
