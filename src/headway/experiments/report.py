"""What the experiments share to present their results: the report section an experiment
returns, Markdown tables from (header, rows), and a grouped bar plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headway.io import save_figure

Section = dict[str, Any]  # {"markdown": str, "data": ..., "plots": [relative paths], "commands"}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def bar_plot(
    path: Path, title: str, labels: list[str], series: dict[str, list[Any]], ylabel: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=120)
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        axes.bar(np.arange(len(labels)) + i * width, [v or 0 for v in values], width, label=name)
    axes.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2, labels)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return save_figure(figure, path)
