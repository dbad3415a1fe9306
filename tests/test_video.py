"""Tracking videos, folders of images and cameras (``headway track SOURCE --box``) and the
application API ``headway.Tracker``: same boxes as the dataset path, one line per bad input,
nothing half-written, a stream that stops keeps its boxes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import headway
from headway.cli import app
from headway.errors import InputError
from headway.tracking.datasets import Sequence, load_dataset
from headway.tracking.results import read_boxes_file

runner = CliRunner()
TINY = ["--config", "tiny", "--checkpoint", "builtin", "--no-progress"]


@pytest.fixture(scope="module")
def sequence(synth_dataset: Path) -> Sequence:
    return load_dataset(synth_dataset, "otb")[0]


@pytest.fixture(scope="module")
def frames(sequence: Sequence) -> list[np.ndarray]:
    """The sequence's frames as OpenCV reads them (BGR)."""
    return [cv2.imread(str(path)) for path in sequence.frames]


def write_video(path: Path, frames: list[np.ndarray], fourcc: str = "mp4v") -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    images = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        images.append(frame)
    capture.release()
    return images


def box_text(sequence: Sequence) -> str:
    return ",".join(str(float(v)) for v in sequence.init_box)


def test_video_tracks_as_its_decoded_frames_from_a_folder(
    sequence: Sequence, frames: list[np.ndarray], tmp_path: Path
) -> None:
    video = write_video(tmp_path / "clip.mp4", frames)
    render = tmp_path / "run" / "annotated.mp4"
    result = runner.invoke(
        app,
        ["track", str(video), "--box", box_text(sequence), "--out", str(tmp_path / "run"),
         "--render", str(render), *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from_video = read_boxes_file(tmp_path / "run" / "clip.txt")
    assert from_video.shape == (len(frames), 4)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["complete"] and record["source"]["kind"] == "file"
    assert record["source"]["frames"] == len(frames) and len(record["source"]["sha256"]) == 64
    assert len(decoded(render)) == len(frames)  # the render reopens, every frame in it

    folder = tmp_path / "decoded"  # the same decoded pixels, as image files with free names
    folder.mkdir()
    for index, image in enumerate(decoded(video)):
        cv2.imwrite(str(folder / f"shot {index + 1}.png"), image)  # shot 2 before shot 10
    result = runner.invoke(
        app,
        ["track", str(folder), "--box", box_text(sequence), "--out", str(tmp_path / "run2"),
         *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from_folder = read_boxes_file(tmp_path / "run2" / "decoded.txt")
    np.testing.assert_allclose(from_video, from_folder, atol=1e-3)


def test_start_end_every_choose_the_frames(
    sequence: Sequence, frames: list[np.ndarray], tmp_path: Path
) -> None:
    video = write_video(tmp_path / "clip.avi", frames, "MJPG")
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["track", str(video), "--box", box_text(sequence), "--out", str(out), "--start", "1",
         "--end", "9", "--every", "3", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = np.loadtxt(out / "clip_scores.txt")
    assert scores[:, 0].tolist() == [1, 4, 7]
    assert json.loads((out / "run.json").read_text())["frames"]["tracked"] == 3


def test_a_url_and_a_synthetic_video(
    sequence: Sequence, frames: list[np.ndarray], tmp_path: Path
) -> None:
    """Any URL OpenCV's FFmpeg opens (here file://), and the video headway synth writes."""
    video = write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["track", video.resolve().as_uri(), "--box", box_text(sequence), "--out", str(out),
              *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["source"]["kind"] == "url" and record["complete"]
    assert len(read_boxes_file(out / "stream.txt")) == len(frames)

    result = runner.invoke(app, ["synth", str(tmp_path / "data"), "--sequences", "1",
                                 "--frames", "4", "--video"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (made,) = (tmp_path / "data").glob("*/*.mp4")
    assert len(decoded(made)) == 4
    first_line = (made.parent / "groundtruth_rect.txt").read_text().splitlines()[0]
    result = runner.invoke(app, ["track", str(made), "--box", first_line, "--out",
                                 str(tmp_path / "run2"), *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_stream_that_stops_keeps_its_boxes(
    sequence: Sequence, frames: list[np.ndarray], tmp_path: Path
) -> None:
    whole = write_video(tmp_path / "whole.mkv", frames, "MJPG").read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])  # the container still declares every frame
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["track", str(cut), "--box", box_text(sequence), "--out", str(out), *TINY]
    )
    assert result.exit_code == 0, result.output
    assert "stopped early" in " ".join(result.output.split())
    record = json.loads((out / "run.json").read_text())
    assert record["complete"] is False and "ended after" in record["stopped"]
    kept = read_boxes_file(out / "cut.txt")
    assert 2 <= len(kept) < len(frames) and record["frames"]["tracked"] == len(kept)


def damaged_codec(tmp_path: Path, frames: list[np.ndarray]) -> Path:
    """An AVI whose codec tag no FFmpeg decodes."""
    data = write_video(tmp_path / "good.avi", frames[:3], "MJPG").read_bytes()
    path = tmp_path / "odd.avi"
    path.write_bytes(data.replace(b"MJPG", b"ZZZZ").replace(b"mjpg", b"zzzz"))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage", "not a readable video"),
        ("empty", "video file is empty"),
        ("codec", "no decoder for its video codec"),
        ("outside", "lies outside"),
        ("zero", "zero or negative size"),
        ("camera", "camera 7: no such camera here"),
        ("nobox", "to track a video, give its target with --box"),
        ("badbox", "expected four numbers"),
        ("start", "past its end"),
        ("render", "use one of .mp4"),
        ("weights", "checkpoint file not found"),
    ],
)
def test_bad_video_input_is_one_line_and_writes_nothing(
    case: str, message: str, sequence: Sequence, frames: list[np.ndarray], tmp_path: Path
) -> None:
    box = box_text(sequence)
    options: list[str] = ["--box", box]
    if case == "garbage":
        source = tmp_path / "not.mp4"
        source.write_bytes(b"no video here " * 100)
    elif case == "empty":
        source = tmp_path / "empty.mp4"
        source.write_bytes(b"")
    elif case == "codec":
        source = damaged_codec(tmp_path, frames)
    else:
        source = write_video(tmp_path / "clip.mp4", frames)
    if case == "outside":
        options = ["--box", "5000,5000,20,20"]
    elif case == "zero":
        options = ["--box", "10,10,0,20"]
    elif case == "nobox":
        options = []
    elif case == "badbox":
        options = ["--box", "1,2,three,4"]
    elif case == "start":
        options += ["--start", "50"]
    elif case == "render":
        options += ["--render", str(tmp_path / "run" / "boxes.gif")]
    arguments = ["track", str(source), *options]
    if case == "camera":
        arguments = ["track", "--camera", "7", "--box", box]
    out = tmp_path / "run"
    weights = ["--config", "tiny", "--checkpoint", str(tmp_path / "none.pth"), "--no-progress"]
    result = runner.invoke(
        app, [*arguments, "--out", str(out), *(weights if case == "weights" else TINY)]
    )
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())  # rich wraps to the terminal's width
    assert len(result.output.strip().splitlines()) <= 3  # one line (wrapped to the terminal)
    assert not out.exists()


def test_tracker_api_matches_headway_track_auto(
    sequence: Sequence,
    frames: list[np.ndarray],
    synth_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["track", str(synth_dataset), "--out", str(out), "--sequences", sequence.name,
         "--executor", "auto", "--tune-seconds", "4", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = read_boxes_file(out / f"{sequence.name}.txt")

    with headway.Tracker(config="tiny", executor="auto", tune_seconds=4) as tracker:
        assert tracker.tuning  # no plan for frames in memory yet: eager keeps the frames
        first = tracker.init(frames[0], sequence.init_box)
        boxes = [first.box] + [tracker.update(frame).box for frame in frames[1:]]
        assert not tracker.tuning and tracker.plan is not None
        assert tracker.plan.chosen in headway.tracking.live.python_host_executors()
    np.testing.assert_allclose(np.asarray(boxes), expected, atol=0.01)

    with headway.Tracker(config="tiny", executor="auto") as again:  # the cached plan at once
        assert not again.tuning and again.plan is not None and again.plan.cached
        again.init(frames[0], sequence.init_box)
        assert again.update(frames[1]).box == pytest.approx(boxes[1], abs=0.01)
    with headway.Tracker(config="tiny", executor="eager", color="rgb") as rgb:  # RGB frames
        rgb.init(frames[0][:, :, ::-1].copy(), sequence.init_box)
        assert rgb.update(frames[1][:, :, ::-1].copy()).box == pytest.approx(boxes[1], abs=0.01)


def test_tracker_api_refuses_bad_use(frames: list[np.ndarray], sequence: Sequence) -> None:
    with pytest.raises(InputError, match=r"image files|headway-runner"):
        headway.Tracker(config="tiny", executor="cpp")
    with pytest.raises(InputError, match="color must be"):
        headway.Tracker(config="tiny", executor="eager", color="hsv")
    with pytest.raises(InputError, match="built-in trained weights are for config 'tiny'"):
        headway.Tracker(executor="eager", checkpoint="builtin")
    tracker = headway.Tracker(config="tiny", executor="eager")
    with pytest.raises(InputError, match="before update"):
        tracker.update(frames[0])
    with pytest.raises(InputError, match="uint8 of shape"):
        tracker.init(frames[0].astype(np.float32), sequence.init_box)
    tracker.init(frames[0], sequence.init_box)
    with pytest.raises(InputError, match="the sequence's first frame is"):
        tracker.update(frames[1][:100])
    result = tracker.update(frames[1])
    assert len(result.box) == 4 and 0.0 <= result.score <= 1.0 and result.ms > 0
    assert "backbone" in result.stages
    tracker.close()
    tracker.close()
    with pytest.raises(InputError, match="closed"):
        tracker.update(frames[2])


def test_a_rerun_into_the_folder_of_another_run_is_refused(
    sequence: Sequence, frames: list[np.ndarray], synth_dataset: Path, tmp_path: Path
) -> None:
    video = write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "run"
    track = ["track", str(video), "--box", box_text(sequence), "--out", str(out), *TINY]
    assert runner.invoke(app, [*track, "--update-interval", "3"]).exit_code == 0
    again = runner.invoke(app, [*track, "--update-interval", "3"])  # the same run: replaced
    assert again.exit_code == 0, again.output
    before = (out / "clip.txt").read_bytes()
    for options, message in (
        (["--update-interval", "4"], "another settings"),
        (["--update-interval", "3", "--every", "2"], "another range"),
    ):
        result = runner.invoke(app, [*track, *options])
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())
    assert (out / "clip.txt").read_bytes() == before  # nothing of the refused runs
    record = json.loads((out / "run.json").read_text())
    assert record["run"]["settings"]["update_interval"] == 3
    dataset_run = tmp_path / "dataset_run"
    runner.invoke(app, ["track", str(synth_dataset), "--out", str(dataset_run), *TINY])
    result = runner.invoke(app, [*track[:5], str(dataset_run), *TINY])
    assert result.exit_code == 1 and "holds a dataset run" in result.output
