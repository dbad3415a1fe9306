"""Serving paper B's runtime to applications: a model repository (:mod:`.config`), the
in-process API (:class:`ServingRuntime`) and ``headway serve``'s Open Inference Protocol front
ends over HTTP and gRPC (:mod:`.server`)."""

from headway.serving.config import (
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    load_repository,
    write_example_repository,
)
from headway.serving.errors import (
    BadRequest,
    ModelFailure,
    ModelUnavailable,
    QueueFull,
    RequestTimeout,
    ServingError,
    TooManySessions,
)
from headway.serving.runtime import ServingRuntime

__all__ = [
    "BadRequest",
    "DynamicBatching",
    "ModelConfig",
    "ModelFailure",
    "ModelUnavailable",
    "QueueFull",
    "RequestTimeout",
    "ServingError",
    "ServingRuntime",
    "TensorSpec",
    "TooManySessions",
    "load_repository",
    "write_example_repository",
]
