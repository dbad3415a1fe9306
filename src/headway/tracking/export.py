"""A run folder's results in the layouts the benchmarks' own tools and servers read.

- ``got10k``: ``<out>/<seq>/<seq>_001.txt`` (x,y,w,h comma-separated) and
  ``<out>/<seq>/<seq>_time.txt`` (seconds per frame), as the GOT-10k toolkit's ``report()`` and
  its test server read them.
- ``trackingnet``: ``<out>/<seq>.txt`` comma-separated, zipped flat into
  ``<out>/submission.zip`` for the evaluation server.
- ``lasot`` / ``otb``: ``<out>/<seq>.txt`` comma-separated and ``<out>/times/<seq>_time.txt``,
  what the got10k toolkit's ``ExperimentLaSOT`` / ``ExperimentOTB`` read. ``otb`` needs its
  names and frames: ``Jogging.1``, ``Human4``, every frame of Tiger1 — a run made with
  ``--format otb-got10k``. An OTB-protocol run (``--format otb``) exports only if it holds no
  sequence the two protocols treat differently, and is refused by name otherwise.

Every file is written atomically; the run folder is only read.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headway.errors import InputError
from headway.io import atomic_write_bytes, atomic_write_text, read_number_rows
from headway.tracking.datasets import otb_protocols_differ
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
    names = sorted(
        p.stem for p in run_dir.glob("*.txt") if p.is_file() and not p.stem.endswith("_time")
    )
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
    times = read_number_rows(path, 1, "time file", allow_nan=False)[:, 0]
    if len(times) != frames:
        raise InputError(f"{path}: {len(times)} times for {frames} boxes")
    return times


def _run_format(run_dir: Path) -> str | None:
    """The dataset format run.json records, or None where it records none."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("format") if isinstance(record, dict) else None


def _check_otb_protocol(run_dir: Path, names: list[str]) -> None:
    """Refuse an OTB-protocol run whose names or frames got10k's ExperimentOTB reads otherwise."""
    if _run_format(run_dir) != "otb":
        return
    differ = [n for n in names if otb_protocols_differ(n)]
    if differ:
        shown_names = ", ".join(differ[:4]) + (
            f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        )
        raise InputError(
            f"{run_dir} followed the OTB protocol, which got10k's ExperimentOTB (the otb layout) "
            f"names or frames otherwise for {shown_names} (Jogging_1 is Jogging.1, Human4_2 is "
            "Human4, Tiger1 starts at frame 1): track with --format otb-got10k for this layout"
        )


def export_results(run_dir: str | Path, out: str | Path, layout: str) -> ExportSummary:
    """Write every sequence of ``run_dir`` in the submission layout ``layout`` under ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder does not exist")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        # inside the run, its files would be read back as the run's own on the next export
        raise InputError(f"{out}: export into another folder than the run itself")
    names = _run_sequences(run_dir)
    if layout == "otb":
        _check_otb_protocol(run_dir, names)
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
