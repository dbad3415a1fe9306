"""``headway vit accuracy | vit breakdown | simulate``: paper C's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headway.cli.base import (
    app,
    at_least,
    bench_app,
    check_choice,
    console,
    fractions,
    output_file,
    output_folder,
    positive_ints,
    print_table,
    reports_errors,
    share_pair,
    shown,
    some_names,
    vit_app,
)
from headway.errors import InputError
from headway.models import list_models


@vit_app.command("accuracy")
@reports_errors
def vit_accuracy(
    out: Annotated[Path, typer.Argument(help="Folder for the checkpoint and vit_accuracy.json.")],
    prune: Annotated[
        str,
        typer.Option(
            help="Pruning schedules START:END (layers 4..12), comma-separated; the first is the "
            "main one (0.1:0.9, the speed benchmarks' schedule), the others add columns."
        ),
    ] = "0.1:0.9,0.1:0.5",
    sparsities: Annotated[str, typer.Option(help="Comma-separated.")] = "0.5,0.6,0.7,0.8",
    images: Annotated[
        Path | None, typer.Option(help="Your labelled folder ROOT/<class>/<image> instead.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="With --images: deit_tiny (default)|small|base, or timm:<vit name>."),
    ] = None,
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
    engine: Annotated[
        str | None,
        typer.Option(
            help="Score the masked, pruned graph on onnxruntime, openvino or openvino-bf16."
        ),
    ] = None,
) -> None:
    """Paper C's Table 1 shape: sparse only vs sparse + pruning, on the built-in digits (a
    small DeiT trained here) or on your image folder with real DeiT weights."""
    from headway.experiments.vit import accuracy_cells, vit_accuracy_run
    from headway.models.registry import is_external

    output_folder(out, "OUT")
    if engine is not None:
        from headway.runtime.engines import require_engine

        require_engine(engine)
    targets = fractions(sparsities, "--sparsities")
    schedules = [share_pair(part, "--prune") for part in prune.split(",") if part.strip()]
    if not schedules:
        raise InputError("--prune needs at least one START:END schedule")
    at_least(finetune_epochs, 0, "--finetune-epochs")
    if images is None:
        if checkpoint is not None:
            raise InputError("--checkpoint needs --images (the built-in run trains its own)")
        if model is not None:
            raise InputError("--model needs --images (the built-in run trains its own DeiT)")
        name = "deit_digits"
    else:
        model = model or "deit_tiny"
        if not is_external(model):
            check_choice(model, [m for m in list_models("vit") if m != "deit_digits"], "DeiT model")
        if checkpoint is None:
            raise InputError("--images needs --checkpoint (random weights score nothing)")
        if not 0 < calibration < 1:
            raise InputError(f"--calibration must be between 0 and 1, got {calibration}")
        name = model
    table_data = vit_accuracy_run(
        out,
        name,
        targets,
        schedules,
        finetune_epochs,
        engine,
        images,
        checkpoint,
        class_map,
        calibration,
        announce=lambda text: console.print(text, markup=False),
    )
    print_table(
        f"{name} top-1 % (dense {table_data['dense']:.1f}%), pruning {shown(prune)}"
        + (f", run by {engine}" if engine else ""),
        *accuracy_cells(table_data),
    )
    console.print(f"mean drop from pruning: {table_data['mean_drop_from_pruning']:.2f} points")


@vit_app.command("breakdown")
@reports_errors
def vit_breakdown(
    models: Annotated[
        str, typer.Option(help="Comma-separated DeiT names.")
    ] = "deit_tiny,deit_small",
    plot: Annotated[Path, typer.Option(help="PNG to write.")] = Path("vit_breakdown.png"),
) -> None:
    """FLOPs vs CPU time by layer type (paper C, Fig. 1) as a table and a stacked bar plot."""
    from headway.experiments.vit import breakdown_table, flop_latency_breakdown, plot_breakdown

    chosen = some_names(models, "--models", list_models("vit"), "DeiT model") or []
    output_file(plot, "--plot")
    rows = [flop_latency_breakdown(name) for name in chosen]
    print_table("share of FLOPs / share of CPU time (batch 1)", *breakdown_table(rows))
    console.print(f"plot: {shown(plot_breakdown(rows, plot))}")


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
    from headway.experiments.vit import simulation_table
    from headway.models.deit import DEIT_CONFIGS
    from headway.transforms.token_pruning import keep_counts, pruning_ratios

    check_choice(model, list_models("vit"), "DeiT model")
    config = DEIT_CONFIGS[model]
    targets = fractions(sparsity, "--sparsity")
    counts = keep_counts(
        config.num_patches, pruning_ratios(config.depth, *share_pair(prune, "--prune"))
    )
    header, rows, speedups = simulation_table(model, targets, counts)
    title = f"{model}: cycles (500 MHz, 64×8 MACs, 76.8 GiB/s, 8-bit), pruning {prune}"
    print_table(title, header, rows, width=130)
    console.print(
        f"mean speedup of sparse + pruning over sparse only: "
        f"{sum(speedups) / len(speedups):.2f}× (paper C: 1.31×)"
    )


@bench_app.command("vit")
@reports_errors
def bench_vit(
    models: Annotated[
        str, typer.Option(help="Comma-separated DeiT names.")
    ] = "deit_tiny,deit_small",
    sparsity: Annotated[float, typer.Option(help="Attention-mask sparsity.")] = 0.7,
    prune: Annotated[str, typer.Option(help="Pruning share START:END.")] = "0.1:0.9",
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    engines: Annotated[
        str | None,
        typer.Option(
            help="Also the masked, pruned graph on these engines (onnxruntime, openvino, "
            "openvino-bf16) and, with OpenVINO, the dense model as its users run it."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Paper C's speed on this CPU: sparse attention + token pruning vs sparse attention alone,
    timed side by side in one process (medians); with --engines, on the engines too."""
    import json

    import torch

    from headway.experiments.vit import engine_speed_table, pruning_speedup, speedup_table
    from headway.io import atomic_write_text

    chosen = some_names(models, "--models", list_models("vit"), "DeiT model") or []
    (target,) = fractions(str(sparsity), "--sparsity")
    pair = share_pair(prune, "--prune")
    sizes = positive_ints(batches, "--batches")
    from headway.runtime.engines import ENGINES, require_engine

    chosen_engines = tuple(some_names(engines, "--engines", list(ENGINES), "engine") or ())
    for engine in chosen_engines:
        require_engine(engine)
    output_file(json_out, "--json")
    results = {
        name: pruning_speedup(name, sizes, target, pair, engines=chosen_engines) for name in chosen
    }
    print_table(
        f"sparse ({target:.0%}) + pruning {shown(prune)} vs sparse only, "
        f"{torch.get_num_threads()} threads, median ms",
        *speedup_table(results),
        width=120,
    )
    if chosen_engines:
        print_table(
            "every variant, interleaved (max |Δ|: logits vs the torch path it stands for)",
            *engine_speed_table(results),
            width=140,
        )
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(results, indent=2))
