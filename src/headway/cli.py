"""The ``headway`` command: parses arguments, calls library functions, prints tables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import torch
import typer
from rich.console import Console
from rich.table import Table

from headway.errors import InputError
from headway.models import CONFIGS, build_cswintt, load_weights
from headway.runtime.device import keep_freed_memory, resolve_device
from headway.runtime.executors import EXECUTORS, check_executor
from headway.tracking.datasets import FORMATS, UPDATE_INTERVALS, load_dataset
from headway.tracking.metrics import CONVENTIONS
from headway.tracking.plots import plot_curves
from headway.tracking.runner import evaluate_run, stage_breakdown, track_dataset
from headway.tracking.synth import SynthSettings, synthesize
from headway.tracking.tracker import CSWinTTTracker, TrackerSettings

app = typer.Typer(
    help="headway: faster transformer and CNN inference with proof the answers did not change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that compare variants side by side.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
compress_app = typer.Typer(help="Model compression.", no_args_is_help=True)
app.add_typer(compress_app, name="compress")
train_app = typer.Typer(help="Train the built-in models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
vit_app = typer.Typer(help="DeiT with sparse attention and token pruning.", no_args_is_help=True)
app.add_typer(vit_app, name="vit")
console = Console()
errors = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., object])


def reports_errors(command: F) -> F:
    """Turn input problems into one line on stderr and exit status 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except (InputError, ValueError, FileNotFoundError) as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _check_choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}: choose from {', '.join(choices)}")
    return value


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


@app.command()
@reports_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the OTB-layout dataset into.")],
    sequences: Annotated[int, typer.Option(help="Number of sequences.")] = 4,
    frames: Annotated[int, typer.Option(help="Frames per sequence.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    appearance_change: Annotated[
        float, typer.Option(help="Share of the target texture replaced by the last frame.")
    ] = 0.0,
) -> None:
    """Write synthetic tracking sequences (the built-in default data)."""
    from rich.progress import track

    steps = iter(track(range(sequences), description="synthesising", console=console))
    names = synthesize(
        out,
        sequences,
        seed,
        SynthSettings(frames=frames, appearance_change=appearance_change),
        on_sequence=lambda _: next(steps, None),
    )
    next(steps, None)
    console.print(f"wrote {len(names)} sequences × {frames} frames to {out}")


@app.command("track")
@reports_errors
def track_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder for the result files.")],
    format: Annotated[str, typer.Option(help=f"Dataset layout: {', '.join(FORMATS)}.")] = "otb",
    config: Annotated[str, typer.Option(help="Network size: default or tiny.")] = "default",
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Weights (.pth / .pth.tar); 'builtin': the trained tiny tracker."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    sequences: Annotated[str | None, typer.Option(help="Only these, comma-separated.")] = None,
    split: Annotated[str | None, typer.Option(help="GOT-10k / TrackingNet split.")] = None,
    update_interval: Annotated[
        int | None, typer.Option(help="Template update interval (default: per format).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights (no checkpoint).")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    executor: Annotated[str, typer.Option(help=f"How it runs: {', '.join(EXECUTORS)}.")] = "eager",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Track every sequence of a dataset; reruns skip sequences already complete."""
    _check_choice(format, FORMATS, "dataset format")
    _check_choice(config, list(CONFIGS), "configuration")
    torch_device = resolve_device(device)
    check_executor(executor, torch_device)
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    selected = load_dataset(dataset, format, split, _names(sequences))
    torch.manual_seed(seed)
    network = build_cswintt(config)
    if checkpoint is not None and str(checkpoint) == "builtin":
        from headway.experiments.tracker_accuracy import builtin_weights_path

        if config != "tiny":
            raise InputError("the built-in trained weights are for --config tiny")
        checkpoint = builtin_weights_path()
    if checkpoint is not None:
        load_weights(network, checkpoint)
    weights = str(checkpoint) if checkpoint else f"random (seed {seed})"
    interval = update_interval or UPDATE_INTERVALS[format]
    tracker = CSWinTTTracker(
        network, TrackerSettings(update_interval=interval), torch_device, executor
    )
    console.print(
        f"tracking {len(selected)} sequences with CSWinTT ({config}), weights {weights}, "
        f"executor {executor}, {torch_device}, {torch.get_num_threads()} threads, "
        f"update interval {interval}"
    )
    info = {"config": config, "weights": weights, "update_interval": interval, "executor": executor}
    try:
        summary = track_dataset(tracker, selected, out, format, info, show_progress=progress)
    finally:
        tracker.executor.close()
    if summary.skipped:
        console.print(f"skipped {len(summary.skipped)} complete sequences already in {out}")
    breakdown = stage_breakdown(out, [s.name for s in selected])
    table = Table(title=f"Per-frame time by stage ({breakdown.frames} tracked frames)")
    table.add_column("stage")
    table.add_column("ms / frame", justify="right")
    table.add_column("share", justify="right")
    shares = breakdown.shares()
    for stage, ms in breakdown.stage_ms.items():
        table.add_row(stage, f"{ms:.2f}", f"{shares[stage]:.1f}%")
    table.add_row("[bold]frame (wall)", f"{breakdown.frame_ms:.2f}", f"{breakdown.fps:.2f} FPS")
    console.print(table)


@app.command("eval")
@reports_errors
def eval_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folder(s) written by `headway track`.")],
    dataset: Annotated[Path, typer.Option(help="Dataset root folder (ground truth).")],
    format: Annotated[str, typer.Option(help=f"Dataset layout: {', '.join(FORMATS)}.")] = "otb",
    convention: Annotated[
        str, typer.Option(help=f"Metric convention: {', '.join(CONVENTIONS)}.")
    ] = "pytracking",
    split: Annotated[str | None, typer.Option(help="GOT-10k / TrackingNet split.")] = None,
    sequences: Annotated[str | None, typer.Option(help="Only these, comma-separated.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for PNG plots.")] = None,
) -> None:
    """Score runs (AUC, precision, normalised precision), write metrics.json and plots."""
    _check_choice(format, FORMATS, "dataset format")
    _check_choice(convention, CONVENTIONS, "convention")
    selected = load_dataset(dataset, format, split, _names(sequences))
    results = {str(run): evaluate_run(run, selected, convention) for run in runs}
    score_names = list(next(iter(results.values())).scores)
    table = Table(title=f"{len(selected)} sequences, {convention} convention")
    table.add_column("run")
    for name in score_names:
        table.add_column(name, justify="right")
    for label, result in results.items():
        table.add_row(label, *(f"{result.scores[n]:.2f}" for n in score_names))
    console.print(table)
    written = plot_curves(results, plots or runs[0])
    console.print("metrics.json written to each run folder; plots: " + ", ".join(map(str, written)))


@bench_app.command("tracker")
@reports_errors
def bench_tracker(
    config: Annotated[str, typer.Option(help="Network size: default or tiny.")] = "default",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    executors: Annotated[
        str, typer.Option(help=f"Comma-separated, from: {', '.join(EXECUTORS)}.")
    ] = "eager,scripted,heads,fused,fused-bf16",
    frames: Annotated[int, typer.Option(help="Timed frames per executor.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed frames first.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of weights and frames.")] = 0,
    rounds: Annotated[int, typer.Option(help="Passes per executor, in alternating order.")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Time every executor on the same frames: encoder, FPS, stages, GFLOP/s, differences."""
    import json

    from rich.progress import Progress

    from headway.experiments.tracker_executors import TIMED_STAGES, benchmark_executors
    from headway.io import atomic_write_text

    _check_choice(config, list(CONFIGS), "configuration")
    names = _names(executors) or ["eager"]
    allocator_tuned = keep_freed_memory()  # same for every executor measured
    wide = Console(width=max(console.width, 132))
    with Progress(console=console, transient=True) as progress:
        total = (frames + warmup) * rounds * len(set(names) | {"eager"})
        task = progress.add_task("frames (all executors)", total=total)
        bench = benchmark_executors(
            config, device, names, frames, warmup, seed, lambda _: progress.advance(task), rounds
        )
    eager = bench.results[0]
    table = Table(
        title=f"CSWinTT {config} on {bench.device} ({bench.environment['threads']} threads), "
        f"median of {frames} frames × {rounds} passes; encoder {bench.encoder_gflop:.2f} "
        "GFLOP/frame"
    )
    for column in (
        "executor",
        "enc ms",
        "×enc",
        "frame ms",
        "FPS",
        "×FPS",
        "GFLOP/s",
        "%peak",
        "max Δenc",
        "max Δbox px",
    ):
        table.add_column(column, justify="left" if column == "executor" else "right")
    for r in bench.results:
        peak = bench.matmul_peak_gflops["bfloat16" if "bf16" in r.name else "float32"]
        table.add_row(
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
        )
    wide.print(table)
    stages = Table(title="Stage breakdown, ms per frame (share of the stages' sum)")
    stages.add_column("executor")
    for stage in TIMED_STAGES:
        stages.add_column(stage, justify="right")
    for r in bench.results:
        total = sum(r.stage_ms.values()) or 1.0
        stages.add_row(
            r.name,
            *(f"{r.stage_ms[s]:.2f} ({100 * r.stage_ms[s] / total:.0f}%)" for s in TIMED_STAGES),
        )
    wide.print(stages)
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in bench.matmul_peak_gflops.items())
    console.print(f"measured matmul peak (tokens × FFN weight): {peaks}")
    if json_out is not None:
        data = bench.to_json()
        data["environment"]["glibc_keep_freed_memory"] = allocator_tuned
        atomic_write_text(json_out, json.dumps(data, indent=2))
        console.print(f"wrote {json_out}")


@compress_app.command("tucker")
@reports_errors
def compress_tucker(
    model: Annotated[str, typer.Argument(help="Model name (see `headway compress models`).")],
    rank: Annotated[
        str, typer.Option(help="vbmf[:F] | energy:F | ratio:F | rank:R | macs:F")
    ] = "vbmf",
    checkpoint: Annotated[Path | None, typer.Option(help="Weights to decompose.")] = None,
    out: Annotated[Path | None, typer.Option(help="Save the decomposed model here.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classifier outputs.")] = 1000,
    small_input: Annotated[bool, typer.Option(help="CIFAR-style 32×32 variant.")] = False,
    input_size: Annotated[int | None, typer.Option(help="Probe image side (pixels).")] = None,
    min_rank: Annotated[int, typer.Option(help="Smallest rank kept.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of random weights and the probe batch.")] = 0,
) -> None:
    """Tucker-2-decompose a model's K×K convolutions; print the per-layer table and totals."""
    from rich.progress import Progress

    from headway.models import create_model
    from headway.transforms.tucker import decompose_model, save_decomposed

    torch.manual_seed(seed)
    network = create_model(model, num_classes=num_classes, small_input=small_input)
    if checkpoint is not None:
        load_weights(network, checkpoint)
    size = input_size or (32 if small_input else (299 if model == "inception_v3" else 224))
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("decomposing", total=None)
        decomposed, report = decompose_model(
            network, probe, rank, min_rank,
            on_layer=lambda name: progress.update(task, description=f"decomposing {name}"),
        )  # fmt: skip
    table = Table(title=f"Tucker-2 of {model} ({rank}); MACs = conv + linear multiply-adds "
                  f"per {size}×{size} image")  # fmt: skip
    for column in ("layer", "status", "ranks", "MACs before", "MACs after", "params before",
                   "params after", "weight err", "output err"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("layer", "status") else "right")
    for row in report.layers:
        decomposed_row = row.status == "decomposed"
        table.add_row(
            row.name,
            row.status if decomposed_row else f"skipped: {row.reason}",
            f"{row.rank_in}, {row.rank_out}" if decomposed_row else "",
            f"{row.macs_before:,}", f"{row.macs_after:,}",
            f"{row.params_before:,}", f"{row.params_after:,}",
            f"{row.weight_error:.3f}" if decomposed_row else "",
            f"{row.output_error:.3f}" if decomposed_row else "",
        )  # fmt: skip
    Console(width=max(console.width, 150)).print(table)
    console.print(
        f"model MACs {report.macs_before:,} → {report.macs_after:,} "
        f"({100 * report.mac_reduction:.1f}% fewer); parameters {report.params_before:,} → "
        f"{report.params_after:,}"
    )
    if out is not None:
        save_decomposed(out, decomposed, report, model, num_classes, small_input)
        console.print(f"saved {out} (load with headway.transforms.tucker.load_decomposed)")


@compress_app.command("accuracy")
@reports_errors
def compress_accuracy(
    out: Annotated[Path, typer.Argument(help="Folder for checkpoints and accuracy.json.")],
    rank: Annotated[str, typer.Option(help="Rank rule for the decomposition.")] = "vbmf",
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 5,
    quick: Annotated[bool, typer.Option(help="One third of the training epochs.")] = False,
) -> None:
    """Paper B's accuracy comparison on the built-in digits: train, decompose, fine-tune."""
    from headway.experiments.tucker import accuracy

    rows = accuracy(out, rank, finetune_epochs, 1 / 3 if quick else 1.0)
    table = Table(title=f"Top-1 on digits (32×32 test split), Tucker-2 {rank}")
    for column in ("model", "MACs", "trained", "decomposed", "fine-tuned", "MACs after"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def pct(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}%"

    for r in rows:
        table.add_row(r.model, f"{r.macs:,}", pct(r.trained), pct(r.decomposed),
                      pct(r.finetuned), f"{r.macs_after:,}" if r.macs_after else "")  # fmt: skip
    console.print(table)
    console.print(f"wrote {out / 'accuracy.json'}")


@app.command()
@reports_errors
def multirun(
    models: Annotated[str, typer.Option(help="e.g. vgg16:8 or vgg16:3,resnet152:1")],
    mode: Annotated[str, typer.Option(help="mt | mp | seq | batched")] = "mt",
    decomposed: Annotated[str | None, typer.Option(help="Tucker-2 rank rule, e.g. vbmf")] = None,
    requests: Annotated[int, typer.Option(help="Requests per model instance.")] = 10,
    rate: Annotated[float | None, typer.Option(help="Requests/s per instance (open loop).")] = None,
    workers: Annotated[int, typer.Option(help="MT pool workers.")] = 2,
    threads: Annotated[int, typer.Option(help="Intra-op threads per worker / process.")] = 1,
    jobs: Annotated[str, typer.Option(help="Job policy: layers, jobs:N, macs:N.")] = "jobs:8",
    coalesce: Annotated[
        int,
        typer.Option(help="MT, beyond the paper: batch up to N waiting requests for the same job."),
    ] = 1,
    input_size: Annotated[
        int, typer.Option(help="Image side; 32 uses the small-input models.")
    ] = 32,
    device: Annotated[str, typer.Option(help="cpu or cuda (MT, seq, batched).")] = "cpu",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Run many models at once (paper B): MT framework, one process per model, or baselines."""
    import json

    from headway.io import atomic_write_text
    from headway.runtime.multi_model import ModelSpec, instance_names, parse_models, run_mode

    _check_choice(mode, ("mt", "mp", "seq", "batched"), "mode")
    if requests < 1:
        raise InputError("requests must be at least 1")
    if coalesce < 1 or (coalesce > 1 and mode != "mt"):
        raise InputError("--coalesce takes N ≥ 1 and applies to --mode mt only")
    torch_device = resolve_device(device)
    names = instance_names(parse_models(models))
    small = input_size <= 64
    specs = {n: ModelSpec(m, 10 if small else 1000, small, input_size, decomposed)
             for n, m in names}  # fmt: skip
    result = run_mode(mode, specs, requests, workers, threads, jobs, torch_device, rate, coalesce)
    table = Table(title=f"{mode}: {models}, {requests} requests each"
                  + (f", Tucker-2 {decomposed}" if decomposed else "")
                  + (f", coalescing up to {coalesce}" if coalesce > 1 else ""))  # fmt: skip
    for column in ("instance", "mean ms", "p95 ms", "requests"):
        table.add_column(column, justify="left" if column == "instance" else "right")
    for name, row in result.summary().items():
        table.add_row(name, f"{row['mean_ms']:.2f}", f"{row['p95_ms']:.2f}", str(row["requests"]))
    console.print(table)
    console.print(f"throughput {result.throughput:.2f} requests/s over {result.wall_s:.2f} s")
    if "mean_batch" in result.notes:
        console.print(f"coalesced batches: {result.notes['mean_batch']:.2f} requests on average")
    for name, message in result.errors.items():
        errors.print(f"[bold red]failed:[/] {name}: {message}", highlight=False)
    if json_out is not None:
        payload = {"mode": mode, "models": models, "decomposed": decomposed,
                   "requests": requests, "summary": result.summary(),
                   "throughput": result.throughput, "wall_s": result.wall_s,
                   "errors": result.errors, "notes": result.notes,
                   "latencies_ms": result.latencies_ms}  # fmt: skip
        atomic_write_text(json_out, json.dumps(payload, indent=2))
    if result.errors:
        raise typer.Exit(1)


def _parse_pair(text: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    try:
        return float(start), float(end or start)
    except ValueError:
        raise InputError(f"expected START:END, e.g. 0.1:0.5, got {text!r}") from None


@train_app.command("tracker")
@reports_errors
def train_tracker_command(
    out: Annotated[Path, typer.Argument(help="Run folder (checkpoint, weights, log).")],
    config: Annotated[str, typer.Option(help="Network size: tiny or default.")] = "tiny",
    box_steps: Annotated[int, typer.Option(help="Stage-1 (box) steps.")] = 3000,
    confidence_steps: Annotated[int, typer.Option(help="Stage-2 (confidence) steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Stage-1 peak learning rate (AdamW).")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the sampling.")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pth.")] = True,
) -> None:
    """Train a tracker on synthetic sequences: boxes (L1 + GIoU), then the confidence head."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from headway.tracking.train import TrackerTrainSettings, train_tracker

    _check_choice(config, list(CONFIGS), "configuration")
    settings = TrackerTrainSettings(
        config=config,
        box_steps=box_steps,
        confidence_steps=confidence_steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
    )
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=settings.total_steps, status="")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            keys = ("loss", "iou") if metrics["stage"] == 1 else ("loss", "accuracy")
            status = f"stage {int(metrics['stage'])} " + " ".join(
                f"{k} {metrics[k]:.3f}" for k in keys
            )
            progress.update(task, completed=step + 1, status=status)

        weights = train_tracker(out, settings, resume=resume, on_step=on_step)
    console.print(f"weights: {weights}")


@vit_app.command("accuracy")
@reports_errors
def vit_accuracy(
    out: Annotated[Path, typer.Argument(help="Folder for the checkpoint and vit_accuracy.json.")],
    prune: Annotated[str, typer.Option(help="Pruning share START:END (layers 4..12).")] = "0.1:0.5",
    sparsities: Annotated[str, typer.Option(help="Comma-separated.")] = "0.5,0.6,0.7,0.8",
    images: Annotated[
        Path | None, typer.Option(help="Your labelled folder ROOT/<class>/<image> instead.")
    ] = None,
    model: Annotated[str, typer.Option(help="With --images: deit_tiny|small|base.")] = "deit_tiny",
    checkpoint: Annotated[Path | None, typer.Option(help="With --images: DeiT weights.")] = None,
    class_map: Annotated[
        Path | None, typer.Option(help="Folder names in output order, one per line.")
    ] = None,
    calibration: Annotated[
        float, typer.Option(help="With --images: share of images that build the masks.")
    ] = 0.5,
    finetune_epochs: Annotated[
        int, typer.Option(help="Fine-tune with each sparsity's masks first (0: post hoc).")
    ] = 0,
) -> None:
    """Paper C's Table 1 shape: sparse only vs sparse + pruning, on the built-in digits (a
    small DeiT trained here) or on your image folder with real DeiT weights."""
    import json
    from dataclasses import replace

    from headway.experiments.vit import MASK_FINETUNING, accuracy_table, trained_digits_deit
    from headway.io import atomic_write_text
    from headway.models.deit import DEIT_CONFIGS, build_deit
    from headway.vision.data import load_imagenet_folder

    try:
        targets = tuple(float(v) for v in sparsities.split(","))
    except ValueError:
        raise InputError(f"sparsities must be numbers, got {sparsities!r}") from None
    if images is None:
        if checkpoint is not None:
            raise InputError("--checkpoint needs --images (the built-in run trains its own)")
        network, data = trained_digits_deit(out)
        name = "deit_digits"
    else:
        _check_choice(model, [m for m in DEIT_CONFIGS if m != "deit_digits"], "DeiT model")
        if checkpoint is None:
            raise InputError("--images needs --checkpoint (random weights score nothing)")
        network = load_weights(build_deit(model), checkpoint).eval()
        data = load_imagenet_folder(images, class_map, DEIT_CONFIGS[model].img_size,
                                    calibration_fraction=calibration)  # fmt: skip
        name = model
        console.print(f"{len(data.train_labels)} calibration and {len(data.test_labels)} "
                      f"scored images from {images}")  # fmt: skip
    if finetune_epochs < 0:
        raise InputError(f"--finetune-epochs must be ≥ 0, got {finetune_epochs}")
    finetune = replace(MASK_FINETUNING, epochs=finetune_epochs) if finetune_epochs else None
    table_data = accuracy_table(network, data, targets, _parse_pair(prune), finetune)
    table_data["model"] = name
    table = Table(title=f"{name} top-1 (dense {table_data['dense']:.1f}%), pruning {prune}")
    columns = ["sparsity", "achieved", "sparse only", "sparse + pruning"]
    if finetune:
        columns.insert(2, "post hoc (no fine-tuning)")
    for column in columns:
        table.add_column(column, justify="right")
    for row in table_data["rows"]:
        cells = [f"{row['sparsity']:.0%}", f"{row['achieved']:.1%}",
                 f"{row['sparse_only']:.1f}%", f"{row['sparse_pruned']:.1f}%"]  # fmt: skip
        if finetune:
            cells.insert(2, f"{row['sparse_only_post_hoc']:.1f}%")
        table.add_row(*cells)
    console.print(table)
    console.print(f"mean drop from pruning: {table_data['mean_drop_from_pruning']:.2f} points")
    atomic_write_text(out / "vit_accuracy.json", json.dumps(table_data, indent=2))


@vit_app.command("breakdown")
@reports_errors
def vit_breakdown(
    models: Annotated[
        str, typer.Option(help="Comma-separated DeiT names.")
    ] = "deit_tiny,deit_small",
    plot: Annotated[Path, typer.Option(help="PNG to write.")] = Path("vit_breakdown.png"),
) -> None:
    """FLOPs vs CPU time by layer type (paper C, Fig. 1) as a table and a stacked bar plot."""
    from headway.experiments.vit import flop_latency_breakdown, plot_breakdown

    rows = [flop_latency_breakdown(name) for name in _names(models) or []]
    table = Table(title="share of FLOPs / share of CPU time (batch 1)")
    for column in ("model", "linear", "attention", "other"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        total_f, total_t = sum(r["flops"].values()), sum(r["ms"].values())
        table.add_row(r["model"], *(f"{100 * r['flops'][k] / total_f:.1f}% / "
                                    f"{100 * r['ms'][k] / total_t:.1f}%"
                                    for k in ("linear", "attention", "other")))  # fmt: skip
    console.print(table)
    console.print(f"plot: {plot_breakdown(rows, plot)}")


@app.command()
@reports_errors
def simulate(
    model: Annotated[str, typer.Option(help="deit_tiny | deit_small | deit_base")] = "deit_tiny",
    sparsity: Annotated[
        str, typer.Option(help="One value or comma-separated.")
    ] = "0.5,0.6,0.7,0.8",
    prune: Annotated[str, typer.Option(help="Pruning share START:END.")] = "0.1:0.9",
) -> None:
    """Cycle-level ViTCoD-like accelerator: cycles by layer type, sparse only vs + pruning."""
    from headway.models.deit import DEIT_CONFIGS
    from headway.sim.vitcod import simulate_deit
    from headway.transforms.token_pruning import keep_counts, pruning_ratios

    if model not in DEIT_CONFIGS:
        raise InputError(f"unknown DeiT {model!r}: choose from {', '.join(DEIT_CONFIGS)}")
    config = DEIT_CONFIGS[model]
    counts = keep_counts(config.num_patches, pruning_ratios(config.depth, *_parse_pair(prune)))
    try:
        targets = [float(v) for v in sparsity.split(",")]
    except ValueError:
        raise InputError(f"sparsity must be numbers, got {sparsity!r}") from None
    table = Table(title=f"{model}: cycles (500 MHz, 64×8 MACs, 76.8 GiB/s, 8-bit), pruning {prune}")
    for column in ("sparsity", "case", "linear", "attention", "softmax", "ffn", "top-k", "total",
                   "speedup"):  # fmt: skip
        table.add_column(column, justify="right")
    speedups = []
    for target in targets:
        sparse = simulate_deit(model, target)
        pruned = simulate_deit(model, target, counts)
        speedups.append(sparse.total / pruned.total)
        for label, result in (("sparse", sparse), ("+ pruning", pruned)):
            kinds = result.by_type()
            table.add_row(f"{target:.0%}", label, *(f"{kinds[k]:,}" for k in
                          ("linear", "attention", "softmax", "ffn", "topk")),
                          f"{result.total:,}",
                          f"{sparse.total / result.total:.2f}×")  # fmt: skip
    Console(width=max(console.width, 130)).print(table)
    console.print(f"mean speedup of sparse + pruning over sparse only: "
                  f"{sum(speedups) / len(speedups):.2f}× (paper C: 1.31×)")  # fmt: skip


@app.command()
@reports_errors
def reproduce(
    out: Annotated[Path, typer.Argument(help="Report folder (report.md, plots, JSON).")],
    quick: Annotated[bool, typer.Option(help="Small sizes: under 10 minutes here.")] = False,
    only: Annotated[str | None, typer.Option(help="Only these experiments (comma-sep.).")] = None,
) -> None:
    """Run the three papers' experiments on built-in data; resumable; writes OUT/report.md."""
    from headway.experiments.reproduce import Experiment, Outcome
    from headway.experiments.reproduce import reproduce as run_all

    def started(experiment: Experiment, index: int, total: int) -> None:
        console.print(f"[{index + 1}/{total}] paper {experiment.paper}: {experiment.title} …")

    def ended(outcome: Outcome) -> None:
        if outcome.status == "failed":
            errors.print(f"  [red]failed[/] after {outcome.seconds:.0f} s: {outcome.error}")
        elif outcome.status == "skipped":
            console.print("  already done (skipped)")
        else:
            console.print(f"  done in {outcome.seconds:.0f} s")

    with console.status("running experiments (see the lines above for progress)"):
        report, outcomes = run_all(out, quick, _names(only), started, ended)
    failed = [o.key for o in outcomes if o.status == "failed"]
    console.print(f"report: {report}")
    if failed:
        errors.print(f"[bold red]{len(failed)} experiment(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console-script entry
    torch.set_grad_enabled(False)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
