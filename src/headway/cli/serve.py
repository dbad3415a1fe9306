"""``headway serve``: paper B's runtime behind the Open Inference Protocol (HTTP and gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headway.cli.base import app, bench_app, console, reports_errors, shown
from headway.errors import InputError


def _port(value: int, option: str) -> int | None:
    """A port, or None for 'off' (-1)."""
    if value == -1:
        return None
    if not 0 <= value <= 65535:
        raise InputError(f"{option} must be a port 0–65535 (0: any free one; -1: off), got {value}")
    return value


@app.command("serve")
@reports_errors
def serve(
    repository: Annotated[
        Path | None, typer.Argument(help="The model repository (a folder per model).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (-1: off).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (-1: off).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (-1: off).")] = 8002,
    workers: Annotated[int, typer.Option(help="Worker threads of the shared job queue.")] = 2,
    threads: Annotated[int, typer.Option(help="Intra-op threads per worker.")] = 1,
    strict: Annotated[
        bool, typer.Option(help="Refuse to start when any model fails to load.")
    ] = False,
    drain_s: Annotated[
        float, typer.Option(help="Seconds to finish accepted requests on SIGTERM/Ctrl-C.")
    ] = 30.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 64.0,
    example_repo: Annotated[
        Path | None,
        typer.Option(help="Write a working repository of built-in models here and exit."),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Serve on Ray Serve: each replica runs the runtime.")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: a local instance).")
    ] = None,
    replicas: Annotated[int, typer.Option(help="Ray Serve replicas (with --ray).")] = 1,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe v2) on HTTP and gRPC,
    so Triton's clients (tritonclient, curl) call headway's multi-model runtime; Prometheus
    metrics on their own port. Ready once every model is loaded and warm."""
    from headway.serving.config import write_example_repository

    if example_repo is not None:
        write_example_repository(example_repo)
        console.print(
            f"wrote {shown(example_repo)}: serve it with headway serve {shown(example_repo)}"
        )
        return
    if repository is None:
        raise InputError("name a model repository (or --example-repo DIR to write one)")
    if not 0 < max_body_mb <= 4096:
        raise InputError(f"--max-body-mb must be in (0, 4096], got {max_body_mb}")
    if not 0 <= drain_s <= 3600:
        raise InputError(f"--drain-s must be 0–3600, got {drain_s}")
    if ray:
        from headway.serving.ray_serve import serve_on_ray

        port = _port(http_port, "--http-port")
        if port is None:
            raise InputError("--ray serves over HTTP: give --http-port a port")
        serve_on_ray(
            str(repository),
            replicas=replicas,
            address=ray_address,
            host=host,
            http_port=port,
            workers=workers,
            threads=threads,
            say=lambda line: console.print(shown(line), highlight=False),
        )
        return
    if ray_address is not None or replicas != 1:
        raise InputError("--ray-address and --replicas need --ray")
    from headway.serving.server import serve_repository

    drained = serve_repository(
        str(repository),
        host=host,
        http_port=_port(http_port, "--http-port"),
        grpc_port=_port(grpc_port, "--grpc-port"),
        metrics_port=_port(metrics_port, "--metrics-port"),
        workers=workers,
        threads=threads,
        strict=strict,
        drain_s=drain_s,
        max_body=int(max_body_mb * 1024 * 1024),
        say=lambda line: console.print(shown(line), highlight=False),
    )
    if not drained:
        raise typer.Exit(1)


@bench_app.command("serve")
@reports_errors
def bench_serve(
    workloads: Annotated[
        str,
        typer.Option(
            help="Comma-separated: trivial, vgg16x8, vgg16x8-tucker, deit-tiny, resnet50-224."
        ),
    ] = "vgg16x8,vgg16x8-tucker",
    concurrency: Annotated[str, typer.Option(help="Closed-loop client counts.")] = "1,8",
    requests: Annotated[int, typer.Option(help="Most requests per client per run.")] = 2000,
    seconds: Annotated[float, typer.Option(help="Most seconds per run.")] = 8.0,
    rounds: Annotated[int, typer.Option(help="Rounds (variants alternate).")] = 2,
    peer_python: Annotated[
        Path | None,
        typer.Option(
            help="Python of an environment with kserve and openvino: adds the KServe + "
            "OpenVINO peer (kserve's pins do not fit headway's environment)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker threads of headway's job queue.")] = 2,
    threads: Annotated[int, typer.Option(help="Intra-op threads per worker.")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """headway serve driven by tritonclient over HTTP and gRPC, beside headway's in-process
    runtime and (with --peer-python) KServe's model server on plain OpenVINO; throughput and
    p50/p99 per concurrency, with ratios per round."""
    import json

    from headway.cli.base import output_file, positive_ints, print_table, some_names
    from headway.experiments.serve_bench import WORKLOADS, run_serve_bench, serve_table, to_json
    from headway.io import atomic_write_text
    from headway.serving.server import serve_missing

    output_file(json_out, "--json")
    chosen = some_names(workloads, "--workloads", list(WORKLOADS), "workload") or []
    levels = positive_ints(concurrency, "--concurrency")
    if not 1 <= requests <= 1_000_000 or not 0 < seconds <= 3600 or not 1 <= rounds <= 20:
        raise InputError("--requests 1–1000000, --seconds (0, 3600] and --rounds 1–20")
    missing = serve_missing()
    if missing:
        raise InputError(missing)
    results = []
    for workload in chosen:
        bench = run_serve_bench(
            workload,
            levels,
            requests,
            seconds,
            rounds,
            str(peer_python) if peer_python else None,
            workers,
            threads,
            on_step=lambda line: console.print(shown(line), highlight=False),
        )
        print_table(f"headway serve, {workload}", *serve_table(bench))
        console.print(
            f"answers, max |Δ| to headway serve over HTTP: {bench.notes['answers_max_abs_diff']}"
        )
        results.append(to_json(bench))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(results, indent=2))
