"""Paper B's compression experiments in small, on this machine.

- :func:`mac_reduction` — MACs and parameters before/after Tucker-2 for the paper's models at
  their ImageNet input sizes (paper: VGG 81%, ResNet152 38.6%, Inception 62.8%, RegNetY 35.8%).
- :func:`latency` — CPU latency of a model before and after decomposition, batch 1 and 8,
  measured side by side in one process (torch.utils.benchmark medians).
- :func:`accuracy` — train small-input models on the built-in digits, decompose, fine-tune;
  accuracy before decomposition, right after, after fine-tuning (paper B's accuracy argument).
Every long step checkpoints, so a rerun resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

from headway.errors import InputError
from headway.experiments.report import Section, bar_plot, markdown_table, pct
from headway.io import atomic_write_text, locked_folder
from headway.measure import keeps_global_rng
from headway.models.checkpoint import load_weights
from headway.models.registry import (
    checkpoint_overrides,
    create_model,
    default_input_size,
    is_external,
)
from headway.transforms.tucker import SVD_SOLVERS, TuckerReport, count_macs, decompose_model
from headway.vision.data import digits
from headway.vision.train import TrainSettings, evaluate, train

PAPER_MAC_REDUCTION = {
    "vgg16": 81.0,
    "resnet152": 38.6,
    "inception_v3": 62.8,
    "regnet_y_32gf": 35.8,
}


@keeps_global_rng
def mac_reduction(
    models: list[str] | None = None,
    rank: str = "vbmf",
    on_model: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Tucker-2 every model at its ImageNet input size; MACs per image (FlopCounterMode / 2)."""
    rows = []
    for name in models or list(PAPER_MAC_REDUCTION):
        if on_model is not None:
            on_model(name)
        torch.manual_seed(0)
        model = create_model(name).eval()
        size = default_input_size(name)
        _, report = decompose_model(model, torch.randn(1, 3, size, size), rank)
        counts = {"decomposed": 0, "skipped": 0}
        for layer in report.layers:
            counts[layer.status] += 1
        rows.append(
            {
                "model": name,
                "input": size,
                "rank": rank,
                "macs_before": report.macs_before,
                "macs_after": report.macs_after,
                "mac_reduction_pct": 100 * report.mac_reduction,
                "params_before": report.params_before,
                "params_after": report.params_after,
                "layers_decomposed": counts["decomposed"],
                "layers_skipped": counts["skipped"],
                "paper_mac_reduction_pct": PAPER_MAC_REDUCTION.get(name),
            }
        )
    return rows


@keeps_global_rng
def decomposition_time(
    models: list[str],
    rank: str = "vbmf",
    rounds: int = 2,
    on_model: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Seconds to decompose each model (ImageNet size, random weights) with a full SVD and with
    headway's Gram eigendecomposition, alternating, ``rounds`` times each (medians); the ranks
    must be equal and the per-layer weight errors are compared."""
    rows = []
    for name in models:
        if on_model is not None:
            on_model(name)
        torch.manual_seed(0)
        model = create_model(name).eval()
        size = default_input_size(name)
        example = torch.randn(1, 3, size, size)
        seconds: dict[str, list[float]] = {solver: [] for solver in SVD_SOLVERS}
        reports = {}
        for _ in range(rounds):
            for solver in SVD_SOLVERS:
                began = time.perf_counter()
                _, reports[solver] = decompose_model(model, example, rank, svd=solver)
                seconds[solver].append(time.perf_counter() - began)
        pairs = list(zip(reports["full"].layers, reports["gram"].layers, strict=True))
        same_ranks = all((a.rank_in, a.rank_out) == (b.rank_in, b.rank_out) for a, b in pairs)
        decomposed = [(a, b) for a, b in pairs if a.status == b.status == "decomposed"]
        full, gram = (statistics.median(seconds[s]) for s in ("full", "gram"))
        rows.append(
            {
                "model": name,
                "rank": rank,
                "full_svd_s": full,
                "gram_s": gram,
                "speedup": full / gram,
                "same_ranks": same_ranks,
                "max_weight_error_difference": max(
                    (abs(a.weight_error - b.weight_error) for a, b in decomposed), default=0.0
                ),
                "mac_reduction_pct": 100 * reports["gram"].mac_reduction,
            }
        )
    return rows


def _median_ms(model: torch.nn.Module, batch: torch.Tensor, threads: int) -> float:
    timer = Timer("model(x)", globals={"model": model, "x": batch}, num_threads=threads)
    with torch.inference_mode():
        return timer.blocked_autorange(min_run_time=2.0).median * 1e3


@keeps_global_rng
def latency(
    name: str = "vgg16",
    rank: str = "macs:0.19",
    small_input: bool = True,
    batches: tuple[int, ...] = (1, 8),
    threads: int | None = None,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Median latency (ms) of the original and the decomposed model, side by side. Both run
    channels-last by default (oneDNN's preferred layout; it helps the 1×1 convolutions most)."""
    threads = threads or torch.get_num_threads()
    torch.manual_seed(0)
    model = create_model(name, num_classes=10 if small_input else 1000, small_input=small_input)
    model.eval()
    size = default_input_size(name, small_input)
    decomposed, report = decompose_model(model, torch.randn(2, 3, size, size), rank)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model, decomposed = model.to(memory_format=layout), decomposed.to(memory_format=layout)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
        original_ms = _median_ms(model, x, threads)
        decomposed_ms = _median_ms(decomposed, x, threads)
        rows.append(
            {
                "batch": batch,
                "original_ms": original_ms,
                "decomposed_ms": decomposed_ms,
                "speedup": original_ms / decomposed_ms,
            }
        )
    return {
        "model": name,
        "input": size,
        "rank": rank,
        "threads": threads,
        "channels_last": channels_last,
        "mac_reduction_pct": 100 * report.mac_reduction,
        "rows": rows,
    }


@dataclass
class AccuracyRow:
    model: str
    macs: int
    trained: float
    decomposed: float | None = None
    finetuned: float | None = None
    macs_after: int | None = None
    train_seconds: float = 0.0


ACCURACY_MODELS: dict[str, tuple[dict[str, Any], TrainSettings, bool]] = {
    # name: (size overrides, training settings, decompose it)
    "vgg16_bn": ({"width": 0.25}, TrainSettings(epochs=6, lr=0.05), True),
    "resnet50": ({"width": 16}, TrainSettings(epochs=6, lr=0.05), True),
    "alexnet": ({}, TrainSettings(epochs=6, lr=1e-3, optimizer="adam"), False),
    "squeezenet1_1": ({}, TrainSettings(epochs=6, lr=1e-3, optimizer="adam"), False),
}


@keeps_global_rng
def accuracy(
    out_dir: str | Path,
    rank: str = "vbmf",
    finetune_epochs: int = 5,
    epochs_scale: float = 1.0,
    models: list[str] | None = None,
    show_progress: bool = True,
) -> list[AccuracyRow]:
    """Train, decompose and fine-tune on the built-in digits (32×32); resumable. The
    fine-tuned checkpoints are named by rank rule, so rules can share a folder."""
    with locked_folder(out_dir):
        return _accuracy(Path(out_dir), rank, finetune_epochs, epochs_scale, models, show_progress)


def _accuracy(
    out_dir: Path,
    rank: str,
    finetune_epochs: int,
    epochs_scale: float,
    models: list[str] | None,
    show_progress: bool,
) -> list[AccuracyRow]:
    data = digits()
    probe = data.train_images[:32]
    rows = []
    for name in models or list(ACCURACY_MODELS):
        overrides, settings, decompose = ACCURACY_MODELS[name]
        settings = TrainSettings(
            **{**asdict(settings), "epochs": max(1, round(settings.epochs * epochs_scale))}
        )
        torch.manual_seed(settings.seed)
        model = create_model(name, num_classes=10, small_input=True, **overrides)
        result = train(
            model, data, settings, out_dir / f"{name}.pt", show_progress, f"training {name}"
        )
        row = AccuracyRow(
            name, count_macs(model, probe[:1]), result.test_accuracy, train_seconds=result.seconds
        )
        if decompose:
            decomposed, report = decompose_model(model, probe, rank)
            row.decomposed = evaluate(decomposed, data.test_images, data.test_labels)
            row.macs_after = report.macs_after
        if decompose and finetune_epochs > 0:  # 0 epochs: no fine-tuning, no column value
            tune = TrainSettings(
                **{**asdict(settings), "epochs": finetune_epochs, "lr": settings.lr / 5}
            )
            rank_tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in rank)
            tuned_path = out_dir / f"{name}_tucker_{rank_tag}.pt"  # one per rank rule
            tuned = train(decomposed, data, tune, tuned_path, show_progress, f"fine-tuning {name}")
            row.finetuned = tuned.test_accuracy
        rows.append(row)
        atomic_write_text(
            out_dir / "accuracy.json", json.dumps([asdict(r) for r in rows], indent=2)
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The section of `headway reproduce`'s report
# ---------------------------------------------------------------------------------------------


def decompose_named(
    model: str,
    rank: str,
    checkpoint: Path | None = None,
    num_classes: int = 1000,
    small_input: bool = False,
    input_size: int | None = None,
    min_rank: int = 4,
    seed: int = 0,
    on_layer: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, TuckerReport, int]:
    """``headway compress tucker``: the registry model ``model`` (random weights of ``seed``,
    or ``checkpoint``) Tucker-2-decomposed by ``rank`` on a seeded probe batch; returns the
    decomposed model, its report and the probe's image side."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        extra = checkpoint_overrides(model, num_classes, small_input, checkpoint)
        if is_external(model) and small_input:
            raise InputError(f"--small-input is for headway's zoo, not {model}")
        network = create_model(model, num_classes=num_classes, small_input=small_input, **extra)
    if checkpoint is not None:
        load_weights(network, checkpoint)
    size = input_size or default_input_size(model, small_input)
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    decomposed, report = decompose_model(network, probe, rank, min_rank, on_layer=on_layer)
    return decomposed, report, size


def layers_table(report: TuckerReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a decomposition's report: one row per convolution."""
    header = ["layer", "status", "ranks", "MACs before", "MACs after", "params before"]
    header += ["params after", "weight err", "output err"]
    rows = []
    for row in report.layers:
        done = row.status == "decomposed"
        rows.append(
            [
                row.name,
                row.status if done else f"skipped: {row.reason}",
                f"{row.rank_in}, {row.rank_out}" if done else "",
                f"{row.macs_before:,}",
                f"{row.macs_after:,}",
                f"{row.params_before:,}",
                f"{row.params_after:,}",
                f"{row.weight_error:.3f}" if done else "",
                f"{row.output_error:.3f}" if done else "",
            ]
        )
    return header, rows


def _paper_pct(value: float | None) -> str:
    return "—" if value is None else f"{value}%"


def macs_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """MACs and parameters before / after per model, from :func:`mac_reduction` (the report and
    ``headway bench tucker``)."""
    header = [
        "model",
        "input",
        "MACs before",
        "MACs after",
        "reduction",
        "paper",
        "params before",
        "params after",
        "decomposed / skipped",
    ]
    cells = [
        [
            r["model"],
            str(r["input"]),
            f"{r['macs_before']:,}",
            f"{r['macs_after']:,}",
            f"{r['mac_reduction_pct']:.1f}%",
            _paper_pct(r["paper_mac_reduction_pct"]),
            f"{r['params_before']:,}",
            f"{r['params_after']:,}",
            f"{r['layers_decomposed']} / {r['layers_skipped']}",
        ]
        for r in rows
    ]
    return header, cells


def latency_table(timing: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Original vs decomposed latency per batch, from :func:`latency`."""
    header = ["batch", "original ms", "decomposed ms", "speedup"]
    cells = [
        [
            str(r["batch"]),
            f"{r['original_ms']:.2f}",
            f"{r['decomposed_ms']:.2f}",
            f"{r['speedup']:.2f}×",
        ]
        for r in timing["rows"]
    ]
    return header, cells


def macs_section(folder: Path, quick: bool) -> Section:

    models = ["vgg16", "resnet152"] if quick else None
    rows = mac_reduction(models)
    table = markdown_table(*macs_table(rows))
    plot = bar_plot(
        folder / "mac_reduction.png",
        "Tucker-2 (vbmf): MAC reduction",
        [r["model"] for r in rows],
        {
            "headway": [r["mac_reduction_pct"] for r in rows],
            "paper B": [r["paper_mac_reduction_pct"] for r in rows],
        },
        "% fewer MACs",
    )
    return {
        "markdown": table,
        "data": rows,
        "plots": [str(plot.relative_to(folder.parent))],
        "commands": ["headway bench tucker --only macs"],
    }


def accuracy_table(rows: list[AccuracyRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells (accuracy in %) of the before / after Tucker-2 table; the report and
    ``headway compress accuracy`` both show this."""
    header = ["model", "MACs", "trained", "right after Tucker-2", "fine-tuned", "MACs after"]
    cells = [
        [
            r.model,
            f"{r.macs:,}",
            pct(r.trained),
            pct(r.decomposed),
            pct(r.finetuned),
            f"{r.macs_after:,}" if r.macs_after else "",
        ]
        for r in rows
    ]
    return header, cells


def accuracy_section(folder: Path, quick: bool) -> Section:
    from dataclasses import asdict

    models = ["vgg16_bn", "alexnet"] if quick else None
    rows = accuracy(
        folder,
        epochs_scale=0.5 if quick else 1.0,
        finetune_epochs=2 if quick else 5,
        models=models,
        show_progress=False,
    )
    table = markdown_table(*accuracy_table(rows))
    note = (
        "Built-in digits (32×32), accuracy in %. Paper B (CIFAR-10): the decomposed and "
        "retrained large models stay more accurate than the small ones."
    )
    return {
        "markdown": table + "\n\n" + note,
        "data": [asdict(r) for r in rows],
        "plots": [],
        "commands": ["headway compress accuracy OUT"],
    }
