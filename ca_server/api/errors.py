"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import grpc

from ..core import errors

STATUS_FOR: dict[type[errors.SignetError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PolicyViolation: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RequestIdReused: grpc.StatusCode.ALREADY_EXISTS,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigurationError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(error: errors.SignetError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL
