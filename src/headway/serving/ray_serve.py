"""``headway serve REPO --ray``: the same repository on Ray Serve, beyond one machine. Every
replica is a Ray actor running its own :class:`ServingRuntime` (paper B's runtime) behind the
same Open Inference Protocol HTTP routes (:class:`HttpApp`, as the replica's ASGI app); Ray
Serve's proxy spreads the requests over the replicas. gRPC and the metrics port stay with the
single-process server (Ray Serve has its own metrics).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headway.errors import InputError

RAY_INSTALL = "pip install 'headway[serve,cluster]' 'ray[serve]'"
APP_NAME = "headway"


def ray_serve_missing() -> str | None:
    """What --ray needs and is not installed (found without importing Ray: seconds)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray.serve") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"headway serve --ray needs Ray Serve: {RAY_INSTALL}"


def replica_deployment(replicas: int, cpus: float) -> Any:
    """The Ray Serve deployment whose replicas each run headway's runtime."""
    from ray import serve

    @serve.ingress()
    class HeadwayReplica:
        def __init__(self, repository: str, workers: int, threads: int) -> None:
            from headway.serving.config import load_repository
            from headway.serving.runtime import ServingRuntime

            self.runtime = ServingRuntime(
                load_repository(repository), workers=workers, threads=threads, strict=True
            )

        def __serve_build_asgi_app__(self) -> Any:
            from headway.serving.http_api import HttpApp

            return HttpApp(self.runtime)

        def check_health(self) -> None:
            if not self.runtime.ready():
                raise RuntimeError("the replica's runtime is not ready")

        def __del__(self) -> None:
            runtime = getattr(self, "runtime", None)
            if runtime is not None:
                runtime.close(5)

    return serve.deployment(
        HeadwayReplica,
        name="headway",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=256,
    )


def start_on_ray(
    repository: str,
    replicas: int,
    address: str | None = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    workers: int = 2,
    threads: int = 1,
    cpus: float = 1.0,
) -> None:
    """Deploy the repository on Ray Serve (a local Ray instance unless ``address``); returns
    once every replica is loaded and healthy."""
    missing = ray_serve_missing()
    if missing:
        raise InputError(missing)
    if not 1 <= replicas <= 1024:
        raise InputError(f"--replicas must be 1–1024, got {replicas}")
    import ray
    from ray import serve

    from headway.serving.config import load_repository

    load_repository(repository)  # one line naming a bad repository before Ray starts
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
        )
    serve.start(
        http_options={"host": host, "port": http_port}, logging_config={"log_level": "WARNING"}
    )
    app = replica_deployment(replicas, cpus).bind(str(Path(repository).resolve()), workers, threads)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 900
    while True:
        status = serve.status().applications.get(APP_NAME)
        state = str(getattr(status, "status", ""))
        if state.endswith("RUNNING"):
            return
        if state.endswith("DEPLOY_FAILED"):
            raise InputError(f"Ray Serve could not deploy the repository: {status.message}")
        if time.monotonic() > deadline:
            raise InputError("Ray Serve did not start the replicas within 15 minutes")
        time.sleep(0.5)


def stop_on_ray() -> None:
    """Remove the deployment and shut this process's Ray Serve and Ray down."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def serve_on_ray(
    repository: str,
    *,
    replicas: int,
    address: str | None = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    workers: int = 2,
    threads: int = 1,
    say: Callable[[str], None] = print,
) -> None:
    """``headway serve --ray``: deploy, serve until SIGTERM or Ctrl-C, then shut down."""
    stop = threading.Event()
    previous = {n: signal.signal(n, lambda *_: stop.set()) for n in (signal.SIGTERM, signal.SIGINT)}
    try:
        say(f"starting {replicas} replica(s) on Ray Serve …")
        start_on_ray(repository, replicas, address, host, http_port, workers, threads)
        say(f"ready: Ray Serve on HTTP {host}:{http_port}, {replicas} replica(s)")
        while not stop.wait(0.5):
            pass
    finally:
        stop_on_ray()
        for number, handler in previous.items():
            signal.signal(number, handler)
        say("stopped")
