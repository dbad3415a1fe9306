"""Paper B's multi-DNN experiments as library functions (the benchmark script and
``headway reproduce`` both call them): solo vs crowded runs, and one experiment = several
(label, mode, rank rule) cases over the same model mix, with a bar plot of per-model latency."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headway.errors import InputError
from headway.experiments.report import Section, markdown_table
from headway.io import save_figure
from headway.runtime.multi_model import RunResult
from headway.vision.serving import ModelSpec, instance_names, parse_models, run_mode, run_peer

RANK = "macs:0.19"  # VGG-16: 81% fewer MACs
MIX_RANK = "vbmf"  # per layer; a whole-model MAC budget is out of reach for ResNet-152's 1x1s
HOMOGENEOUS = "vgg16:8"
HETEROGENEOUS = "vgg16:3,resnet152:1,inception_v3:2,regnet_y_32gf:2"
HOMOGENEOUS_CASES = [
    ("Ori.(MP)", "mp", None),
    ("Dcomp.(MP)", "mp", RANK),
    ("Dcomp.(MT)", "mt", RANK),
    ("Dcomp.(MT+coalesce)", "mt+coalesce", RANK),
    ("Dcomp.(seq)", "seq", RANK),
    ("Dcomp.(batched)", "batched", RANK),
]
WORKERS = 2  # MT pool workers (1 intra-op thread each): one per core of the 2-core VM
HETEROGENEOUS_CASES = [
    ("Ori.(MP)", "mp", None),
    ("Dcomp.(MP)", "mp", MIX_RANK),
    ("Dcomp.(MT)", "mt", MIX_RANK),
]
SOLO_MODELS = ("alexnet", "squeezenet1_1", "vgg16", "regnet_y_32gf")
# The engines (issue 23): headway's MT runner chaining OpenVINO's asynchronous jobs beside
# OpenVINO served as its users serve it ("peer": ov.convert_model, THROUGHPUT hint, one async
# request per instance), fp32 and bf16, dense and Tucker-2. Mode "peer@E" is that peer on
# engine E's precision; "mt@E" headway's MT runner on E.
ENGINE_CASES = [
    ("Ori.(MP) torch", "mp", None),
    ("MT torch", "mt", None),
    ("OpenVINO THROUGHPUT", "peer@openvino", None),
    ("MT openvino", "mt@openvino", None),
    ("Dcomp.(MT) openvino", "mt@openvino", RANK),
    ("Dcomp.(MT+coalesce) openvino", "mt+coalesce@openvino", RANK),
    ("OpenVINO THROUGHPUT bf16", "peer@openvino-bf16", None),
    ("MT openvino-bf16", "mt@openvino-bf16", None),
    ("Dcomp.(MT) openvino-bf16", "mt@openvino-bf16", RANK),
    ("Dcomp.(MT+coalesce) openvino-bf16", "mt+coalesce@openvino-bf16", RANK),
    ("Dcomp. OpenVINO THROUGHPUT bf16", "peer@openvino-bf16", RANK),
]

ENGINE_MIX_CASES = [
    ("OpenVINO THROUGHPUT", "peer@openvino", None),
    ("MT openvino", "mt@openvino", None),
    ("Dcomp.(MT) openvino", "mt@openvino", MIX_RANK),
    ("OpenVINO THROUGHPUT bf16", "peer@openvino-bf16", None),
    ("MT openvino-bf16", "mt@openvino-bf16", None),
    ("Dcomp.(MT) openvino-bf16", "mt@openvino-bf16", MIX_RANK),
]
# each headway row and the plain-OpenVINO row it must beat (same precision, dense models)
ENGINE_PEERS = {
    "MT openvino": "OpenVINO THROUGHPUT",
    "Dcomp.(MT) openvino": "OpenVINO THROUGHPUT",
    "Dcomp.(MT+coalesce) openvino": "OpenVINO THROUGHPUT",
    "MT openvino-bf16": "OpenVINO THROUGHPUT bf16",
    "Dcomp.(MT) openvino-bf16": "OpenVINO THROUGHPUT bf16",
    "Dcomp.(MT+coalesce) openvino-bf16": "OpenVINO THROUGHPUT bf16",
}


def specs_for(
    models: str, decomposed: str | None, engine: str | None = None
) -> dict[str, ModelSpec]:
    return {
        n: ModelSpec(m, decomposed=decomposed, engine=engine)
        for n, m in instance_names(parse_models(models))
    }


def run_case(
    models: str, mode: str, rank: str | None, requests: int, device: str = "cpu"
) -> RunResult:
    """One case of :func:`run_cases`: ``mode`` is ``mp``, ``mt``, ``mt+coalesce``, ``seq``,
    ``batched``, ``mt@ENGINE`` or ``peer@ENGINE`` (plain OpenVINO at that engine's precision)."""
    base, _, engine = mode.partition("@")
    if base == "peer":
        precision = "bf16" if engine == "openvino-bf16" else "f32"
        return run_peer(specs_for(models, rank), requests, precision)
    coalesce = coalesce_limit(models) if base == "mt+coalesce" else 1
    return run_mode(
        base.split("+")[0],
        specs_for(models, rank, engine or None),
        requests,
        workers=WORKERS,
        threads=1,
        coalesce=coalesce,
        device=device,
    )


def per_model_mean(result: RunResult) -> dict[str, float]:
    """Mean latency per model type (averaged over its instances)."""
    by_model: dict[str, list[float]] = {}
    for name, values in result.latencies_ms.items():
        by_model.setdefault(name.split("#")[0], []).extend(values)
    return {m: float(np.mean(v)) for m, v in by_model.items() if v}


def solo_vs_crowd(
    models: tuple[str, ...] = SOLO_MODELS, requests: int = 20, crowd: int = 6, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """Paper B's Table 1: each model alone, then ``crowd`` copies at once (one process each)."""
    rows = {}
    for model in models:
        alone = run_mode("mp", specs_for(f"{model}:1", None), requests, threads=1, device=device)
        crowded = run_mode(
            "mp", specs_for(f"{model}:{crowd}", None), requests, threads=1, device=device
        )
        rows[model] = {
            "solo_ms": per_model_mean(alone)[model],
            "crowd_ms": per_model_mean(crowded)[model],
            "crowd": crowd,
        }
    return rows


def coalesce_limit(models: str, workers: int = WORKERS) -> int:
    """Largest batch MT+coalesce may form: the copies of the most copied model spread over the
    workers (8 copies, 2 workers → 4), so one batch never takes every request and idles the
    other workers."""
    return max(2, max(count for _, count in parse_models(models)) // workers)


def part_settings(requests: int, rounds: int) -> dict[str, tuple[str, list, int, int]]:
    """``bench multidnn``'s parts after ``solo``: (models, cases, requests, rounds) each (the
    heterogeneous mix with fewer requests: its models are far larger)."""
    return {
        "homogeneous": (HOMOGENEOUS, HOMOGENEOUS_CASES, requests, rounds),
        "heterogeneous": (HETEROGENEOUS, HETEROGENEOUS_CASES, max(2, requests // 12), 1),
        "engines": (HOMOGENEOUS, ENGINE_CASES, requests, rounds),
        "engines-mix": (HETEROGENEOUS, ENGINE_MIX_CASES, max(2, requests // 6), rounds),
    }


def round_ratios(experiment: dict[str, Any]) -> list[str]:
    """One line per comparison the experiment holds: Dcomp.(MT…) over Dcomp.(MP), and each
    engine row over the plain-OpenVINO row it must beat, throughput per round."""
    rows = experiment["cases"]
    pairs = [(k, "Dcomp.(MP)") for k in rows if k.startswith("Dcomp.(MT") and "Dcomp.(MP)" in rows]
    pairs += [(label, peer) for label, peer in ENGINE_PEERS.items() if {label, peer} <= set(rows)]
    lines = []
    for label, base in pairs:
        ours, theirs = rows[label]["throughputs"], rows[base]["throughputs"]
        ratios = [t / b for t, b in zip(ours, theirs, strict=True)]
        lines.append(
            f"{label} / {base} throughput per round: " + ", ".join(f"{r:.2f}×" for r in ratios)
        )
    return lines


def run_cases(
    models: str,
    cases: list[tuple[str, str, str | None]],
    requests: int,
    on_case: Callable[[str], None] | None = None,
    rounds: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the same instances once per (label, mode, rank rule) and round; the cases take turns
    within each round, so the VM's slow spells spread over all of them, and the medians over
    rounds are reported (every round's throughput is kept). MP uses 1 thread per process, the
    in-process modes ``WORKERS`` workers × 1 thread; mode ``mt+coalesce`` is MT with
    :func:`coalesce_limit`."""
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, got {rounds}")
    runs: dict[str, list[RunResult]] = {label: [] for label, _, _ in cases}
    for round_index in range(rounds):
        for label, mode, rank in cases:
            if on_case is not None:
                on_case(label if rounds == 1 else f"{label}, round {round_index + 1}/{rounds}")
            runs[label].append(run_case(models, mode, rank, requests, device))
    rows = {}
    for label, results in runs.items():
        means = [per_model_mean(r) for r in results]
        rows[label] = {
            "per_model_ms": {
                m: float(np.median([x[m] for x in means if m in x])) for m in means[-1]
            },
            "throughput": float(np.median([r.throughput for r in results])),
            "throughputs": [r.throughput for r in results],
            "errors": {k: v for r in results for k, v in r.errors.items()},
            "summary": results[-1].summary(),
            "notes": results[-1].notes,
        }
    return {
        "models": models,
        "requests": requests,
        "rounds": rounds,
        "device": device,
        "cases": rows,
    }


def plot_cases(title: str, experiment: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: mean latency per model type, one bar per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = experiment["cases"]
    model_names = list(next(iter(rows.values()))["per_model_ms"])
    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=120)
    width = 0.8 / len(rows)
    for i, (label, row) in enumerate(rows.items()):
        axes.bar(
            np.arange(len(model_names)) + i * width,
            [row["per_model_ms"].get(n, 0) for n in model_names],
            width,
            label=label,
        )
    axes.set_xticks(np.arange(len(model_names)) + width * (len(rows) - 1) / 2, model_names)
    axes.set_ylabel("mean latency per request (ms)")
    axes.set_title(f"{title} ({experiment['models']})")
    axes.legend(fontsize=8)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------
# The section of `headway reproduce`'s report
# ---------------------------------------------------------------------------------------------


def cases_table(experiment: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Mean latency per model (change vs the first case) and throughput per case, from
    :func:`run_cases` (the report and ``headway bench multidnn``)."""
    cases = experiment["cases"]
    base = next(iter(cases.values()))["per_model_ms"]
    names = list(base)

    def cell(values: dict[str, float], name: str) -> str:
        value = values.get(name, float("nan"))
        return f"{value:.1f} ({100 * (value / base[name] - 1):+.0f}%)"

    cells = [
        [label, *(cell(c["per_model_ms"], n) for n in names), f"{c['throughput']:.1f}"]
        for label, c in cases.items()
    ]
    return ["case", *names, "throughput req/s"], cells


def section(folder: Path, quick: bool) -> Section:

    requests = 8 if quick else 60
    rounds = 1 if quick else 3
    experiments = {
        "homogeneous": run_cases(
            HOMOGENEOUS,
            HOMOGENEOUS_CASES[:4] if quick else HOMOGENEOUS_CASES,
            requests,
            rounds=rounds,
        )
    }
    if not quick:
        experiments["heterogeneous"] = run_cases(HETEROGENEOUS, HETEROGENEOUS_CASES, 5)
    parts, plots = [], []
    for title, experiment in experiments.items():
        parts.append(
            f"**{title}** ({experiment['models']}, {experiment['requests']} requests "
            "per instance; mean latency ms, change vs Ori.(MP))\n\n"
            + markdown_table(*cases_table(experiment))
        )
        plot = plot_cases(title, experiment, folder / f"{title}.png")
        plots.append(str(plot.relative_to(folder.parent)))
    note = (
        "Small-input models (32×32), random weights; MP: one process per instance, 1 thread; "
        "MT: 2 pool workers × 1 thread; MT+coalesce (beyond the paper): MT whose workers batch "
        "waiting requests for the same job of the shared VGG-16, at most 4. "
        f"Medians over {rounds} round(s) in which the cases take turns. Paper B (Jetson, "
        "8 × VGG-16): −34.4% (Dcomp.MP) and −62.9% (Dcomp.MT) vs Ori.(MP)."
    )
    return {
        "markdown": "\n\n".join(parts) + "\n\n" + note,
        "data": experiments,
        "plots": plots,
        "commands": [f"headway bench multidnn --requests {requests} --rounds {rounds}"],
    }
