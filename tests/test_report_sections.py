"""Every report section renders from results of the shape its experiment computes. The
computations are replaced by small fakes of that shape (the real ones take minutes and run in
`make demo`), so a renamed key or a changed table breaks here, in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headway.experiments import multidnn, tucker, vit
from headway.experiments.tucker import AccuracyRow


def _case(ms: float, throughput: float) -> dict[str, Any]:
    return {
        "per_model_ms": {"vgg16": ms},
        "throughput": throughput,
        "throughputs": [throughput],
        "errors": {},
        "summary": {},
        "notes": {},
    }


def _breakdown(name: str, **_: Any) -> dict[str, Any]:
    return {
        "model": name,
        "batch": 1,
        "flops": {"linear": 8.0, "attention": 1.0, "other": 1.0},
        "ms": {"linear": 5.0, "attention": 3.0, "other": 2.0},
    }


FAKES: dict[str, dict[str, Any]] = {
    "macs": {
        "mac_reduction": lambda models=None, *a, **k: [
            {
                "model": m,
                "input": 224,
                "rank": "vbmf",
                "macs_before": 1000,
                "macs_after": 200,
                "mac_reduction_pct": 80.0,
                "params_before": 10,
                "params_after": 5,
                "layers_decomposed": 3,
                "layers_skipped": 1,
                "paper_mac_reduction_pct": tucker.PAPER_MAC_REDUCTION.get(m),
            }
            for m in models or ["vgg16", "resnet152"]
        ]
    },
    "tucker_accuracy": {
        "accuracy": lambda *a, **k: [
            AccuracyRow("vgg16_bn", 1000, 91.5, 40.2, 90.1, 300),
            AccuracyRow("alexnet", 500, 88.0),
        ]
    },
    "multidnn": {
        "run_cases": lambda models, cases, requests, *a, **k: {
            "models": models,
            "requests": requests,
            "rounds": 1,
            "cases": {label: _case(10.0 + i, 50.0 - i) for i, (label, *_) in enumerate(cases)},
        }
    },
    "vit_accuracy": {
        "trained_digits_deit": lambda *a, **k: (None, None),
        "accuracy_table": lambda *a, **k: {
            "dense": 90.0,
            "prune": [0.1, 0.5],
            "keep_counts": [64] * 12,
            "rows": [
                {
                    "sparsity": 0.5,
                    "achieved": 0.51,
                    "sparse_only": 88.0,
                    "sparse_pruned": 87.5,
                    "sparse_only_post_hoc": 80.0,
                }
            ],
            "mean_drop_from_pruning": 0.5,
            "finetune": None,
        },
    },
    "vit_breakdown": {"flop_latency_breakdown": _breakdown},
    "vit_speed": {
        "pruning_speedup": lambda name, batches, *a, **k: [
            {"batch": b, "sparse_only_ms": 2.0, "sparse_pruned_ms": 1.5, "speedup": 4 / 3}
            for b in batches
        ]
    },
}

SECTIONS = [
    ("macs", tucker, tucker.macs_section, ["MACs before", "80.0%", "38.6%"]),
    ("tucker_accuracy", tucker, tucker.accuracy_section, ["right after Tucker-2", "40.2"]),
    ("multidnn", multidnn, multidnn.section, ["Ori.(MP)", "throughput req/s", "(+0%)"]),
    ("vit_accuracy", vit, vit.accuracy_section, ["post hoc", "87.5", "+0.5"]),
    ("vit_breakdown", vit, vit.breakdown_section, ["attention: FLOPs / time", "80.0% / 50.0%"]),
    ("vit_speed", vit, vit.speed_section, ["paper C: 1.31×", "1.33×", "deit_tiny"]),
]


@pytest.mark.parametrize(
    ("key", "module", "section", "expected"), SECTIONS, ids=[s[0] for s in SECTIONS]
)
@pytest.mark.parametrize("quick", [True, False])
def test_section_renders(
    key: str,
    module: Any,
    section: Any,
    expected: list[str],
    quick: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, fake in FAKES[key].items():
        monkeypatch.setattr(module, name, fake)
    folder = tmp_path / key
    folder.mkdir()
    result = section(folder, quick)
    assert set(result) >= {"markdown", "data", "plots", "commands"}
    for part in expected:
        assert part in result["markdown"], (part, result["markdown"])
    json.dumps(result, default=str)  # what reproduce stores
    for plot in result["plots"]:
        assert (tmp_path / plot).is_file()
