"""``headway compress tucker | compress accuracy | multirun``: paper B's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from headway.cli.base import (
    app,
    at_least,
    bench_app,
    check_choice,
    check_seed,
    compress_app,
    console,
    errors,
    output_file,
    output_folder,
    positive,
    positive_ints,
    print_table,
    reports_errors,
    shown,
    some_names,
    thread_count,
)
from headway.errors import InputError
from headway.models import list_models
from headway.runtime.device import resolve_device


@compress_app.command("tucker")
@reports_errors
def compress_tucker(
    model: Annotated[
        str,
        typer.Argument(
            help=f"Model: {', '.join(list_models())}, or torchvision:<name> / timm:<name> "
            "(when installed)."
        ),
    ],
    rank: Annotated[
        str, typer.Option(help="vbmf[:F] | energy:F | ratio:F | rank:R | macs:F")
    ] = "vbmf",
    checkpoint: Annotated[Path | None, typer.Option(help="Weights to decompose.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Save the decomposed model here (report: same name .json).")
    ] = None,
    num_classes: Annotated[int, typer.Option(help="Classifier outputs.")] = 1000,
    small_input: Annotated[bool, typer.Option(help="CIFAR-style 32×32 variant.")] = False,
    input_size: Annotated[int | None, typer.Option(help="Probe image side (pixels).")] = None,
    min_rank: Annotated[int, typer.Option(help="Smallest rank kept.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of random weights and the probe batch.")] = 0,
) -> None:
    """Tucker-2-decompose a model's K×K convolutions; print the per-layer table and totals."""
    check_seed(seed)
    from rich.progress import Progress

    from headway.experiments.tucker import decompose_named, layers_table
    from headway.models.registry import check_model_name, checkpoint_overrides
    from headway.transforms.tucker import RankRule, check_decomposed_path, save_decomposed

    check_model_name(model)
    RankRule.parse(rank)
    at_least(num_classes, 1, "--num-classes")
    at_least(input_size, 1, "--input-size")
    at_least(min_rank, 1, "--min-rank")
    if out is not None:
        output_file(out, "--out")
        check_decomposed_path(out)
        output_file(out.with_suffix(".json"), "--out (report)")
    if checkpoint_overrides(model, num_classes, small_input, checkpoint).get("transform_input"):
        console.print("inception_v3 with ImageNet weights: torchvision's transform_input is on")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("decomposing", total=None)
        decomposed, report, size = decompose_named(
            model,
            rank,
            checkpoint,
            num_classes,
            small_input,
            input_size,
            min_rank,
            seed,
            on_layer=lambda name: progress.update(task, description=f"decomposing {name}"),
        )
    title = (
        f"Tucker-2 of {model} ({shown(rank)}); MACs = conv + linear multiply-adds per "
        f"{size}×{size} image"
    )
    print_table(title, *layers_table(report), width=150)
    console.print(
        f"model MACs {report.macs_before:,} → {report.macs_after:,} "
        f"({100 * report.mac_reduction:.1f}% fewer); parameters {report.params_before:,} → "
        f"{report.params_after:,}"
    )
    if out is not None:
        save_decomposed(out, decomposed, report, model, num_classes, small_input)
        console.print(
            f"saved {shown(out)} and its report {shown(out.with_suffix('.json'))} "
            "(load with headway.transforms.tucker.load_decomposed)"
        )


@compress_app.command("accuracy")
@reports_errors
def compress_accuracy(
    out: Annotated[Path, typer.Argument(help="Folder for checkpoints and accuracy.json.")],
    rank: Annotated[str, typer.Option(help="Rank rule for the decomposition.")] = "vbmf",
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 5,
    quick: Annotated[bool, typer.Option(help="One third of the training epochs.")] = False,
    models: Annotated[
        str | None, typer.Option(help="Only these, comma-separated (default: all four).")
    ] = None,
) -> None:
    """Paper B's accuracy comparison on the built-in digits: train, decompose, fine-tune."""
    from headway.experiments.tucker import ACCURACY_MODELS, accuracy, accuracy_table
    from headway.transforms.tucker import RankRule

    output_folder(out, "OUT")
    chosen = some_names(models, "--models", list(ACCURACY_MODELS), "model")
    RankRule.parse(rank)
    at_least(finetune_epochs, 0, "--finetune-epochs")
    rows = accuracy(out, rank, finetune_epochs, 1 / 3 if quick else 1.0, chosen)
    print_table(
        f"Top-1 % on digits (32×32 test split), Tucker-2 {shown(rank)}", *accuracy_table(rows)
    )
    console.print(f"wrote {shown(out / 'accuracy.json')}")


@app.command()
@reports_errors
def multirun(
    models: Annotated[str, typer.Option(help="e.g. vgg16:8 or vgg16:3,resnet152:1")],
    mode: Annotated[str, typer.Option(help="mt | mp | seq | batched")] = "mt",
    decomposed: Annotated[str | None, typer.Option(help="Tucker-2 rank rule, e.g. vbmf")] = None,
    requests: Annotated[int, typer.Option(help="Requests per model instance.")] = 10,
    rate: Annotated[float | None, typer.Option(help="Requests/s per instance (open loop).")] = None,
    workers: Annotated[int, typer.Option(help="MT pool workers (engine streams).")] = 2,
    threads: Annotated[int, typer.Option(help="Intra-op threads per worker / process.")] = 1,
    jobs: Annotated[
        str | None,
        typer.Option(help="Job policy: layers, jobs:N, macs:N (default jobs:8; engines jobs:1)."),
    ] = None,
    coalesce: Annotated[
        int,
        typer.Option(help="MT, beyond the paper: batch up to N waiting requests for the same job."),
    ] = 1,
    input_size: Annotated[
        int, typer.Option(help="Image side; 64 or less uses the small-input models.")
    ] = 32,
    device: Annotated[str, typer.Option(help="cpu or cuda (MT, seq, batched).")] = "cpu",
    engine: Annotated[
        str | None,
        typer.Option(help="Run the jobs with onnxruntime, openvino or openvino-bf16 (CPU)."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Weights for every instance (all of one model; loaded strictly)."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Run many models at once (paper B): MT framework, one process per model, or baselines."""
    import json

    from headway.io import atomic_write_text
    from headway.runtime.engines import require_engine
    from headway.transforms.tucker import RankRule
    from headway.vision.serving import (
        ModelSpec,
        instance_names,
        instances_table,
        parse_models,
        run_mode,
    )

    check_choice(mode, ("mt", "mp", "seq", "batched"), "mode")
    at_least(requests, 1, "--requests")
    positive(rate, "--rate")
    thread_count(workers, "--workers")
    thread_count(threads, "--threads")
    at_least(input_size, 1, "--input-size")
    if coalesce < 1 or (coalesce > 1 and mode != "mt"):
        raise InputError("--coalesce takes N ≥ 1 and applies to --mode mt only")
    if decomposed is not None:
        RankRule.parse(decomposed)
    output_file(json_out, "--json")
    torch_device = resolve_device(device)
    if engine is not None:
        require_engine(engine)
        if torch_device.type != "cpu":
            raise InputError(f"--engine {engine} runs on the CPU only (device is {device})")
    instances = instance_names(parse_models(models))
    if checkpoint is not None:
        if not checkpoint.is_file():
            what = "is a folder, not a file" if checkpoint.is_dir() else "file does not exist"
            raise InputError(f"--checkpoint {checkpoint}: {what}")
        if len({m for _, m in instances}) > 1:
            raise InputError("--checkpoint applies to one model: give one name in --models")
    weights = str(checkpoint) if checkpoint else None
    specs = {n: ModelSpec.sized(m, input_size, decomposed, engine, weights) for n, m in instances}
    result = run_mode(mode, specs, requests, workers, threads, jobs, torch_device, rate, coalesce)
    title = (
        f"{mode}: {shown(models)}, {requests} requests each"
        + (f", Tucker-2 {shown(decomposed)}" if decomposed else "")
        + (f", coalescing up to {coalesce}" if coalesce > 1 else "")
        + (f", jobs run by {engine}" if engine else "")
        + (" (chained asynchronous requests)" if "engine" in result.notes else "")
    )
    print_table(title, *instances_table(result, list(specs)))
    console.print(f"throughput {result.throughput:.2f} requests/s over {result.wall_s:.2f} s")
    if "mean_batch" in result.notes:
        console.print(f"coalesced batches: {result.notes['mean_batch']:.2f} requests on average")
    for name, message in result.errors.items():
        errors.print(f"[bold red]failed:[/] {name}: {shown(message)}", highlight=False)
    if json_out is not None:
        settings = {"mode": mode, "models": models, "decomposed": decomposed, "engine": engine}
        payload = {**settings, "requests": requests, "summary": result.summary()}
        payload |= {"throughput": result.throughput, "wall_s": result.wall_s}
        payload |= {"errors": result.errors, "notes": result.notes}
        payload["latencies_ms"] = result.latencies_ms
        atomic_write_text(json_out, json.dumps(payload, indent=2))
    if result.errors:
        raise typer.Exit(1)


@bench_app.command("tucker")
@reports_errors
def bench_tucker(
    models: Annotated[
        str, typer.Option(help="Models for the MAC table.")
    ] = "vgg16,resnet152,inception_v3,regnet_y_32gf",
    rank: Annotated[str, typer.Option(help="Rank rule for the MAC table.")] = "vbmf",
    latency_model: Annotated[str, typer.Option(help="Model timed before / after.")] = "vgg16",
    latency_rank: Annotated[str, typer.Option(help="Rank rule of the timed model.")] = "macs:0.19",
    only: Annotated[str | None, typer.Option(help="macs, latency or svd.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Paper B's compression numbers: MAC reduction per model (ImageNet sizes) and CPU latency
    before / after decomposition at batch 1 and 8, side by side in one process."""
    import json
    import platform

    from headway.experiments.tucker import latency, latency_table, mac_reduction, macs_table
    from headway.io import atomic_write_text
    from headway.transforms.tucker import RankRule

    if only is not None:
        check_choice(only, ("macs", "latency", "svd"), "--only part")
    chosen = some_names(models, "--models", list_models(), "model") or []
    check_choice(latency_model, list_models(), "model")
    RankRule.parse(rank)
    RankRule.parse(latency_rank)
    output_file(json_out, "--json")
    rows: list[dict[str, object]] = []
    timing: dict[str, object] = {}
    if only == "svd":
        from headway.experiments.tucker import decomposition_time

        svd_rows = decomposition_time(
            chosen, rank, on_model=lambda n: console.print(f"decomposing {n} twice each way …")
        )
        print_table(
            f"Tucker-2 ({shown(rank)}) decomposition time: full SVD vs Gram eigendecomposition",
            ["model", "full SVD s", "Gram s", "speedup", "same ranks", "max Δ weight error"],
            [
                [
                    r["model"],
                    f"{r['full_svd_s']:.1f}",
                    f"{r['gram_s']:.1f}",
                    f"{r['speedup']:.2f}×",
                    "yes" if r["same_ranks"] else "NO",
                    f"{r['max_weight_error_difference']:.1e}",
                ]
                for r in svd_rows
            ],
        )
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(svd_rows, indent=2))
        return
    if only != "latency":
        rows = mac_reduction(chosen, rank, on_model=lambda n: console.print(f"decomposing {n} …"))
        print_table(
            f"Tucker-2 MAC reduction ({shown(rank)}); conv + linear MACs per image",
            *macs_table(rows),
            width=140,
        )
    if only != "macs":
        timing = latency(latency_model, latency_rank)
        layout = "channels-last" if timing["channels_last"] else "NCHW"
        print_table(
            f"{latency_model} ({timing['input']}×{timing['input']}, "
            f"{shown(latency_rank)}, {timing['mac_reduction_pct']:.1f}% fewer MACs), CPU "
            f"latency, {timing['threads']} threads, {layout}, median",
            *latency_table(timing),
        )
    if json_out is not None:
        environment = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        payload = {"mac_reduction": rows, "latency": timing, "environment": environment}
        atomic_write_text(json_out, json.dumps(payload, indent=2))


@bench_app.command("multidnn")
@reports_errors
def bench_multidnn(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for multidnn.json and the plots.")
    ] = Path("runs/multidnn"),
    requests: Annotated[int, typer.Option(help="Requests per instance.")] = 60,
    rounds: Annotated[int, typer.Option(help="Rounds in which the cases take turns.")] = 3,
    only: Annotated[
        str | None,
        typer.Option(help="solo, homogeneous, heterogeneous, engines or engines-mix."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (MP: one CUDA context each).")] = "cpu",
) -> None:
    """Paper B's multi-DNN experiments (32×32 models): solo vs 6 at once; 8 × VGG-16 as
    Ori.(MP), Dcomp.(MP), Dcomp.(MT) and beyond-paper variants; a heterogeneous mix; both on
    OpenVINO, headway's MT runner beside OpenVINO served as its users serve it."""
    import json

    from headway.experiments.multidnn import (
        MIX_RANK,
        RANK,
        cases_table,
        part_settings,
        plot_cases,
        round_ratios,
        run_cases,
        solo_vs_crowd,
    )
    from headway.io import atomic_write_text
    from headway.runtime.engines import INSTALL_HINT, engine_available, require_engine

    parts = ("solo", "homogeneous", "heterogeneous", "engines", "engines-mix")
    if only is not None:
        check_choice(only, parts, "--only part")
    output_folder(out, "OUT")
    at_least(requests, 1, "--requests")
    at_least(rounds, 1, "--rounds")
    device = str(resolve_device(device))
    if only is not None and only.startswith("engines"):  # asked for by name: never skipped
        require_engine("openvino")
        if device != "cpu":
            raise InputError(f"--only {only} runs on the CPU (the engines'), not on {device}")
    report: dict[str, object] = {
        "device": device,
        "rank": RANK,
        "mix_rank": MIX_RANK,
        "mp_threads": 1,
        "mt_workers": 2,
        "mt_threads": 1,
    }
    if only in (None, "solo"):
        solo = solo_vs_crowd(requests=max(2, requests // 3), device=device)
        print_table(
            "solo vs 6 at once (one process each, 1 thread), mean ms",
            ["model", "solo", "6 at once"],
            [[m, f"{r['solo_ms']:.1f}", f"{r['crowd_ms']:.1f}"] for m, r in solo.items()],
        )
        report["solo"] = solo
    settings = part_settings(requests, rounds)
    for title, (models, cases, count, turns) in settings.items():
        if only not in (None, title):
            continue
        if title.startswith("engines") and not engine_available("openvino"):
            console.print(f"{title}: skipped, OpenVINO is not installed ({INSTALL_HINT})")
            continue
        if title.startswith("engines") and device != "cpu":
            console.print(f"{title}: skipped, the engines run on the CPU (device is {device})")
            continue
        result = run_cases(
            models,
            cases,
            count,
            lambda label, t=title: console.print(f"{t}: {label} …"),
            turns,
            device,
        )
        print_table(
            f"{title}: {models}, {count} requests per instance, mean ms",
            *cases_table(result),
            width=140,
        )
        for line in round_ratios(result):
            console.print(line)
        plot_cases(title, result, out / f"{title}.png")
        report[title] = result
    atomic_write_text(out / "multidnn.json", json.dumps(report, indent=2))
    console.print(f"wrote {shown(out / 'multidnn.json')} and the plots")


@bench_app.command("engines")
@reports_errors
def bench_engines(
    cases: Annotated[
        str,
        typer.Option(
            help="Comma-separated: deit_tiny, deit_tiny_pruned, vgg16, vgg16_tucker, "
            "cswintt_encoder."
        ),
    ] = "deit_tiny,deit_tiny_pruned,vgg16,vgg16_tucker,cswintt_encoder",
    batches: Annotated[
        str, typer.Option(help="Comma-separated batch sizes (cswintt_encoder: batch 1 only).")
    ] = "1,32",
    seconds: Annotated[float, typer.Option(help="Timed seconds per variant.")] = 1.0,
    compiled: Annotated[
        bool, typer.Option(help="Also torch.compile (inductor, freezing) each case's module.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """headway's models beside ONNX Runtime and OpenVINO on the same inputs, interleaved in one
    process: DeiT-Tiny, VGG-16 (32×32) dense and Tucker-2, the CSWinTT encoder; ms, × eager,
    max difference."""
    import json

    from headway.experiments.engines import CASES, compare_engines, engines_table
    from headway.io import atomic_write_text

    chosen = some_names(cases, "--cases", CASES, "case") or []
    sizes = positive_ints(batches, "--batches")
    positive(seconds, "--seconds")
    output_file(json_out, "--json")
    rows = compare_engines(
        tuple(chosen),
        sizes,
        min_run_time=seconds,
        on_case=lambda c: console.print(f"{c} …"),
        compiled=compiled,
    )
    print_table(
        f"engines beside eager PyTorch, {torch.get_num_threads()} threads, median ms",
        *engines_table(rows),
        width=120,
    )
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(rows, indent=2))
