"""Dataset readers on tiny fixtures in each layout, and their errors for bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from headway.errors import InputError
from headway.tracking.datasets import load_dataset, read_boxes


def write_frames(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.full((24, 32, 3), 128, np.uint8))


def test_otb_layout_with_numbered_ground_truth(tmp_path: Path) -> None:
    write_frames(tmp_path / "Car" / "img", [f"{i:04d}.jpg" for i in range(1, 4)])
    (tmp_path / "Car" / "groundtruth_rect.txt").write_text("1,2,3,4\n2\t3\t4\t5\n3 4 5 6\n")
    write_frames(tmp_path / "Jogging" / "img", [f"{i:04d}.jpg" for i in range(1, 3)])
    (tmp_path / "Jogging" / "groundtruth_rect.1.txt").write_text("1,1,5,5\n1,1,5,5\n")
    (tmp_path / "Jogging" / "groundtruth_rect.2.txt").write_text("9,9,5,5\n9,9,5,5\n")
    sequences = load_dataset(tmp_path, "otb")
    assert [s.name for s in sequences] == ["Car", "Jogging_1", "Jogging_2"]
    car = sequences[0]
    assert len(car) == 3 and car.frames[0].name == "0001.jpg"
    np.testing.assert_array_equal(car.ground_truth[1], [2, 3, 4, 5])
    assert [s.name for s in load_dataset(tmp_path, "otb", names=["Jogging_2"])] == ["Jogging_2"]


def test_got10k_layout_with_absence_and_first_frame_only(tmp_path: Path) -> None:
    split = tmp_path / "val"
    write_frames(split / "GOT-10k_Val_000001", [f"{i:08d}.jpg" for i in range(1, 4)])
    (split / "GOT-10k_Val_000001" / "groundtruth.txt").write_text("1,1,5,5\n2,2,5,5\n3,3,5,5\n")
    (split / "GOT-10k_Val_000001" / "absence.label").write_text("0\n1\n0\n")
    write_frames(split / "GOT-10k_Val_000002", [f"{i:08d}.jpg" for i in range(1, 3)])
    (split / "GOT-10k_Val_000002" / "groundtruth.txt").write_text("1,1,5,5\n")
    (split / "list.txt").write_text("GOT-10k_Val_000001\nGOT-10k_Val_000002\n")
    first, second = load_dataset(tmp_path, "got10k", split="val")
    np.testing.assert_array_equal(first.target_visible, [True, False, True])
    assert second.fully_annotated is False
    assert np.isnan(second.ground_truth[1]).all()
    # cover.label, when present, decides visibility (as the official toolkit scores it)
    (split / "GOT-10k_Val_000001" / "cover.label").write_text("8\n3\n0\n")
    (split / "GOT-10k_Val_000001" / "meta_info.ini").write_text(
        "[METAINFO]\nobject_class: cat\nresolution: (640, 360)\n"
    )
    first, _ = load_dataset(tmp_path, "got10k", split="val")
    np.testing.assert_array_equal(first.target_visible, [True, True, False])
    assert first.image_size == (640, 360)
    (split / "GOT-10k_Val_000001" / "cover.label").write_text("8\n3\n")
    with pytest.raises(InputError, match=r"cover\.label: 2 labels for 3 frames"):
        load_dataset(tmp_path, "got10k", split="val")


def test_trackingnet_layout_numeric_frame_order(tmp_path: Path) -> None:
    write_frames(tmp_path / "TEST" / "frames" / "abc_1", [f"{i}.jpg" for i in range(12)])
    (tmp_path / "TEST" / "anno").mkdir(parents=True)
    (tmp_path / "TEST" / "anno" / "abc_1.txt").write_text("1.5,2.5,10,10\n")
    (sequence,) = load_dataset(tmp_path, "trackingnet")
    assert [p.name for p in sequence.frames[:3]] == ["0.jpg", "1.jpg", "2.jpg"]
    assert sequence.frames[-1].name == "11.jpg"
    np.testing.assert_array_equal(sequence.init_box, [1.5, 2.5, 10, 10])


def test_lasot_layout_visibility(tmp_path: Path) -> None:
    folder = tmp_path / "cat" / "cat-3"
    write_frames(folder / "img", [f"{i:08d}.jpg" for i in range(1, 4)])
    (folder / "groundtruth.txt").write_text("1,1,5,5\n1,1,5,5\n1,1,5,5\n")
    (folder / "full_occlusion.txt").write_text("0,1,0")
    (folder / "out_of_view.txt").write_text("0,0,1")
    (sequence,) = load_dataset(tmp_path, "lasot")
    assert sequence.name == "cat-3"
    np.testing.assert_array_equal(sequence.target_visible, [True, False, False])
    (folder / "out_of_view.txt").write_text("0,0,1,0")
    with pytest.raises(InputError, match=r"out_of_view\.txt: 4 labels for 3 frames"):
        load_dataset(tmp_path, "lasot")


def test_malformed_ground_truth_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text("1,2,3,4\n1,2,x,4\n")
    with pytest.raises(InputError, match=r"gt\.txt:2: not a number"):
        read_boxes(path)
    path.write_text("1,2,3,4\n1,2,3\n")
    with pytest.raises(InputError, match=r"gt\.txt:2: expected 4 values"):
        read_boxes(path)


def test_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown dataset format 'vot'"):
        load_dataset(tmp_path, "vot")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "absent", "otb")
    with pytest.raises(InputError, match="no otb sequences"):
        load_dataset(tmp_path, "otb")
    write_frames(tmp_path / "Car" / "img", ["0001.jpg", "0002.jpg", "0003.jpg"])
    (tmp_path / "Car" / "groundtruth_rect.txt").write_text("1,1,5,5\n1,1,5,5\n")
    with pytest.raises(InputError, match="2 ground-truth lines for 3 frames"):
        load_dataset(tmp_path, "otb")
    (tmp_path / "Car" / "groundtruth_rect.txt").write_text("1,1,5,5\n1,1,5,5\n1,1,5,5\n")
    with pytest.raises(InputError, match="no sequence named Bus"):
        load_dataset(tmp_path, "otb", names=["Bus"])


def touch_frames(folder: Path, numbers: range, digits: int = 4) -> None:
    """Empty image files (the readers list names; only tracking decodes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        (folder / f"{number:0{digits}d}.jpg").touch()


def write_boxes(path: Path, count: int, first: int = 1) -> None:
    """``count`` lines x,y,w,h whose x is the line's frame number (to check alignment)."""
    path.write_text("".join(f"{first + i},2,5,5\n" for i in range(count)))


def test_otb_as_downloaded_loads_with_the_toolkits_frame_ranges(tmp_path: Path) -> None:
    touch_frames(tmp_path / "BlurCar1" / "img", range(247, 989))  # numbered 0247–0988
    write_boxes(tmp_path / "BlurCar1" / "groundtruth_rect.txt", 742, first=247)
    touch_frames(tmp_path / "David" / "img", range(1, 771))
    write_boxes(tmp_path / "David" / "groundtruth_rect.txt", 471, first=300)
    touch_frames(tmp_path / "Diving" / "img", range(1, 232))  # more images than annotations
    write_boxes(tmp_path / "Diving" / "groundtruth_rect.txt", 215)
    touch_frames(tmp_path / "Tiger1" / "img", range(1, 355))
    write_boxes(tmp_path / "Tiger1" / "groundtruth_rect.txt", 354)
    touch_frames(tmp_path / "Human4" / "img", range(1, 668))
    (tmp_path / "Human4" / "groundtruth_rect.1.txt").write_text("")  # empty, as downloaded
    write_boxes(tmp_path / "Human4" / "groundtruth_rect.2.txt", 667)
    touch_frames(tmp_path / "Jogging" / "img", range(1, 308))
    write_boxes(tmp_path / "Jogging" / "groundtruth_rect.1.txt", 307)
    write_boxes(tmp_path / "Jogging" / "groundtruth_rect.2.txt", 307)
    sequences = {s.name: s for s in load_dataset(tmp_path, "otb")}
    assert sorted(sequences) == [
        "BlurCar1", "David", "Diving", "Human4_2", "Jogging_1", "Jogging_2", "Tiger1",
    ]  # fmt: skip
    for name, length, first_frame in [
        ("BlurCar1", 742, "0247.jpg"),
        ("David", 471, "0300.jpg"),
        ("Diving", 215, "0001.jpg"),
        ("Tiger1", 349, "0006.jpg"),  # the protocol drops the first 5 frames
        ("Human4_2", 667, "0001.jpg"),
    ]:
        sequence = sequences[name]
        assert len(sequence) == len(sequence.ground_truth) == length, name
        assert sequence.frames[0].name == first_frame, name
        # each frame keeps its own annotation (x = frame number in these files)
        assert sequence.ground_truth[0, 0] == int(first_frame[:4]), name


def test_a_bad_sequence_is_reported_by_name_and_unrequested_ones_are_not_read(
    tmp_path: Path,
) -> None:
    from headway.tracking.datasets import SkippedSequence

    write_frames(tmp_path / "Good" / "img", ["0001.jpg", "0002.jpg"])
    write_boxes(tmp_path / "Good" / "groundtruth_rect.txt", 2)
    write_frames(tmp_path / "Bad" / "img", ["0001.jpg", "0002.jpg", "0003.jpg"])
    write_boxes(tmp_path / "Bad" / "groundtruth_rect.txt", 2)
    with pytest.raises(InputError, match="Bad"):
        load_dataset(tmp_path, "otb")
    skipped: list[SkippedSequence] = []
    (good,) = load_dataset(tmp_path, "otb", skipped=skipped)
    assert good.name == "Good"
    assert [s.name for s in skipped] == ["Bad"] and "2 ground-truth lines" in skipped[0].reason
    assert [s.name for s in load_dataset(tmp_path, "otb", names=["Good"])] == ["Good"]


def test_trackingnet_train_chunks_load_together(tmp_path: Path) -> None:
    for chunk, name in (("TRAIN_0", "a_1"), ("TRAIN_1", "b_2"), ("TRAIN_10", "c_3")):
        write_frames(tmp_path / chunk / "frames" / name, ["0.jpg", "1.jpg"])
        (tmp_path / chunk / "anno").mkdir(parents=True)
        (tmp_path / chunk / "anno" / f"{name}.txt").write_text("1,1,5,5\n1,1,5,5\n")
    names = lambda split: [s.name for s in load_dataset(tmp_path, "trackingnet", split)]  # noqa: E731
    assert names("TRAIN") == ["a_1", "b_2", "c_3"]  # chunks in numeric order
    assert names("TRAIN_1") == ["b_2"]
    assert names("TRAIN_0,TRAIN_10") == ["a_1", "c_3"]
    (tmp_path / "TRAIN_1" / "anno" / "a_1.txt").write_text("1,1,5,5\n")
    with pytest.raises(InputError, match="a_1 is in two chunks"):
        load_dataset(tmp_path, "trackingnet", "TRAIN")


def test_odd_otb_folders_are_one_line_each(tmp_path: Path) -> None:
    """Issue 34, dataset folders: listing reads no annotation that is not a regular file;
    links to nothing, pipes, short Tiger1, frames outside the toolkit's range and colliding
    names are each named."""
    import os

    from headway.tracking.datasets import SkippedSequence

    root = tmp_path / "otb"
    touch_frames(root / "Good" / "img", range(1, 4))
    write_boxes(root / "Good" / "groundtruth_rect.txt", 3)
    touch_frames(root / "Linked" / "img", range(1, 4))
    (root / "Linked" / "groundtruth_rect.txt").symlink_to(tmp_path / "nowhere.txt")
    touch_frames(root / "Piped" / "img", range(1, 4))
    os.mkfifo(root / "Piped" / "groundtruth_rect.txt")  # read, it would wait forever
    touch_frames(root / "Tiger1" / "img", range(1, 4))  # shorter than the protocol's start
    write_boxes(root / "Tiger1" / "groundtruth_rect.txt", 3)
    touch_frames(root / "David" / "img", range(1, 50))  # none of 300-770
    write_boxes(root / "David" / "groundtruth_rect.txt", 49)
    skipped: list[SkippedSequence] = []
    (good,) = load_dataset(root, "otb", skipped=skipped)
    reasons = {s.name: s.reason for s in skipped}
    assert good.name == "Good"
    assert "cannot be read" in reasons["Linked"] or "missing" in reasons["Linked"]
    assert "not a regular file" in reasons["Piped"]
    assert "starts Tiger1 at frame 6" in reasons["Tiger1"]
    assert "no image numbered 300 to 770" in reasons["David"]

    clash = tmp_path / "clash"
    touch_frames(clash / "Jogging" / "img", range(1, 3))
    write_boxes(clash / "Jogging" / "groundtruth_rect.1.txt", 2)
    write_boxes(clash / "Jogging" / "groundtruth_rect.2.txt", 2)
    touch_frames(clash / "Jogging_1" / "img", range(1, 3))
    write_boxes(clash / "Jogging_1" / "groundtruth_rect.txt", 2)
    with pytest.raises(InputError, match="two sequences would be named Jogging_1"):
        load_dataset(clash, "otb")
