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

The export is complete or absent (a temporary folder that takes ``out``'s place); it holds only
the layout's files. A hidden ``.<out>.headway-export.json`` beside it (the run, layout and
sequences) tells a later export that it may replace the folder, when the folder holds nothing
else. The run folder is only read.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headway.errors import InputError
from headway.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_name_lengths,
    read_json_file,
    read_number_rows,
    replace_folder,
    require_folder,
    staging_folder,
)
from headway.tracking.datasets import otb_protocol_evident, otb_protocols_differ

LAYOUTS = ("got10k", "trackingnet", "lasot", "otb")


@dataclass
class ExportSummary:
    """What :func:`export_results` wrote."""

    layout: str
    sequences: list[str]
    files: list[Path]


def _run_record(run_dir: Path) -> dict:
    """run.json of the run (empty for a folder of result files from elsewhere)."""
    path = run_dir / "run.json"
    return read_json_file(path, "run record") if path.exists() else {}


def _run_sequences(run_dir: Path, record: dict) -> list[str]:
    """The sequences the run tracked: those run.json counts frames for, else (results from
    another tool) those with a box file."""
    frames = record.get("frames")
    if isinstance(frames, dict) and frames:
        return sorted(frames)
    names = sorted(
        p.stem for p in run_dir.glob("*.txt") if p.is_file() and not p.stem.endswith("_time")
    )
    if not names:
        raise InputError(f"{run_dir}: no result files (<sequence>.txt) to export")
    return names


def _check_complete(run_dir: Path, record: dict, names: list[str]) -> None:
    """Refuse a run that failed on some sequences or did not finish them: a submission that
    silently lacks sequences scores them as lost."""
    problems = record.get("problems") or {}
    if problems:
        first, reason = next(iter(problems.items()))
        raise InputError(
            f"{run_dir}: run.json lists {len(problems)} sequence(s) that failed ({first}: "
            f"{reason}); fix them and rerun `headway track` into this folder, then export"
        )
    unfinished = [n for n in names if not (run_dir / f"{n}.txt").is_file()]
    if unfinished:
        raise InputError(
            f"{run_dir}: {len(unfinished)} sequence(s) not finished ({', '.join(unfinished[:3])}"
            f"{' …' if len(unfinished) > 3 else ''}); rerun `headway track` into this folder"
        )


def _box_text(boxes: np.ndarray) -> str:
    return "".join(",".join(f"{v:.4f}" for v in box) + "\n" for box in boxes)


def _times(run_dir: Path, name: str, frames: int) -> np.ndarray:
    """Seconds per frame from the run (``<seq>_time.txt``, or ``times/<seq>_time.txt`` where
    the folder is itself an export in the OTB or LaSOT layout), or zeros (unknown) when there
    is no time file."""
    path = run_dir / f"{name}_time.txt"
    if not path.is_file():
        path = run_dir / "times" / f"{name}_time.txt"
    if not path.is_file():
        return np.zeros(frames)
    times = read_number_rows(path, 1, "time file", allow_nan=False)[:, 0]
    if len(times) != frames:
        raise InputError(f"{path}: {len(times)} times for {frames} boxes")
    return times


def _check_otb_protocol(run_dir: Path, boxes: dict[str, int]) -> None:
    """Refuse an OTB-protocol run whose names or frames got10k's ExperimentOTB reads otherwise:
    by run.json's format, or, without one (results from pytracking or CSWinTT, or a run whose
    run.json is gone), where the names or Tiger1's length say so."""
    fmt = _run_record(run_dir).get("format")
    if fmt == "otb":
        differ = [n for n in boxes if otb_protocols_differ(n)]
    elif fmt is None:
        differ = [n for n, count in boxes.items() if otb_protocol_evident(n, count)]
    else:
        return
    if differ:
        shown_names = ", ".join(differ[:4]) + (
            f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        )
        raise InputError(
            f"{run_dir} followed the OTB protocol, which got10k's ExperimentOTB (the otb layout) "
            f"names or frames otherwise for {shown_names} (Jogging_1 is Jogging.1, Human4_2 is "
            "Human4, Tiger1 starts at frame 1): track with --format otb-got10k for this layout"
        )


EXPORT_MARK = ".headway-export.json"  # beside the folder (inside it, from older versions)


def _mark_path(out: Path) -> Path:
    """Where an export's record lives: beside its folder, so a layout folder that a toolkit
    zips whole (GOT-10k's ``report()`` for the test server) holds only the layout's files."""
    return out.parent / f".{out.name}{EXPORT_MARK}"


def _layout_entries(layout: str, sequences: list[str]) -> set[str]:
    """The names an export of ``sequences`` in ``layout`` puts at its folder's top."""
    if layout == "got10k":
        return set(sequences)
    if layout == "trackingnet":
        return {f"{name}.txt" for name in sequences} | {"submission.zip"}
    return {f"{name}.txt" for name in sequences} | {"times"}


def _record_entries(record: object) -> set[str] | None:
    """The top-level names an export record's layout and sequences account for (with those of
    the export it replaces, while it is being replaced), or None for no such record."""
    if not isinstance(record, dict):
        return None
    layout, sequences = record.get("layout"), record.get("sequences")
    if layout not in LAYOUTS or not isinstance(sequences, list):
        return None
    if not all(isinstance(name, str) for name in sequences):
        return None
    entries = _layout_entries(str(layout), sequences)
    earlier = _record_entries(record.get("replacing")) if "replacing" in record else set()
    return entries | (earlier or set())


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if _record_entries(record) is not None else None


def _earlier_export(out: Path) -> bool:
    """Whether ``out`` is an export headway wrote: its record reads, and the folder holds
    nothing but what that record's layout and sequences put there (a record someone wrote or
    copied into a folder of their own files does not make those files replaceable)."""
    for mark in (_mark_path(out), out / EXPORT_MARK):
        try:
            expected = _record_entries(json.loads(mark.read_text()))
            entries = {entry.name for entry in out.iterdir()} - {EXPORT_MARK}
        except (OSError, ValueError):
            continue
        if expected is not None and entries <= expected:
            return True
    return False


def _output_folder(out: Path) -> Path:
    """``out`` as the folder the export replaces: absolute, a symbolic link followed to the
    folder it names (that folder gets the export, not a new one in the link's place); one line
    for a link to nothing, the current folder or one above it, and a mount point (neither can
    be replaced by a rename)."""
    given = out
    if out.is_symlink():
        if not out.exists():
            raise InputError(
                f"{given}: a symbolic link to {os.readlink(out)}, which does not exist; "
                "make that folder or choose another --out"
            )
        out = out.resolve()
    out = Path(os.path.abspath(out))
    here = Path.cwd().resolve()
    if out.exists() and (out.resolve() == here or out.resolve() in here.parents):
        raise InputError(
            f"{given}: the export replaces its whole folder, so it cannot be the current "
            "folder or one above it; name a folder for it (e.g. --out export)"
        )
    if os.path.ismount(out):
        raise InputError(
            f"{given}: a mount point, which the export cannot replace (it renames a finished "
            "folder into place); choose a folder inside it"
        )
    return out


def export_results(run_dir: str | Path, out: str | Path, layout: str) -> ExportSummary:
    """Write every sequence of ``run_dir`` in the submission layout ``layout`` as the folder
    ``out``: complete or absent. Every box is checked first (finite, one per frame of the
    sequence as run.json counts them; runs with failed or unfinished sequences are refused),
    the files are written into a temporary folder beside ``out`` and that folder then takes
    ``out``'s place, so no stale sequence of an earlier export survives and an interrupted
    export leaves the earlier one (or nothing), never a mix. ``out`` may be absent, empty, or
    an earlier headway export; anything else is refused."""
    run_dir, out = Path(run_dir), _output_folder(Path(out))
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    require_folder(run_dir, "run folder")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        # inside the run, its files would be read back as the run's own on the next export
        raise InputError(f"{out}: export into another folder than the run itself")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not _earlier_export(out):
        raise InputError(
            f"{out}: holds files that are not a headway export (the export replaces the whole "
            "folder); choose an empty or new folder"
        )
    record = _run_record(run_dir)
    names = _run_sequences(run_dir, record)
    _check_complete(run_dir, record, names)
    frames = record.get("frames") if isinstance(record.get("frames"), dict) else {}
    # read and check everything first, so a bad file leaves nothing half-exported
    runs = {}
    for name in names:
        path = run_dir / f"{name}.txt"
        boxes = read_number_rows(path, 4, "result file", allow_nan=False)
        if name in frames and len(boxes) != frames[name]:
            raise InputError(
                f"{path}: {len(boxes)} boxes for a sequence of {frames[name]} frames (run.json)"
            )
        runs[name] = (boxes, _times(run_dir, name, len(boxes)))
    if layout == "otb":
        _check_otb_protocol(run_dir, {name: len(boxes) for name, (boxes, _) in runs.items()})
    targets: dict[str, str] = {}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, (boxes, times) in runs.items():
            text = _box_text(boxes)
            time_text = "".join(f"{t:.8f}\n" for t in times)
            if layout == "got10k":
                targets[f"{name}/{name}_001.txt"] = text
                targets[f"{name}/{name}_time.txt"] = time_text
            elif layout == "trackingnet":
                targets[f"{name}.txt"] = text
                bundle.writestr(f"{name}.txt", text)
            else:
                targets[f"{name}.txt"] = text
                targets[f"times/{name}_time.txt"] = time_text
    check_name_lengths(out, "--out")
    for relative in targets:
        check_name_lengths(relative, "export file")
    staging = staging_folder(out)
    try:
        for relative, content in targets.items():
            atomic_write_text(staging / relative, content)  # makes the folders
        if layout == "trackingnet":
            atomic_write_bytes(staging / "submission.zip", archive.getvalue())
        mark = {"run": str(run_dir.resolve()), "layout": layout, "sequences": names}
        earlier = _read_record(_mark_path(out))
        # while the folders swap, the record accounts for both: whichever is in place after a
        # crash is still known as an export
        replacing = {**mark, "replacing": earlier} if earlier else mark
        atomic_write_text(_mark_path(out), json.dumps(replacing, indent=2))
        replace_folder(staging, out)
        atomic_write_text(_mark_path(out), json.dumps(mark, indent=2))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = [out / relative for relative in targets]
    if layout == "trackingnet":
        written.append(out / "submission.zip")
    return ExportSummary(layout, names, written)
