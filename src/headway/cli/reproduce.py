"""``headway reproduce``: every experiment of the three papers into one report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headway.cli.base import app, console, errors, output_folder, reports_errors, shown, some_names


@app.command()
@reports_errors
def reproduce(
    out: Annotated[Path, typer.Argument(help="Report folder (report.md, plots, JSON).")],
    quick: Annotated[bool, typer.Option(help="Small sizes: under 10 minutes here.")] = False,
    only: Annotated[str | None, typer.Option(help="Only these experiments (comma-sep.).")] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run the parts that time nothing in parallel on Ray (timing parts stay serial).",
        ),
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="A running Ray cluster (OUT must be shared with it).")
    ] = None,
) -> None:
    """Run the three papers' experiments on built-in data; resumable; writes OUT/report.md."""
    from headway.experiments.reproduce import Experiment, Outcome
    from headway.experiments.reproduce import reproduce as run_all

    output_folder(out, "OUT")
    chosen = some_names(only, "--only")
    if ray or ray_address is not None:
        from headway.tracking.cluster import check_ray_address, require_ray

        require_ray()
        if ray_address is not None:
            check_ray_address(ray_address)

    def started(experiment: Experiment, index: int, total: int) -> None:
        console.print(
            f"[{index + 1}/{total}] paper {experiment.paper}: {experiment.title} …", markup=False
        )

    def ended(outcome: Outcome) -> None:
        if outcome.status == "failed":
            errors.print(f"  [red]failed[/] after {outcome.seconds:.0f} s: {shown(outcome.error)}")
        elif outcome.status == "skipped":
            console.print("  already done (skipped)")
        else:
            console.print(f"  done in {outcome.seconds:.0f} s")

    with console.status("running experiments (see the lines above for progress)"):
        report, outcomes = run_all(
            out, quick, chosen, started, ended, ray_address=ray_address, use_ray=ray
        )
    failed = [o.key for o in outcomes if o.status == "failed"]
    console.print(f"report: {shown(report)}")
    if failed:
        errors.print(f"[bold red]{len(failed)} experiment(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)
