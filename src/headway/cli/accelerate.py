"""``headway accelerate``: the user's model made as fast as its accuracy budget allows on the
user's images (:func:`headway.approximate.accelerate_to_folder`)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from headway.cli.base import app, at_least, console, reports_errors, shown
from headway.errors import InputError, first_line

MAX_IMAGES = 64 * 64  # the data batches accelerate keeps (64 of 64)
MAX_BATCH = 1024


@app.command("accelerate")
@reports_errors
def accelerate_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A zoo name (vgg16, …), torchvision:<name>, timm:<name>, or a TorchScript "
            "file (.pt, as headway export writes it)."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(help="Labelled images: DATA/<class>/<image>, classes in sorted order."),
    ],
    out: Annotated[Path, typer.Option(help="New folder: the model, verification, report, plot.")],
    max_drop: Annotated[
        float, typer.Option(help="Top-1 the result may lose, as a share (0.01: one point).")
    ] = 0.01,
    checkpoint: Annotated[Path | None, typer.Option(help="The model's weights (.pth).")] = None,
    fine_tune: Annotated[
        int, typer.Option(help="Fine-tuning steps per approximation (0: none).")
    ] = 0,
    budget: Annotated[float, typer.Option(help="Seconds for the whole search.")] = 120.0,
    batch: Annotated[int, typer.Option(help="Batch size to make fast (and of the data).")] = 1,
    small_input: Annotated[
        bool, typer.Option(help="Zoo model: the CIFAR-style 32×32 variant.")
    ] = False,
    class_map: Annotated[
        Path | None,
        typer.Option(help="Folder names in output order, one per line (default: sorted)."),
    ] = None,
    formats: Annotated[str, typer.Option(help="Export formats, comma-separated.")] = "onnx",
) -> None:
    """The fastest way to run MODEL whose top-1 on DATA drops by at most --max-drop: exact
    rewrites on every engine, plus Tucker-2, for ViTs sparse attention + token pruning, and
    INT8 (NNCF, calibrated on DATA) alone and under each; written to OUT with its
    verification, the frontier table and its plot (an INT8 choice as OpenVINO IR)."""
    from headway.acceleration import accelerate_to_folder
    from headway.approximate import check_max_drop
    from headway.io import require_folder
    from headway.models.registry import check_model_name
    from headway.runtime.deploy import check_formats, check_target

    check_max_drop(max_drop)
    at_least(fine_tune, 0, "--fine-tune")
    at_least(batch, 1, "--batch")
    if batch > MAX_BATCH:
        raise InputError(f"--batch must be at most {MAX_BATCH}, got {batch}")
    if small_input and model.startswith("timm:"):
        raise InputError("--small-input: only for zoo and torchvision: models, not timm's")
    if not math.isfinite(budget) or budget <= 0:
        raise InputError(f"--budget must be a positive number of seconds, got {budget}")
    chosen = check_formats([f.strip() for f in formats.split(",") if f.strip()])
    check_target(out)
    require_folder(data, "--data folder")
    scripted = _exported_file(model, checkpoint)
    if scripted is None:
        check_model_name(model)
        module, size, transform = _load(model, checkpoint, small_input)
    else:
        module, size, transform = scripted, 32 if small_input else 224, None
    images, labels = _images(data, class_map, size, small_input, transform)
    batches = [
        (images[i : i + max(batch, 16)], labels[i : i + max(batch, 16)])
        for i in range(0, len(labels), max(batch, 16))
    ]
    example = images[:batch] if len(images) >= batch else images[:1].repeat(batch, 1, 1, 1)
    if scripted is not None:  # its input size is its own: checked before the search
        from headway.runtime.deploy import check_runs

        check_runs(module, (example[:1],), f"model {model} does not run on {size}×{size} images")
    command = shlex.join(
        ["headway", "accelerate", model, "--data", str(data), "--out", str(out),
         "--max-drop", str(max_drop), "--fine-tune", str(fine_tune), "--batch", str(batch)]
    )  # fmt: skip
    with console.status(f"accelerating {model} within a drop of {max_drop:g}") as status:
        frontier = accelerate_to_folder(
            module,
            example,
            batches,
            out,
            max_drop=max_drop,
            fine_tune=fine_tune or None,
            budget_s=budget,
            formats=chosen,
            name=Path(model).stem if scripted is not None else model.replace(":", "_"),
            command=command,
            announce=lambda text: status.update(text),
        )
    from headway.cli.base import print_table

    header, rows = frontier.table()
    title = f"{model}: {frontier.metric}, baseline {frontier.baseline:.4f}"
    print_table(title, header, rows, width=160)
    written = ", ".join(sorted(p.name for p in out.iterdir()))  # an INT8 choice: IR, not ONNX
    console.print(
        f"chose {shown(frontier.chosen)}; wrote {shown(out)}: {shown(written)}", highlight=False
    )


EXPORTED_SUFFIXES = {".pt": "torchscript", ".onnx": "onnx", ".xml": "openvino", ".pt2": "aoti"}


def _exported_file(model: str, checkpoint: Path | None) -> Any:
    """MODEL as a file: a TorchScript module (its own weights; Tucker-2 needs the torch
    module's convolutions, so it gets the exact ways and INT8), or None for a name. Graph
    files no torch module can be made from are refused by name."""
    path = Path(model)
    kind = EXPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None and not path.is_file():
        return None  # a name
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "file does not exist"
        raise InputError(f"model {model}: {what}")
    if kind != "torchscript":
        raise InputError(
            f"model {model}: {f'{kind} files are' if kind else 'this file is'} not taken "
            "(headway accelerate needs a torch module): give the zoo, torchvision: or timm: "
            "name with --checkpoint, or the TorchScript file (.pt) of headway export"
        )
    if checkpoint is not None:
        raise InputError("--checkpoint: a TorchScript file carries its own weights")
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as error:
        raise InputError(f"model {model}: not a TorchScript file ({first_line(error)})") from None


def _load(model: str, checkpoint: Path | None, small_input: bool) -> tuple[Any, int, Any]:
    """The module in eval mode, its input side and, for timm, its own eval transform."""
    from headway.models.checkpoint import load_weights
    from headway.models.registry import (
        checkpoint_overrides,
        create_external,
        random_model_and_input,
    )

    transform = None
    if model.startswith("timm:"):
        from headway.experiments.vit import timm_eval_transform

        module = create_external(model)
        if checkpoint is not None:
            load_weights(module, checkpoint)
        transform = timm_eval_transform(module)
        size = int(module.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        return module.eval(), size, transform
    implied = checkpoint_overrides(model, None, small_input, checkpoint)
    module, _, size = random_model_and_input(model, small_input, None, 1, 0, **implied)
    if checkpoint is not None:
        load_weights(module, checkpoint)
    return module.eval(), size, transform


def _images(
    folder: Path, class_map: Path | None, size: int, small_input: bool, transform: Any
) -> tuple[Any, Any]:
    """The folder's images (at most :data:`MAX_IMAGES`, a seeded sample) with their labels,
    preprocessed as the model expects (small inputs: resized and normalised as headway's
    trainer does; else ImageNet's evaluation preprocessing or timm's transform)."""
    import torch

    from headway.vision.data import load_image_folder, load_imagenet_folder

    if small_input:  # at most MAX_IMAGES, sampled before any is read
        loaded = load_image_folder(folder, size=size, test_fraction=0.5, limit=MAX_IMAGES)
    else:
        loaded = load_imagenet_folder(
            folder, class_map, size, calibration_fraction=0.5, transform=transform,
            limit=MAX_IMAGES,
        )  # fmt: skip
    images = torch.cat([loaded.train_images, loaded.test_images])[:MAX_IMAGES]
    labels = torch.cat([loaded.train_labels, loaded.test_labels])[:MAX_IMAGES]
    return images, labels
