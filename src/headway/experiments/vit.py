"""Paper C's measurements on this machine: accuracy of sparse attention alone and combined with
token pruning (Table 1 shape), the per-layer-type FLOP / latency breakdown (Fig. 1 shape), and
the wall-clock speedup of sparse + pruning over sparse only."""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from headway.experiments.report import Section, markdown_table, pct
from headway.io import atomic_write_text, locked_folder, save_figure
from headway.measure import keeps_global_rng
from headway.models.checkpoint import load_weights
from headway.models.deit import DEIT_CONFIGS, DeiT, adopt_vit, build_deit
from headway.models.registry import create_external, is_external
from headway.runtime.engines import EngineModule, compile_module
from headway.transforms.sparse_attention import (
    additive_masks,
    average_attention,
    masks_for_sparsity,
    sparsity,
)
from headway.transforms.token_pruning import SparsePrunedDeiT, keep_counts, pruning_ratios
from headway.tuning import interleaved_medians
from headway.vision.data import ClassificationData, digits, load_imagenet_folder
from headway.vision.train import TrainSettings, train

DIGITS_TRAINING = TrainSettings(epochs=25, lr=2e-3, optimizer="adam", weight_decay=0.05)
# Fine-tuning with the masks: a few epochs at a quarter of the training learning rate.
MASK_FINETUNING = TrainSettings(epochs=5, lr=5e-4, optimizer="adam", weight_decay=0.05)


def timm_eval_transform(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The eval transform timm's users apply to ``model``: its ``pretrained_cfg``'s size,
    crop fraction, interpolation and normalisation (vit_small: crop 0.9, bicubic, 0.5/0.5),
    by timm's own ``resolve_data_config`` and ``create_transform``."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model))


def vit_accuracy_run(
    out: Path,
    name: str,
    targets: list[float],
    schedules: list[tuple[float, float]],
    finetune_epochs: int = 0,
    engine: str | None = None,
    images: Path | None = None,
    checkpoint: Path | None = None,
    class_map: Path | None = None,
    calibration: float = 0.5,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``headway vit accuracy``: the table of :func:`accuracy_table` for the built-in digits
    (``images`` None: a small DeiT trained in ``out``) or for the DeiT ``name`` with the weights
    ``checkpoint`` on a labelled image folder (``timm:<name>``: timm's model adopted as
    headway's DeiT, on images through timm's own eval transform); written to
    ``out/vit_accuracy.json``."""
    external: DeiT | None = None
    preprocess: dict[str, Any] = {}
    if is_external(name):  # timm:<name>: its weights, run as headway's DeiT (adopt_vit)
        source = load_weights(create_external(name), checkpoint)  # type: ignore[arg-type]
        preprocess = {"transform": timm_eval_transform(source)}
        external = adopt_vit(source)
        config = external.config
    else:
        config = DEIT_CONFIGS[name]
    for pair in schedules:  # checked now, before any training
        keep_counts(
            config.num_patches, pruning_ratios(config.depth, *pair), prefix=config.num_prefix_tokens
        )
    finetune = replace(MASK_FINETUNING, epochs=finetune_epochs) if finetune_epochs else None
    with locked_folder(out):
        if images is None:
            network, data = trained_digits_deit(out)
        else:
            network = external if external is not None else build_deit(name)
            if external is None:
                load_weights(network, checkpoint)  # type: ignore[arg-type]
            network = network.eval()
            data = load_imagenet_folder(
                images,
                class_map,
                config.image_hw[0],  # headway's DeiTs are square; timm's come with a transform
                calibration_fraction=calibration,
                **preprocess,
            )
            if announce is not None:
                announce(
                    f"{len(data.train_labels)} calibration and {len(data.test_labels)} "
                    f"scored images from {images}"
                )
        table_data = accuracy_table(
            network, data, targets, schedules[0], finetune, tuple(schedules[1:]), engine
        )
        table_data["model"] = name
        atomic_write_text(out / "vit_accuracy.json", json.dumps(table_data, indent=2))
    return table_data


@keeps_global_rng
def trained_digits_deit(
    out_dir: str | Path, show_progress: bool = True
) -> tuple[DeiT, ClassificationData]:
    """The small DeiT trained on the built-in digits (checkpointed; a rerun resumes)."""
    data = digits()
    torch.manual_seed(DIGITS_TRAINING.seed)
    model = build_deit("deit_digits")
    train(
        model,
        data,
        DIGITS_TRAINING,
        Path(out_dir) / "deit_digits.pt",
        show_progress,
        "training deit_digits",
    )
    return model.eval(), data


@torch.no_grad()
def _accuracy(
    model: DeiT,
    data: ClassificationData,
    masks: torch.Tensor | None,
    counts: list[int] | None,
    engine: str | None = None,
) -> float:
    """Top-1 % on the test images; with ``engine``, the masked and pruned graph runs there
    (exported once per batch shape)."""
    run: Callable[[torch.Tensor], torch.Tensor] = SparsePrunedDeiT(model, masks, counts)
    if engine is not None:
        run = EngineModule(engine, run)
    correct = 0
    for start in range(0, len(data.test_labels), 256):
        logits = run(data.test_images[start : start + 256])
        correct += int((logits.argmax(1) == data.test_labels[start : start + 256]).sum())
    return 100.0 * correct / len(data.test_labels)


class MaskedClassifier(torch.nn.Module):
    """A DeiT whose attention always uses ``masks`` (to fine-tune with them, as ViTCoD does)."""

    def __init__(self, model: DeiT, masks: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("masks", masks, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.model.forward_tokens(images, self.masks))


def accuracy_table(
    model: DeiT,
    data: ClassificationData,
    sparsities: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8),
    prune: tuple[float, float] = (0.1, 0.9),
    finetune: TrainSettings | None = None,
    other_prunes: tuple[tuple[float, float], ...] = ((0.1, 0.5),),
    engine: str | None = None,
) -> dict[str, Any]:
    """Top-1 dense, sparse only and sparse + pruning at each sparsity (masks from the training
    images' averaged attention). ``prune`` is the schedule of the speed claims (0.1 → 0.9);
    each of ``other_prunes`` adds a column scored with the same masks. With ``finetune``, a copy
    of the model is first trained with each sparsity's masks on the training images (pruning
    stays inference-only); the post-hoc sparse-only accuracy is kept beside it. With
    ``engine``, every score comes from the masked (and pruned) graph run by that engine."""
    batches = [data.train_images[i : i + 256] for i in range(0, len(data.train_labels), 256)]
    maps = average_attention(model, batches)
    config = model.config
    prefix = config.num_prefix_tokens
    counts = keep_counts(config.num_patches, pruning_ratios(config.depth, *prune), prefix=prefix)
    other_counts = {
        schedule_label(pair): keep_counts(
            config.num_patches, pruning_ratios(config.depth, *pair), prefix=prefix
        )
        for pair in other_prunes
        if tuple(pair) != tuple(prune)
    }
    rows = []
    for target in sparsities:
        masks, _ = masks_for_sparsity(maps, target, prefix=prefix)
        row: dict[str, Any] = {"sparsity": target, "achieved": sparsity(masks)}
        scored = model
        if finetune is not None:
            row["sparse_only_post_hoc"] = _accuracy(model, data, masks, None, engine)
            scored = copy.deepcopy(model)
            train(MaskedClassifier(scored, masks), data, finetune, show_progress=False)
            scored.eval()
        row["sparse_only"] = _accuracy(scored, data, masks, None, engine)
        row["sparse_pruned"] = _accuracy(scored, data, masks, counts, engine)
        row["sparse_pruned_other"] = {
            label: _accuracy(scored, data, masks, other, engine)
            for label, other in other_counts.items()
        }
        rows.append(row)
    dense = _accuracy(model, data, None, None, engine)
    drop = sum(r["sparse_only"] - r["sparse_pruned"] for r in rows) / len(rows)
    return {
        "dense": dense,
        "prune": list(prune),
        "keep_counts": counts,
        "other_prunes": {label: other for label, other in other_counts.items()},
        "rows": rows,
        "mean_drop_from_pruning": drop,
        "finetune": asdict(finetune) if finetune is not None else None,
        "engine": engine,
    }


LINEAR_PARTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@keeps_global_rng
def flop_latency_breakdown(
    name: str = "deit_tiny", batch: int = 1, runs: int = 5
) -> dict[str, Any]:
    """FLOPs (FlopCounterMode, per module) and CPU time (forward hooks) per layer type:
    ``linear`` (QKV, projection, MLP), ``attention`` (QKᵀ, softmax, AV: the attention modules
    minus their QKV and projection) and ``other`` (patch embedding, norms, GELU, head)."""
    torch.manual_seed(0)
    model = build_deit(name).eval()
    x = torch.randn(batch, 3, model.config.img_size, model.config.img_size)
    blocks = [f"blocks.{i}" for i in range(model.config.depth)]
    timed = {
        f"{b}.{part}": model.get_submodule(f"{b}.{part}")
        for b in blocks
        for part in (*LINEAR_PARTS, "attn")
    }
    seconds: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    handles = []

    def start_clock(key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            starts[key] = time.perf_counter()

        return hook

    def stop_clock(key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            seconds[key] += time.perf_counter() - starts[key]

        return hook

    for key, module in timed.items():
        handles.append(module.register_forward_pre_hook(start_clock(key)))
        handles.append(module.register_forward_hook(stop_clock(key)))
    with torch.no_grad():
        model(x)
        seconds.clear()
        began = time.perf_counter()
        for _ in range(runs):
            model(x)
        total_s = (time.perf_counter() - began) / runs
    for handle in handles:
        handle.remove()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()

    def flops(key: str) -> float:
        return float(sum(counts.get(f"DeiT.{key}", {}).values()))

    def split(measure: Any) -> tuple[float, float]:
        linear = sum(measure(f"{b}.{p}") for b in blocks for p in LINEAR_PARTS)
        inner = sum(
            measure(f"{b}.attn") - measure(f"{b}.attn.qkv") - measure(f"{b}.attn.proj")
            for b in blocks
        )
        return linear, inner

    linear_flops, attention_flops = split(flops)
    linear_s, attention_s = split(lambda key: seconds[key] / runs)
    total_flops = float(counter.get_total_flops())
    return {
        "model": name,
        "batch": batch,
        "flops": {
            "linear": linear_flops,
            "attention": attention_flops,
            "other": total_flops - linear_flops - attention_flops,
        },
        "ms": {
            "linear": 1e3 * linear_s,
            "attention": 1e3 * attention_s,
            "other": 1e3 * (total_s - linear_s - attention_s),
        },
    }


def plot_breakdown(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Stacked bars: share of FLOPs and of CPU time per layer type, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, bottoms = [], []
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=120)
    bars = [(f"{r['model']}\nFLOPs", r["flops"]) for r in rows] + [
        (f"{r['model']}\ntime", r["ms"]) for r in rows
    ]
    labels = [label for label, _ in bars]
    bottoms = [0.0] * len(bars)
    for kind, colour in (("linear", "#4c72b0"), ("attention", "#dd8452"), ("other", "#8c8c8c")):
        shares = [100 * values[kind] / sum(values.values()) for _, values in bars]
        axes.bar(labels, shares, bottom=bottoms, label=kind, color=colour)
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    axes.set_ylabel("share (%)")
    axes.set_title("DeiT: FLOPs vs CPU time by layer type")
    axes.legend(fontsize=8)
    return save_figure(figure, path)


@keeps_global_rng
def pruning_speedup(
    name: str = "deit_tiny",
    batches: tuple[int, ...] = (1, 32),
    target_sparsity: float = 0.7,
    prune: tuple[float, float] = (0.1, 0.9),
    min_run_time: float = 2.0,
    engines: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Median CPU time of sparse-only vs sparse + pruning, timed in alternating blocks; both
    use the same additive masks (converted once, as a deployment would).

    With ``engines``, the same blocks also time the masked and pruned graph on each engine
    and, where OpenVINO is among them, the dense model as OpenVINO's users run it
    (``ov.convert_model``, LATENCY hint, fp32 and bf16): ``variants`` holds every median
    (ms) and ``max_diff`` each variant's largest logit difference from the torch path it
    stands for."""
    from headway.runtime.engines import require_engine

    for engine in engines:
        require_engine(engine)
    torch.manual_seed(0)
    model = build_deit(name).eval()
    size = model.config.img_size
    maps = average_attention(model, [torch.randn(8, 3, size, size)])
    masks, _ = masks_for_sparsity(maps, target_sparsity)
    additive = additive_masks(masks)
    counts = keep_counts(model.config.num_patches, pruning_ratios(model.config.depth, *prune))
    pruned = SparsePrunedDeiT(model, additive, counts)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, size, size)
        variants: dict[str, Callable[[], Any]] = {
            "sparse_only": lambda x=x: model.forward_tokens(x, additive),
            "sparse_pruned": lambda x=x: model.forward_tokens(x, additive, counts),
        }
        with torch.inference_mode():
            expected = {"pruned": pruned(x), "dense": model(x)}
        stands_for: dict[str, str] = {}
        for engine in engines:
            label = f"sparse_pruned@{engine}"
            variants[label] = partial(compile_module(engine, pruned, x, standalone=True), x)
            stands_for[label] = "pruned"
        if any(e.startswith("openvino") for e in engines):
            from headway.runtime.peers import call_compiled, openvino_compiled

            for precision in ("f32", "bf16"):
                label = f"openvino dense ({precision}, as its users run it)"
                compiled = openvino_compiled(model, x, precision, "LATENCY")
                variants[label] = partial(call_compiled, compiled, x)
                stands_for[label] = "dense"
        with torch.inference_mode():
            max_diff = {
                label: float((variants[label]() - expected[kind]).abs().max())
                for label, kind in stands_for.items()
            }
            timings = interleaved_medians(variants, min_run_time=min_run_time)
        rows.append(
            {
                "batch": batch,
                "sparse_only_ms": timings["sparse_only"] * 1e3,
                "sparse_pruned_ms": timings["sparse_pruned"] * 1e3,
                "speedup": timings["sparse_only"] / timings["sparse_pruned"],
                "token_rows": sum(counts),
                "token_rows_sparse_only": model.num_tokens * model.config.depth,
                "variants": {label: value * 1e3 for label, value in timings.items()},
                "max_diff": max_diff,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The section of `headway reproduce`'s report
# ---------------------------------------------------------------------------------------------


def schedule_label(pair: tuple[float, float] | list[float]) -> str:
    """``0.1→0.9``: a pruning schedule's first and last share."""
    return f"{pair[0]:g}→{pair[1]:g}"


def accuracy_cells(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells (top-1 in %) of paper C's Table 1 shape from :func:`accuracy_table`'s
    result, with a post-hoc column when the masks were fine-tuned; the report and
    ``headway vit accuracy`` both show this."""
    finetuned = any("sparse_only_post_hoc" in r for r in result["rows"])
    others = list(result.get("other_prunes", {}))
    main = schedule_label(result["prune"])
    header = ["sparsity (achieved)", "sparse only", f"sparse + pruning {main}", "drop"]
    header += [f"sparse + pruning {label}" for label in others]
    cells = []
    for r in result["rows"]:
        drop = r["sparse_only"] - r["sparse_pruned"]
        row = [
            f"{r['sparsity']:.0%} ({r['achieved']:.1%})",
            pct(r["sparse_only"]),
            pct(r["sparse_pruned"]),
            f"{drop:+.1f}",
        ]
        row += [pct(r.get("sparse_pruned_other", {}).get(label, float("nan"))) for label in others]
        if finetuned:
            row.insert(1, pct(r["sparse_only_post_hoc"]))
        cells.append(row)
    if finetuned:
        header.insert(1, "post hoc")
    return header, cells


def accuracy_section(folder: Path, quick: bool) -> Section:
    """Table 1: post hoc in the quick run; the full run also fine-tunes with each mask."""

    model, data = trained_digits_deit(folder, show_progress=False)
    sparsities = (0.5, 0.8) if quick else (0.5, 0.6, 0.7, 0.8)
    finetune = None if quick else MASK_FINETUNING
    result = accuracy_table(model, data, sparsities, finetune=finetune)
    how = (
        "Masks are applied post hoc, without fine-tuning."
        if finetune is None
        else f"Each sparsity's model is fine-tuned with its masks for {finetune.epochs} epochs "
        "(AdamW, lr 5e-4; pruning stays inference-only); `post hoc` is the same masks without "
        "it. The fine-tuned models get extra training epochs, which is why they can beat dense."
    )
    note = (
        f"`deit_digits` trained on the built-in digits: {result['dense']:.1f}% dense. Mean "
        f"drop from pruning {result['mean_drop_from_pruning']:.2f} points (paper C, "
        f"ImageNet: 0.9 / 0.5 / 0.2 for Tiny / Small / Base). {how}"
    )
    command = "headway vit accuracy OUT" + ("" if quick else " --finetune-epochs 5")
    return {
        "markdown": markdown_table(*accuracy_cells(result)) + "\n\n" + note,
        "data": result,
        "plots": [],
        "commands": [command],
    }


def breakdown_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Share of FLOPs / share of CPU time per layer type and model (the report and
    ``headway vit breakdown`` both show this)."""

    def share(values: dict[str, float], kind: str) -> str:
        return f"{100 * values[kind] / sum(values.values()):.1f}%"

    kinds = ("linear", "attention", "other")
    header = ["model", *(f"{kind}: FLOPs / time" for kind in kinds)]
    cells = [
        [r["model"], *(f"{share(r['flops'], k)} / {share(r['ms'], k)}" for k in kinds)]
        for r in rows
    ]
    return header, cells


def breakdown_section(folder: Path, quick: bool) -> Section:
    rows = [
        flop_latency_breakdown(name, runs=3 if quick else 10)
        for name in ("deit_tiny", "deit_small")
    ]

    table = markdown_table(*breakdown_table(rows))
    plot = plot_breakdown(rows, folder / "vit_breakdown.png")
    return {
        "markdown": table,
        "data": rows,
        "plots": [str(plot.relative_to(folder.parent))],
        "commands": ["headway vit breakdown --plot vit_breakdown.png"],
    }


def speedup_table(
    results: dict[str, list[dict[str, float]]],
) -> tuple[list[str], list[list[str]]]:
    """Sparse only vs sparse + pruning wall clock per model and batch, from
    :func:`pruning_speedup` results by model (the report and ``headway bench vit``)."""
    header = ["model", "batch", "sparse only ms", "sparse + pruning ms", "speedup"]
    cells = [
        [
            name,
            str(r["batch"]),
            f"{r['sparse_only_ms']:.2f}",
            f"{r['sparse_pruned_ms']:.2f}",
            f"{r['speedup']:.2f}×",
        ]
        for name, rows in results.items()
        for r in rows
    ]
    return header, cells


def engine_speed_table(
    results: dict[str, list[dict[str, Any]]],
) -> tuple[list[str], list[list[str]]]:
    """Every variant of :func:`pruning_speedup` run with engines: median ms, speed relative to
    torch's sparse + pruning, and the largest logit difference from the path it stands for."""
    header = ["model", "batch", "variant", "ms", "× torch sparse+pruning", "max |Δ|"]
    cells = []
    for name, rows in results.items():
        for r in rows:
            base = r["variants"]["sparse_pruned"]
            for label, value in r["variants"].items():
                diff = r["max_diff"].get(label)
                cells.append(
                    [
                        name,
                        str(r["batch"]),
                        label,
                        f"{value:.2f}",
                        f"{base / value:.2f}×",
                        "" if diff is None else f"{diff:.1e}",
                    ]
                )
    return header, cells


def speed_section(folder: Path, quick: bool) -> Section:
    from headway.models.deit import DEIT_CONFIGS
    from headway.sim.vitcod import simulate_deit
    from headway.transforms.token_pruning import keep_counts, pruning_ratios

    sim_rows = []
    for name in ("deit_tiny", "deit_small", "deit_base"):
        config = DEIT_CONFIGS[name]
        counts = keep_counts(config.num_patches, pruning_ratios(config.depth, 0.1, 0.9))
        for target in (0.5, 0.6, 0.7, 0.8):
            sparse, pruned = simulate_deit(name, target), simulate_deit(name, target, counts)
            sim_rows.append(
                {
                    "model": name,
                    "sparsity": target,
                    "sparse_cycles": sparse.total,
                    "pruned_cycles": pruned.total,
                    "speedup": sparse.total / pruned.total,
                }
            )
    mean = sum(r["speedup"] for r in sim_rows) / len(sim_rows)
    wall = {
        name: pruning_speedup(name, (1,) if quick else (1, 32))
        for name in (("deit_tiny",) if quick else ("deit_tiny", "deit_small"))
    }
    sim_table = markdown_table(
        ["model", "sparsity", "sparse only (cycles)", "+ pruning", "speedup"],
        [
            [
                r["model"],
                f"{r['sparsity']:.0%}",
                f"{r['sparse_cycles']:,}",
                f"{r['pruned_cycles']:,}",
                f"{r['speedup']:.2f}×",
            ]
            for r in sim_rows
        ],
    )
    wall_table = markdown_table(*speedup_table(wall))
    markdown = (
        f"Cycle-level simulator, mean speedup {mean:.2f}× (paper C: 1.31×):\n\n{sim_table}"
        f"\n\nCPU wall clock (70% sparsity, pruning 0.1 → 0.9), medians:\n\n{wall_table}"
    )
    return {
        "markdown": markdown,
        "data": {"simulator": sim_rows, "wall_clock": wall},
        "plots": [],
        "commands": ["headway simulate --model deit_tiny", "headway bench vit"],
    }


def simulation_table(
    model: str, targets: list[float], counts: list[int]
) -> tuple[list[str], list[list[str]], list[float]]:
    """``headway simulate``: the accelerator's cycles by layer type for each sparsity, sparse
    only and with the pruning ``counts``; header, rows and each sparsity's speedup."""
    from headway.sim.vitcod import simulate_deit

    header = ["sparsity", "case", "linear", "attention", "softmax", "ffn", "top-k", "total"]
    header.append("speedup")
    rows, speedups = [], []
    for target in targets:
        sparse = simulate_deit(model, target)
        pruned = simulate_deit(model, target, counts)
        speedups.append(sparse.total / pruned.total)
        for label, result in (("sparse", sparse), ("+ pruning", pruned)):
            kinds = result.by_type()
            rows.append(
                [
                    f"{target:.0%}",
                    label,
                    *(f"{kinds[k]:,}" for k in ("linear", "attention", "softmax", "ffn", "topk")),
                    f"{result.total:,}",
                    f"{sparse.total / result.total:.2f}×",
                ]
            )
    return header, rows, speedups
