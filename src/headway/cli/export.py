"""``headway export``: the tracker's stages or a zoo / own model as deployable files, each
verified against eager (``verification.json`` beside them)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from headway.cli.base import app, at_least, check_choice, check_seed, console, reports_errors, shown
from headway.errors import InputError
from headway.models import CONFIGS
from headway.models.pretrained import load_tracker_network
from headway.runtime.deploy import DEFAULT_FORMATS, FORMATS

MAX_PROBES = 1000  # each probe runs every file once
MAX_BATCH = 1024
MAX_INPUT_SIZE = 4096  # a 4096² image is 200 MB per input already


@app.command("export")
@reports_errors
def export_command(
    out: Annotated[Path, typer.Argument(help="New folder for the files and verification.json.")],
    model: Annotated[
        str, typer.Option(help="'tracker' (CSWinTT's stages) or a zoo model name (vgg16, …).")
    ] = "tracker",
    executor: Annotated[
        str | None,
        typer.Option(help="Tracker: whose graph to export (spectral (default), eager, fused, …)."),
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="Tracker: network size, tiny (default) or default.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Weights (.pth) of the tracker or of the zoo / torchvision: / timm: model; "
            "'builtin': the trained tiny tracker."
        ),
    ] = None,
    formats: Annotated[
        str, typer.Option(help=f"Comma-separated, from {', '.join(FORMATS)}.")
    ] = ",".join(DEFAULT_FORMATS),
    input_size: Annotated[int | None, typer.Option(help="Zoo model: image side.")] = None,
    small_input: Annotated[
        bool, typer.Option(help="Zoo model: CIFAR-style 32×32 variant.")
    ] = False,
    batch: Annotated[int, typer.Option(help="Zoo model: batch size of the exported graph.")] = 1,
    probes: Annotated[int, typer.Option(help="Fresh inputs each file is checked on.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of random weights (no checkpoint).")] = 0,
) -> None:
    """Write ONNX / OpenVINO IR / TorchScript / AOTInductor files of what headway runs, each
    reloaded and compared with eager on fresh inputs (max |Δ| in verification.json)."""
    check_seed(seed)
    from headway.runtime.deploy import (
        ExportPart,
        check_formats,
        check_runs,
        check_target,
        export_parts,
    )

    chosen = check_formats([f.strip() for f in formats.split(",") if f.strip()])
    check_target(out)
    at_least(probes, 1, "--probes")
    at_least(batch, 1, "--batch")
    at_least(input_size, 1, "--input-size")
    for option, value, limit in (
        ("--probes", probes, MAX_PROBES),
        ("--batch", batch, MAX_BATCH),
        ("--input-size", input_size, MAX_INPUT_SIZE),
    ):
        if value is not None and value > limit:
            raise InputError(f"{option} must be at most {limit}, got {value}")
    # an option meant for the other kind of model is refused, not silently ignored
    given = {"--executor": executor, "--config": config}
    if model != "tracker":
        misplaced = [name for name, value in given.items() if value is not None]
    else:
        zoo = {"--input-size": input_size, "--small-input": small_input or None}
        misplaced = [name for name, value in zoo.items() if value is not None]
        misplaced += ["--batch"] if batch != 1 else []
        executor, config = executor or "spectral", config or "tiny"
    if misplaced:
        kind = "the tracker" if model != "tracker" else "zoo models"
        raise InputError(f"{', '.join(misplaced)}: only for {kind} (--model {model})")
    if model == "tracker":
        from headway.cli.tracking import builtin_checkpoint
        from headway.tracking.executors import stage_exports

        check_choice(config, list(CONFIGS), "configuration")
        checkpoint = builtin_checkpoint(checkpoint, config)
        network = load_tracker_network(checkpoint or "random", seed, config)
        parts = stage_exports(network, executor)
        what = {"model": f"CSWinTT {config}", "executor": executor}
    else:
        from headway.models.registry import (
            check_model_name,
            checkpoint_overrides,
            random_model_and_input,
        )

        check_model_name(model)
        if checkpoint is not None and str(checkpoint) == "builtin" and not checkpoint.exists():
            raise InputError(
                "--checkpoint builtin names the trained tiny tracker's weights (--model "
                f"tracker --config tiny); for {model} give its weights file"
            )
        implied = checkpoint_overrides(model, None, small_input, checkpoint)
        module, example, size = random_model_and_input(
            model, small_input, input_size, batch, seed, **implied
        )
        check_runs(  # a size the network cannot take is named here, not deep in an exporter
            module, (example,), f"--input-size {size}: {model} cannot run on {size}×{size} images"
        )
        if checkpoint is not None:
            from headway.models.checkpoint import load_weights

            load_weights(module, checkpoint)  # strict: every key and shape, or one line
        parts = [ExportPart(model, module, (example,))]
        what = {"model": model, "small_input": small_input}
    options = ["--model", model, "--formats", ",".join(chosen), "--probes", str(probes)]
    if model == "tracker":
        options += ["--executor", executor, "--config", config]
        options += ["--checkpoint", str(checkpoint)] if checkpoint else ["--seed", str(seed)]
    else:
        options += ["--batch", str(batch), "--input-size", str(size)]
        options += ["--checkpoint", str(checkpoint)] if checkpoint else ["--seed", str(seed)]
        options += ["--small-input"] if small_input else []
    command = shlex.join(["headway", "export", str(out), *options])
    with console.status("exporting") as status:
        record = export_parts(
            parts,
            out,
            chosen,
            probes,
            command,
            what,
            on_part=lambda name: status.update(f"exporting {name}"),
        )
    worst = max(entry["max_abs_diff"] for entry in record["files"].values())
    relative = max(entry["max_rel_diff"] for entry in record["files"].values())
    console.print(
        f"wrote {len(record['files'])} files to {shown(out)}; largest difference to eager on "
        f"{probes} fresh inputs: {worst:.2e} ({relative:.1e} of the largest output; "
        "verification.json)"
    )
