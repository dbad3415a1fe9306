"""The Open Inference Protocol (KServe v2) on the wire, shared by the HTTP and gRPC front
ends: infer requests decoded into named arrays (JSON ``data``, Triton's binary tensor data
extension, gRPC typed contents or raw bytes), answers encoded back. Every framing problem is a
:class:`~headway.serving.runtime.BadRequest` naming it, raised before any work."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headway.serving.config import DATATYPES
from headway.serving.runtime import BadRequest
from headway.serving.sessions import SequenceControl, sequence_control

SERVER_NAME = "headway"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics_metrics"]
HEADER_LENGTH = "inference-header-content-length"


def server_metadata() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("headway")
    except PackageNotFoundError:  # running from a source tree
        own = "0"
    return {"name": SERVER_NAME, "version": own, "extensions": EXTENSIONS}


@dataclass
class InferRequest:
    """A decoded request: named arrays, the id to echo, a timeout (seconds) and which outputs
    the client wants (all when empty) and in which form."""

    inputs: dict[str, np.ndarray]
    id: str = ""
    timeout_s: float | None = None
    outputs: list[str] = field(default_factory=list)
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False
    sequence: SequenceControl | None = None


def _dtype(datatype: Any, name: str) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(
            f"input {name!r}: datatype {datatype!r} is not one headway serves "
            f"({', '.join(DATATYPES)})"
        )
    return np.dtype(DATATYPES[datatype])


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in value
    ):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    return tuple(value)


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def from_bytes(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """The array ``raw`` holds (little-endian, row-major), or one line on a size mismatch."""
    dtype = _dtype(datatype, name)
    expected = _count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: {len(raw)} bytes of data, but shape {list(shape)} of {datatype} "
            f"needs {expected}"
        )
    return (
        np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    )


def _timeout(parameters: Any) -> float | None:
    """Triton's ``timeout`` request parameter, in microseconds."""
    if not isinstance(parameters, dict) or "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest(
            f"parameter timeout must be a positive number of microseconds, got {value!r}"
        )
    return float(value) / 1e6


def decode_http(body: bytes, header_length: str | None) -> InferRequest:
    """An HTTP infer body: JSON, or (binary extension) a JSON header of ``header_length`` bytes
    followed by the inputs' bytes in order."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        if not 0 < length <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {length} is outside the body's {len(body)} bytes"
            )
        head, binary = body[:length], memoryview(body)[length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        message = json.loads(head)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request is not valid JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("inputs"), list):
        raise BadRequest("the request needs an 'inputs' list")
    request = InferRequest({}, str(message.get("id", "")), _timeout(message.get("parameters")))
    parameters = message.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest("the request's parameters must be an object")
    request.sequence = sequence_control(parameters or {})
    offset = 0
    for item in message["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("every input needs a name")
        name = item["name"]
        if name in request.inputs:
            raise BadRequest(f"input {name!r} is given twice")
        shape = _shape(item.get("shape"), name)
        datatype = item.get("datatype")
        dtype = _dtype(datatype, name)
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size} runs past the body's end"
                )
            request.inputs[name] = from_bytes(binary[offset : offset + size], datatype, shape, name)
            offset += size
            continue
        if "data" not in item:
            raise BadRequest(f"input {name!r} has neither data nor binary_data_size")
        try:
            array = np.asarray(item["data"], dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"input {name!r}: data is not a list of {datatype} values") from None
        if array.size != _count(shape):
            raise BadRequest(
                f"input {name!r}: {array.size} values of data, but shape {list(shape)} needs "
                f"{_count(shape)}"
            )
        request.inputs[name] = array.reshape(shape)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    _requested_outputs(request, message)
    return request


def _requested_outputs(request: InferRequest, message: dict[str, Any]) -> None:
    parameters = message.get("parameters") or {}
    request.binary_default = bool(parameters.get("binary_data_output", False))
    for item in message.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("every requested output needs a name")
        request.outputs.append(item["name"])
        if (item.get("parameters") or {}).get("binary_data", request.binary_default):
            request.binary_outputs.add(item["name"])


def select_outputs(
    request: InferRequest, outputs: dict[str, np.ndarray], model: str
) -> dict[str, np.ndarray]:
    """The outputs the client asked for (all when it named none)."""
    if not request.outputs:
        return outputs
    unknown = [n for n in request.outputs if n not in outputs]
    if unknown:
        raise BadRequest(
            f"model {model!r} has no output {unknown[0]!r} (its outputs: {', '.join(outputs)})"
        )
    return {n: outputs[n] for n in request.outputs}


def encode_http(
    request: InferRequest, model: str, outputs: dict[str, np.ndarray], datatypes: dict[str, str]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    described, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatypes[name],
            "shape": list(array.shape),
        }
        binary = name in request.binary_outputs or (not request.outputs and request.binary_default)
        if binary:
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    head = json.dumps(
        {"model_name": model, "model_version": "1", "id": request.id, "outputs": described},
        separators=(",", ":"),
    ).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
