"""headway-runner, the C++ tracker: its crop equals OpenCV's, its boxes equal the Python
tracker's on the built-in sequences, and bad input is reported, not crashed on.

The runner is built once per torch version (about 35 s; `make setup` builds it already). On a
machine without a C++ compiler every test here skips with that reason, and the one test that
needs no compiler checks the error the executors give there."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headway.cli import app
from headway.errors import InputError
from headway.experiments.tracker_accuracy import held_out_datasets
from headway.models.pretrained import load_tracker_network
from headway.tracking.backends import check_tracker_executor
from headway.tracking.crop import read_frame, sample_target
from headway.tracking.datasets import load_dataset
from headway.tracking.native import build as native_build
from headway.tracking.native.runner import NativeTracker
from headway.tracking.results import write_sequence_result
from headway.tracking.runner import track_dataset
from headway.tracking.tracker import CSWinTTTracker, TrackerSettings

needs_compiler = pytest.mark.skipif(
    native_build.find_compiler() is None, reason="no C++ compiler: headway-runner cannot be built"
)


@pytest.fixture(scope="module")
def runner() -> Path:
    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler: headway-runner cannot be built")
    return native_build.build_runner()


@pytest.fixture(scope="module")
def jpeg_runner(runner: Path) -> Path:
    """The runner, where it reads the built-in sequences' JPEG frames (libjpeg at build)."""
    if "jpeg yes" not in _formats(runner):
        pytest.skip("runner built without libjpeg (apt install libjpeg-dev, headway runner build)")
    return runner


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return load_tracker_network()  # the built-in trained tiny tracker


@pytest.fixture(scope="module")
def builtin_sequences(tmp_path_factory: pytest.TempPathFactory) -> list:
    """The first two sequences of both built-in held-out sets (60 frames each)."""
    root = tmp_path_factory.mktemp("held_out")
    sets = held_out_datasets(root, sequences=2, frames=60)
    return [*sets["standard"], *sets["appearance"]]


def _formats(runner: Path) -> str:
    return subprocess.run([str(runner), "--version"], capture_output=True, text=True).stdout


@needs_compiler
def test_crops_equal_opencv(runner: Path, tmp_path: Path) -> None:
    """Random images, boxes (inside, across and beyond the borders), factors and sizes: the
    runner's crop, padding mask and resize factor equal sample_target's (cv2) exactly."""
    rng = np.random.default_rng(11)
    image_path = tmp_path / "image.ppm"  # read without any image library
    for case in range(25):
        height, width = (int(v) for v in rng.integers(8, 400, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        box = [
            float(rng.uniform(-0.5 * width, width)),
            float(rng.uniform(-0.5 * height, height)),
            float(rng.uniform(1, width)),
            float(rng.uniform(1, height)),
        ]
        factor = float(rng.choice([2.0, 5.0, 3.7]))
        size = int(rng.choice([128, 320, 37]))
        args = [*map(repr, box), repr(factor), str(size), str(tmp_path / "crop")]
        done = subprocess.run(
            [str(runner), "crop", str(image_path), *args], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        crop = np.fromfile(tmp_path / "crop.rgb", np.uint8).reshape(size, size, 3)
        mask = np.fromfile(tmp_path / "crop.mask", np.uint8).reshape(size, size).astype(bool)
        expected_crop, expected_factor, expected_mask = sample_target(image, box, factor, size)
        assert np.array_equal(crop, expected_crop), f"case {case}: {box}, {factor}, {size}"
        assert np.array_equal(mask, expected_mask), f"case {case}: {box}, {factor}, {size}"
        assert float(done.stdout) == expected_factor


@needs_compiler
def test_jpeg_frames_decode_as_opencv_does(
    jpeg_runner: Path, synth_dataset: Path, tmp_path: Path
) -> None:
    for frame in sorted(synth_dataset.glob("*/img/*.jpg"))[:3]:
        done = subprocess.run(
            [str(jpeg_runner), "decode", str(frame), str(tmp_path / "pixels")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        height, width = (int(v) for v in done.stdout.split())
        pixels = np.fromfile(tmp_path / "pixels", np.uint8).reshape(height, width, 3)
        assert np.array_equal(pixels, read_frame(frame))


@needs_compiler
def test_ppm_frames_need_no_image_library(runner: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    path = tmp_path / "frame.ppm"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    done = subprocess.run(
        [str(runner), "decode", str(path), str(tmp_path / "pixels")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.fromfile(tmp_path / "pixels", np.uint8).reshape(17, 23, 3), image)
    path.write_bytes(path.read_bytes()[:-5])
    done = subprocess.run(
        [str(runner), "decode", str(path), str(tmp_path / "p")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "truncated" in done.stderr


# The confidences of the built-in tracker on these sequences lie in 0.443–0.453.
SETTINGS = TrackerSettings(update_interval=4, confidence_threshold=0.449)


@pytest.fixture(scope="module")
def python_results(network: torch.nn.Module, builtin_sequences: list) -> list:
    tracker = CSWinTTTracker(network, SETTINGS)
    return [tracker.run_sequence(sequence) for sequence in builtin_sequences]


@needs_compiler
@pytest.mark.parametrize("executor", ["cpp", "cpp-heads", "cpp-spectral", "cpp-aoti"])
def test_runner_boxes_equal_the_python_tracker(
    jpeg_runner: Path,
    network: torch.nn.Module,
    builtin_sequences: list,
    python_results: list,
    executor: str,
) -> None:
    """fp32 on the CPU: ``cpp`` and ``cpp-heads`` run the eager network's own graphs, so every
    box is bit-identical to the eager Python tracker's; ``cpp-spectral`` is the spectral
    rewrite (exact to fp32 rounding) and ``cpp-aoti`` the same graph compiled by AOTInductor
    (about a minute of compilation here, then cached): both within a thousandth of a pixel.
    The confidence threshold sits inside the confidences' range, so template updates happen on
    some frames and not on others, and each decision must agree too."""
    updates = 0
    with NativeTracker(network, SETTINGS, "cpu", executor) as native:
        for sequence, expected in zip(builtin_sequences, python_results, strict=True):
            got = native.run_sequence(sequence)
            assert got.boxes.shape == expected.boxes.shape
            assert got.template_updates == expected.template_updates, sequence.name
            if executor in ("cpp-spectral", "cpp-aoti"):
                np.testing.assert_allclose(got.boxes, expected.boxes, rtol=0, atol=1e-3)
            else:
                assert np.array_equal(got.boxes, expected.boxes), sequence.name
            assert set(got.stage_times) == set(expected.stage_times)
            assert len(got.frame_times) == len(sequence)
            updates += got.template_updates
    assert updates > 0  # the update path was exercised


@needs_compiler
def test_runner_writes_the_same_result_files(
    jpeg_runner: Path, network: torch.nn.Module, synth_dataset: Path, tmp_path: Path
) -> None:
    """The runner's own result files (box file, stage record) match what headway writes."""
    sequence = load_dataset(synth_dataset, "otb")[0]
    with NativeTracker(network, None, "cpu", "cpp") as native:
        raw = native.run_job(
            sequence.frames, sequence.init_box, sequence.name, results_dir=tmp_path / "runner"
        )
        result = native.run_sequence(sequence)
    write_sequence_result(tmp_path / "python", sequence.name, result, "otb")
    name = f"{sequence.name}.txt"
    assert (tmp_path / "runner" / name).read_text() == (tmp_path / "python" / name).read_text()
    stages = json.loads((tmp_path / "runner" / f"{sequence.name}_stages.json").read_text())
    assert stages["template_updates"] == raw["template_updates"]
    lines = (tmp_path / "runner" / f"{sequence.name}_time.txt").read_text().splitlines()
    assert len(lines) == len(sequence)


@needs_compiler
def test_bad_frames_are_reported_per_sequence(
    jpeg_runner: Path, network: torch.nn.Module, synth_dataset: Path, tmp_path: Path
) -> None:
    """A truncated frame stops its sequence with the file named; the others are tracked."""
    root = tmp_path / "data"
    for folder in synth_dataset.iterdir():
        if folder.is_dir():
            (root / folder.name / "img").mkdir(parents=True)
            for file in folder.rglob("*"):
                if file.is_file():
                    (root / file.relative_to(synth_dataset)).write_bytes(file.read_bytes())
    sequences = load_dataset(root, "otb")
    broken = sequences[0].frames[3]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    with NativeTracker(network, None, "cpu", "cpp") as native:
        with pytest.raises(InputError, match="truncated"):
            native.run_sequence(sequences[0])
        summary = track_dataset(native, sequences, tmp_path / "run", "otb", show_progress=False)
    assert summary.tracked == [sequences[1].name]
    assert broken.name in summary.failed[sequences[0].name]
    problems = json.loads((tmp_path / "run" / "run.json").read_text())["problems"]
    assert sequences[0].name in problems


@needs_compiler
def test_runner_refuses_bad_jobs(runner: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.txt"
    job.write_text("model /nonexistent\nmode stages\n")
    done = subprocess.run([str(runner), "track", str(job)], capture_output=True, text=True)
    assert done.returncode == 2 and "job file has no" in done.stderr
    done = subprocess.run([str(runner), "bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


@needs_compiler
def test_track_and_bench_commands_run_the_runner(
    jpeg_runner: Path, synth_dataset: Path, tmp_path: Path
) -> None:
    cli = CliRunner()
    common = ["--config", "tiny", "--checkpoint", "builtin", "--no-progress"]
    for executor in ("eager", "cpp"):
        result = cli.invoke(
            app,
            ["track", str(synth_dataset), "--out", str(tmp_path / executor), *common,
             "--executor", executor],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    for file in sorted((tmp_path / "eager").glob("synth*[0-9].txt")):
        assert (tmp_path / "cpp" / file.name).read_text() == file.read_text()
    result = cli.invoke(
        app,
        ["bench", "tracker", "--config", "tiny", "--frames", "2", "--warmup", "0", "--rounds",
         "1", "--executors", "cpp,cpp-heads"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cpp-heads" in result.output


@needs_compiler
def test_track_cpp_compiles_at_most_two_probes_before_its_first_frame(
    jpeg_runner: Path, synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build plan's library probes (a program each) are made once per compiler: the name
    is checked and resolved on the way to the first frame without compiling them again."""
    probes: list[str] = []
    at_first_frame: list[int] = []
    real_links, real_run_job = native_build._links, NativeTracker.run_job

    def counted_links(compiler: str, header: str, library: str) -> bool:
        probes.append(library)
        return real_links(compiler, header, library)

    def first_frame(self, *args, **kwargs):
        at_first_frame.append(len(probes))
        return real_run_job(self, *args, **kwargs)

    monkeypatch.setattr(native_build, "_links", counted_links)
    monkeypatch.setattr(NativeTracker, "run_job", first_frame)
    native_build._plan_for.cache_clear()  # as in a fresh process
    result = CliRunner().invoke(
        app,
        ["track", str(synth_dataset), "--out", str(tmp_path / "run"), "--config", "tiny",
         "--checkpoint", "builtin", "--no-progress", "--executor", "cpp"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert at_first_frame and at_first_frame[0] <= 2, (at_first_frame, probes)


def test_the_runner_builds_without_warnings_from_its_own_files(runner: Path) -> None:
    """-Wall -Wextra, with torch's headers as system headers: the build log (every compile
    and the link, with what the compiler said) names no warning in headway's sources."""
    log = runner.parent / "build.log"
    if not log.is_file():
        pytest.skip("this runner was built before build logs were kept")
    text = log.read_text()
    assert "-Wall" in text and "-Wextra" in text and "-isystem" in text
    own = [line for line in text.splitlines() if "warning:" in line and "native/cpp/" in line]
    assert own == []


@needs_compiler
def test_a_stage_aotinductor_cannot_compile_is_named(tmp_path: Path, monkeypatch) -> None:
    from headway.tracking.native import stages as export

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1 if x.sum() > 0 else x - 1

    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path))
    with pytest.raises(export.AOTICompileError, match=r"could not compile.*cpp-spectral"):
        export._aoti_package(DataDependent(), (torch.randn(3),))
    assert not list((tmp_path / "native" / "aoti").glob("*.pt2"))  # nothing half-written


def test_without_a_compiler_the_executors_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an empty cache: a runner built earlier (``make setup`` builds one) would be used instead
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path))
    monkeypatch.setattr(native_build, "find_compiler", lambda: None)
    with pytest.raises(InputError, match="no C\\+\\+ compiler"):
        check_tracker_executor("cpp", "cpu")
    result = CliRunner().invoke(app, ["runner", "build"])
    assert result.exit_code != 0 and "compiler" in result.output
    with pytest.raises(InputError, match="unknown executor"):
        check_tracker_executor("cpp-bogus", "cpu")
    monkeypatch.undo()
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(InputError, match="CXX names 'no-such-compiler\\+\\+', which is not"):
        native_build.build_plan()


@pytest.mark.cuda
@needs_compiler
def test_cuda_runner_heads_on_streams_match_eager(
    jpeg_runner: Path, network: torch.nn.Module, builtin_sequences: list
) -> None:
    """On a GPU, ``cpp-heads`` runs each head on its own stream; boxes stay eager's to fp32
    summation order (cuBLAS may pick other kernels per stream)."""
    settings = TrackerSettings(update_interval=4)
    python = CSWinTTTracker(network, settings, "cuda")
    with NativeTracker(network, settings, "cuda", "cpp-heads") as native:
        for sequence in builtin_sequences[:2]:
            expected = python.run_sequence(sequence)
            got = native.run_sequence(sequence)
            np.testing.assert_allclose(got.boxes, expected.boxes, rtol=0, atol=1e-2)
