"""``headway bench serve``: ``headway serve`` driven by Triton's own clients (tritonclient over
HTTP and gRPC), beside headway's in-process runtime on the same models and, where its Python is
given, the peer a user would pick without a Triton binary: KServe's model server on plain
OpenVINO (:mod:`headway.experiments.kserve_peer`).

The load is closed loop at fixed concurrencies: ``concurrency`` client threads, client *i*
calling model *i* mod the workload's model count, each bounded in requests and seconds, on
127.0.0.1 only. Servers are separate processes started and stopped (SIGTERM) here; variants
alternate within each round and every round reports its ratios.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from headway.errors import InputError
from headway.serving.config import CONFIG_FILE, load_repository

BATCHING = {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [8]}


def _vgg(tucker: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "source": "vgg16",
        "backend": "openvino",
        "max_batch_size": 8,
        "dynamic_batching": BATCHING,
        "instance_group": {"count": 2},
    }
    if tucker:
        fields["tucker"] = tucker
    return fields


def _copies(fields: dict[str, Any], stem: str, count: int) -> dict[str, dict[str, Any]]:
    return {f"{stem}_{i}": dict(fields) for i in range(count)}


def _trivial(folder: Path) -> dict[str, dict[str, Any]]:
    """A model that costs almost nothing (a 16 → 16 linear layer exported as ONNX): what is
    left of a request's time is the transport's."""
    import torch
    from torch import nn

    from headway.runtime.deploy import ExportPart, export_parts

    torch.manual_seed(0)
    part = ExportPart("trivial", nn.Linear(16, 16).eval(), (torch.randn(1, 16),))
    export_parts([part], folder / "trivial-export", formats=("onnx",), probes=1)
    return {
        "trivial": {
            "source": str(folder / "trivial-export"),
            "backend": "onnxruntime",
            "max_batch_size": 0,
        }
    }


WORKLOADS: dict[str, Callable[[Path], dict[str, dict[str, Any]]]] = {
    "trivial": _trivial,
    "vgg16x8": lambda _: _copies(_vgg(None), "vgg16", 8),
    "vgg16x8-tucker": lambda _: _copies(_vgg("macs:0.19"), "vgg16t", 8),
    "deit-tiny": lambda _: {
        "deit_tiny": {
            "source": "deit_tiny",
            "backend": "openvino",
            "input_size": 224,
            "num_classes": 1000,
            "max_batch_size": 4,
            "dynamic_batching": BATCHING | {"preferred_batch_size": [4]},
            "instance_group": {"count": 2},
        }
    },
    "resnet50-224": lambda _: {
        "resnet50": {
            "source": "resnet50",
            "backend": "openvino",
            "input_size": 224,
            "num_classes": 1000,
            "max_batch_size": 4,
            "dynamic_batching": BATCHING | {"preferred_batch_size": [4]},
            "instance_group": {"count": 2},
        }
    },
}
DEFAULT_WORKLOADS = ("vgg16x8", "vgg16x8-tucker")


@dataclass
class Load:
    """One closed-loop run: answered requests, wall seconds and latencies (ms)."""

    variant: str
    concurrency: int
    round: int = 0
    answered: int = 0
    failed: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.answered / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def write_repository(folder: Path, models: dict[str, dict[str, Any]]) -> Path:
    for name, fields in models.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / CONFIG_FILE).write_text(yaml.safe_dump(fields, sort_keys=False))
    return folder


# ---------------------------------------------------------------------------------------------
# servers as processes


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _process(command: list[str], ready: Callable[[], bool], what: str, log: Path) -> Iterator[None]:
    """A server process, waited for until ``ready()`` (at most 10 minutes), then SIGTERMed."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not ready():
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise InputError(f"{what} exited ({process.returncode}): {' | '.join(tail)}")
            if time.monotonic() > deadline:
                raise InputError(f"{what} was not ready within 10 minutes (see {log})")
            time.sleep(0.5)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _http_ready(port: int, model: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/models/{model}/ready", timeout=2
            ) as answer:
                return answer.status == 200
        except OSError:
            return False

    return ready


def _headway_command(
    repository: Path, http: int, grpc: int, workers: int, threads: int
) -> list[str]:
    script = Path(sys.executable).with_name("headway")
    return [
        str(script),
        "serve",
        str(repository),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        "-1",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def peer_graphs(repository: Path, folder: Path) -> dict[str, Path]:
    """Each model of the repository exported (batch 1) for the peer, by model name."""
    import torch

    from headway.runtime.engines import export_onnx
    from headway.serving.graphs import source_network

    graphs: dict[str, Path] = {}
    built: dict[Any, Path] = {}
    for config in load_repository(repository):
        key = config.graph_key()
        if key not in built:
            model, export, example = source_network(config)
            if export is not None:  # the export's own ONNX file
                built[key] = next(export.glob("*.onnx"))
            else:
                built[key] = export_onnx(model, (torch.from_numpy(example[0]),), folder)
        graphs[config.name] = built[key]
    return graphs


# ---------------------------------------------------------------------------------------------
# closed-loop clients


def _client_call(kind: str, port: int) -> Callable[[str, np.ndarray], np.ndarray]:
    if kind == "grpc":
        import tritonclient.grpc as client_lib
    else:
        import tritonclient.http as client_lib
    client = client_lib.InferenceServerClient(f"127.0.0.1:{port}")

    def call(model: str, x: np.ndarray) -> np.ndarray:
        tensor = client_lib.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor]).as_numpy("output")

    return call


def drive(
    variant: str,
    call_for: Callable[[], Callable[[str, np.ndarray], np.ndarray]],
    models: list[str],
    shape: tuple[int, ...],
    concurrency: int,
    requests: int,
    seconds: float,
) -> Load:
    """``concurrency`` clients, each sending up to ``requests`` requests within ``seconds``."""
    load = Load(variant, concurrency)
    lock = threading.Lock()
    gate = threading.Barrier(concurrency + 1)

    def client(index: int) -> None:
        call = call_for()
        x = np.random.default_rng(index).standard_normal(shape).astype(np.float32)
        model = models[index % len(models)]
        call(model, x)  # a connection per client, opened before the clock starts
        gate.wait()
        end = time.perf_counter() + seconds
        for _ in range(requests):
            if time.perf_counter() > end:
                break
            began = time.perf_counter()
            try:
                call(model, x)
            except Exception:  # counted; the run goes on
                with lock:
                    load.failed += 1
                continue
            with lock:
                load.answered += 1
                load.latencies_ms.append((time.perf_counter() - began) * 1e3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    gate.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(seconds + 60)
    load.wall_s = time.perf_counter() - began
    return load


@dataclass
class ServeBench:
    workload: str
    loads: list[Load] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def run_serve_bench(
    workload: str,
    concurrencies: tuple[int, ...] = (1, 8),
    requests: int = 400,
    seconds: float = 8.0,
    rounds: int = 2,
    peer_python: str | None = None,
    workers: int = 2,
    threads: int = 1,
    in_process: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> ServeBench:
    """Every variant of one workload at each concurrency, alternating, ``rounds`` times."""
    if workload not in WORKLOADS:
        raise InputError(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")
    if peer_python is not None and not Path(peer_python).is_file():
        raise InputError(f"--peer-python {peer_python} does not exist")
    say = on_step or (lambda _: None)
    result = ServeBench(workload)
    with tempfile.TemporaryDirectory(prefix="headway-bench-serve-") as temporary:
        root = Path(temporary)
        repository = write_repository(root / "repo", WORKLOADS[workload](root))
        configs = load_repository(repository)
        models = [c.name for c in configs]
        say(f"{workload}: starting headway serve ({len(models)} models)")
        http, grpc = _free_port(), _free_port()
        stack = contextlib.ExitStack()
        with stack:
            stack.enter_context(
                _process(
                    _headway_command(repository, http, grpc, workers, threads),
                    _http_ready(http, models[-1]),
                    "headway serve",
                    root / "headway.log",
                )
            )
            variants: dict[str, Callable[[], Callable[[str, np.ndarray], np.ndarray]]] = {
                "headway serve (HTTP)": lambda: _client_call("http", http),
                "headway serve (gRPC)": lambda: _client_call("grpc", grpc),
            }
            if peer_python is not None:
                say(f"{workload}: starting the KServe + OpenVINO peer")
                peer_port, peer_grpc = _free_port(), _free_port()
                graphs = peer_graphs(repository, root / "graphs")
                command = [peer_python, str(Path(__file__).with_name("kserve_peer.py"))]
                command += [f"--model={name}={path}" for name, path in graphs.items()]
                command += [f"--http_port={peer_port}", f"--grpc_port={peer_grpc}"]
                stack.enter_context(
                    _process(
                        command,
                        _http_ready(peer_port, models[-1]),
                        "the KServe peer",
                        root / "peer.log",
                    )
                )
                variants["KServe + OpenVINO (HTTP)"] = lambda: _client_call("http", peer_port)
            if in_process:
                say(f"{workload}: loading the in-process runtime")
                runtime = _in_process_runtime(configs, workers, threads, stack)
                variants["headway in-process"] = lambda: _in_process_call(runtime)
            shape = _request_shape(configs[0])
            result.notes["answers_max_abs_diff"] = _answers_agree(variants, models[0], shape)
            for round_index in range(rounds):
                names = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
                for concurrency in concurrencies:
                    for name in names:
                        say(f"round {round_index + 1}: {name} at concurrency {concurrency}")
                        load = drive(
                            name, variants[name], models, shape, concurrency, requests, seconds
                        )
                        load.round = round_index
                        result.loads.append(load)
    return result


def _in_process_runtime(
    configs: list[Any], workers: int, threads: int, stack: contextlib.ExitStack
) -> Any:
    from headway.serving.runtime import ServingRuntime

    runtime = ServingRuntime(configs, workers=workers, threads=threads, strict=True)
    stack.callback(runtime.close)
    return runtime


def _in_process_call(runtime: Any) -> Callable[[str, np.ndarray], np.ndarray]:
    return lambda model, x: runtime.infer(model, {"input": x})["output"]


def _request_shape(config: Any) -> tuple[int, ...]:
    from headway.serving.graphs import source_network

    _, _, example = source_network(config)
    return tuple(example[0].shape)


def _answers_agree(
    variants: dict[str, Callable[[], Callable[[str, np.ndarray], np.ndarray]]],
    model: str,
    shape: tuple[int, ...],
) -> dict[str, float]:
    """Max |Δ| of every variant's answer to the first's, on one fresh input."""
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    answers = {name: make()(model, x) for name, make in variants.items()}
    first = next(iter(answers.values()))
    return {name: float(np.abs(a - first).max()) for name, a in answers.items()}


def serve_table(bench: ServeBench) -> tuple[list[str], list[list[str]]]:
    """Per round and concurrency: each variant's req/s, p50/p99 and its ratio to headway
    serve over HTTP."""
    header = ["round", "concurrency", "variant", "req/s", "p50 ms", "p99 ms", "× headway HTTP"]
    rows = []
    base: dict[tuple[int, int], float] = {}
    for load in bench.loads:
        if load.variant == "headway serve (HTTP)":
            base[(load.round, load.concurrency)] = load.throughput
    for load in sorted(bench.loads, key=lambda run: (run.round, run.concurrency)):
        reference = base.get((load.round, load.concurrency), 0.0)
        rows.append(
            [
                str(load.round + 1),
                str(load.concurrency),
                load.variant,
                f"{load.throughput:.0f}",
                f"{load.percentile(50):.2f}",
                f"{load.percentile(99):.2f}",
                f"{load.throughput / reference:.2f}" if reference else "–",
            ]
        )
    return header, rows


def to_json(bench: ServeBench) -> dict[str, Any]:
    return {
        "workload": bench.workload,
        "notes": bench.notes,
        "machine": os.uname().machine,
        "loads": [
            {
                "round": load.round,
                "variant": load.variant,
                "concurrency": load.concurrency,
                "answered": load.answered,
                "failed": load.failed,
                "wall_s": load.wall_s,
                "throughput": load.throughput,
                "p50_ms": load.percentile(50),
                "p99_ms": load.percentile(99),
            }
            for load in bench.loads
        ],
    }
