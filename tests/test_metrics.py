"""Metrics against hand-computed cases, in every convention."""

from __future__ import annotations

import numpy as np
import pytest

from headway.errors import InputError
from headway.tracking.metrics import evaluate, iou_continuous, iou_inclusive

GT = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
# frame 2 shifted right by 5 px: inclusive IoU = 50 / 150, centre error 5 px, normalised 0.5
SHIFTED = np.array([[3.0, 3.0, 4.0, 4.0], [5.0, 0.0, 10.0, 10.0]])


def score(pred, gt, convention="pytracking", visible=None, dataset="otb"):
    vis = {"s": visible} if visible is not None else None
    return evaluate({"s": pred}, {"s": gt}, vis, convention, dataset).scores


def test_iou_conventions() -> None:
    a, b = np.array([[0.0, 0, 10, 10]]), np.array([[5.0, 0, 10, 10]])
    assert iou_inclusive(a, b)[0] == pytest.approx(1 / 3)
    assert iou_continuous(a, b)[0] == pytest.approx(1 / 3)
    # the inclusive "+1" on both corners cancels: the two agree wherever boxes have positive size
    rng = np.random.default_rng(3)
    boxes = np.abs(rng.normal(20, 8, (2, 200, 4))) + 1
    np.testing.assert_allclose(iou_inclusive(*boxes), iou_continuous(*boxes), atol=1e-12)
    # touching boxes do not overlap
    assert iou_inclusive(np.array([[0.0, 0, 1, 1]]), np.array([[1.0, 0, 1, 1]]))[0] == 0


def test_pytracking_perfect_and_first_frame_overwrite() -> None:
    scores = score(GT.copy(), GT)
    assert scores["AUC"] == pytest.approx(100 * 20 / 21)  # IoU 1 is not > 1
    assert scores["P"] == pytest.approx(100)
    assert scores["Pnorm"] == pytest.approx(100)


def test_pytracking_hand_computed() -> None:
    scores = score(SHIFTED, GT)
    # frame 1 (overwritten by GT) succeeds at 20 thresholds, frame 2 (IoU 1/3) at 0..0.30 (7)
    assert scores["AUC"] == pytest.approx(100 * (20 + 7) / 42)
    assert scores["P"] == pytest.approx(100)  # 5 px ≤ 20 px
    assert scores["Pnorm"] == pytest.approx(50)  # 0.5 > 0.2
    assert scores["OP50"] == pytest.approx(50)


def test_pytracking_invalid_frames() -> None:
    gt = np.array([[0.0, 0, 10, 10], [0, 0, 0, 10], [0, 0, 10, 10]])
    pred = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = score(pred, gt)
    assert scores["AUC"] == pytest.approx(100 * 40 / 63)  # invalid frame: IoU −1, in denominator
    assert scores["P"] == pytest.approx(100 * 2 / 3)  # centre error +inf: never a success
    assert scores["Pnorm"] == pytest.approx(100)  # normalised error −1: always a success


def test_pytracking_lasot_invisible_target() -> None:
    gt = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    visible = np.array([True, False, True])
    scores = score(gt.copy(), gt, visible=visible, dataset="lasot")
    assert scores["AUC"] == pytest.approx(100 * 40 / 63)
    assert scores["Pnorm"] == pytest.approx(100 * 2 / 3)  # invisible: +inf


@pytest.mark.parametrize(
    ("convention", "carried"),
    [("pytracking", True), ("lasot", True), ("otb", False), ("trackingnet", False)],
)
def test_zero_sized_predictions_follow_each_official_tool(convention: str, carried: bool) -> None:
    """pytracking and the MATLAB toolkits repeat the previous box; got10k's toolkit and the
    TrackingNet devkit score the box as it is (IoU 0)."""
    gt = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    pred = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0]])
    result = evaluate({"s": pred}, {"s": gt}, convention=convention, dataset="otb")
    success = result.curves["success"]
    assert success[1] == pytest.approx(1.0 if carried else 2 / 3)  # IoU > 0.05 (≥ trackingnet)
    assert result.notes[:1] == [
        "s: 1 zero-size box(es) "
        + (
            "replaced by the previous frame's box"
            if carried
            else "scored as they are (IoU 0, the centre from their numbers)"
        )
    ]


def test_got10k_scores_a_zero_sized_box_as_iou_0() -> None:
    pred = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0]])
    gt = np.array([[0.0, 0, 10, 10]] * 3)
    assert score(pred, gt, convention="got10k")["AO"] == pytest.approx(50)


def test_length_mismatch_is_padded_or_truncated() -> None:
    gt = np.array([[50.0, 50, 10, 10]] * 4)  # far from the zero boxes used as padding
    short = score(gt[:2].copy(), gt)  # zero-padded: frames 3 and 4 fail
    assert short["P"] == pytest.approx(50)
    long = score(np.vstack([gt, gt]), gt)
    assert long["P"] == pytest.approx(100)
    with pytest.raises(InputError, match="2 predicted boxes for 4 frames"):
        score(gt[:2].copy(), gt, dataset="lasot")


def test_bad_predictions_are_rejected_where_pytracking_rejects_them() -> None:
    with pytest.raises(InputError, match="NaN"):
        score(np.array([[0.0, 0, 10, 10], [np.nan, 0, 1, 1]]), GT)
    with pytest.raises(InputError, match="negative"):
        score(np.array([[0.0, 0, 10, 10], [0, 0, -1, 1]]), GT)
    with pytest.raises(InputError, match="unknown convention"):
        score(GT.copy(), GT, convention="vot")


def test_nan_boxes_follow_each_official_tool() -> None:
    """The LaSOT toolkit carries the previous box forward, got10k's OTB experiment and the
    TrackingNet devkit count a failure, the GOT-10k report gives NaN."""
    gt = np.array([[0.0, 0, 10, 10]] * 3)
    pred = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [np.nan, 0, 10, 10]])
    lasot = evaluate({"s": pred}, {"s": gt}, convention="lasot", dataset="lasot")
    assert lasot.scores["P"] == pytest.approx(100)
    assert "replaced by the previous frame's box" in lasot.notes[0]
    for convention in ("otb", "trackingnet"):
        result = evaluate({"s": pred}, {"s": gt}, convention=convention)
        assert result.curves["success"][0] == pytest.approx(2 / 3), convention
        assert result.curves["precision"][-1] == pytest.approx(2 / 3), convention
        assert "counted as failures" in result.notes[0]
    assert any("pandas skips the NaN" in n for n in result.notes)  # trackingnet, stated
    got10k = evaluate({"s": pred}, {"s": gt}, convention="got10k")
    assert np.isnan(got10k.scores["AO"])
    assert got10k.scores["SR0.50"] == pytest.approx(50)
    assert "NaN IoU" in got10k.notes[0]


def test_negative_size_boxes_are_scored_as_boxes_where_the_official_tools_do() -> None:
    """got10k's toolkit (OTB, GOT-10k) and the TrackingNet devkit score a row with a negative
    size as it is: IoU 0 and its centre from its numbers (here 10 px off, a precision hit);
    the LaSOT toolkit carries the previous box; pytracking refuses it."""
    gt = np.array([[0.0, 0, 10, 10]] * 3)
    pred = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, -10, 10]])
    lasot = evaluate({"s": pred}, {"s": gt}, convention="lasot", dataset="lasot")
    assert lasot.scores["P"] == pytest.approx(100)
    for convention in ("otb", "trackingnet"):
        result = evaluate({"s": pred}, {"s": gt}, convention=convention)
        assert result.curves["success"][1] == pytest.approx(2 / 3), convention
        assert result.curves["precision"][-1] == pytest.approx(1.0), convention
        assert "negative-size box(es) scored as they are" in result.notes[0]
    got10k = evaluate({"s": pred}, {"s": gt}, convention="got10k")
    assert got10k.scores["AO"] == pytest.approx(50)
    with pytest.raises(InputError, match="negative"):
        evaluate({"s": pred}, {"s": gt}, convention="pytracking")


@pytest.mark.parametrize("convention", ["pytracking", "otb", "lasot", "trackingnet", "got10k"])
def test_a_test_split_is_refused_and_a_stray_nan_is_located(convention: str) -> None:
    first_only = np.vstack([GT[:1], [[np.nan] * 4] * 3])
    for dataset in ("otb", "lasot"):
        with pytest.raises(InputError, match="only the first frame is annotated"):
            score(np.tile(GT[:1], (4, 1)), first_only, convention=convention, dataset=dataset)
    stray = np.vstack([GT, [[np.nan] * 4], GT[:1]])
    with pytest.raises(InputError, match=r"NaN at frame\(s\) 3 of 4 \(not a test split"):
        score(np.tile(GT[:1], (4, 1)), stray, convention=convention)


def test_otb_convention_continuous_iou() -> None:
    scores = score(SHIFTED, GT, convention="otb")
    assert scores["AUC"] == pytest.approx(100 * (20 + 7) / 42)
    assert scores["P"] == pytest.approx(100)


def test_lasot_counts_absent_frames_as_failures_and_reads_pnorm_at_020() -> None:
    gt = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    pred = np.array([[0.0, 0, 10, 10], [1, 0, 10, 10]])  # normalised error 0.1
    scores = score(pred, gt, convention="lasot")
    assert scores["Pnorm"] == pytest.approx(100)  # the curve at 0.20, not its area
    # an absent target (flagged, box 0,0,0,0 as LaSOT writes it) is a failure in the denominator
    gt3 = np.vstack([gt, [[0.0, 0, 0, 0]]])
    pred3 = np.vstack([pred, [[90.0, 90, 10, 10]]])
    gt_nan = np.vstack([gt, [[np.nan] * 4]])  # a NaN line where the target is flagged absent
    for convention in ("lasot", "otb"):
        for truth in (gt3, gt_nan):
            absent = score(
                pred3, truth, convention=convention, visible=np.array([True, True, False])
            )
            assert absent["Pnorm"] == pytest.approx(100 * 2 / 3)
            assert absent["P"] == pytest.approx(100 * 2 / 3)
            assert absent["AUC"] == pytest.approx(scores["AUC"] * 2 / 3)


def test_trackingnet_trapezoid_with_inclusive_success() -> None:
    # IoU ≥ t, as the devkit's current code (what the server runs): a perfect tracker scores 100
    assert score(GT.copy(), GT, convention="trackingnet")["AUC"] == pytest.approx(100)
    scores = score(SHIFTED, GT, convention="trackingnet")
    # frame 1 (IoU 1) succeeds at every threshold, frame 2 (IoU 1/3) at 0..0.30: 7 of 21
    curve = np.array([1.0] * 7 + [0.5] * 14)
    expected = np.trapezoid(curve, x=np.linspace(0, 1, 21)) * 100
    assert scores["AUC"] == pytest.approx(expected)


def test_got10k_average_overlap() -> None:
    scores = score(SHIFTED, GT, convention="got10k")
    assert scores["AO"] == pytest.approx(100 / 3)  # frame 1 excluded
    assert scores["SR0.50"] == pytest.approx(0)
    # boxes are clipped to the image first (the toolkit's bound): half of frame 2 is outside
    clipped = evaluate(
        {"s": SHIFTED}, {"s": GT}, convention="got10k", image_sizes={"s": (10, 10)}
    ).scores
    assert clipped["AO"] == pytest.approx(50)


def test_lasot_names_where_its_toolkit_judges_ground_truth_otherwise() -> None:
    gt = np.array([[5.0, 5, 10, 10], [0, 4, 10, 10], [5, 5, 0, 10], [5, 5, 10, 10]])
    pred = np.array([[5.0, 5, 10, 10]] * 4)
    result = evaluate(
        {"s": pred}, {"s": gt}, {"s": np.ones(4, dtype=bool)}, "lasot", dataset="lasot"
    )
    said = " ".join(result.notes)
    assert "1 visible ground-truth box(es) at x or y ≤ 0 scored as boxes" in said
    assert "1 visible ground-truth box(es) of zero or negative size counted as failures" in said
