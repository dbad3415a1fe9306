"""The Open Inference Protocol over gRPC (``grpcio`` with asyncio), on the service definition
that ``tritonclient.grpc`` generates, so Triton's gRPC clients work unmodified: server
live/ready/metadata, model ready/metadata/config, and infer (typed contents or raw bytes)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np

from headway.errors import first_line
from headway.serving.config import DATATYPES
from headway.serving.protocol import InferRequest, from_bytes, select_outputs, server_metadata
from headway.serving.runtime import BadRequest, RequestTimeout, ServingError, ServingRuntime
from headway.serving.sessions import sequence_control

# the typed field of InferTensorContents each datatype travels in
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def grpc_available() -> bool:
    try:
        import grpc  # noqa: F401
        from tritonclient.grpc import service_pb2_grpc  # noqa: F401
    except ImportError:
        return False
    return True


def decode_grpc(message: Any) -> InferRequest:
    """A ``ModelInferRequest`` as named arrays; one line naming a framing problem."""
    timeout = None
    if "timeout" in message.parameters:
        value = message.parameters["timeout"]
        micro = value.int64_param or value.uint64_param or value.double_param
        if not micro or micro <= 0:
            raise BadRequest("parameter timeout must be a positive number of microseconds")
        timeout = float(micro) / 1e6
    request = InferRequest({}, message.id, timeout)
    plain = {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in message.parameters.items()
        if key.startswith("sequence_") and value.WhichOneof("parameter_choice")
    }
    request.sequence = sequence_control(plain)
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            f"{len(raw)} raw input contents for {len(message.inputs)} inputs: give one per input"
        )
    for index, tensor in enumerate(message.inputs):
        name, shape = tensor.name, tuple(tensor.shape)
        if name in request.inputs:
            raise BadRequest(f"input {name!r} is given twice")
        if any(d < 0 for d in shape):
            raise BadRequest(f"input {name!r}: shape must be non-negative")
        if tensor.datatype not in DATATYPES:
            raise BadRequest(
                f"input {name!r}: datatype {tensor.datatype!r} is not one headway serves "
                f"({', '.join(DATATYPES)})"
            )
        if raw:
            request.inputs[name] = from_bytes(raw[index], tensor.datatype, shape, name)
            continue
        field = _CONTENTS.get(tensor.datatype)
        values = getattr(tensor.contents, field) if field else []
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(values) != count:
            raise BadRequest(
                f"input {name!r}: {len(values)} values in contents, but shape {list(shape)} "
                f"needs {count}"
            )
        dtype = np.dtype(DATATYPES[tensor.datatype])
        request.inputs[name] = np.asarray(values, dtype=dtype).reshape(shape)
    request.outputs = [o.name for o in message.outputs]
    return request


def make_servicer(runtime: ServingRuntime) -> Any:
    """The ``GRPCInferenceService`` servicer over ``runtime`` (grpcio's asyncio API)."""
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    async def refuse(context: Any, error: ServingError) -> None:
        await context.abort(getattr(grpc.StatusCode, error.code), first_line(error))

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerReadyResponse(ready=runtime.ready())

        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerMetadataResponse(**server_metadata())

        async def ModelReady(self, request: Any, context: Any) -> Any:
            try:
                runtime.metadata(request.name)
            except ServingError as error:
                await refuse(context, error)
            return service_pb2.ModelReadyResponse(ready=runtime.model_ready(request.name))

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            try:
                meta = runtime.metadata(request.name)
            except ServingError as error:
                await refuse(context, error)
            tensors = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensors(**t) for t in meta["inputs"]],
                outputs=[tensors(**t) for t in meta["outputs"]],
            )

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            try:
                config = runtime.model_config(request.name)
            except ServingError as error:
                await refuse(context, error)
            parsed = json_format.ParseDict(
                config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
            )
            return service_pb2.ModelConfigResponse(config=parsed)

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            model = request.model_name
            try:
                runtime.metadata(model)
                decoded = decode_grpc(request)
                future = runtime.submit(model, decoded.inputs, decoded.timeout_s, decoded.sequence)
                try:
                    outputs = await asyncio.wait_for(asyncio.wrap_future(future), decoded.timeout_s)
                except asyncio.TimeoutError:
                    future.cancel()
                    raise RequestTimeout(
                        f"model {model!r}: no answer within {decoded.timeout_s} s"
                    ) from None
                outputs = select_outputs(decoded, outputs, model)
            except ServingError as error:
                await refuse(context, error)
            datatypes = {t.name: t.datatype for t in runtime.configs[model].outputs}
            response = service_pb2.ModelInferResponse(
                model_name=model, model_version="1", id=decoded.id
            )
            for name, array in outputs.items():
                response.outputs.add(name=name, datatype=datatypes[name], shape=list(array.shape))
                response.raw_output_contents.append(
                    np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
                )
            return response

    return Servicer()


async def start_grpc(
    runtime: ServingRuntime, host: str, port: int, max_message: int
) -> tuple[Any, int]:
    """A started grpc.aio server on ``host:port`` (0: a free port) and the port it bound."""
    # the engines fork helper processes; grpc's fork handlers only print that they skip
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(make_servicer(runtime), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC cannot listen on {host}:{port}")
    await server.start()
    return server, bound
