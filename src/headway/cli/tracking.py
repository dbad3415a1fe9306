"""``headway synth | track | eval | bench tracker | train tracker``: the tracker's commands."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import typer

from headway.cli.base import (
    app,
    at_least,
    bench_app,
    check_choice,
    check_seed,
    console,
    output_file,
    output_folder,
    positive,
    print_table,
    reports_errors,
    runner_app,
    shown,
    some_names,
    thread_count,
    train_app,
)
from headway.errors import FrameError, InputError
from headway.io import require_folder
from headway.models import CONFIGS
from headway.models.cswintt import CSWinTT
from headway.runtime.device import keep_freed_memory, resolve_device
from headway.tracking.backends import Tracker, check_tracker_executor
from headway.tracking.datasets import (
    FORMATS,
    Sequence,
    SkippedSequence,
    load_dataset,
    update_interval,
)
from headway.tracking.executors import comparison_executors, executor_names, resolve_executor
from headway.tracking.metrics import CONVENTIONS, scores_table
from headway.tracking.settings import TrackerSettings
from headway.tuning import DEFAULT_BUDGET_S, TuningPlan

if TYPE_CHECKING:
    from headway.tracking.runner import TrackRunSummary


@app.command()
@reports_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the OTB-layout dataset into.")],
    sequences: Annotated[int, typer.Option(help="Number of sequences.")] = 4,
    frames: Annotated[int, typer.Option(help="Frames per sequence.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    appearance_change: Annotated[
        float, typer.Option(help="Share of the target texture replaced by the last frame.")
    ] = 0.0,
    video: Annotated[
        bool, typer.Option("--video", help="Also write each sequence as <seq>/<seq>.mp4.")
    ] = False,
) -> None:
    """Write synthetic tracking sequences (the built-in default data)."""
    from rich.progress import track

    from headway.tracking.synth import SynthSettings, synthesize

    output_folder(out, "OUT")
    at_least(sequences, 1, "--sequences")
    at_least(frames, 2, "--frames")
    check_seed(seed)
    settings = SynthSettings(frames=frames, appearance_change=appearance_change)
    steps = iter(track(range(sequences), description="synthesising", console=console))
    written = synthesize(
        out, sequences, seed, settings, on_sequence=lambda _: next(steps, None), video=video
    )
    next(steps, None)
    console.print(f"wrote {len(written)} sequences × {frames} frames to {shown(out)}")


EXECUTOR_HELP = (
    f"How it runs: auto (checks and times the candidates here, caches the choice), "
    f"{', '.join(executor_names())}, or GRAPH[+bf16]@BACKEND."
)
PRECISION_HELP = "With --executor auto: fp32, or bf16 to admit the bf16 executors too."
TOLERANCE_HELP = (
    "With --executor auto: largest encoder |Δ| to eager a candidate may have "
    "(default 1e-3 fp32, 0.25 bf16)."
)
TUNE_HELP = "With --executor auto: seconds to spend checking and timing candidates."


def check_executor_option(
    executor: str,
    device: torch.device,
    precision: str,
    tolerance: float | None,
    tune_seconds: float,
    only_executor: bool = True,
) -> bool:
    """One line for a bad executor or auto option; True when the executor is ``auto``. With
    ``only_executor`` (one executor runs), auto's options given to another executor are
    refused rather than ignored."""
    from headway.tracking.auto import AUTO
    from headway.tuning import check_tuning_options

    check_tuning_options(precision, tolerance, tune_seconds)
    if executor == AUTO:
        return True
    check_tracker_executor(executor, device)
    given = {
        "--precision": precision != "fp32",
        "--tolerance": tolerance is not None,
        "--tune-seconds": tune_seconds != DEFAULT_BUDGET_S,
    }
    ignored = [name for name, used in given.items() if used]
    if only_executor and ignored:
        raise InputError(
            f"{', '.join(ignored)}: only for --executor auto (this run's executor is "
            f"{executor}, whose precision is in its name)"
        )
    return False


def print_plan(plan: TuningPlan) -> None:
    """The candidates' table of an auto choice, and the choice."""
    how = "from the cache (no tuning)" if plan.cached else f"tuned in {plan.tune_s:.0f} s"
    title = f"--executor auto ({plan.precision}): {plan.chosen}, {how}"
    print_table(title, *plan.table(skipped=False), width=120)
    for line in plan.skipped():
        console.print(f"  not tried — {line}", markup=False)


def choose_executor(
    network: torch.nn.Module,
    sequence: Sequence,
    settings: TrackerSettings,
    device: torch.device,
    precision: str,
    tolerance: float | None,
    tune_seconds: float,
) -> tuple[TuningPlan, object]:
    """Run ``auto`` on the first frames of ``sequence``, with a status line, and print the plan."""
    from headway.tracking.auto import tune_tracker

    with console.status("--executor auto: checking eager") as status:
        plan, tracker = tune_tracker(
            network,
            list(sequence.frames),
            [float(v) for v in sequence.init_box],
            settings,
            device,
            precision,
            tolerance,
            tune_seconds,
            on_candidate=lambda name: status.update(f"--executor auto: checking {name}"),
        )
    print_plan(plan)
    return plan, tracker


@app.command("track")
@reports_errors
def track_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A dataset root folder; with --box: a video file, a folder of images or a URL.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder for the result files.")
    ] = None,
    box: Annotated[
        str | None,
        typer.Option(
            help="x,y,w,h of the target in the first frame: track a video, not a dataset."
        ),
    ] = None,
    camera: Annotated[
        int | None, typer.Option(help="Track from camera N (with --box).", show_default=False)
    ] = None,
    render: Annotated[
        Path | None,
        typer.Option(
            help="With --box: write the video with the box and score drawn (.mp4/.avi/.mkv)."
        ),
    ] = None,
    start: Annotated[int, typer.Option(help="With --box: the first frame (0-based).")] = 0,
    end: Annotated[
        int | None, typer.Option(help="With --box: stop before this frame.", show_default=False)
    ] = None,
    every: Annotated[int, typer.Option(help="With --box: track every N-th frame.")] = 1,
    format: Annotated[str, typer.Option(help=f"Dataset layout: {', '.join(FORMATS)}.")] = "otb",
    config: Annotated[str, typer.Option(help="Network size: default or tiny.")] = "default",
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Weights (.pth / .pth.tar); 'builtin': the trained tiny tracker."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    sequences: Annotated[str | None, typer.Option(help="Only these, comma-separated.")] = None,
    split: Annotated[str | None, typer.Option(help="GOT-10k / TrackingNet split.")] = None,
    interval_option: Annotated[
        int | None,
        typer.Option(
            "--update-interval",
            help="Template update interval (default: the official one of the dataset and split).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights (no checkpoint).")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    executor: Annotated[str, typer.Option(help=EXECUTOR_HELP)] = "eager",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "fp32",
    tolerance: Annotated[float | None, typer.Option(help=TOLERANCE_HELP)] = None,
    tune_seconds: Annotated[float, typer.Option(help=TUNE_HELP)] = DEFAULT_BUDGET_S,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ray: Annotated[
        bool, typer.Option("--ray", help="Track on Ray: a local instance unless --ray-address.")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="A running Ray cluster (auto, ray://host:10001).")
    ] = None,
    ray_workers: Annotated[
        int | None, typer.Option(help="Ray workers (default: one per CPU of the instance).")
    ] = None,
) -> None:
    """Track every sequence of a dataset (reruns skip sequences already complete), or, with
    --box, one target through a video, a folder of images, a camera or a stream."""
    check_seed(seed)
    if out is None:
        raise InputError("--out is required: the run folder for the result files")
    if box is not None or camera is not None:
        dataset_options = {
            "--format": format != "otb", "--sequences": sequences is not None,
            "--split": split is not None,
            "--ray": ray or ray_address is not None or ray_workers is not None,
        }  # fmt: skip
        given = [name for name, used in dataset_options.items() if used]
        if given:
            raise InputError(f"{given[0]} is for datasets; a video run takes --box and its frames")
        at_least(interval_option, 1, "--update-interval")
        choice = (precision, tolerance, tune_seconds)
        frames = (start, end, every, render)
        settings = TrackerSettings(
            update_interval=interval_option or TrackerSettings().update_interval
        )
        track_video_command(source, box, camera, out, config, checkpoint, device, seed, threads,
                            executor, choice, frames, progress, settings)  # fmt: skip
        return
    if source is None:
        raise InputError("give a dataset folder, or a video with --box x,y,w,h")
    dataset = Path(source)
    if dataset.is_file():
        raise InputError(
            f"{dataset} is a file, not a folder: a dataset is a folder; to track a video, "
            "give its target with --box x,y,w,h"
        )
    video_only = {"--render": render is not None, "--start": start != 0,
                  "--end": end is not None, "--every": every != 1}  # fmt: skip
    for name, used in video_only.items():
        if used:
            raise InputError(f"{name} is for a video run: add --box x,y,w,h")
    from headway.tracking.runner import TrackerRecipe, track_with_recipe

    check_choice(format, FORMATS, "dataset format")
    check_choice(config, list(CONFIGS), "configuration")
    output_folder(out, "--out")
    at_least(interval_option, 1, "--update-interval")
    thread_count(threads, "--threads")
    thread_count(ray_workers, "--ray-workers")
    torch_device = resolve_device(device)
    auto = check_executor_option(executor, torch_device, precision, tolerance, tune_seconds)
    on_ray = ray or ray_address is not None
    check_ray_options(on_ray, ray_workers, ray_address, auto)
    checkpoint = builtin_checkpoint(checkpoint, config)
    selected, unloadable = load_some(dataset, format, split, sequences)
    keep_freed_memory()
    weights = str(checkpoint) if checkpoint else f"random (seed {seed})"
    interval = interval_option or update_interval(format, split)
    info = {"config": config, "weights": weights, "update_interval": interval, "executor": executor}
    info |= {"auto_precision": precision} if auto else {}
    problems = {s.name: s.reason for s in unloadable}
    path = str(checkpoint) if checkpoint else None
    recipe = TrackerRecipe(config, path, seed, executor, interval, threads or 1, str(torch_device))
    what = f"{len(selected)} sequences with CSWinTT ({config})"
    if on_ray:
        from headway.tracking.cluster import track_dataset_ray

        where = ray_address or f"a local Ray instance ({ray_workers or 'all'} CPUs)"
        console.print(
            f"tracking {what} on {where}, weights {shown(weights)}, executor {executor}, "
            f"{recipe.threads} thread(s) per worker"
        )
        summary = track_dataset_ray(
            recipe, selected, out, format, info, ray_address, ray_workers, progress, problems
        )
    else:
        if threads:
            torch.set_num_threads(threads)

        def choose(network: CSWinTT, settings: TrackerSettings) -> tuple[TuningPlan, Tracker]:
            choice = (precision, tolerance, tune_seconds)
            for sequence, following in itertools.pairwise(selected):
                try:  # tuned on the first sequence whose frames read
                    return choose_executor(network, sequence, settings, torch_device, *choice)
                except FrameError as error:
                    console.print(
                        f"--executor auto: {sequence.name} cannot be read ({error}); tuning "
                        f"on {following.name}",
                        markup=False,
                    )
            return choose_executor(network, selected[-1], settings, torch_device, *choice)

        def announce(running: str) -> None:
            console.print(
                f"tracking {what}, weights {shown(weights)}, executor {running}, "
                f"{torch_device}, {torch.get_num_threads()} threads, update interval {interval}"
            )

        chooser = choose if auto else None
        summary = track_with_recipe(
            recipe, selected, out, format, info, chooser, announce, progress, problems
        )
    print_run(summary, [s.name for s in selected], out)
    report_failures(summary.failed, len(selected) + len(unloadable), out)


def track_video_command(
    source: str | None,
    box: str | None,
    camera: int | None,
    out: Path,
    config: str,
    checkpoint: Path | None,
    device: str,
    seed: int,
    threads: int | None,
    executor: str,
    choice: tuple[str, float | None, float],
    frames: tuple[int, int | None, int, Path | None],
    progress: bool,
    tracker_settings: TrackerSettings,
) -> None:
    """``headway track VIDEO --box x,y,w,h``: every check first, then the tracker, then the
    frames with a progress bar; the result files, run.json and the render in ``out``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from headway.tracking.live import FrameTracker, check_frame_executor, resolve_weights
    from headway.tracking.video import FrameRange, open_source, parse_box, track_video

    if box is None:
        raise InputError("--camera needs --box x,y,w,h: the target in the first frame")
    check_choice(config, list(CONFIGS), "configuration")
    output_folder(out, "--out")
    thread_count(threads, "--threads")
    start, end, every, render = frames
    frame_range = FrameRange(start, end, every)
    initial = parse_box(box)
    torch_device = resolve_device(device)
    precision, tolerance, tune_seconds = choice
    auto = check_executor_option(executor, torch_device, precision, tolerance, tune_seconds)
    if not auto:
        check_frame_executor(executor, torch_device)
    if render is not None:
        output_file(render, "--render")
    weights = builtin_checkpoint(checkpoint, config)
    resolve_weights(weights if weights is not None else "random", config)  # a missing file
    opened = open_source(source, camera)
    if threads:
        torch.set_num_threads(threads)
    info = opened.info
    announcement = (
        f"tracking {info.location} ({info.kind}, {info.width}x{info.height}"
        f"{f', {info.fps:.1f} fps' if info.fps else ''}"
        f"{f', {info.frames} frames' if info.frames else ''}) with CSWinTT ({config}), "
        f"executor {executor}"
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]}"),
    )
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("frames", total=frame_range.count(info.frames), fps="")

        def on_frame(count: int, fps: float) -> None:
            bar.update(task, completed=count, fps=f"{fps:5.1f} FPS", description="frames")

        def on_candidate(name: str) -> None:  # auto tunes on its first frames
            bar.update(task, description=f"auto: checking {name}")

        def make_tracker() -> FrameTracker:  # called once the source and box are checked
            bar.update(task, description="loading the tracker")
            weights_given = weights if weights is not None else "random"
            tracker = FrameTracker(
                config, weights_given, executor, precision, device, color="rgb", seed=seed,
                tolerance=tolerance, tune_seconds=tune_seconds, on_candidate=on_candidate,
                settings=tracker_settings,
            )  # fmt: skip
            console.print(announcement)
            return tracker

        named = str(weights) if weights else f"random (seed {seed})"
        settings = {"config": config, "weights": named, "executor": executor,
                    "device": str(torch_device),
                    "update_interval": tracker_settings.update_interval}  # fmt: skip
        run = track_video(
            opened, initial, out, make_tracker, frame_range, render, on_frame, settings
        )
    if run.notes.get("auto"):
        console.print(f"--executor auto chose {run.executor}")
    median = run.median_ms()
    fps = 1e3 / median if median else 0.0
    console.print(
        f"tracked {len(run.boxes)} frames in {run.seconds:.1f} s (median {median:.1f} ms per "
        f"frame, {fps:.1f} FPS) into "
        f"{shown(out / (run.name + '.txt'))}"
        + (f"; rendered {shown(run.rendered)}" if run.rendered else "")
    )
    if run.stopped:
        console.print(
            f"stopped early: {run.stopped}; the {len(run.boxes)} boxes tracked so far are kept "
            "(run.json: complete false)",
            markup=False,
        )


def load_some(
    dataset: Path, format: str, split: str | None, sequences: str | None
) -> tuple[list[Sequence], list[SkippedSequence]]:
    """The sequences of ``dataset`` (only ``--sequences`` where given) and those that could
    not be loaded; one line when none could."""
    unloadable: list[SkippedSequence] = []
    names = some_names(sequences, "--sequences")
    selected = load_dataset(dataset, format, split, names, skipped=unloadable)
    if not selected:
        problems = "; ".join(f"{s.name}: {s.reason}" for s in unloadable[:3])
        raise InputError(f"no sequence of {dataset} could be loaded: {problems}")
    return selected, unloadable


def print_run(summary: TrackRunSummary, names: list[str], out: Path) -> None:
    """What a track run skipped, and the per-stage time of what it has."""
    from headway.tracking.runner import stage_breakdown

    if summary.skipped:
        console.print(f"skipped {len(summary.skipped)} complete sequences already in {shown(out)}")
    done = [name for name in names if name not in summary.failed]
    if done:
        breakdown = stage_breakdown(out, done)
        title = f"Per-frame time by stage ({breakdown.frames} tracked frames)"
        print_table(title, *breakdown.table())


def check_ray_options(
    on_ray: bool, ray_workers: int | None, ray_address: str | None, auto: bool
) -> None:
    """--ray-workers only with --ray; --executor auto never on Ray; Ray installed and its
    address well-formed."""
    if ray_workers is not None and not on_ray:
        raise InputError("--ray-workers sizes a local Ray instance: add --ray")
    if auto and on_ray:
        raise InputError(
            "--executor auto chooses for the machine it runs on: run it once without --ray, "
            "then pass the executor it chose (run.json 'auto') to the Ray run"
        )
    if on_ray:
        from headway.tracking.cluster import check_ray_address, require_ray

        require_ray()
        if ray_address is not None:
            check_ray_address(ray_address)


def builtin_checkpoint(checkpoint: Path | None, config: str) -> Path | None:
    """``--checkpoint builtin`` as the shipped weights' path (refused beside a file of that
    name, and for another configuration than tiny); any other value as it is."""
    if checkpoint is None or str(checkpoint) != "builtin":
        return checkpoint
    if checkpoint.exists():  # the word and a file of that name: never guess which
        raise InputError(
            "--checkpoint builtin: a file named builtin is here too; give its path as "
            f"{checkpoint.resolve()} for the file, or rename it to use the shipped weights"
        )
    if config != "tiny":
        raise InputError("the built-in trained weights are for --config tiny")
    from headway.models.pretrained import builtin_weights_path

    return builtin_weights_path()


def report_failures(failed: dict[str, str], total: int, out: Path) -> None:
    """Each sequence that could not be tracked on a line, then one error naming the first."""
    if not failed:
        return
    for name, reason in failed.items():
        console.print(f"  not tracked: {name}: {reason}", markup=False)
    name, reason = next(iter(failed.items()))
    raise InputError(
        f"{len(failed)} of {total} sequence(s) could not be tracked (the others are in {out}; "
        f"'problems' in run.json lists these, and a rerun tries them again); first: "
        f"{name}: {reason}"
    )


@app.command("eval")
@reports_errors
def eval_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folder(s) written by `headway track`.")],
    dataset: Annotated[Path, typer.Option(help="Dataset root folder (ground truth).")],
    format: Annotated[str, typer.Option(help=f"Dataset layout: {', '.join(FORMATS)}.")] = "otb",
    convention: Annotated[
        str, typer.Option(help=f"Metric convention: {', '.join(CONVENTIONS)}.")
    ] = "pytracking",
    split: Annotated[str | None, typer.Option(help="GOT-10k / TrackingNet split.")] = None,
    sequences: Annotated[str | None, typer.Option(help="Only these, comma-separated.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for PNG plots.")] = None,
) -> None:
    """Score runs (AUC, precision, normalised precision), write metrics.json and plots."""
    from headway.tracking.plots import plot_curves
    from headway.tracking.runner import evaluate_run

    check_choice(format, FORMATS, "dataset format")
    check_choice(convention, CONVENTIONS, "convention")
    for run in runs:
        require_folder(run, "run folder")
        output_folder(run, "RUN")
    if plots is not None:
        output_folder(plots, "--plots")
    unloadable: list[SkippedSequence] = []
    loaded = load_dataset(
        dataset, format, split, some_names(sequences, "--sequences"), skipped=unloadable
    )
    # one bad sequence never stops the scoring: score those every run has, name the others
    missing = {
        s.name: "not in " + ", ".join(str(r) for r in runs if not (r / f"{s.name}.txt").is_file())
        for s in loaded
        if not all((r / f"{s.name}.txt").is_file() for r in runs)
    }
    selected = [s for s in loaded if s.name not in missing]
    left_out = {**{s.name: s.reason for s in unloadable}, **missing}
    for name, reason in left_out.items():
        console.print(f"not scored: {name}: {reason}", style="yellow", markup=False)
    if not selected:
        raise InputError(f"no sequence can be scored: {next(iter(left_out.values()), '')}")
    results = {str(run): evaluate_run(run, selected, convention) for run in runs}
    title = f"{len(selected)} sequences, {convention} convention"
    header, rows = scores_table(results)
    print_table(title, header, [[shown(row[0]), *row[1:]] for row in rows])
    for label, result in results.items():
        for note in result.notes[:5]:  # the convention's rule for boxes that are not boxes
            console.print(f"  {shown(label)}: {note}", markup=False)
        if len(result.notes) > 5:
            console.print(f"  … and {len(result.notes) - 5} more notes (metrics.json 'notes')")
    written = plot_curves(results, plots or runs[0])
    console.print(
        "metrics.json written to each run folder; plots: " + ", ".join(map(shown, written))
    )


@app.command("export-results")
@reports_errors
def export_results_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `headway track`.")],
    to: Annotated[str, typer.Option("--to", help="Layout: got10k, trackingnet, lasot, otb.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported files.")],
) -> None:
    """Write a run's boxes in a benchmark's submission layout (GOT-10k <seq>/<seq>_001.txt +
    _time.txt; TrackingNet <seq>.txt + submission.zip; LaSOT / OTB comma-separated <seq>.txt, as
    the got10k toolkit reads them: OTB from a run tracked with --format otb-got10k)."""
    from headway.tracking.submission import LAYOUTS, export_results

    check_choice(to, LAYOUTS, "layout")
    require_folder(run, "run folder")
    output_folder(out, "--out")
    summary = export_results(run, out, to)
    console.print(
        f"exported {len(summary.sequences)} sequences in the {to} layout to {shown(out)}"
        + (f" (upload {shown(out / 'submission.zip')})" if to == "trackingnet" else "")
    )


@runner_app.command("build")
@reports_errors
def runner_build(
    force: Annotated[bool, typer.Option(help="Rebuild even if this torch has a runner.")] = False,
) -> None:
    """Build headway-runner against the installed torch (needs a C++ compiler; ~20 s)."""
    from headway.tracking.native.build import build_plan, build_runner

    plan = build_plan()
    formats = ", ".join(("ppm", "bmp", *plan.image_formats))
    missing = [f"lib{n}-dev" for n in ("jpeg", "png") if n not in plan.image_formats]
    if missing:
        formats += f" (install {' and '.join(missing)}, then rebuild, for the other formats)"
    with console.status("compiling headway-runner"):
        binary = build_runner(force)
    console.print(f"headway-runner: {binary} (frames it reads: {formats})")


@runner_app.command("info")
@reports_errors
def runner_info() -> None:
    """Where the runner is, or why it is not there."""
    import subprocess

    from headway.tracking.native.build import (
        build_plan,
        built_runner,
        prebuilt_runner,
        runner_missing,
    )

    prebuilt = prebuilt_runner()
    try:
        plan = build_plan()
    except InputError:  # no compiler: a runner built earlier is still usable
        if prebuilt is None:
            raise
        plan = None
    binary = built_runner(plan) if plan is not None else prebuilt
    if binary is None:
        raise InputError(runner_missing(plan))  # type: ignore[arg-type]
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    compiler = plan.compiler if plan is not None else "none now (built earlier)"
    console.print(f"{binary}\n{version.stdout.strip()}\ncompiler {compiler}")


@bench_app.command("tracker")
@reports_errors
def bench_tracker(
    config: Annotated[str, typer.Option(help="Network size: default or tiny.")] = "default",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    executors: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated, from: auto, {', '.join(executor_names())} (default: "
            f"{','.join(comparison_executors(runner=True))}; the cpp ones where the runner is "
            "built; cudagraph ones on CUDA)."
        ),
    ] = None,
    frames: Annotated[int, typer.Option(help="Timed frames per executor.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed frames first.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of weights and frames.")] = 0,
    rounds: Annotated[int, typer.Option(help="Passes per executor, in alternating order.")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "fp32",
    tune_seconds: Annotated[float, typer.Option(help=TUNE_HELP)] = DEFAULT_BUDGET_S,
) -> None:
    """Time every executor on the same frames: encoder, FPS, stages, GFLOP/s, differences
    (``auto`` among them: its choice, made first, is timed like the others)."""
    check_seed(seed)
    import json

    from rich.progress import Progress

    from headway.experiments.tracker_executors import (
        benchmark_executors,
        executors_table,
        stages_table,
    )
    from headway.io import atomic_write_text

    check_choice(config, list(CONFIGS), "configuration")
    at_least(frames, 1, "--frames")
    at_least(warmup, 0, "--warmup")
    at_least(rounds, 1, "--rounds")
    output_file(json_out, "--json")
    torch_device = resolve_device(device)
    if executors is None:
        from headway.tracking.native.build import built_runner

        chosen = comparison_executors(device, runner=built_runner() is not None)
    else:
        chosen = some_names(executors, "--executors") or ["eager"]
    for name in chosen:
        check_executor_option(name, torch_device, precision, None, tune_seconds, False)
    allocator_tuned = keep_freed_memory()  # same for every executor measured
    with Progress(console=console, transient=True) as progress:
        total = (frames + warmup) * rounds * len(set(chosen) | {"eager"})
        task = progress.add_task("frames (all executors)", total=total)
        bench = benchmark_executors(
            config,
            device,
            chosen,
            frames,
            warmup,
            seed,
            lambda _: progress.advance(task),
            rounds,
            precision,
            tune_seconds,
        )
    if bench.auto_plan is not None:
        print_plan(TuningPlan.from_json(bench.auto_plan))
    title = (
        f"CSWinTT {config} on {bench.device} ({bench.environment['threads']} threads), "
        f"median of {frames} frames × {rounds} passes; encoder {bench.encoder_gflop:.2f} "
        "GFLOP/frame"
    )
    print_table(title, *executors_table(bench), width=132)
    title = "Stage breakdown, ms per frame (share of the stages' sum)"
    print_table(title, *stages_table(bench), width=132)
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in bench.matmul_peak_gflops.items())
    console.print(f"measured matmul peak (tokens × FFN weight): {peaks}")
    if json_out is not None:
        data = bench.to_json()
        data["environment"]["glibc_keep_freed_memory"] = allocator_tuned
        atomic_write_text(json_out, json.dumps(data, indent=2))
        console.print(f"wrote {shown(json_out)}")


@bench_app.command("gpu-session")
@reports_errors
def bench_gpu_session(
    out: Annotated[Path, typer.Option("--out", help="Folder for gpu_session.json / .md.")] = Path(
        "runs/gpu_session"
    ),
    device: Annotated[str, typer.Option(help="cuda (cpu only to try the command).")] = "cuda",
    config: Annotated[str, typer.Option(help="Network size: default or tiny.")] = "default",
    executors: Annotated[
        str | None, typer.Option(help="Comma-separated (default: every CUDA executor).")
    ] = None,
    compiled: Annotated[
        bool, typer.Option(help="Add the torch.compile and AOTInductor executors (minutes).")
    ] = False,
    frames: Annotated[int, typer.Option(help="Timed frames per executor.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed frames first.")] = 5,
    rounds: Annotated[int, typer.Option(help="Passes per executor, alternating.")] = 2,
    budget: Annotated[float, typer.Option(help="Seconds for all parts (lease-sized).")] = 480,
    tests: Annotated[bool, typer.Option(help="Run the CUDA-marked tests first.")] = True,
    multidnn_models: Annotated[str, typer.Option(help="Paper B's instances.")] = "vgg16:8",
    multidnn_requests: Annotated[
        int, typer.Option(help="Requests per instance (0: skip multi-DNN).")
    ] = 60,
    docs: Annotated[
        Path | None, typer.Option(help="Also write the block into this file (its markers).")
    ] = None,
    render: Annotated[
        Path | None, typer.Option(help="Only render this gpu_session.json into --docs.")
    ] = None,
) -> None:
    """Every GPU measurement in one command: CUDA tests, paper A's executors (Cases A/B/C, the
    C++ runner, faster paths) and paper B's MP vs MT, with the papers' numbers and targets."""
    import json

    from headway.experiments.gpu_session import (
        check_docs,
        check_record,
        render_markdown,
        run_session,
        update_docs,
    )
    from headway.io import read_text_file
    from headway.vision.serving import parse_models

    if docs is not None:
        check_docs(docs)
        output_file(docs, "--docs")
    if render is not None:
        if docs is None:
            raise InputError("--render writes into --docs: give the file")
        if not render.exists():
            raise InputError(f"{render}: no such file")
        text = read_text_file(render, "--render")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{render}: not a gpu_session.json ({error})") from None
        record = check_record(record, str(render))
        console.print(f"wrote {shown(update_docs(record, docs))}")
        return
    check_choice(config, list(CONFIGS), "configuration")
    at_least(frames, 1, "--frames")
    at_least(warmup, 0, "--warmup")
    at_least(rounds, 1, "--rounds")
    at_least(multidnn_requests, 0, "--multidnn-requests")
    if multidnn_requests > 0:
        parse_models(multidnn_models)  # names checked before the long parts start
    positive(budget, "--budget")
    output_folder(out, "--out")
    chosen = some_names(executors, "--executors") if executors else None
    torch_device = resolve_device(device)
    for name in chosen or []:
        if resolve_executor(name)[1].host != "cpp":  # the session builds the runner itself
            check_tracker_executor(name, torch_device)
    record = run_session(
        out,
        device,
        config,
        chosen,
        compiled,
        frames,
        warmup,
        rounds,
        budget,
        tests,
        multidnn_models,
        multidnn_requests,
        lambda part: console.print(f"[bold]{part}[/bold] …"),
    )
    console.print(render_markdown(record))
    if docs is not None:
        console.print(f"wrote {shown(update_docs(record, docs))}")
    console.print(f"wrote {shown(out / 'gpu_session.json')}")


@train_app.command("tracker")
@reports_errors
def train_tracker_command(
    out: Annotated[Path, typer.Argument(help="Run folder (checkpoint, weights, log).")],
    config: Annotated[str, typer.Option(help="Network size: tiny or default.")] = "tiny",
    box_steps: Annotated[int, typer.Option(help="Stage-1 (box) steps.")] = 3000,
    confidence_steps: Annotated[int, typer.Option(help="Stage-2 (confidence) steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Stage-1 peak learning rate (AdamW).")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the sampling.")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pth.")] = True,
) -> None:
    """Train a tracker on synthetic sequences: boxes (L1 + GIoU), then the confidence head."""
    check_seed(seed)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from headway.tracking.train import TrackerTrainSettings, train_tracker

    check_choice(config, list(CONFIGS), "configuration")
    output_folder(out, "OUT")
    thread_count(threads, "--threads")
    positive(lr, "--lr")
    settings = TrackerTrainSettings(
        config=config,
        box_steps=box_steps,
        confidence_steps=confidence_steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
    )
    settings.validate()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=settings.total_steps, status="")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            keys = ("loss", "iou") if metrics["stage"] == 1 else ("loss", "accuracy")
            status = f"stage {int(metrics['stage'])} " + " ".join(
                f"{k} {metrics[k]:.3f}" for k in keys
            )
            progress.update(task, completed=step + 1, status=status)

        weights = train_tracker(out, settings, resume=resume, on_step=on_step)
    console.print(f"weights: {shown(weights)}")
