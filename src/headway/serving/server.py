"""``headway serve``: a :class:`ServingRuntime` behind the Open Inference Protocol over HTTP
(uvicorn, httptools) and gRPC (grpcio asyncio), with Prometheus metrics on their own port.

The server is live as soon as it listens and ready once every model is loaded and warm. On
SIGTERM or Ctrl-C it stops listening, lets the requests it accepted finish (bounded by
``drain_s``), stops the runtime and returns, so the command exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from headway.errors import InputError
from headway.serving.http_api import DEFAULT_MAX_BODY, HttpApp
from headway.serving.runtime import ServingRuntime

SERVE_INSTALL = "pip install 'headway[serve]'"


def serve_missing() -> str | None:
    """What the server needs and is not installed, or None."""
    missing = []
    for module, package in (
        ("uvicorn", "uvicorn"),
        ("grpc", "grpcio"),
        ("tritonclient", "tritonclient"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        return f"headway serve needs {', '.join(missing)}: {SERVE_INSTALL}"
    return None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET or family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle waits
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass
class Ports:
    http: int | None = None
    grpc: int | None = None
    metrics: int | None = None


@dataclass
class Server:
    """The front ends of one runtime. ``start`` binds (port 0: a free one) and returns the
    ports; ``stop`` drains and closes."""

    runtime: ServingRuntime
    host: str = "127.0.0.1"
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    max_body: int = DEFAULT_MAX_BODY
    drain_s: float = 30.0
    ports: Ports = field(default_factory=Ports)
    _http: Any = None
    _http_task: Any = None
    _grpc: Any = None
    _metrics: Any = None

    async def start(self) -> Ports:
        missing = serve_missing()
        if missing:
            raise InputError(missing)
        if self.http_port is not None:
            import uvicorn

            class _QuietServer(uvicorn.Server):
                def capture_signals(self) -> contextlib.AbstractContextManager[None]:
                    return contextlib.nullcontext()  # the caller handles signals

            sock = _listen(self.host, self.http_port)
            self.ports.http = sock.getsockname()[1]
            config = uvicorn.Config(
                HttpApp(self.runtime, self.max_body),
                http="httptools",
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=max(1, int(self.drain_s)),
                timeout_keep_alive=30,
            )
            self._http = _QuietServer(config)
            self._http_task = asyncio.ensure_future(self._http.serve(sockets=[sock]))
            while not self._http.started:
                if self._http_task.done():
                    self._http_task.result()
                await asyncio.sleep(0.01)
        if self.grpc_port is not None:
            from headway.serving.grpc_api import start_grpc

            self._grpc, self.ports.grpc = await start_grpc(
                self.runtime, self.host, self.grpc_port, self.max_body
            )
        if self.metrics_port is not None:
            import prometheus_client as prom

            if self.runtime.metrics.registry is not None:
                self._metrics, _ = prom.start_http_server(
                    self.metrics_port, addr=self.host, registry=self.runtime.metrics.registry
                )
                self.ports.metrics = self._metrics.server_port
        return self.ports

    async def stop(self) -> bool:
        """Stop listening, finish the accepted requests (within ``drain_s``), close the runtime.
        True when every accepted request was answered."""
        waits = []
        if self._grpc is not None:
            waits.append(self._grpc.stop(self.drain_s))
        if self._http is not None:
            self._http.should_exit = True
            waits.append(self._http_task)
        await asyncio.gather(*waits, return_exceptions=True)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.runtime.close, self.drain_s)


def run_server(
    server: Server,
    on_listening: Callable[[Ports], None] | None = None,
    load: Callable[[], None] | None = None,
) -> bool:
    """Serve until SIGTERM or SIGINT (blocking); ``load`` runs in a thread once listening (the
    server is live, not ready, meanwhile). True when the drain answered everything."""

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        ports = await server.start()
        if on_listening is not None:
            on_listening(ports)
        if load is not None:
            threading.Thread(target=load, name="headway-load", daemon=True).start()
        await stop.wait()
        return await server.stop()

    factory = _loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (uvicorn picks it only when it makes the
    loop itself; here headway makes it, for HTTP and gRPC alike), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def serving_in_thread(server: Server) -> Iterator[Ports]:
    """The server running on its own event loop in a thread (tests, the benchmark, Python
    callers); stopped and drained when the block ends."""
    factory = _loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    started: asyncio.Future[Ports] | None = None
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        nonlocal started
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as error:  # reported to the caller below
            failure.append(error)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="headway-server", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        raise failure[0]
    try:
        yield server.ports
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(server.drain_s + 30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def serve_repository(
    repository: str,
    *,
    host: str = "127.0.0.1",
    http_port: int | None = 8000,
    grpc_port: int | None = 8001,
    metrics_port: int | None = 8002,
    workers: int = 2,
    threads: int = 1,
    strict: bool = False,
    drain_s: float = 30.0,
    max_body: int = DEFAULT_MAX_BODY,
    say: Callable[[str], None] = print,
) -> bool:
    """``headway serve``: the repository's models behind HTTP and gRPC until SIGTERM or
    Ctrl-C. Listening (live) at once; ready once every model has loaded (with ``strict``, a
    model that fails to load stops the server before it listens). True when the drain
    answered every accepted request."""
    from headway.serving.config import load_repository

    missing = serve_missing()
    if missing:
        raise InputError(missing)
    configs = load_repository(repository)
    runtime = ServingRuntime(
        configs,
        workers=workers,
        threads=threads,
        strict=strict,
        on_model=lambda names: say(f"loading {names} …"),
        load=False,
    )
    if strict:
        try:
            runtime.load()
        except Exception:
            runtime.close(0)
            raise
    server = Server(runtime, host, http_port, grpc_port, metrics_port, max_body, drain_s)

    def listening(ports: Ports) -> None:
        named = {"HTTP": ports.http, "gRPC": ports.grpc, "metrics": ports.metrics}
        say("listening on " + ", ".join(f"{k} {host}:{v}" for k, v in named.items() if v))

    def load() -> None:
        if not strict:
            runtime.load()
        for name, reason in runtime.failed.items():
            say(f"model {name} failed to load: {reason}")
        served = [n for n in runtime.configs if n in runtime.loaded]
        state = "ready" if runtime.ready() else "not ready (a model failed)"
        say(f"{state}: serving {', '.join(served) or 'no model'}")

    drained = run_server(server, listening, load)
    say("stopped" if drained else "stopped; some requests did not finish within the drain")
    return drained
