"""What a request can fail with: each error carries its HTTP status and its gRPC status name,
so both front ends answer alike."""

from __future__ import annotations

from headway.errors import InputError


class ServingError(Exception):
    """A request that cannot be answered; ``status`` is its HTTP status, ``code`` its gRPC
    status name."""

    status = 500
    code = "INTERNAL"


class BadRequest(ServingError, InputError):
    status, code = 400, "INVALID_ARGUMENT"


class UnknownModel(BadRequest):
    pass


class QueueFull(ServingError):
    status, code = 503, "UNAVAILABLE"


class ModelUnavailable(ServingError):
    status, code = 503, "UNAVAILABLE"


class RequestTimeout(ServingError):
    status, code = 504, "DEADLINE_EXCEEDED"


class ModelFailure(ServingError):
    status, code = 500, "INTERNAL"


class TooManySessions(ServingError):
    """A stateful model has as many open sessions as it may."""

    status, code = 429, "RESOURCE_EXHAUSTED"
