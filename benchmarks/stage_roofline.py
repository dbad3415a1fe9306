"""The tracker's whole frame against the machine's roofline: per stage, the plain network's
GFLOP (torch.utils.flop_counter on eager's own stage inputs), the milliseconds each executor
spends on it while tracking (stage timer, tracked frames after a warm-up, executors
interleaved by round in one process), and so the stage's GFLOP/s beside a 2048² fp32 matmul
timed in the same process (torch's and OpenVINO's). The backbone is then broken down by layer
group with OpenVINO's own per-node profile (PERF_COUNT), to say what stands between it and the
matmul rate.

GFLOP/s are "effective": the plain network's FLOPs over the executor's time (the spectral
encoder does fewer multiply-adds, so it can pass the matmul rate).

    python benchmarks/stage_roofline.py --executors eager,spectral,openvino,onnxruntime \\
        --rounds 3 --json stage_roofline.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from headway.models.pretrained import load_tracker_network
from headway.runtime.engines import compile_openvino, engine_available, export_onnx
from headway.tracking.backends import build_tracker, run_pass
from headway.tracking.crop import read_frame
from headway.tracking.datasets import load_dataset
from headway.tracking.synth import SynthSettings, synthesize
from headway.transforms.fold import fold_batchnorm
from headway.ways import cpu_has_bf16

STAGES = ("backbone", "encoder", "decoder", "box_head")
BACKBONE_INPUTS: tuple[torch.Tensor, ...] = ()  # the search crop and mask, as eager saw them
DECODER_INPUTS: tuple[torch.Tensor, ...] = ()  # the memory and its padding mask
MATMUL = 2048


def stage_flops(network: nn.Module, images: list[np.ndarray], box: list[float]) -> dict[str, float]:
    """GFLOP of each stage of one tracked frame of the plain network (eager's own inputs)."""
    tracker = build_tracker(network, None, "cpu", "eager")
    executor = tracker.executor  # type: ignore[attr-defined]
    captured: dict[str, tuple[torch.Tensor, ...]] = {}
    originals = {name: getattr(executor, name) for name in ("backbone", *STAGES[1:])}

    def recording(name: str):  # the last frame's call of each stage
        def call(*args: torch.Tensor):
            captured[name] = args
            return originals[name](*args)

        return call

    for name in originals:
        setattr(executor, name, recording(name))
    run_pass(tracker, images[:3], [Path(f"f{i}") for i in range(3)], box)
    for name in originals:
        delattr(executor, name)
    tracker.close()
    calls = {
        "backbone": lambda: network.forward_backbone(*captured["backbone"]),
        "encoder": lambda: network.forward_encoder(*captured["encoder"]),
        "decoder": lambda: network.forward_decoder(*captured["decoder"]),
        "box_head": lambda: (
            network.forward_box_head(*captured["box_head"]),
            network.forward_confidence(captured["box_head"][1]),
        ),
    }
    global BACKBONE_INPUTS, DECODER_INPUTS
    BACKBONE_INPUTS = captured["backbone"]
    DECODER_INPUTS = tuple(t.clone() for t in captured["decoder"])
    flops = {}
    network.requires_grad_(False)  # the counter's module tracker hooks tensors that need grads
    with torch.inference_mode():
        for name, call in calls.items():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            flops[name] = counter.get_total_flops() / 1e9
    return flops


def matmul_rates(threads: int, seconds: float) -> dict[str, float]:
    """GFLOP/s of a 2048² fp32 matmul: torch (MKL/oneDNN) and OpenVINO (one MatMul)."""
    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    work = 2 * MATMUL**3 / 1e9
    rates = {}

    def best_of(call) -> float:
        call()
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            began = time.perf_counter()
            call()
            times.append(time.perf_counter() - began)
        return work / statistics.median(times)

    rates["torch"] = best_of(lambda: torch.mm(a, b))
    if engine_available("openvino"):
        linear = nn.Linear(MATMUL, MATMUL, bias=False).eval()
        path = export_onnx(linear, (a,))
        compiled = compile_openvino(path, "f32", threads)
        request = compiled.create_infer_request()
        x = a.numpy()
        rates["openvino"] = best_of(lambda: request.infer([x]))
    return rates


def time_stages(
    network: nn.Module,
    names: list[str],
    images: list[np.ndarray],
    box: list[float],
    rounds: int,
    warm: int,
) -> dict[str, dict[str, float]]:
    """Median ms per stage per executor over the tracked frames after ``warm``, rounds
    alternating the executors' order."""
    trackers = {name: build_tracker(network, None, "cpu", name) for name in names}
    paths = [Path(f"frame{i}") for i in range(len(images))]
    samples: dict[str, dict[str, list[float]]] = {n: defaultdict(list) for n in names}
    frames: dict[str, list[float]] = defaultdict(list)
    for name in names:  # first pass: compile, export, warm
        run_pass(trackers[name], images[:3], paths, box)
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            result = run_pass(trackers[name], images, paths, box)
            for stage in STAGES:
                samples[name][stage].extend(result.stage_times[stage][1 + warm :])
            frames[name].extend((result.frame_times[1 + warm :] * 1e3).tolist())
    alone: dict[str, float] = {}
    for name, tracker in trackers.items():  # the backbone call alone, back to back
        executor = getattr(tracker, "executor", None)
        if executor is not None:
            with torch.inference_mode():
                executor.backbone(*BACKBONE_INPUTS)
                times = []
                for _ in range(10):
                    began = time.perf_counter()
                    executor.backbone(*BACKBONE_INPUTS)
                    times.append((time.perf_counter() - began) * 1e3)
            alone[name] = statistics.median(times)
        tracker.close()
    table = {}
    for name in names:
        table[name] = {stage: statistics.median(samples[name][stage]) for stage in STAGES}
        table[name]["frame"] = statistics.median(frames[name])
        table[name]["backbone_alone"] = alone.get(name, float("nan"))
    return table


def backbone_profile(network: nn.Module, image: torch.Tensor, threads: int, runs: int):
    """The folded backbone on OpenVINO with PERF_COUNT: ms and GFLOP per layer group (stem,
    layer1–3, the 1×1 projection) and ms per node type."""
    folded = fold_batchnorm(_BackboneOnly(network))[0].eval()
    path = export_onnx(folded, (image,))
    compiled = compile_openvino(path, "f32", threads, profiling=True)
    request = compiled.create_infer_request()
    x = image.numpy()
    for _ in range(3):
        request.infer([x])
    by_group: dict[str, float] = defaultdict(float)
    by_type: dict[str, float] = defaultdict(float)
    wall = []
    for _ in range(runs):
        began = time.perf_counter()
        request.infer([x])
        wall.append((time.perf_counter() - began) * 1e3)
        for node in request.profiling_info:
            ms = node.real_time.total_seconds() * 1e3
            by_group[_group(node.node_name)] += ms / runs
            by_type[node.exec_type or node.node_type] += ms / runs
    flops = _group_flops(folded, image)
    return dict(by_group), dict(by_type), flops, statistics.median(wall)


def decoder_profile(
    network: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, runs: int
) -> tuple[float, int, dict[str, float]]:
    """The decoder stage on OpenVINO with PERF_COUNT: ms per call, nodes that ran, and ms per
    node type."""
    from headway.tracking.executors import StageModule

    path = export_onnx(StageModule(network, "forward_decoder"), inputs)
    request = compile_openvino(path, "f32", threads, profiling=True).create_infer_request()
    arrays = [t.numpy() for t in inputs]
    for _ in range(5):
        request.infer(arrays)
    by_type: dict[str, float] = defaultdict(float)
    wall = []
    for _ in range(runs):
        began = time.perf_counter()
        request.infer(arrays)
        wall.append((time.perf_counter() - began) * 1e3)
        for node in request.profiling_info:
            by_type[node.node_type] += node.real_time.total_seconds() * 1e3 / runs
    ran = sum(1 for node in request.profiling_info if node.real_time.total_seconds() > 0)
    return statistics.median(wall), ran, dict(by_type)


def print_decoder_profile(network: nn.Module, threads: int, runs: int) -> dict[str, object]:
    wall, ran, by_type = decoder_profile(network, DECODER_INPUTS, threads, runs)
    slowest = sorted(by_type.items(), key=lambda kv: -kv[1])[:5]
    print(f"decoder alone on OpenVINO: {wall:.2f} ms per call, {ran} nodes ran; by node type: "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in slowest))  # fmt: skip
    return {"wall_ms": wall, "nodes": ran, "types_ms": by_type}


class _BackboneOnly(nn.Module):
    """The backbone stage's convolutions: ResNet trunk to layer3, then the 1×1 projection."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.body = network.backbone[0].body
        self.bottleneck = network.bottleneck

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.body(images))


def _group(node_name: str) -> str:
    for group in ("layer1", "layer2", "layer3", "bottleneck"):
        if group in node_name:
            return group
    if "conv1" in node_name or "maxpool" in node_name or "bn1" in node_name or "relu" in node_name:
        return "stem"
    return "other (reorders, input, output)"


def _group_flops(module: nn.Module, image: torch.Tensor) -> dict[str, float]:
    flops: dict[str, float] = defaultdict(float)
    hooks = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            group = _group(name)

            def count(layer, inputs, output, group=group):
                if isinstance(layer, nn.Conv2d):
                    k = layer.kernel_size[0] * layer.kernel_size[1]
                    per = 2 * layer.in_channels // layer.groups * k
                    flops[group] += per * output.numel() / 1e9

            hooks.append(layer.register_forward_hook(count))
    with torch.inference_mode():
        module(image)
    for hook in hooks:
        hook.remove()
    return dict(flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executors", default="eager,spectral,openvino,onnxruntime")
    parser.add_argument("--config", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--decoder-only", action="store_true", help="only the decoder profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.executors.split(",") if n]
    if not cpu_has_bf16():
        names = [n for n in names if "bf16" not in n]
    network = load_tracker_network("random", 0, args.config)
    with tempfile.TemporaryDirectory() as root:
        synthesize(root, 1, 1, SynthSettings(frames=args.frames))
        sequence = load_dataset(Path(root), "otb")[0]
        images = [read_frame(p) for p in sequence.frames]
        box = [float(v) for v in sequence.init_box]
    flops = stage_flops(network, images, box)
    if args.decoder_only:
        if engine_available("openvino"):
            print_decoder_profile(network, args.threads, 30)
        return
    rates = matmul_rates(args.threads, 2.0)
    times = time_stages(network, names, images, box, args.rounds, warm=2)
    rates_after = matmul_rates(args.threads, 2.0)  # the machine's speed at the end, too
    peak = max(rates["torch"], rates_after["torch"])
    print(f"matmul {MATMUL}² fp32: torch {rates['torch']:.0f} / {rates_after['torch']:.0f} "
          f"GFLOP/s, OpenVINO {rates.get('openvino', float('nan')):.0f} GFLOP/s")  # fmt: skip
    print("GFLOP per stage (plain network): " + ", ".join(f"{k} {v:.2f}" for k, v in flops.items()))
    header = f"{'executor':14s}" + "".join(f"{s:>22s}" for s in STAGES) + f"{'frame ms':>10s}"
    print(header)
    rows = {}
    for name in names:
        cells = ""
        rows[name] = {}
        for stage in STAGES:
            ms = times[name][stage]
            rate = flops[stage] / (ms / 1e3) if ms else float("nan")
            rows[name][stage] = {"ms": ms, "gflops": rate, "of_matmul": rate / peak}
            cells += f"{ms:8.1f} ms {rate:5.0f} ({rate / peak:4.0%})"
        rows[name]["frame_ms"] = times[name]["frame"]
        rows[name]["backbone_alone_ms"] = times[name]["backbone_alone"]
        print(f"{name:14s}{cells}{times[name]['frame']:10.1f}")
    print("backbone call alone, back to back (ms): " + ", ".join(
        f"{n} {times[n]['backbone_alone']:.1f}" for n in names))  # fmt: skip
    result = {"threads": args.threads, "config": args.config, "matmul": rates,
              "matmul_after": rates_after, "stage_gflop": flops, "executors": rows}  # fmt: skip
    if engine_available("openvino"):
        search = torch.randn(1, 3, network.config.search_size, network.config.search_size)
        groups, types, group_flops, wall = backbone_profile(
            network, search, args.threads, args.profile_runs
        )
        ov_peak = rates.get("openvino", peak)
        print(f"backbone alone on OpenVINO: {wall:.1f} ms per call; by layer group:")
        for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            gflop = group_flops.get(group, 0.0)
            rate = gflop / (ms / 1e3) if ms else 0.0
            print(f"  {group:32s} {ms:7.2f} ms {gflop:6.2f} GFLOP {rate:6.0f} GFLOP/s "
                  f"({rate / ov_peak:4.0%} of OpenVINO's matmul)")  # fmt: skip
        slowest = sorted(types.items(), key=lambda kv: -kv[1])[:8]
        print("  by node type: " + ", ".join(f"{k} {v:.1f} ms" for k, v in slowest))
        result["backbone_profile"] = {"wall_ms": wall, "groups_ms": groups,
                                      "groups_gflop": group_flops, "types_ms": types}  # fmt: skip
        result["decoder_profile"] = print_decoder_profile(network, args.threads, 30)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
