"""Every GPU measurement headway owes, in one command sized for a short GPU lease
(``headway bench gpu-session``): the CUDA-marked tests, paper A's executors on the default
CSWinTT (Cases A, B, C and the faster paths, the C++ runner included) and paper B's MP vs MT on
8 × VGG-16, written as JSON and as the Markdown block of docs/benchmarks.md with the papers'
numbers and the issue's targets beside them.

GPU leases are short, so the parts run in order of value and each is skipped, with a note,
once the time budget is spent; the JSON can be rendered into the docs later (``--render``),
on a machine without a GPU.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from headway.errors import InputError
from headway.experiments.report import markdown_table
from headway.io import atomic_write_text, read_text_file
from headway.tracking.executors import comparison_executors, resolve_executor

BEGIN, END = "<!-- gpu-session:begin -->", "<!-- gpu-session:end -->"

# Paper A (RTX A6000), encoder ms and FPS: Case A eager, B TorchScript in C++, C heads+streams.
PAPER_A = {"A": (30.84, 19.0), "B": (21.71, 26.3), "C": (13.23, 31.04)}
CASE_C_TARGET = 0.568  # the paper's encoder-time reduction of Case C vs Case A
BEST_PATH_TARGET = 5.0  # headway's best CUDA path vs Case A, encoder
PAPER_B_MT_LATENCY = -0.629  # Dcomp.(MT) per-model latency vs Ori.(MP)

CASES = {
    "eager": "A",
    "scripted": "B",
    "cpp": "B (C++)",
    "heads": "C",
    "scripted-fork": "C",
    "cpp-heads": "C (C++)",
}


def run_cuda_tests(root: Path, timeout_s: float) -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess: counts, and the failing tests' names."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    command += ["--continue-on-collection-errors", "-rfE", str(root / "tests")]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=root)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "seconds": timeout_s}
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail[0])}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    return {"status": "ran", "summary": tail[0], "counts": counts, "failed": failed}


def _tracker_part(
    config: str, device: str, executors: list[str], frames: int, warmup: int, rounds: int
) -> dict[str, Any]:
    from headway.experiments.tracker_executors import benchmark_executors

    bench = benchmark_executors(config, device, executors, frames, warmup, rounds=rounds)
    data = bench.to_json()
    eager = data["results"][0]["encoder_ms"]
    for entry in data["results"]:
        entry["case"] = CASES.get(entry["name"], "beyond")
        entry["encoder_reduction"] = 1 - entry["encoder_ms"] / eager
    case_c = [e for e in data["results"] if e["case"].startswith("C")]
    best = min(data["results"], key=lambda e: e["encoder_ms"])
    data["targets"] = {
        "case_c": {
            "executor": min(case_c, key=lambda e: e["encoder_ms"])["name"] if case_c else None,
            "reduction": max((e["encoder_reduction"] for e in case_c), default=None),
            "target": CASE_C_TARGET,
        },
        "best": {
            "executor": best["name"],
            "speedup": eager / best["encoder_ms"],
            "target": BEST_PATH_TARGET,
        },
    }
    return data


def _multidnn_part(models: str, requests: int, device: str) -> dict[str, Any]:
    from headway.experiments.multidnn import RANK, run_cases

    cases = [("Ori.(MP)", "mp", None), ("Dcomp.(MP)", "mp", RANK), ("Dcomp.(MT)", "mt", RANK)]
    return run_cases(models, cases, requests, rounds=1, device=device)


def run_session(
    out: str | Path,
    device: str = "cuda",
    config: str = "default",
    executors: list[str] | None = None,
    compiled: bool = False,
    frames: int = 20,
    warmup: int = 5,
    rounds: int = 2,
    budget_s: float = 480.0,
    tests: bool = True,
    multidnn_models: str = "vgg16:8",
    multidnn_requests: int = 60,
    on_part: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the parts in order within ``budget_s``; write ``gpu_session.json`` and ``.md``."""
    from headway.runtime.device import resolve_device
    from headway.tracking.native.build import build_runner, find_compiler

    resolve_device(device)  # a clear error where CUDA is asked for and absent
    if multidnn_requests > 0:  # a model name or library missing is said now, not after an hour
        from headway.vision.serving import parse_models

        parse_models(multidnn_models)
    out = Path(out)
    began = time.perf_counter()
    left = lambda: budget_s - (time.perf_counter() - began)  # noqa: E731
    say = on_part or (lambda _: None)
    record: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "budget_s": budget_s,
        "skipped": {},
    }
    root = Path(__file__).resolve().parents[3]
    if tests and (root / "tests").is_dir():
        say("CUDA-marked tests")
        record["tests"] = run_cuda_tests(root, max(30.0, 0.35 * left()))
    elif tests:
        record["skipped"]["tests"] = f"no tests folder at {root} (an installed package)"
    chosen = list(executors or comparison_executors("cuda", compiled=compiled, runner=True))
    native = {name for name in chosen if resolve_executor(name)[1].host == "cpp"}
    if native:
        say("building headway-runner")
        try:
            if find_compiler() is None:
                raise InputError("no C++ compiler")
            build_runner()
        except InputError as error:
            record["skipped"]["cpp executors"] = str(error)
            chosen = [n for n in chosen if n not in native]
    if left() > 60:
        say(f"bench tracker ({len(chosen)} executors)")
        record["tracker"] = _tracker_part(config, device, chosen, frames, warmup, rounds)
    else:
        record["skipped"]["tracker"] = "time budget spent"
    if multidnn_requests > 0 and left() > 60:
        say("multi-DNN MP vs MT")
        record["multidnn"] = _multidnn_part(multidnn_models, multidnn_requests, device)
    elif multidnn_requests > 0:
        record["skipped"]["multidnn"] = "time budget spent"
    record["seconds"] = time.perf_counter() - began
    atomic_write_text(out / "gpu_session.json", json.dumps(record, indent=2))
    atomic_write_text(out / "gpu_session.md", render_markdown(record))
    return record


RECORD_KEYS = ("date", "device", "gpu", "torch", "cuda")


def check_record(record: object, source: str) -> dict[str, Any]:
    """``record`` as read from a gpu_session.json, or one line saying what it lacks."""
    if not isinstance(record, dict):
        raise InputError(f"{source}: not a gpu_session.json (it holds a {type(record).__name__})")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise InputError(f"{source}: not a gpu_session.json (no {', '.join(missing)})")
    return record


def render_markdown(record: dict[str, Any]) -> str:
    """The docs block: what ran, the tables, the papers' numbers and the targets' verdicts."""
    lines = [
        f"Measured {record['date']} on {record['gpu'] or record['device']} (torch "
        f"{record['torch']}, CUDA {record['cuda']}) by `headway bench gpu-session` in "
        f"{record.get('seconds', 0):.0f} s.",
        "",
    ]
    tests = record.get("tests")
    if tests:
        failed = ", ".join(tests.get("failed", [])) or "none"
        lines += [
            f"CUDA-marked tests: {tests.get('summary', tests['status'])}; failed: {failed}.",
            "",
        ]
    tracker = record.get("tracker")
    if tracker:
        rows = [
            [
                f"`{e['name']}`",
                e["case"],
                f"{e['encoder_ms']:.2f}",
                f"{e['encoder_speedup']:.2f}×",
                f"{-100 * e['encoder_reduction'] + 0.0:+.1f}%",
                f"{e['frame_ms']:.2f}",
                f"{e['fps']:.1f}",
                f"{e['max_encoder_diff']:.1e}",
                f"{e['max_box_diff_px']:.3f}",
            ]
            for e in tracker["results"]
        ]
        header = ["executor", "paper case", "encoder ms", "× eager", "vs eager", "frame ms"]
        header += ["FPS", "max Δ encoder", "max Δ box px"]
        lines += [
            f"CSWinTT `{tracker['config']}`, {tracker['frames']} timed frames after "
            f"{tracker['warmup']} warm-up, {tracker['rounds']} passes, medians:",
            "",
            markdown_table(header, rows),
            "",
            "Paper A (RTX A6000): encoder "
            + " → ".join(f"{ms} ms ({case})" for case, (ms, _) in PAPER_A.items())
            + ", FPS "
            + " → ".join(f"{fps}" for _, fps in PAPER_A.values())
            + "; Case C −56.8% encoder time vs Case A.",
            "",
        ]
        c, best = tracker["targets"]["case_c"], tracker["targets"]["best"]
        if c["reduction"] is not None:
            verdict = "met" if c["reduction"] >= c["target"] else "not met"
            lines.append(
                f"- Target Case C ≥ 56.8% less encoder time than Case A: {verdict} "
                f"(best Case C, `{c['executor']}`: {-100 * c['reduction'] + 0.0:+.1f}%)."
            )
        verdict = "met" if best["speedup"] >= best["target"] else "not met"
        lines += [
            f"- Target best CUDA path ≥ 5× Case A on the encoder: {verdict} "
            f"(`{best['executor']}`: {best['speedup']:.2f}×).",
            "",
        ]
    multidnn = record.get("multidnn")
    if multidnn:
        cases = multidnn["cases"]
        base = cases["Ori.(MP)"]
        rows = []
        for label, row in cases.items():
            mean = sum(row["per_model_ms"].values()) / max(1, len(row["per_model_ms"]))
            base_mean = sum(base["per_model_ms"].values()) / max(1, len(base["per_model_ms"]))
            rows.append(
                [
                    label,
                    f"{mean:.2f}",
                    f"{100 * (mean / base_mean - 1):+.0f}%",
                    f"{row['throughput']:.1f}",
                ]
            )
        mt, mp = cases["Dcomp.(MT)"]["throughput"], cases["Dcomp.(MP)"]["throughput"]
        lines += [
            f"Multi-DNN, {multidnn['models']}, {multidnn['requests']} requests per instance:",
            "",
            markdown_table(["case", "mean ms", "vs Ori.(MP)", "throughput req/s"], rows),
            "",
            f"MT / MP throughput on the decomposed models: {mt / mp:.2f}× (paper B: Dcomp.(MT) "
            f"{100 * PAPER_B_MT_LATENCY:.1f}% latency vs Ori.(MP)).",
            "",
        ]
    for part, why in record.get("skipped", {}).items():
        lines.append(f"- Not measured: {part} ({why}).")
    return "\n".join(lines).rstrip() + "\n"


def check_docs(docs: str | Path) -> str:
    """The text of ``docs``, or an error unless it exists and holds the markers' block (checked
    before any measurement, so a wrong path does not waste a GPU lease)."""
    docs = Path(docs)
    if not docs.is_file():
        raise InputError(f"--docs {docs}: no such file")
    text = read_text_file(docs, "--docs")
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        raise InputError(f"--docs {docs}: has no {BEGIN} … {END} block to replace")
    return text


def update_docs(record: dict[str, Any], docs: str | Path) -> Path:
    """Replace the block between the gpu-session markers of ``docs`` with the rendering."""
    docs = Path(docs)
    text = check_docs(docs)
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(docs, f"{head}{BEGIN}\n{render_markdown(record)}{END}{tail}")
    return docs
