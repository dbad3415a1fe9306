"""headway's metrics against the official toolkits on the same result files.

- GOT-10k: the ``got10k`` toolkit itself (PyPI, the dev extra) reads a fake GOT-10k val split in
  the exact layout (tiny JPEGs, ``groundtruth.txt``, ``cover.label``, ``absence.label``,
  ``cut_by_image.label``, ``meta_info.ini``) and a headway run exported by
  ``headway export-results --to got10k``, and its ``report()`` is compared with headway's
  reader + ``got10k`` convention on the run itself. The other export layouts are read back the
  way the official tools read them.
- OTB / LaSOT: the toolkit's ``rect_iou``, ``center_error`` and ``ExperimentOTB``'s curve rule.
- TrackingNet: a port of the devkit's rule written here, frame by frame (integer boxes,
  inclusive IoU, success at or above each of 21 thresholds — ``>=`` in the devkit's current
  ``metrics.py``, which its maintainers say the evaluation server runs — trapezoidal areas).
Every score must agree within 0.01 points."""

from __future__ import annotations

import io
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headway.errors import InputError
from headway.tracking.datasets import load_dataset, update_interval
from headway.tracking.metrics import evaluate
from headway.tracking.results import SequenceResult, write_sequence_result
from headway.tracking.runner import evaluate_run
from headway.tracking.submission import export_results

got10k_metrics = pytest.importorskip("got10k.utils.metrics", reason="got10k toolkit not installed")
TOLERANCE = 0.01  # points


def random_sequences(seed: int, count: int = 4, frames: int = 30, size=(64, 48)):
    """Ground truth inside a (W, H) image, predictions near it (some leaving the image), and
    per-frame cover levels (0 = target absent)."""
    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for _ in range(count):
        wh = rng.uniform(6, 20, (frames, 2))
        xy = rng.uniform(0, 1, (frames, 2)) * (np.array([width, height]) - wh)
        gt = np.round(np.hstack([xy, wh]), 1)
        pred = gt + rng.normal(0, 4, gt.shape)
        pred[:, 2:] = np.abs(pred[:, 2:]) + 1
        pred[rng.random(frames) < 0.2, :2] += 25  # some far off, some out of the image
        cover = rng.integers(0, 9, frames)
        cover[0] = 8
        out.append((np.round(gt, 3), np.round(pred, 3), cover))
    return out


SIZE = (64, 48)


def fake_got10k_val(root: Path, seed: int = 1) -> dict[str, np.ndarray]:
    """A GOT-10k val split in the exact layout; returns the predictions per sequence."""
    split = root / "GOT-10k" / "val"
    predictions = {}
    for index, (gt, pred, cover) in enumerate(random_sequences(seed, size=SIZE)):
        name = f"GOT-10k_Val_{index + 1:06d}"
        predictions[name] = pred
        folder = split / name
        folder.mkdir(parents=True)
        for frame in range(len(gt)):
            Image.new("RGB", SIZE).save(folder / f"{frame + 1:08d}.jpg")
        np.savetxt(folder / "groundtruth.txt", gt, fmt="%.4f", delimiter=",")
        np.savetxt(folder / "cover.label", cover, fmt="%d")
        np.savetxt(folder / "absence.label", (cover == 0).astype(int), fmt="%d")
        np.savetxt(folder / "cut_by_image.label", np.zeros(len(gt)), fmt="%d")
        (folder / "meta_info.ini").write_text(f"[METAINFO]\nresolution: ({SIZE[0]}, {SIZE[1]})\n")
    (split / "list.txt").write_text("\n".join(predictions) + "\n")
    return predictions


def got10k_report(root: Path, results: Path, tracker: str) -> dict[str, float]:
    from got10k.experiments import ExperimentGOT10k

    experiment = ExperimentGOT10k(
        str(root / "GOT-10k"), subset="val", result_dir=str(results), report_dir=str(root / "rep")
    )
    return experiment.report([tracker])[tracker]["overall"]


def write_run(run: Path, predictions: dict[str, np.ndarray], dataset_format: str) -> None:
    """A headway run folder holding these boxes (as `headway track` writes them)."""
    run.mkdir(parents=True, exist_ok=True)
    for name, boxes in predictions.items():
        result = SequenceResult(boxes, np.full(len(boxes), 0.02))
        write_sequence_result(run, name, result, dataset_format)


def test_got10k_report_equals_headway(tmp_path: Path) -> None:
    predictions = fake_got10k_val(tmp_path)
    write_run(tmp_path / "results" / "GOT-10k" / "mine_run", predictions, "got10k")
    export_results(
        tmp_path / "results" / "GOT-10k" / "mine_run", tmp_path / "results" / "GOT-10k" / "mine",
        "got10k",
    )  # fmt: skip
    official = got10k_report(tmp_path, tmp_path / "results", "mine")

    sequences = load_dataset(tmp_path / "GOT-10k", "got10k", "val")
    assert all(s.image_size == SIZE for s in sequences)
    ours = evaluate_run(tmp_path / "results" / "GOT-10k" / "mine_run", sequences, "got10k").scores
    assert abs(ours["AO"] - 100 * official["ao"]) < TOLERANCE
    assert abs(ours["SR0.50"] - 100 * official["sr"]) < TOLERANCE


def test_exports_read_back_with_the_official_readers(tmp_path: Path) -> None:
    predictions = {f"seq{i}": pred for i, (_, pred, _) in enumerate(random_sequences(4))}
    run = tmp_path / "run"
    write_run(run, predictions, "otb")  # tab-separated, three decimals
    for layout in ("otb", "lasot"):
        export_results(run, tmp_path / layout, layout)
        for name, boxes in predictions.items():  # as ExperimentOTB.report() reads them
            read = np.loadtxt(tmp_path / layout / f"{name}.txt", delimiter=",")
            np.testing.assert_allclose(read, boxes, atol=1e-3)
            times = np.loadtxt(tmp_path / layout / "times" / f"{name}_time.txt")
            assert times.shape == (len(boxes),)
    # an export given as the run: its times come from its times/ folder, not zeros
    again = export_results(tmp_path / "lasot", tmp_path / "again", "otb")
    for name in again.sequences:
        np.testing.assert_allclose(
            np.loadtxt(tmp_path / "again" / "times" / f"{name}_time.txt"),
            np.loadtxt(tmp_path / "lasot" / "times" / f"{name}_time.txt"),
        )
        assert np.loadtxt(tmp_path / "again" / "times" / f"{name}_time.txt").min() > 0
    summary = export_results(run, tmp_path / "tn", "trackingnet")
    assert summary.sequences == sorted(predictions)
    with zipfile.ZipFile(tmp_path / "tn" / "submission.zip") as bundle:
        assert sorted(bundle.namelist()) == sorted(f"{n}.txt" for n in predictions)
        for name, boxes in predictions.items():
            read = np.loadtxt(io.BytesIO(bundle.read(f"{name}.txt")), delimiter=",")
            np.testing.assert_allclose(read, boxes, atol=1e-3)
    with pytest.raises(InputError, match="another folder"):
        export_results(run, run, "otb")
    with pytest.raises(InputError, match="another folder"):
        export_results(run, run / "x.txt", "otb")
    assert not (run / "x.txt").exists()
    with pytest.raises(InputError, match="unknown layout"):
        export_results(run, tmp_path / "x", "vot")


@pytest.mark.parametrize("convention", ["otb", "lasot"])
def test_otb_and_lasot_equal_the_toolkit_rule(convention: str) -> None:
    from got10k.experiments.otb import ExperimentOTB

    experiment = types.SimpleNamespace(nbins_iou=21, nbins_ce=51)
    success, precision, ground_truth, predictions, visible = [], [], {}, {}, {}
    for index, (gt, pred, cover) in enumerate(random_sequences(2)):
        absent = cover == 0
        gt = gt.copy()
        gt[absent] = 0.0  # LaSOT writes 0,0,0,0 where the target is absent
        boxes = pred.copy()
        boxes[0] = gt[0]
        ious = got10k_metrics.rect_iou(boxes.copy(), gt.copy())
        errors = got10k_metrics.center_error(boxes, gt)
        errors[absent] = np.inf  # absent: a failure at every threshold (IoU is 0 already)
        curves = ExperimentOTB._calc_curves(experiment, ious, errors)
        success.append(curves[0])
        precision.append(curves[1])
        name = f"seq{index}"
        ground_truth[name], predictions[name], visible[name] = gt, pred, ~absent
    ours = evaluate(predictions, ground_truth, visible, convention, dataset=convention).scores
    assert abs(ours["AUC"] - 100 * np.mean(np.mean(success, axis=0))) < TOLERANCE
    assert abs(ours["P"] - 100 * np.mean(precision, axis=0)[20]) < TOLERANCE


def _devkit_trackingnet(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """TrackingNet's rule, frame by frame: rounded boxes, inclusive IoU, success IoU ≥ t, centre
    x + (w + 1)/2, normalised by the ground-truth size, trapezoidal areas over 21 thresholds."""
    pred, gt = np.round(pred), np.round(gt)
    pred[0] = gt[0]
    iou_t, px_t, norm_t = np.linspace(0, 1, 21), np.linspace(0, 50, 21), np.linspace(0, 0.5, 21)
    success, prec, norm = np.zeros(21), np.zeros(21), np.zeros(21)
    for p, g in zip(pred, gt, strict=True):
        left, top = max(p[0], g[0]), max(p[1], g[1])
        right = min(p[0] + p[2] - 1, g[0] + g[2] - 1)
        bottom = min(p[1] + p[3] - 1, g[1] + g[3] - 1)
        inter = max(0.0, right - left + 1) * max(0.0, bottom - top + 1)
        with np.errstate(divide="ignore", invalid="ignore"):  # numpy's 0/0: NaN, as pandas
            iou = np.float64(inter) / (p[2] * p[3] + g[2] * g[3] - inter)
        dx = (p[0] + (p[2] + 1) / 2) - (g[0] + (g[2] + 1) / 2)
        dy = (p[1] + (p[3] + 1) / 2) - (g[1] + (g[3] + 1) / 2)
        success += iou >= iou_t
        prec += np.hypot(dx, dy) <= px_t
        norm += np.hypot(dx / g[2], dy / g[3]) <= norm_t
    x = np.linspace(0, 1, 21)
    frames = len(gt)
    return {
        "AUC": np.trapezoid(success / frames, x=x) * 100,
        "P": np.trapezoid(prec / frames, x=x) * 100,
        "Pnorm": np.trapezoid(norm / frames, x=x) * 100,
    }


def test_trackingnet_equals_the_devkit_rule() -> None:
    sequences = random_sequences(3)
    expected = [_devkit_trackingnet(pred, gt) for gt, pred, _ in sequences]
    ours = evaluate(
        {f"s{i}": pred for i, (_, pred, _) in enumerate(sequences)},
        {f"s{i}": gt for i, (gt, _, _) in enumerate(sequences)},
        convention="trackingnet",
        dataset="trackingnet",
    ).scores
    for key in ("AUC", "P", "Pnorm"):
        assert abs(ours[key] - np.mean([e[key] for e in expected])) < TOLERANCE


def with_negative_sizes(pred: np.ndarray, seed: int) -> np.ndarray:
    """``pred`` with a negative width or height (or both) on about one row in five."""
    rng = np.random.default_rng(seed)
    pred = pred.copy()
    rows = np.flatnonzero(rng.random(len(pred)) < 0.2)
    rows = rows[rows > 0]
    pred[rows, 2 + rng.integers(0, 2, len(rows))] *= -1
    pred[rows[::3], 2:] = -np.abs(pred[rows[::3], 2:])
    return pred


def test_negative_size_rows_equal_the_official_tools(tmp_path: Path) -> None:
    from got10k.experiments.otb import ExperimentOTB

    sequences = [
        (gt, with_negative_sizes(pred, i), cover)
        for i, (gt, pred, cover) in enumerate(random_sequences(5))
    ]
    assert sum(int((pred[:, 2:] < 0).any(axis=1).sum()) for _, pred, _ in sequences) > 10
    truth = {f"s{i}": gt for i, (gt, _, _) in enumerate(sequences)}
    results = {f"s{i}": pred for i, (_, pred, _) in enumerate(sequences)}

    # OTB: got10k's rect_iou and center_error on the rows as they are, ExperimentOTB's curves
    experiment = types.SimpleNamespace(nbins_iou=21, nbins_ce=51)
    success, precision = [], []
    for gt, pred, _ in sequences:
        boxes = pred.copy()
        boxes[0] = gt[0]
        ious = got10k_metrics.rect_iou(boxes.copy(), gt.copy())
        errors = got10k_metrics.center_error(boxes, gt)
        curves = ExperimentOTB._calc_curves(experiment, ious, errors)
        success.append(curves[0])
        precision.append(curves[1])
    ours = evaluate(results, truth, convention="otb", dataset="otb").scores
    assert abs(ours["AUC"] - 100 * np.mean(np.mean(success, axis=0))) < TOLERANCE
    assert abs(ours["P"] - 100 * np.mean(precision, axis=0)[20]) < TOLERANCE

    # TrackingNet: the devkit's rule on the rows as they are
    expected = [_devkit_trackingnet(pred, gt) for gt, pred, _ in sequences]
    ours = evaluate(results, truth, convention="trackingnet", dataset="trackingnet").scores
    for key in ("AUC", "P", "Pnorm"):
        assert abs(ours[key] - np.mean([e[key] for e in expected])) < TOLERANCE

    # GOT-10k: the toolkit's report on the exported run
    predictions = {
        name: with_negative_sizes(pred, i)
        for i, (name, pred) in enumerate(fake_got10k_val(tmp_path, seed=6).items())
    }
    run = tmp_path / "results" / "GOT-10k" / "neg_run"
    write_run(run, predictions, "got10k")
    export_results(run, tmp_path / "results" / "GOT-10k" / "neg", "got10k")
    official = got10k_report(tmp_path, tmp_path / "results", "neg")
    split = load_dataset(tmp_path / "GOT-10k", "got10k", "val")
    ours = evaluate_run(run, split, "got10k").scores
    assert abs(ours["AO"] - 100 * official["ao"]) < TOLERANCE
    assert abs(ours["SR0.50"] - 100 * official["sr"]) < TOLERANCE


def test_update_intervals_follow_the_official_table() -> None:
    # the published GOT-10k numbers: baseline_got10k_only, no TEST block, config default 200
    assert update_interval("got10k", "test") == 200
    assert update_interval("got10k", "val") == 200  # GOT10K_VAL is not in the table
    assert update_interval("got10k") == 200
    assert update_interval("trackingnet") == 25
    assert update_interval("lasot") == 200
    assert update_interval("otb") == 200


def fake_otb_special(root: Path, seed: int = 7) -> None:
    """OTB folders with the structures the two protocols treat differently: two targets
    (Jogging), an empty first annotation (Human4), Tiger1 (first 5 frames dropped by the OTB
    protocol), and a plain sequence."""
    rng = np.random.default_rng(seed)
    layout = {
        "Jogging": {"groundtruth_rect.1.txt": 9, "groundtruth_rect.2.txt": 9},
        "Human4": {"groundtruth_rect.1.txt": 0, "groundtruth_rect.2.txt": 8},
        "Tiger1": {"groundtruth_rect.txt": 12},
        "Basketball": {"groundtruth_rect.txt": 10},
    }
    for folder, files in layout.items():
        frames = max(files.values())
        (root / folder / "img").mkdir(parents=True)
        for frame in range(1, frames + 1):
            Image.new("RGB", (64, 48)).save(root / folder / "img" / f"{frame:04d}.jpg")
        for file, count in files.items():
            boxes = np.column_stack(
                [rng.uniform(5, 30, (count, 2)), rng.uniform(8, 20, (count, 2))]
            )
            text = "".join(",".join(f"{v:.2f}" for v in box) + "\n" for box in boxes)
            (root / folder / file).write_text(text)


def test_otb_export_is_what_got10k_experiment_otb_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25, item 4: a run on `--format otb-got10k` exports under got10k's names and frame
    counts, and ExperimentOTB.report() scores it as headway's `otb` convention does."""
    from got10k.datasets.otb import OTB
    from got10k.experiments import ExperimentOTB

    # the toolkit fetches the OTB-2015 sequences a folder lacks: this one holds five
    monkeypatch.setattr(OTB, "_download", lambda self, root_dir, version: root_dir)

    root = tmp_path / "OTB100"
    fake_otb_special(root)
    sequences = load_dataset(root, "otb-got10k")
    names = {s.name: len(s.frames) for s in sequences}
    assert names == {"Basketball": 10, "Human4": 8, "Jogging.1": 9, "Jogging.2": 9, "Tiger1": 12}
    rng = np.random.default_rng(3)
    predictions = {
        s.name: s.ground_truth + rng.normal(0, 3, s.ground_truth.shape) for s in sequences
    }
    run = tmp_path / "run"
    write_run(run, predictions, "otb-got10k")
    (run / "run.json").write_text('{"format": "otb-got10k"}')
    export_results(run, tmp_path / "results" / "OTB2015" / "mine", "otb")
    experiment = ExperimentOTB(
        str(root), version=2015, result_dir=str(tmp_path / "results"),
        report_dir=str(tmp_path / "reports"),
    )  # fmt: skip
    official = experiment.report(["mine"])["mine"]["overall"]
    ours = evaluate_run(run, sequences, "otb").scores
    assert abs(ours["AUC"] - 100 * official["success_score"]) < TOLERANCE
    assert abs(ours["P"] - 100 * official["precision_score"]) < TOLERANCE

    # the OTB protocol names and frames these sequences otherwise: refused by name
    protocol_names = {s.name: len(s.frames) for s in load_dataset(root, "otb")}
    assert protocol_names == {
        "Basketball": 10, "Human4_2": 8, "Jogging_1": 9, "Jogging_2": 9, "Tiger1": 7,
    }  # fmt: skip
    otb_run = tmp_path / "otb_run"
    write_run(otb_run, {n: np.ones((c, 4)) for n, c in protocol_names.items()}, "otb")
    (otb_run / "run.json").write_text('{"format": "otb"}')
    with pytest.raises(InputError, match=r"Human4_2, Jogging_1, Jogging_2, Tiger1.*otb-got10k"):
        export_results(otb_run, tmp_path / "refused", "otb")
    assert not (tmp_path / "refused").exists()
    export_results(otb_run, tmp_path / "lasot_layout", "lasot")  # no such rule there
    plain = tmp_path / "plain_run"
    write_run(plain, {"Basketball": np.ones((10, 4))}, "otb")
    (plain / "run.json").write_text('{"format": "otb"}')
    assert export_results(plain, tmp_path / "plain", "otb").sequences == ["Basketball"]


def test_an_otb_export_without_run_json_refuses_what_the_names_give_away(tmp_path: Path) -> None:
    """Issue 34, conventions item 3: results from pytracking or CSWinTT (no run.json) whose
    names or Tiger1's length show the OTB protocol are refused by name; a synth run's
    ``car_3`` is no numbered OTB target."""
    foreign = tmp_path / "pytracking_results"
    write_run(foreign, {"Jogging_1": np.ones((9, 4)), "Basketball": np.ones((10, 4))}, "otb")
    with pytest.raises(InputError, match=r"Jogging_1 .*otb-got10k"):
        export_results(foreign, tmp_path / "a", "otb")
    tiger = tmp_path / "tiger"
    write_run(tiger, {"Tiger1": np.ones((349, 4))}, "otb")  # the OTB protocol's 349 frames
    with pytest.raises(InputError, match="Tiger1"):
        export_results(tiger, tmp_path / "b", "otb")
    write_run(tiger, {"Tiger1": np.ones((354, 4))}, "otb")  # every frame: got10k's
    assert export_results(tiger, tmp_path / "c", "otb").sequences == ["Tiger1"]
    synth = tmp_path / "synth_run"
    write_run(synth, {"car_3": np.ones((5, 4)), "walk_12": np.ones((5, 4))}, "otb")
    (synth / "run.json").write_text('{"format": "otb"}')
    assert export_results(synth, tmp_path / "d", "otb").sequences == ["car_3", "walk_12"]
