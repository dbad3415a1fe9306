"""Paper A's measurements for every executor, side by side in one process: per-frame encoder
time and FPS with ratios to ``eager`` (Fig. 10, 11), the stage breakdown (Table 1, Fig. 12),
encoder GFLOP/s against the measured matmul peak, and the largest output difference to
``eager``.

All executors track the same synthetic frames, each executor a whole pass at a time (as it
would run in deployment; interleaving frame by frame made executors evict each other's memory
and slowed them all unevenly). Passes are repeated ``rounds`` times in alternating order
(A B C, then C B A, ...) so a drift of machine speed hits all executors alike. The first
``warmup`` frames of every pass (tracing, compilation, graph capture) are not timed.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from headway.errors import InputError
from headway.experiments.report import Section, markdown_table
from headway.io import atomic_write_text
from headway.measure import keeps_global_rng
from headway.models.cswintt import CSWinTT, build_cswintt
from headway.runtime.device import resolve_device
from headway.tracking.auto import AUTO, tune_tracker
from headway.tracking.backends import (
    build_tracker,
    check_tracker_executor,
    run_pass,
    tracked_ms,
)
from headway.tracking.executors import EXECUTORS, comparison_executors
from headway.tracking.settings import STAGES
from headway.tracking.synth import SynthSettings, render_sequence
from headway.tuning import DEFAULT_BUDGET_S, check_tuning_options, time_interleaved

TIMED_STAGES = STAGES[:5]


@dataclass
class ExecutorResult:
    """Medians over the timed frames (milliseconds) and differences to eager."""

    name: str
    encoder_ms: float
    frame_ms: float
    stage_ms: dict[str, float]
    encoder_gflops: float
    max_encoder_diff: float
    max_box_diff_px: float
    warnings: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return 1000.0 / self.frame_ms


@dataclass
class TrackerBenchmark:
    config: str
    device: str
    frames: int
    warmup: int
    rounds: int
    encoder_gflop: float
    matmul_peak_gflops: dict[str, float]
    environment: dict[str, Any]
    results: list[ExecutorResult]
    auto_plan: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        eager = self.results[0]
        for entry, result in zip(data["results"], self.results, strict=True):
            entry["fps"] = result.fps
            entry["encoder_speedup"] = eager.encoder_ms / result.encoder_ms
            entry["fps_ratio"] = result.fps / eager.fps
        return data


def encoder_flops(network: CSWinTT, device: torch.device) -> int:
    """FLOPs (2 × multiply-adds, matmuls only) of one encoder forward, counted by PyTorch."""
    tokens = torch.zeros(network.config.num_tokens, 1, network.config.d_model, device=device)
    mask = torch.zeros(1, network.config.num_tokens, dtype=torch.bool, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network.forward_encoder(tokens, mask)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, d_model: int, ffn: int) -> float:
    """GFLOP/s of the encoder's largest product (tokens × FFN weight) on this machine."""
    x = torch.randn(704, d_model, device=device, dtype=dtype)
    w = torch.randn(ffn, d_model, device=device, dtype=dtype)
    timer = Timer(
        "torch.nn.functional.linear(x, w)",
        globals={"torch": torch, "x": x, "w": w},
        num_threads=torch.get_num_threads(),
    )
    seconds = timer.blocked_autorange(min_run_time=0.5).median
    return 2 * 704 * d_model * ffn / seconds / 1e9


def _write_frames(images: list[np.ndarray]) -> tuple[Path, list[Path]]:
    """The frames as PPM files for the C++ runner (lossless, so it reads exactly the pixels the
    Python trackers get, and it needs no image library for them)."""
    folder = Path(tempfile.mkdtemp(prefix="headway-bench-frames-"))
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:04d}.ppm"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return folder, paths


@keeps_global_rng
def _encoder_probe(
    network: CSWinTT, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random encoder tokens of one frame (seeded), the search region's last rows padded."""
    config = network.config
    generator = torch.Generator(device).manual_seed(seed)
    tokens = torch.randn(config.num_tokens, 1, config.d_model, device=device, generator=generator)
    mask = torch.zeros(1, config.num_tokens, dtype=torch.bool, device=device)
    mask[0, -config.search_grid * 2 :] = True
    return tokens, mask


def _environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def benchmark_executors(
    config: str = "default",
    device: str = "cpu",
    executors: list[str] | None = None,
    frames: int = 20,
    warmup: int = 3,
    seed: int = 0,
    on_frame: Callable[[int], None] | None = None,
    rounds: int = 2,
    precision: str = "fp32",
    tune_seconds: float = DEFAULT_BUDGET_S,
) -> TrackerBenchmark:
    """Run every executor on the same frames and collect paper A's numbers. ``eager`` is
    always measured (it is the reference) and listed first. Both hosts run the same frame loop
    (``run_frames``); the C++ runner's times leave out its reading of the image files, as the
    Python trackers are handed arrays. ``auto`` among the executors tunes first (``precision``,
    ``tune_seconds``; see :mod:`headway.tracking.auto`) and is then timed like the others."""
    torch_device = resolve_device(device)
    chosen = executors or comparison_executors(torch_device)
    names = ["eager", *[n for n in dict.fromkeys(chosen) if n != "eager"]]
    check_tuning_options(precision, None, tune_seconds)
    for name in names:
        if name != AUTO:
            check_tracker_executor(name, torch_device)
    if frames < 1 or warmup < 0 or rounds < 1:
        raise InputError("frames and rounds must be ≥ 1 and warmup ≥ 0")
    torch.manual_seed(seed)
    network = build_cswintt(config).to(torch_device).eval()
    images, boxes, _ = render_sequence(
        np.random.default_rng([seed, 0]), SynthSettings(frames=frames + warmup + 1)
    )
    frame_folder, frame_files = _write_frames(images)
    trackers = {n: build_tracker(network, None, torch_device, n) for n in names if n != AUTO}
    first_box = [float(v) for v in boxes[0]]
    plan = None
    if AUTO in names:
        plan, trackers[AUTO] = tune_tracker(
            network, frame_files, first_box, None, torch_device, precision, budget_s=tune_seconds
        )
    probe_tokens, probe_mask = _encoder_probe(network, torch_device, seed)
    with torch.inference_mode():
        reference = trackers["eager"].encoder(probe_tokens, probe_mask).float()

    progress = None if on_frame is None else lambda i: on_frame(i - 1) if i else None
    stage_times: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    tracked: dict[str, np.ndarray] = {}

    def one_pass(name: str) -> list[float]:
        """ms of the timed frames of one pass; its stage times kept, its first boxes too."""
        result = run_pass(trackers[name], images, frame_files, first_box, progress)
        tracked.setdefault(name, result.boxes[1:])  # the first round's boxes
        read = result.read_ms if result.read_ms is not None else np.zeros(len(images))
        for index in range(1 + warmup, len(images)):
            measured = {s: result.stage_times[s][index] for s in STAGES}
            measured["load_preprocess"] -= read[index]
            stage_times[name].append(measured)
        return list(tracked_ms(result, 1 + warmup))  # frame 0 initialises

    passes = {name: partial(one_pass, name) for name in names}
    frame_ms = time_interleaved(passes, 0.0, min_rounds=rounds, max_rounds=rounds)
    flops = encoder_flops(network, torch_device)
    results = []
    for name in names:
        with torch.inference_mode():
            output = trackers[name].encoder(probe_tokens, probe_mask).float()
        medians = {s: float(np.median([t.get(s, 0.0) for t in stage_times[name]])) for s in STAGES}
        results.append(
            ExecutorResult(
                name=f"auto→{plan.chosen}" if name == AUTO and plan is not None else name,
                encoder_ms=medians["encoder"],
                frame_ms=frame_ms[name],
                stage_ms={s: medians[s] for s in TIMED_STAGES},
                encoder_gflops=flops / medians["encoder"] / 1e6,
                max_encoder_diff=float((output - reference).abs().max()),
                max_box_diff_px=float(np.abs(tracked[name] - tracked["eager"]).max()),
            )
        )
    for tracker in trackers.values():
        tracker.close()
    shutil.rmtree(frame_folder, ignore_errors=True)
    peaks = {
        str(dtype).removeprefix("torch."): matmul_peak(
            torch_device, dtype, network.config.d_model, network.config.dim_feedforward
        )
        for dtype in (torch.float32, torch.bfloat16)
    }
    return TrackerBenchmark(
        config,
        str(torch_device),
        frames,
        warmup,
        rounds,
        flops / 1e9,
        peaks,
        _environment(torch_device),
        results,
        plan.to_json() if plan is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# The section of `headway reproduce`'s report
# ---------------------------------------------------------------------------------------------


def executors_table(bench: TrackerBenchmark) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``headway bench tracker``'s main table: one row per executor."""
    header = ["executor", "enc ms", "×enc", "frame ms", "FPS", "×FPS", "GFLOP/s", "%peak"]
    header += ["max Δenc", "max Δbox px"]
    eager, peaks = bench.results[0], bench.matmul_peak_gflops
    rows = []
    for r in bench.results:
        # a bf16 executor may run fp32 where the CPU lacks bf16 (OpenVINO's hint does): its
        # attainable peak is the higher of the two
        peak = max(peaks.values()) if "bf16" in r.name else peaks["float32"]
        rows.append(
            [
                r.name,
                f"{r.encoder_ms:.2f}",
                f"{eager.encoder_ms / r.encoder_ms:.2f}",
                f"{r.frame_ms:.2f}",
                f"{r.fps:.2f}",
                f"{r.fps / eager.fps:.2f}",
                f"{r.encoder_gflops:.1f}",
                f"{100 * r.encoder_gflops / peak:.0f}%",
                f"{r.max_encoder_diff:.2e}",
                f"{r.max_box_diff_px:.3f}",
            ]
        )
    return header, rows


def stages_table(bench: TrackerBenchmark) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each executor's ms per frame by stage (share of the stages' sum)."""
    rows = []
    for r in bench.results:
        total = sum(r.stage_ms.values()) or 1.0
        cells = [f"{r.stage_ms[s]:.2f} ({100 * r.stage_ms[s] / total:.0f}%)" for s in TIMED_STAGES]
        rows.append([r.name, *cells])
    return ["executor", *TIMED_STAGES], rows


def section(folder: Path, quick: bool) -> Section:
    """Table 1 and Fig. 10–12: executors side by side on the default-size network."""

    from headway.tracking.native.build import built_runner

    # the paper's Cases B and C in the C++ runner too, where it is built on this machine; the
    # full run adds the compiled executors and auto; the quick one keeps the fp32 executors and
    # one bf16 executor, the fastest (compiled-bf16), to stay within the demo's minutes
    executors = comparison_executors(runner=built_runner() is not None)
    compiled = [n for n in comparison_executors(compiled=True) if n not in executors]
    executors += compiled
    if quick:
        # fp32 ones uncompiled, bf16 ones compiled only
        executors = [n for n in executors if (n in compiled) == (EXECUTORS[n].precision == "bf16")]
    else:
        executors.append(AUTO)  # its choice among all, checked and timed here
    frames, warmup, rounds = (4, 1, 2) if quick else (15, 3, 2)
    bench = benchmark_executors("default", "cpu", executors, frames, warmup, rounds=rounds)
    data = bench.to_json()
    rows = []
    for entry in data["results"]:
        stages = entry["stage_ms"]
        rows.append(
            [
                entry["name"],
                f"{entry['encoder_ms']:.1f}",
                f"{entry['encoder_speedup']:.2f}×",
                f"{entry['fps']:.2f}",
                f"{entry['fps_ratio']:.2f}×",
                f"{entry['encoder_gflops']:.0f}",
                " / ".join(f"{stages[s]:.0f}" for s in stages),
                f"{entry['max_encoder_diff']:.1e}",
            ]
        )
    table = markdown_table(
        [
            "executor",
            "encoder ms",
            "vs eager",
            "FPS",
            "FPS vs eager",
            "enc. GFLOP/s",
            "stage ms (" + " / ".join(data["results"][0]["stage_ms"]) + ")",
            "max encoder diff",
        ],
        rows,
    )
    peak = ", ".join(f"{k} {v:.0f}" for k, v in data["matmul_peak_gflops"].items())
    note = (
        f"Default configuration, random weights, {frames} timed frames after {warmup} "
        f"warm-up, {rounds} round(s), medians; encoder {data['encoder_gflop']:.2f} GFLOP per "
        f"frame; measured matmul peak (GFLOP/s): {peak}. Paper A (RTX A6000): encoder "
        "30.84 → 21.71 (B) → 13.23 ms (C), −56.8%; FPS 19 → 31.04. `cpp` / `cpp-heads` are "
        "Cases B and C in the C++ runner (listed where it is built). On this CPU the head "
        "threads cannot overlap (see docs/executors.md); the restructured attention and "
        "bf16 are the CPU wins."
    )
    atomic_write_text(folder / "bench.json", json.dumps(data, indent=2))
    return {
        "markdown": table + "\n\n" + note,
        "data": data,
        "plots": [],
        "commands": [
            f"headway bench tracker --config default --frames {frames} "
            f"--executors {','.join(executors)}"
        ],
    }
