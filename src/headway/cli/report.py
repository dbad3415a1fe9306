"""``headway bench report``: the headline comparisons as one page for this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headway.cli.base import bench_app, console, output_file, print_table, reports_errors, shown


@bench_app.command("report")
@reports_errors
def bench_report(
    out: Annotated[Path, typer.Option("--out", help="The page to write (Markdown).")] = Path(
        "benchmark-report.md"
    ),
    quick: Annotated[
        bool, typer.Option(help="Short timings (a smoke run: ratios are rough).")
    ] = False,
    serving: Annotated[
        bool, typer.Option(help="Also 8 × VGG-16 served at once (needs OpenVINO).")
    ] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Run the headline comparisons (the CSWinTT encoder, DeiT-Tiny, VGG-16, 8 × VGG-16
    served at once) and write one page for this machine: its CPU, instruction sets and
    versions, and per workload headway's best beside the best peer, with the ratio."""
    import json

    from headway.experiments.machine_report import comparisons_table, to_json, write_report
    from headway.io import atomic_write_text

    output_file(out, "--out")
    output_file(json_out, "--json")
    _, comparisons = write_report(
        out, quick, serving, on_case=lambda case: console.print(f"{case} …")
    )
    print_table(
        "headway's best beside the best peer, this machine", *comparisons_table(comparisons)
    )
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(to_json(comparisons), indent=2))
    console.print(f"wrote {shown(out)}")
