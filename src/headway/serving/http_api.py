"""The Open Inference Protocol over HTTP/REST as a bare ASGI application (served by uvicorn
with httptools): the routes are few and fixed, so no web framework sits between a request and
the runtime. Routes: ``/v2``, ``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}]``
with ``/ready``, ``/config`` and ``/infer`` (JSON or Triton's binary tensor data extension)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from headway.errors import first_line
from headway.serving.protocol import (
    HEADER_LENGTH,
    decode_http,
    encode_http,
    select_outputs,
    server_metadata,
)
from headway.serving.runtime import BadRequest, RequestTimeout, ServingError, ServingRuntime

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
DEFAULT_MAX_BODY = 64 * 1024 * 1024


async def _read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise BadRequest(f"the request body ({declared} bytes) is over the limit of {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, value: Any) -> None:
    body = json.dumps(value, separators=(",", ":")).encode()
    await _respond(send, status, body, [(b"content-type", b"application/json")])


class HttpApp:
    """The ASGI application over one :class:`ServingRuntime`."""

    def __init__(self, runtime: ServingRuntime, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.runtime, self.max_body = runtime, max_body
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop: acknowledge both
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.in_flight += 1
        try:
            await self._route(scope, receive, send)
        except ServingError as error:
            await _json(send, error.status, {"error": first_line(error)})
        except ConnectionError:
            return
        except Exception as error:  # a bug must answer 500, not drop the connection
            await _json(send, 500, {"error": f"internal error: {first_line(error)}"})
        finally:
            self.in_flight -= 1

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        parts = path.split("/")[1:]
        if parts[:1] != ["v2"]:
            await _json(send, 404, {"error": f"no route {path or '/'}"})
            return
        rest = parts[1:]
        if not rest:
            await _json(send, 200, server_metadata())
        elif rest == ["health", "live"]:
            await _respond(send, 200, b"")
        elif rest == ["health", "ready"]:
            await _respond(send, 200 if self.runtime.ready() else 503, b"")
        elif rest[0] == "models" and len(rest) >= 2:
            model, tail = rest[1], rest[2:]
            if tail[:1] == ["versions"] and len(tail) >= 2:
                tail = tail[2:]
            await self._model_route(model, tail, method, scope, receive, send)
        else:
            await _json(send, 404, {"error": f"no route {path}"})

    async def _model_route(
        self, model: str, tail: list[str], method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        runtime = self.runtime
        if not tail:
            await _json(send, 200, runtime.metadata(model))
        elif tail == ["ready"]:
            runtime.metadata(model)  # an unknown model is a 400 naming the served ones
            await _respond(send, 200 if runtime.model_ready(model) else 400, b"")
        elif tail == ["config"]:
            await _json(send, 200, runtime.model_config(model))
        elif tail == ["infer"]:
            if method != "POST":
                await _json(send, 405, {"error": "infer takes POST"})
                return
            await self._infer(model, scope, receive, send)
        else:
            await _json(send, 404, {"error": f"no route for model {model!r}: {'/'.join(tail)}"})

    async def _infer(self, model: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        body = await _read_body(
            receive, self.max_body, int(declared) if declared and declared.isdigit() else None
        )
        self.runtime.metadata(model)  # unknown model: 400 before decoding the tensors
        request = decode_http(body, headers.get(HEADER_LENGTH))
        future = self.runtime.submit(model, request.inputs, request.timeout_s, request.sequence)
        try:
            outputs = await asyncio.wait_for(asyncio.wrap_future(future), request.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise RequestTimeout(
                f"model {model!r}: no answer within {request.timeout_s} s"
            ) from None
        outputs = select_outputs(request, outputs, model)
        datatypes = {t.name: t.datatype for t in self.runtime.configs[model].outputs}
        body, header = encode_http(request, model, outputs, datatypes)
        extra = [(b"content-type", b"application/json")]
        if header is not None:
            extra = [
                (b"content-type", b"application/octet-stream"),
                (HEADER_LENGTH.encode(), str(header).encode()),
            ]
        await _respond(send, 200, body, extra)
