"""``headway bench report``: the headline comparisons on the machine in front of you, as one
page that names that machine (CPU model and instruction sets, threads, versions), with
headway's best beside the best peer of each workload and their ratio.

Every number on the page comes from variants run side by side in this process (interleaved
timing, medians), so the ratios hold for this machine only; ``docs/benchmarks.md`` keeps such
pages under dated headings, newest first. Workloads:

- **CSWinTT encoder** (exact): headway's rewritten graphs (fused, spectral, packed linears;
  spectral on each installed engine) against eager and the engines on the plain graph;
- **DeiT-Tiny** (paper C, approximate: static masks + token pruning) and **VGG-16** (paper B,
  approximate: Tucker-2 ``macs:0.19``) against the dense model on every engine;
- **8 × VGG-16 served at once** (paper B's runtime): headway's MT runner on OpenVINO, dense
  and Tucker-2 with coalescing, against OpenVINO's own THROUGHPUT serving.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headway.errors import InputError
from headway.experiments.report import markdown_table
from headway.runtime.engines import engine_available
from headway.tuning import cpu_model_and_flags
from headway.ways import cpu_has_bf16

# (workload, the engine cases compared, exact?)
_ENGINE_WORKLOADS = (
    ("CSWinTT encoder (default config, 1 frame)", ("cswintt_encoder",), True),
    ("DeiT-Tiny, 1 image", ("deit_tiny", "deit_tiny_pruned"), False),
    ("VGG-16 (32×32), 1 image", ("vgg16", "vgg16_tucker"), False),
)
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "fma")


@dataclass
class Comparison:
    """One workload: headway's best variant and the best peer, in ms (lower is better) or
    requests per second (higher is better)."""

    workload: str
    exact: bool
    headway: str
    headway_value: float
    peer: str
    peer_value: float
    unit: str = "ms"

    @property
    def ratio(self) -> float:
        """How many times faster headway's best is than the best peer."""
        if self.unit == "ms":
            return self.peer_value / self.headway_value
        return self.headway_value / self.peer_value


def machine_facts() -> dict[str, str]:
    """What the numbers depend on: CPU model, its vector and matrix instruction sets, cores,
    torch's threads, and the versions of torch and the engines."""
    model, flags_line = cpu_model_and_flags()
    flags = set(flags_line.partition(":")[2].split())
    facts = {
        "cpu": model,
        "instruction sets": ", ".join(f for f in _CPU_FLAGS if f in flags) or "unknown",
        "native bf16": "yes" if cpu_has_bf16() else "no (bf16 would be emulated)",
        "cores": str(len(os.sched_getaffinity(0))),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }
    for package in ("torch", "openvino", "onnxruntime"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = "absent"
    return facts


def machine_name(facts: dict[str, str]) -> str:
    """A short name of the machine for headings: CPU model, cores and the widest vectors."""
    sets = facts["instruction sets"]
    widest = "AMX" if "amx_tile" in sets else "AVX-512" if "avx512f" in sets else "AVX2"
    return f"{facts['cpu']}, {facts['cores']} cores, {widest}"


def _is_headway(case: str, variant: str) -> bool:
    """Whether a row of :func:`~headway.experiments.engines.compare_engines` is headway's own:
    a rewritten graph of the model, or any backend running an approximate case's model (the
    pruned DeiT and the Tucker-2 VGG-16 are headway's models, whoever runs them)."""
    if case in ("deit_tiny_pruned", "vgg16_tucker"):
        return True
    if case == "cswintt_encoder":
        return variant != "eager" and "eager graph" not in variant
    return variant != "eager" and not variant.startswith(("openvino", "onnxruntime"))


def _label(row: dict[str, Any], cases: tuple[str, ...]) -> str:
    return f"{row['variant']} ({row['case']})" if len(cases) > 1 else row["variant"]


def engine_comparisons(
    min_run_time: float, on_case: Callable[[str], None] | None = None
) -> list[Comparison]:
    """The single-model workloads: every case's variants timed interleaved (one process)."""
    from headway.experiments.engines import compare_engines

    comparisons = []
    for workload, cases, exact in _ENGINE_WORKLOADS:
        rows = compare_engines(cases, batches=(1,), min_run_time=min_run_time, on_case=on_case)
        if exact:  # fp32 beside fp32: a bf16 variant changes the answers within its tolerance
            rows = [r for r in rows if "bf16" not in r["variant"]]
        ours = [r for r in rows if _is_headway(r["case"], r["variant"])]
        peers = [r for r in rows if not _is_headway(r["case"], r["variant"])]
        if not ours or not peers:
            continue
        best, peer = min(ours, key=lambda r: r["ms"]), min(peers, key=lambda r: r["ms"])
        comparisons.append(
            Comparison(
                workload,
                exact,
                _label(best, cases),
                best["ms"],
                _label(peer, cases),
                peer["ms"],
            )
        )
    return comparisons


def serving_comparison(
    requests: int, rounds: int, on_case: Callable[[str], None] | None = None
) -> list[Comparison]:
    """8 × VGG-16 served at once: headway's MT runner on OpenVINO (dense; Tucker-2 with
    coalescing) against OpenVINO's own THROUGHPUT serving, cases taking turns per round."""
    if not engine_available("openvino"):
        return []
    from headway.experiments.multidnn import HOMOGENEOUS, RANK, run_cases

    cases = [
        ("OpenVINO THROUGHPUT", "peer@openvino", None),
        ("MT openvino", "mt@openvino", None),
        ("Dcomp.(MT+coalesce) openvino", "mt+coalesce@openvino", RANK),
    ]
    result = run_cases(HOMOGENEOUS, cases, requests, on_case=on_case, rounds=rounds)
    rows = result["cases"]
    peer = rows["OpenVINO THROUGHPUT"]["throughput"]
    return [
        Comparison(
            "8 × VGG-16 (32×32) served at once, dense",
            True,
            "headway MT runner on OpenVINO",
            rows["MT openvino"]["throughput"],
            "OpenVINO THROUGHPUT (AsyncInferQueue)",
            peer,
            "req/s",
        ),
        Comparison(
            f"8 × VGG-16 served at once, Tucker-2 {RANK} + coalescing",
            False,
            "headway MT runner on OpenVINO",
            rows["Dcomp.(MT+coalesce) openvino"]["throughput"],
            "OpenVINO THROUGHPUT on the dense model",
            peer,
            "req/s",
        ),
    ]


def comparisons_table(comparisons: list[Comparison]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the page's table."""
    header = ["workload", "exact", "headway's best", "", "best peer", "", "× peer"]
    rows = [
        [
            c.workload,
            "yes" if c.exact else "no (accuracy budget)",
            c.headway,
            f"{c.headway_value:.2f} {c.unit}",
            c.peer,
            f"{c.peer_value:.2f} {c.unit}",
            f"{c.ratio:.2f}×",
        ]
        for c in comparisons
    ]
    return header, rows


def render_page(facts: dict[str, str], comparisons: list[Comparison], settings: str) -> str:
    """The page: a dated heading naming the machine, its facts, then the table."""
    today = datetime.date.today().isoformat()
    lines = [f"## {today} — {machine_name(facts)}", ""]
    lines += [f"- **{key}**: {value}" for key, value in facts.items()]
    lines += [
        "",
        f"Measured by `headway bench report` ({settings}): the variants of a row timed",
        "interleaved in one process on this machine, medians. `× peer` is how many times faster",
        "headway's best is than the best peer. An exact row compares fp32 with fp32; the others",
        "run headway's approximate models (paper B's Tucker-2, paper C's masks and pruning,",
        "within an accuracy budget) beside the dense model.",
        "",
    ]
    header, rows = comparisons_table(comparisons)
    lines += [f"Machine: {machine_name(facts)}", "", markdown_table(header, rows), ""]
    return "\n".join(lines)


def write_report(
    out: Path,
    quick: bool = False,
    serving: bool = True,
    on_case: Callable[[str], None] | None = None,
) -> tuple[str, list[Comparison]]:
    """Run the comparisons and write the page to ``out`` (atomically); returns its text."""
    from headway.io import atomic_write_text

    if out.is_dir():
        raise InputError(f"{out} is a folder: give the report a file name")
    min_run_time, requests, rounds = (0.2, 8, 1) if quick else (2.0, 40, 2)
    comparisons = engine_comparisons(min_run_time, on_case)
    if serving:
        comparisons += serving_comparison(requests, rounds, on_case)
    settings = f"min run time {min_run_time} s, {requests} requests × {rounds} rounds"
    page = render_page(machine_facts(), comparisons, settings)
    atomic_write_text(out, page)
    return page, comparisons


def to_json(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    return [{**c.__dict__, "ratio": c.ratio} for c in comparisons]
