"""One-pass-evaluation metrics: success (AUC), precision and normalised precision.

Several toolkits compute "the same" numbers differently (pixel-inclusive vs continuous IoU,
``>`` vs ``≥``, value at a threshold vs area under a curve). Each convention is reproduced as
its toolkit states it; ``pytracking`` is the default because CSWinTT ships that analysis code.

- ``pytracking``: inclusive IoU, success IoU > t over 21 thresholds, AUC = mean; precision and
  normalised precision are the curves' values at 20 px and 0.20. Invalid frames count in the
  denominator: IoU −1 (never a success), centre error +∞ (never), normalised error −1 (always),
  except LaSOT frames with an invisible target, which are +∞.
- ``otb``: continuous IoU (got10k-toolkit), centre (xy + (wh − 1)/2), same curves as pytracking.
  Frames without a valid, visible target stay in the denominator as failures (IoU 0, errors
  +∞), as the OTB and LaSOT toolkits, pytracking and got10k count them.
- ``lasot``: as ``otb`` (the LaSOT toolkit's rules); normalised precision is the curve's value
  at 0.20, errors normalised by max(1, gt_wh).
- ``trackingnet``: integer boxes, inclusive IoU, success IoU ≥ t (the devkit's current code,
  which its maintainers say the evaluation server runs: a perfect tracker scores 100; its very
  first commit had > t), 21 thresholds per curve, and every number is the trapezoidal area
  under its curve (×100).
- ``got10k``: AO (mean IoU), SR0.50 and SR0.75 pooled over all frames after the first in which
  the target is visible (``cover.label`` > 0, as the official toolkit); continuous IoU with both
  boxes clipped to the image when its size is known (the toolkit's ``bound``).

Ground truth given for the first frame only (a test split) is refused by every convention with
a message saying so; a NaN line elsewhere is reported by frame number. Result boxes that are
not boxes (zero size; NaN or negative size) are treated as each convention's official tool
treats them (:data:`RESULT_RULES`), and the result's ``notes`` say how many and what was done.

Border rule: a ground-truth box touching x = 0 or y = 0 is valid in every convention (only a
non-positive width or height makes a frame invalid); pytracking and TrackingNet count pixels
inclusively, the others use continuous coordinates; only ``got10k`` clips to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from headway.errors import InputError

CONVENTIONS = ("pytracking", "otb", "lasot", "trackingnet", "got10k")

OVERLAP_THRESHOLDS = np.linspace(0, 1, 21)
CENTER_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
NORM_THRESHOLDS = np.arange(0, 51, dtype=np.float64) / 100


@dataclass
class Curves:
    """Per-sequence curves (fractions in [0, 1]) on the convention's thresholds."""

    success: np.ndarray
    precision: np.ndarray
    norm_precision: np.ndarray


@dataclass
class EvalResult:
    """Scores in percent, the averaged curves, and per-sequence scores."""

    convention: str
    scores: dict[str, float]
    thresholds: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]
    per_sequence: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # result boxes that were not boxes

    def to_json(self) -> dict[str, object]:
        return {
            "convention": self.convention,
            "scores": self.scores,
            "curves": {k: v.tolist() for k, v in self.curves.items()},
            "thresholds": {k: v.tolist() for k, v in self.thresholds.items()},
            "per_sequence": self.per_sequence,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------
# Box geometry
# ---------------------------------------------------------------------------------------------


def iou_inclusive(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Pixel-inclusive IoU (pytracking, TrackingNet): a box covers x .. x + w − 1."""
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:] - 1, gt[:, :2] + gt[:, 2:] - 1)
    inter = np.clip(br - tl + 1, 0, None).prod(axis=1)
    union = pred[:, 2:].prod(axis=1) + gt[:, 2:].prod(axis=1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):  # a union of 0 is 0/0 there: NaN
        return np.where(union != 0, inter / union, -1.0)


def iou_continuous(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Continuous IoU (got10k-toolkit): a box covers [x, x + w), clipped to [0, 1]."""
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:], gt[:, :2] + gt[:, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=1)
    union = pred[:, 2:].prod(axis=1) + gt[:, 2:].prod(axis=1) - inter
    return np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)


def clip_to_image(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes cut to a (width, height) image, as the got10k toolkit's ``bound``: x in [0, W],
    then w in [0, W − x] (likewise y, h)."""
    width, height = size
    out = boxes.astype(np.float64, copy=True)
    out[:, 0] = np.clip(out[:, 0], 0, width)
    out[:, 1] = np.clip(out[:, 1], 0, height)
    out[:, 2] = np.clip(out[:, 2], 0, width - out[:, 0])
    out[:, 3] = np.clip(out[:, 3], 0, height - out[:, 1])
    return out


def centers(boxes: np.ndarray) -> np.ndarray:
    """Pixel centre xy + (wh − 1)/2 used by pytracking, OTB and LaSOT."""
    return boxes[:, :2] + 0.5 * (boxes[:, 2:] - 1.0)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


# What each convention's official tool does with result boxes that are not boxes, per kind:
# (zero width or height, NaN in a row, a negative width or height). "carry": the previous
# frame's box (pytracking; the OTB and LaSOT MATLAB toolkits); "score": scored as it is, IoU 0
# and the centre from its numbers (got10k's toolkit for OTB and GOT-10k, the TrackingNet
# devkit); "refuse": an error (pytracking); "fail": never a success (got10k's OTB experiment,
# the TrackingNet devkit); "nan": NaN IoU, so AO is NaN (the GOT-10k report).
RESULT_RULES = {
    "pytracking": ("carry", "refuse", "refuse"),
    "otb": ("score", "fail", "score"),
    "lasot": ("carry", "carry", "carry"),
    "trackingnet": ("score", "fail", "score"),
    "got10k": ("score", "nan", "score"),
}
_RULE_WORDS = {
    "carry": "replaced by the previous frame's box",
    "score": "scored as they are (IoU 0, the centre from their numbers)",
    "fail": "counted as failures",
    "nan": "NaN IoU (so AO is NaN, as in the official report)",
}


@dataclass
class Prediction:
    """Boxes ready to score, the frames that must count as failures, and what was done."""

    boxes: np.ndarray
    failed: np.ndarray
    notes: list[str] = field(default_factory=list)


def prepare_prediction(
    pred: np.ndarray,
    gt: np.ndarray,
    name: str,
    strict_length: bool = False,
    convention: str = "pytracking",
) -> Prediction:
    """pytracking's order, with ``convention``'s rules for boxes that are not boxes (see
    :data:`RESULT_RULES`): zero sizes, NaN rows and negative sizes, then match the ground
    truth's length (truncate, or zero-pad unless ``strict_length``), then overwrite frame 1
    with the ground truth."""
    zero_rule, nan_rule, negative_rule = RESULT_RULES[convention]
    pred = pred.copy()
    nan_rows = np.isnan(pred).any(axis=1)
    negative = ~nan_rows & (pred[:, 2:] < 0).any(axis=1)
    if nan_rule == "refuse" and nan_rows.any():
        raise InputError(f"sequence {name}: prediction contains NaN")
    if negative_rule == "refuse" and negative.any():
        raise InputError(f"sequence {name}: prediction has a negative width or height")
    zero = ~nan_rows & ~negative & (pred[:, 2:] == 0).any(axis=1)
    partial = nan_rows & ~np.isnan(pred).all(axis=1)  # some numbers, some NaN
    rules = ((zero, zero_rule), (nan_rows, nan_rule), (negative, negative_rule))
    none = np.zeros(len(pred), dtype=bool)
    carried = np.logical_or.reduce([none, *(mask for mask, rule in rules if rule == "carry")])
    failed = np.logical_or.reduce([none, *(mask for mask, rule in rules if rule == "fail")])
    for index in range(1, len(pred)):
        if carried[index]:
            pred[index] = pred[index - 1]
    if nan_rule == "nan":
        pred[nan_rows] = np.nan
    notes = []
    for (mask, rule), what in zip(rules, ("zero-size", "NaN", "negative-size"), strict=True):
        count = int(mask[1 : len(gt)].sum())
        if count:
            notes.append(f"{name}: {count} {what} box(es) {_RULE_WORDS[rule]}")
    count = int(partial[1 : len(gt)].sum())
    if convention == "trackingnet" and count:
        notes.append(
            f"{name}: {count} of those NaN rows hold numbers too: the TrackingNet devkit "
            "scores such a row on the numbers it holds (pandas skips the NaN), headway "
            "counts a failure"
        )
    if len(pred) < len(gt):
        if strict_length:
            raise InputError(f"sequence {name}: {len(pred)} predicted boxes for {len(gt)} frames")
        pred = np.concatenate([pred, np.zeros((len(gt) - len(pred), 4))])
        failed = np.concatenate([failed, np.zeros(len(gt) - len(failed), dtype=bool)])
    pred, failed = pred[: len(gt)], failed[: len(gt)].copy()
    pred[0], failed[0] = gt[0], False
    pred[failed] = 0.0  # their numbers no longer matter: every score below is set to fail
    return Prediction(pred, failed, notes)


def _checked_ground_truth(
    gt: np.ndarray, name: str, visible: np.ndarray | None = None
) -> np.ndarray:
    """``gt`` with NaN rows of frames flagged target-absent set to 0 (absent, so a failure);
    refuses a test split (only frame 1 annotated) and names the frames of other NaN lines."""
    missing = np.isnan(gt).any(axis=1)
    if visible is not None and len(visible) == len(gt):
        absent = missing & ~visible
        if absent.any():
            gt = np.where(absent[:, None], 0.0, gt)
            missing &= visible
    if not missing.any():
        return gt
    if missing[1:].all():
        raise InputError(
            f"sequence {name}: only the first frame is annotated (a test split); its scores "
            "come from the benchmark's own server: submit the result files there"
        )
    frames = (np.flatnonzero(missing) + 1).tolist()
    shown = ", ".join(map(str, frames[:8])) + (", …" if len(frames) > 8 else "")
    raise InputError(
        f"sequence {name}: ground truth is NaN at frame(s) {shown} of {len(gt)} (not a test "
        "split: the other frames are annotated); fix or remove those lines"
    )


# ---------------------------------------------------------------------------------------------
# Per-sequence curves
# ---------------------------------------------------------------------------------------------


def _ope_curves(
    iou: np.ndarray, center_error: np.ndarray, norm_error: np.ndarray, length: int
) -> Curves:
    """Fraction of ``length`` frames succeeding at each threshold (IoU > t, errors ≤ t)."""
    return Curves(
        (iou[:, None] > OVERLAP_THRESHOLDS).sum(0) / length,
        (center_error[:, None] <= CENTER_THRESHOLDS).sum(0) / length,
        (norm_error[:, None] <= NORM_THRESHOLDS).sum(0) / length,
    )


def pytracking_curves(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray | None, lasot: bool, name: str
) -> tuple[Curves, list[str]]:
    gt = _checked_ground_truth(gt, name, visible if lasot else None)
    prepared = prepare_prediction(pred, gt, name, strict_length=lasot)
    pred = prepared.boxes
    valid = (gt[:, 2] > 0) & (gt[:, 3] > 0)
    if visible is not None and lasot:
        valid &= visible
    iou = iou_inclusive(pred, gt)
    delta = centers(pred) - centers(gt)
    center_error = np.linalg.norm(delta, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_error = np.linalg.norm(delta / gt[:, 2:], axis=1)
    iou[~valid] = -1.0
    center_error[~valid] = np.inf
    norm_error[~valid] = -1.0
    if lasot and visible is not None:
        norm_error[~visible] = np.inf
    length = len(gt)
    return _ope_curves(iou, center_error, norm_error, length), prepared.notes


def continuous_curves(
    pred: np.ndarray,
    gt: np.ndarray,
    visible: np.ndarray | None,
    name: str,
    strict_length: bool = False,
    convention: str = "otb",
) -> tuple[Curves, list[str]]:
    """OTB / LaSOT toolkit curves (continuous IoU); frames without a valid, visible target are
    failures in the denominator, and so are result boxes the convention counts as failures."""
    gt = _checked_ground_truth(gt, name, visible)
    valid = (gt[:, 2:] > 0).all(axis=1)
    prepared = prepare_prediction(pred, gt, name, strict_length, convention)
    pred = prepared.boxes
    valid &= ~prepared.failed
    if visible is not None:
        valid &= visible
    iou = iou_continuous(pred, gt)
    delta = centers(pred) - centers(gt)
    center_error = np.linalg.norm(delta, axis=1)
    norm_error = np.linalg.norm(delta / np.maximum(1.0, gt[:, 2:]), axis=1)
    iou[~valid] = -1.0
    center_error[~valid] = np.inf
    norm_error[~valid] = np.inf
    notes = prepared.notes
    if convention == "lasot":  # where the LaSOT toolkit's validity differs: said, not copied
        shown = np.ones(len(gt), dtype=bool) if visible is None else visible.astype(bool)
        shown = shown.copy()
        shown[0] = False
        sized = (gt[:, 2:] > 0).all(axis=1)
        at_edge = int((shown & sized & (gt[:, :2] <= 0).any(axis=1)).sum())
        empty = int((shown & ~sized).sum())
        if at_edge:
            notes.append(
                f"{name}: {at_edge} visible ground-truth box(es) at x or y ≤ 0 scored as boxes "
                "(the LaSOT toolkit counts them invalid: never a success, always a precision hit)"
            )
        if empty:
            notes.append(
                f"{name}: {empty} visible ground-truth box(es) of zero or negative size counted "
                "as failures (the LaSOT toolkit counts them as precision hits)"
            )
    return _ope_curves(iou, center_error, norm_error, len(gt)), notes


TRACKINGNET_IOU = np.linspace(0, 1, 21)
TRACKINGNET_PRECISION = np.linspace(0, 50, 21)
TRACKINGNET_NORM = np.linspace(0, 0.5, 21)


def trackingnet_curves(pred: np.ndarray, gt: np.ndarray, name: str) -> tuple[Curves, list[str]]:
    """The TrackingNet devkit's rule (its current code, what the evaluation server runs):
    rounded boxes, inclusive IoU, success IoU ≥ t, so a perfect tracker scores 100."""
    gt = _checked_ground_truth(gt, name)
    prepared = prepare_prediction(pred, gt, name, convention="trackingnet")
    pred = np.round(prepared.boxes)
    gt = np.round(gt)
    iou = iou_inclusive(pred, gt)
    pred_center = pred[:, :2] + (pred[:, 2:] + 1) / 2
    gt_center = gt[:, :2] + (gt[:, 2:] + 1) / 2
    delta = pred_center - gt_center
    center_error = np.linalg.norm(delta, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_error = np.linalg.norm(delta / gt[:, 2:], axis=1)
    iou[prepared.failed] = -1.0
    center_error[prepared.failed] = np.inf
    norm_error[prepared.failed] = np.inf
    curves = Curves(
        (iou[:, None] >= TRACKINGNET_IOU).mean(0),
        (center_error[:, None] <= TRACKINGNET_PRECISION).mean(0),
        (norm_error[:, None] <= TRACKINGNET_NORM).mean(0),
    )
    return curves, prepared.notes


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def _curve_scores(convention: str, success: np.ndarray, prec: np.ndarray, norm: np.ndarray) -> dict:
    if convention == "trackingnet":
        x = np.linspace(0, 1, 21)
        return {
            "AUC": float(np.trapezoid(success, x=x) * 100),
            "P": float(np.trapezoid(prec, x=x) * 100),
            "Pnorm": float(np.trapezoid(norm, x=x) * 100),
        }
    scores = {
        "AUC": float(success.mean() * 100),
        "P": float(prec[20] * 100),
        "Pnorm": float(norm[20] * 100),
        "OP50": float(success[10] * 100),
        "OP75": float(success[15] * 100),
    }
    return scores


def evaluate(
    predictions: dict[str, np.ndarray],
    ground_truth: dict[str, np.ndarray],
    visible: dict[str, np.ndarray | None] | None = None,
    convention: str = "pytracking",
    dataset: str = "otb",
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> EvalResult:
    """Score predicted boxes against ground truth, sequences in ``ground_truth``'s order.

    ``dataset`` matters for the pytracking convention (LaSOT treats invisible targets apart);
    ``image_sizes`` (width, height per sequence) for ``got10k``, which clips boxes to them.
    """
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}: choose from {', '.join(CONVENTIONS)}")
    missing = [name for name in ground_truth if name not in predictions]
    if missing:
        raise InputError(f"no results for {len(missing)} sequence(s): {', '.join(missing[:8])}")
    visible = visible or {}
    if convention == "got10k":
        return _evaluate_got10k(predictions, ground_truth, visible, image_sizes or {})
    lasot = dataset == "lasot" or convention == "lasot"
    per_sequence: dict[str, dict[str, float]] = {}
    all_curves = []
    notes: list[str] = []
    for name, gt in ground_truth.items():
        pred, vis = predictions[name], visible.get(name)
        if convention == "pytracking":
            curves, said = pytracking_curves(pred, gt, vis, lasot, name)
        elif convention == "trackingnet":
            curves, said = trackingnet_curves(pred, gt, name)
        else:
            curves, said = continuous_curves(pred, gt, vis, name, lasot, convention)
        notes += said
        all_curves.append(curves)
        per_sequence[name] = _curve_scores(
            convention, curves.success, curves.precision, curves.norm_precision
        )
    success = np.mean([c.success for c in all_curves], axis=0)
    precision = np.mean([c.precision for c in all_curves], axis=0)
    norm = np.mean([c.norm_precision for c in all_curves], axis=0)
    if convention == "trackingnet":
        thresholds = {
            "success": TRACKINGNET_IOU,
            "precision": TRACKINGNET_PRECISION,
            "norm_precision": TRACKINGNET_NORM,
        }
    else:
        thresholds = {
            "success": OVERLAP_THRESHOLDS,
            "precision": CENTER_THRESHOLDS,
            "norm_precision": NORM_THRESHOLDS,
        }
    return EvalResult(
        convention,
        _curve_scores(convention, success, precision, norm),
        thresholds,
        {"success": success, "precision": precision, "norm_precision": norm},
        per_sequence,
        notes,
    )


def _evaluate_got10k(
    predictions: dict[str, np.ndarray],
    ground_truth: dict[str, np.ndarray],
    visible: dict[str, np.ndarray | None],
    image_sizes: dict[str, tuple[int, int]],
) -> EvalResult:
    thresholds = np.linspace(0, 1, 101)
    pooled = []
    per_sequence = {}
    notes: list[str] = []
    for name, gt in ground_truth.items():
        gt = _checked_ground_truth(gt, name, visible.get(name))
        prepared = prepare_prediction(predictions[name], gt, name, convention="got10k")
        pred = prepared.boxes
        notes += prepared.notes
        keep = np.ones(len(gt), dtype=bool)
        keep[0] = False
        vis = visible.get(name)
        if vis is not None:
            keep &= vis
        if name in image_sizes:
            pred, gt = clip_to_image(pred, image_sizes[name]), clip_to_image(gt, image_sizes[name])
        iou = iou_continuous(pred, gt)[keep]
        pooled.append(iou)
        per_sequence[name] = {
            "AO": float(iou.mean() * 100) if iou.size else 0.0,
            "SR0.50": float((iou > 0.5).mean() * 100) if iou.size else 0.0,
        }
    ious = np.concatenate(pooled) if pooled else np.zeros(0)
    success = (ious[:, None] > thresholds).mean(0) if ious.size else np.zeros_like(thresholds)
    scores = {
        "AO": float(ious.mean() * 100) if ious.size else 0.0,
        "SR0.50": float((ious > 0.5).mean() * 100) if ious.size else 0.0,
        "SR0.75": float((ious > 0.75).mean() * 100) if ious.size else 0.0,
    }
    return EvalResult(
        "got10k", scores, {"success": thresholds}, {"success": success}, per_sequence, notes
    )


def scores_table(results: dict[str, EvalResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each run (label → its result) with its scores, in percent."""
    names = list(next(iter(results.values())).scores) if results else []
    rows = [[label, *(f"{r.scores[n]:.2f}" for n in names)] for label, r in results.items()]
    return ["run", *names], rows
