"""Success and precision plots (PNG) of one or more evaluated runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from headway.io import make_folder, save_figure
from headway.tracking.metrics import EvalResult

PLOTS = {
    "success": ("Overlap threshold", "Success rate", "AUC"),
    "precision": ("Location error threshold (px)", "Precision", "P"),
    "norm_precision": ("Normalised location error threshold", "Normalised precision", "Pnorm"),
}


def plot_curves(results: dict[str, EvalResult], out_dir: str | Path) -> list[Path]:
    """One PNG per curve kind, one line per run, the score in the legend. Returns the paths."""
    out_dir = make_folder(out_dir)
    written = []
    for kind, (xlabel, ylabel, score) in PLOTS.items():
        runs = {label: r for label, r in results.items() if kind in r.curves}
        if not runs:
            continue
        figure, axes = plt.subplots(figsize=(5, 4), dpi=120)
        for label, result in runs.items():
            value = result.scores.get(score, result.scores.get("AO", 0.0))
            axes.plot(
                result.thresholds[kind],
                100 * result.curves[kind],
                label=f"{label} [{value:.1f}]",
                linewidth=2,
            )
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"{ylabel} (%)")
        axes.set_ylim(0, 100)
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize=8)
        axes.set_title(f"{ylabel} plot ({next(iter(runs.values())).convention})")
        written.append(save_figure(figure, out_dir / f"{kind}_plot.png"))
    return written
