"""A run folder's results in the layouts the benchmarks' own tools and servers read.

- ``got10k``: ``<out>/<seq>/<seq>_001.txt`` (x,y,w,h comma-separated) and
  ``<out>/<seq>/<seq>_time.txt`` (seconds per frame), as the GOT-10k toolkit's ``report()`` and
  its test server read them.
- ``trackingnet``: ``<out>/<seq>.txt`` comma-separated, zipped flat into
  ``<out>/submission.zip`` for the evaluation server.
- ``lasot`` / ``otb``: ``<out>/<seq>.txt`` comma-separated and ``<out>/times/<seq>_time.txt``,
  what the got10k toolkit's OTB-style experiments read.

Every file is written atomically; the run folder is only read.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headway.errors import InputError
from headway.io import atomic_write_bytes, atomic_write_text
from headway.tracking.results import read_boxes_file

LAYOUTS = ("got10k", "trackingnet", "lasot", "otb")


@dataclass
class ExportSummary:
    """What :func:`export_results` wrote."""

    layout: str
    sequences: list[str]
    files: list[Path]


def _run_sequences(run_dir: Path) -> list[str]:
    """Names of the sequences with a box file in ``run_dir``."""
    names = sorted(p.stem for p in run_dir.glob("*.txt") if not p.stem.endswith("_time"))
    if not names:
        raise InputError(f"{run_dir}: no result files (<sequence>.txt) to export")
    return names


def _box_text(boxes: np.ndarray) -> str:
    return "".join(",".join(f"{v:.4f}" for v in box) + "\n" for box in boxes)


def _times(run_dir: Path, name: str, frames: int) -> np.ndarray:
    """Seconds per frame from the run, or zeros (unknown) when the run has no time file."""
    path = run_dir / f"{name}_time.txt"
    if not path.is_file():
        return np.zeros(frames)
    times = np.loadtxt(path, ndmin=1)
    if len(times) != frames:
        raise InputError(f"{path}: {len(times)} times for {frames} boxes")
    return times


def export_results(run_dir: str | Path, out: str | Path, layout: str) -> ExportSummary:
    """Write every sequence of ``run_dir`` in the submission layout ``layout`` under ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder does not exist")
    if out.resolve() == run_dir.resolve():
        raise InputError(f"{out}: export into another folder than the run itself")
    names = _run_sequences(run_dir)
    # read and check everything first, so a bad file leaves nothing half-exported
    runs = {}
    for name in names:
        boxes = read_boxes_file(run_dir / f"{name}.txt")
        runs[name] = (boxes, _times(run_dir, name, len(boxes)))
    targets: dict[Path, str] = {}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, (boxes, times) in runs.items():
            text = _box_text(boxes)
            time_text = "".join(f"{t:.8f}\n" for t in times)
            if layout == "got10k":
                targets[out / name / f"{name}_001.txt"] = text
                targets[out / name / f"{name}_time.txt"] = time_text
            elif layout == "trackingnet":
                targets[out / f"{name}.txt"] = text
                bundle.writestr(f"{name}.txt", text)
            else:
                targets[out / f"{name}.txt"] = text
                targets[out / "times" / f"{name}_time.txt"] = time_text
    written: list[Path] = []
    for path, content in targets.items():
        atomic_write_text(path, content)  # makes the folders
        written.append(path)
    if layout == "trackingnet":
        atomic_write_bytes(out / "submission.zip", archive.getvalue())
        written.append(out / "submission.zip")
    return ExportSummary(layout, names, written)
