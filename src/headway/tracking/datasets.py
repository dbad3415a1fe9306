"""Readers for the standard single-object-tracking folder layouts (OTB, GOT-10k, TrackingNet,
LaSOT). Each yields plain :class:`Sequence` objects; the tracker never knows which dataset it
runs on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from headway.errors import InputError
from headway.io import read_number_rows, read_text_file, require_folder

# ``otb-got10k``: an OTB folder read as the got10k toolkit's ExperimentOTB reads it (every frame
# of Tiger1; ``Jogging.1``, ``Human4`` names), for results its ``report()`` scores.
FORMATS = ("otb", "got10k", "trackingnet", "lasot", "otb-got10k")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")  # what the C++ runner reads too

# Template-update intervals of the cswintt_cls yaml (TEST.UPDATE_INTERVALS, keyed by the
# upper-cased dataset name); a name it does not list (OTB, NFS, GOT10K_VAL, ...) falls back to
# DATA.MAX_SAMPLE_INTERVAL = 200.
# TEST.UPDATE_INTERVALS of the official `baseline_cs` parameters, except GOT-10k test: the
# published GOT-10k numbers come from the README's command with `baseline_got10k_only`, whose
# yaml has no TEST block, so the config defaults apply (cswintt_cls/config.py: GOT10K_TEST 200).
OFFICIAL_UPDATE_INTERVALS = {
    "LASOT": 200,
    "UAV": 200,
    "VOT20LT": 200,
    "GOT10K_TEST": 200,
    "TRACKINGNET": 25,
    "VOT": 25,
    "VOT20": 25,
}
FALLBACK_UPDATE_INTERVAL = 200
DEFAULT_SPLITS = {"got10k": "val", "trackingnet": "TEST"}


def update_interval(format: str, split: str | None = None) -> int:
    """The official template-update interval for a dataset layout and split (GOT-10k test 200,
    as the run that produced the published GOT-10k numbers; GOT-10k val 200, TrackingNet 25,
    LaSOT 200, OTB 200). ``--update-interval 25`` gives the `baseline_cs` parameters' value."""
    name = "OTB" if format == "otb-got10k" else format.upper()
    if format == "got10k":
        name = f"GOT10K_{(split or DEFAULT_SPLITS['got10k']).upper()}"
    return OFFICIAL_UPDATE_INTERVALS.get(name, FALLBACK_UPDATE_INTERVAL)


@dataclass
class Sequence:
    """One tracking sequence: frame paths and per-frame ground truth [x, y, w, h].

    ``ground_truth`` rows are NaN where no annotation is given (test splits annotate only the
    first frame). ``target_visible`` is set where the dataset says when the target is absent
    (LaSOT occlusion/out-of-view, GOT-10k ``cover.label`` > 0 as its toolkit reads it).
    """

    name: str
    frames: list[Path]
    ground_truth: np.ndarray
    dataset: str
    target_visible: np.ndarray | None = None
    image_size: tuple[int, int] | None = None  # (width, height) where the dataset states it

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def init_box(self) -> np.ndarray:
        return self.ground_truth[0]

    @property
    def fully_annotated(self) -> bool:
        return not np.isnan(self.ground_truth).any()


# ---------------------------------------------------------------------------------------------
# Text files
# ---------------------------------------------------------------------------------------------


def read_boxes(path: Path) -> np.ndarray:
    """Read one [x, y, w, h] per line, separated by commas, tabs or spaces. NaN is accepted
    (absent targets); infinite values, text and non-UTF-8 bytes are refused with the line."""
    if not path.exists():
        link = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
        raise InputError(f"{path}: ground-truth file is missing{link}")
    rows = read_number_rows(path, 4, "ground-truth file")
    if not len(rows):
        raise InputError(f"{path}: ground-truth file is empty")
    return rows


def read_labels(path: Path, frames: int) -> np.ndarray:
    """Per-frame integer labels separated by commas or whitespace (LaSOT flags, GOT-10k cover
    and absence); exactly one per frame."""
    text = read_text_file(path, "label file")
    try:
        values = np.asarray([int(float(f)) for f in re.split(r"[,\s]+", text) if f], dtype=int)
    except (ValueError, OverflowError):  # text, or inf / NaN
        raise InputError(f"{path}: expected integer labels, one per frame") from None
    if len(values) != frames:
        raise InputError(f"{path}: {len(values)} labels for {frames} frames")
    return values


def read_resolution(path: Path) -> tuple[int, int] | None:
    """(width, height) from a GOT-10k ``meta_info.ini`` line ``resolution: (W, H)``."""
    if not path.is_file():
        return None
    for line in read_text_file(path, "meta_info file").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "resolution":
            numbers = re.findall(r"\d+", value)
            if len(numbers) == 2:
                return int(numbers[0]), int(numbers[1])
            raise InputError(f"{path}: resolution {value.strip()!r} is not (width, height)")
    return None


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder in numeric order of their names (``10.jpg`` after ``9.jpg``)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: frame folder is missing")
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]

    def order(p: Path) -> tuple[int, str]:
        digits = re.sub(r"\D", "", p.stem)
        return (int(digits) if digits else -1, p.name)

    return sorted(images, key=order)


def _align(name: str, frames: list[Path], boxes: np.ndarray, gt_path: Path) -> np.ndarray:
    """Ground truth padded with NaN when only the first frame is annotated; error otherwise."""
    if not frames:
        raise InputError(f"sequence {name}: no frames found")
    if len(boxes) == len(frames):
        return boxes
    if len(boxes) == 1:
        padded = np.full((len(frames), 4), np.nan)
        padded[0] = boxes[0]
        return padded
    raise InputError(
        f"{gt_path}: {len(boxes)} ground-truth lines for {len(frames)} frames of sequence {name}"
    )


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


# OTB-2015 as its toolkit (and pytracking) runs it: frames by image *number* (BlurCar1's folder
# starts at 0247.jpg), sequences whose folder holds more images than annotations, and Tiger1,
# whose protocol drops its first 5 frames and their annotations.
OTB_FRAME_RANGES = {
    "BlurCar1": (247, 988),
    "BlurCar3": (3, 359),
    "BlurCar4": (18, 397),
    "David": (300, 770),
    "Diving": (1, 215),
    "Football1": (1, 74),
    "Freeman3": (1, 460),
    "Freeman4": (1, 283),
}
OTB_SKIPPED_FIRST_FRAMES = {"Tiger1": 5}

Loader = Callable[[], Sequence]


def _image_number(path: Path) -> int:
    digits = re.sub(r"\D", "", path.stem)
    return int(digits) if digits else -1


def _otb_sequence(folder: Path, gt_path: Path, name: str, protocol: str = "otb") -> Sequence:
    frames = list_images(folder / "img")
    if folder.name in OTB_FRAME_RANGES:
        first, last = OTB_FRAME_RANGES[folder.name]
        frames = [f for f in frames if first <= _image_number(f) <= last]
        if not frames:
            raise InputError(
                f"{folder / 'img'}: no image numbered {first} to {last}, the frames the OTB "
                f"toolkit tracks of {folder.name}"
            )
    boxes = read_boxes(gt_path)
    skip = OTB_SKIPPED_FIRST_FRAMES.get(folder.name, 0) if protocol == "otb" else 0
    if skip and len(frames) <= skip:
        raise InputError(
            f"{folder}: {len(frames)} frames, but the OTB protocol starts {name} at frame "
            f"{skip + 1} (--format otb-got10k tracks every frame)"
        )
    boxes = _align(name, frames, boxes, gt_path)[skip:]
    return Sequence(name, frames[skip:], boxes, "otb")


def catalog_otb(root: Path, protocol: str = "otb") -> dict[str, Loader]:
    """``<root>/<Seq>/img/*.jpg`` and ``groundtruth_rect.txt`` (or ``.1.txt``/``.2.txt`` for
    several targets); empty annotation files (Human4's ``.1``) are not sequences, as in the OTB
    toolkit.

    ``protocol="otb"`` names and frames sequences as the OTB toolkit and pytracking do
    (``Jogging_1``, ``Human4_2``; Tiger1 from frame 6). ``protocol="got10k"`` as the got10k
    toolkit's ExperimentOTB does: a folder with one non-empty annotation keeps its name
    (``Human4``), several become ``<Seq>.1``, ``<Seq>.2`` numbered in order, and every frame
    of Tiger1 is tracked."""
    catalog: dict[str, Loader] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        annotated = [p for p in sorted(folder.glob("groundtruth*.txt")) if _annotated(p)]
        for rank, gt_path in enumerate(annotated, start=1):
            if protocol == "got10k":
                name = f"{folder.name}.{rank}" if len(annotated) > 1 else folder.name
            else:
                match = re.fullmatch(r"groundtruth_rect\.(\d+)\.txt", gt_path.name)
                if not match and gt_path.name != "groundtruth_rect.txt":
                    continue
                name = f"{folder.name}_{match.group(1)}" if match else folder.name
            if name in catalog:  # e.g. a folder Jogging.1 beside Jogging's first target
                raise InputError(
                    f"{root}: two sequences would be named {name} ({folder} and another "
                    "folder's numbered target); rename one of the folders"
                )
            catalog[name] = partial(_otb_sequence, folder, gt_path, name, protocol)
    return catalog


def _annotated(path: Path) -> bool:
    """Whether an annotation file holds anything (an empty one, like Human4's first, is no
    sequence). Only regular files are read here: a link to nothing, a pipe or a folder is a
    sequence whose reading names the problem."""
    if not path.is_file():
        return True
    try:
        with path.open("rb") as stream:
            return bool(stream.read(1 << 16).strip())
    except OSError:
        return True


# OTB-100's folders with several annotation files, as the OTB protocol names their targets
# (Human4's first file is empty: only its second target is a sequence)
OTB_NUMBERED_TARGETS = frozenset({"Jogging_1", "Jogging_2", "Skating2_1", "Skating2_2", "Human4_2"})
OTB_TIGER1_FRAMES = 354  # Tiger1's annotated frames; the OTB protocol tracks 349 of them


def otb_protocols_differ(name: str) -> bool:
    """Whether sequence ``name`` of an OTB run (OTB protocol) is named or framed differently by
    got10k's ExperimentOTB (a numbered target or a sequence whose first frames are dropped).
    Only OTB's own names: a synthetic ``car_3`` is no numbered target."""
    return name in OTB_NUMBERED_TARGETS or name in OTB_SKIPPED_FIRST_FRAMES


def otb_protocol_evident(name: str, boxes: int) -> bool:
    """Whether a result file of unknown protocol (no run.json) must come from the OTB
    protocol: a numbered target's name, or Tiger1 with its first frames dropped."""
    skipped = OTB_SKIPPED_FIRST_FRAMES.get(name)
    return name in OTB_NUMBERED_TARGETS or (
        skipped is not None and boxes == OTB_TIGER1_FRAMES - skipped
    )


def _got10k_sequence(folder: Path) -> Sequence:
    name = folder.name
    frames = list_images(folder)
    gt_path = folder / "groundtruth.txt"
    boxes = _align(name, frames, read_boxes(gt_path), gt_path)
    visible = None
    cover, absence = folder / "cover.label", folder / "absence.label"
    if cover.is_file():
        visible = read_labels(cover, len(frames)) > 0
    elif absence.is_file():
        visible = read_labels(absence, len(frames)) == 0
    size = read_resolution(folder / "meta_info.ini")
    return Sequence(name, frames, boxes, "got10k", visible, size)


def catalog_got10k(root: Path, split: str = "val") -> dict[str, Loader]:
    """``<root>/<split>/<seq>/{00000001.jpg, groundtruth.txt, cover.label, absence.label,
    meta_info.ini}``; ``root`` may also be the split folder itself. The target counts as visible
    where ``cover.label`` > 0 (what the official toolkit scores), else where ``absence.label``
    is 0; the image size comes from ``meta_info.ini`` (the toolkit clips boxes to it)."""
    split_dir = root / split if (root / split).is_dir() else root
    list_file = split_dir / "list.txt"
    if list_file.is_file():
        text = read_text_file(list_file, "sequence list")
        names = [n.strip() for n in text.splitlines() if n.strip()]
    else:
        names = sorted(p.name for p in split_dir.iterdir() if (p / "groundtruth.txt").is_file())
    return {name: partial(_got10k_sequence, split_dir / name) for name in names}


def _trackingnet_sequence(split_dir: Path, gt_path: Path) -> Sequence:
    name = gt_path.stem
    frames = list_images(split_dir / "frames" / name)
    return Sequence(name, frames, _align(name, frames, read_boxes(gt_path), gt_path), "trackingnet")


def catalog_trackingnet(root: Path, split: str = "TEST") -> dict[str, Loader]:
    """``<root>/<split>/anno/<seq>.txt`` and ``<root>/<split>/frames/<seq>/0.jpg, 1.jpg, …``.
    ``split`` may name several chunks, comma-separated (``TRAIN_0,TRAIN_1``), or ``TRAIN`` for
    every ``TRAIN_<k>`` chunk present; names must be unique across them."""
    if split == "TRAIN":
        chunks = sorted(
            (p.name for p in root.glob("TRAIN_*") if p.is_dir()),
            key=lambda c: int(c.split("_")[1]) if c.split("_")[1].isdigit() else -1,
        )
        if not chunks:
            raise InputError(f"{root}: no TRAIN_<k> chunk folders")
    else:
        chunks = [c.strip() for c in split.split(",") if c.strip()]
    catalog: dict[str, Loader] = {}
    for chunk in chunks:
        split_dir = root / chunk if (root / chunk).is_dir() else root
        anno_dir = split_dir / "anno"
        if not anno_dir.is_dir():
            raise InputError(f"{anno_dir}: TrackingNet annotation folder is missing")
        for gt_path in sorted(anno_dir.glob("*.txt")):
            if gt_path.stem in catalog:
                raise InputError(f"{gt_path}: sequence {gt_path.stem} is in two chunks")
            catalog[gt_path.stem] = partial(_trackingnet_sequence, split_dir, gt_path)
    return catalog


def _lasot_sequence(folder: Path) -> Sequence:
    frames = list_images(folder / "img")
    gt_path = folder / "groundtruth.txt"
    boxes = _align(folder.name, frames, read_boxes(gt_path), gt_path)
    visible = None
    occlusion, out_of_view = folder / "full_occlusion.txt", folder / "out_of_view.txt"
    if occlusion.is_file() and out_of_view.is_file():
        hidden = read_labels(occlusion, len(frames)) | read_labels(out_of_view, len(frames))
        visible = hidden == 0
    return Sequence(folder.name, frames, boxes, "lasot", visible)


def catalog_lasot(root: Path) -> dict[str, Loader]:
    """``<root>/<class>/<class>-<n>/{img/%08d.jpg, groundtruth.txt, full_occlusion.txt,
    out_of_view.txt}``; ``testing_set.txt`` in ``root``, if present, selects the sequences."""
    selection = root / "testing_set.txt"
    if selection.is_file():
        text = read_text_file(selection, "sequence list")
        names = [n.strip() for n in text.splitlines() if n.strip()]
        folders = [root / n.rsplit("-", 1)[0] / n for n in names]
    else:
        folders = sorted(p for p in root.glob("*/*") if (p / "groundtruth.txt").is_file())
    return {folder.name: partial(_lasot_sequence, folder) for folder in folders}


@dataclass
class SkippedSequence:
    """A sequence that could not be loaded, and why (reported instead of aborting a run)."""

    name: str
    reason: str


def load_dataset(
    root: str | Path,
    format: str,
    split: str | None = None,
    names: Iterable[str] | None = None,
    skipped: list[SkippedSequence] | None = None,
) -> list[Sequence]:
    """Read the sequences of a dataset folder in the given layout, optionally only ``names``
    (the others are not read at all).

    A sequence that cannot be loaded raises :class:`InputError`, unless ``skipped`` is given:
    then it is appended there with the reason and the others are returned."""
    root = Path(root)
    if format not in FORMATS:
        raise InputError(f"unknown dataset format {format!r}: choose from {', '.join(FORMATS)}")
    if split is not None and format not in ("got10k", "trackingnet"):
        raise InputError(f"a split applies to got10k and trackingnet only, not to {format}")
    require_folder(root, "dataset folder")
    if format in ("otb", "otb-got10k"):
        catalog = catalog_otb(root, "got10k" if format == "otb-got10k" else "otb")
    elif format == "got10k":
        catalog = catalog_got10k(root, split or DEFAULT_SPLITS["got10k"])
    elif format == "trackingnet":
        catalog = catalog_trackingnet(root, split or DEFAULT_SPLITS["trackingnet"])
    else:
        catalog = catalog_lasot(root)
    if not catalog:
        where = f" in split {split!r}" if split is not None else ""
        raise InputError(f"{root}: no {format} sequences found{where}")
    wanted = list(catalog) if names is None else list(names)
    unknown = [n for n in wanted if n not in catalog]
    if unknown:
        raise InputError(f"{root}: no sequence named {', '.join(unknown)}")
    sequences = []
    for name in wanted:
        try:
            sequences.append(catalog[name]())
        except InputError as error:
            if skipped is None:
                raise
            skipped.append(SkippedSequence(name, str(error)))
    return sequences
