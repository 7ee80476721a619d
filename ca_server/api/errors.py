"""The one place where domain errors become gRPC statuses: a code from the error's class, and
a google.rpc.Status (AIP-193) in the grpc-status-details-bin trailer that grpcio-status,
grpcurl and other clients read:

- exactly one ErrorInfo: the error's reason, DOMAIN, and metadata (the field at fault, the
  name at fault, a limit);
- a BadRequest field violation when a request field is at fault (INVALID_ARGUMENT, or a
  RESOURCE_EXHAUSTED about a field's size);
- a RetryInfo when waiting helps: on RESOURCE_EXHAUSTED and UNAVAILABLE with a known wait. A
  size limit has none, as no retry of the same request can succeed.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..core import errors
from ..core.errors import ErrorReason

DOMAIN = "signet.ca.v1"
INTERNAL_MESSAGE = "internal error; the CA's log has the details"

STATUS_FOR: dict[type[errors.SignetError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.PolicyViolation: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RequestIdReused: grpc.StatusCode.ALREADY_EXISTS,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigurationError: grpc.StatusCode.FAILED_PRECONDITION,
}
_FIELD_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
_RETRY_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
_MAX_VALUE, _MAX_DESCRIPTION = 256, 1024


def status_for(error: errors.SignetError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


def rich_status(error: errors.SignetError) -> grpc.Status:
    """The status for a domain error: its code, its message as it is, and the details."""
    code, message = status_for(error), str(error)
    # Clipped: a trailer too big for the client's metadata limit (8 KiB by default in gRPC)
    # would replace the whole status, and a long list of names is the requester's own text.
    metadata = {key: _clip(value, _MAX_VALUE) for key, value in error.metadata.items()}
    if error.field:
        metadata["field"] = error.field
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)
    ]
    if error.field and code in _FIELD_CODES:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=_clip(message, _MAX_DESCRIPTION), reason=error.reason
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None and code in _RETRY_CODES:
        # When the same call could succeed (clients and gRPC retry policies read it).
        delay = duration_pb2.Duration(seconds=max(1, math.ceil(retry_after)))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return _status(code, message, details)


def internal_status() -> grpc.Status:
    """A bug: INTERNAL, a generic message and reason; what happened stays in the log."""
    info = error_details_pb2.ErrorInfo(reason=ErrorReason.INTERNAL, domain=DOMAIN)
    return _status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, [info])


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(code: grpc.StatusCode, message: str, details: list[Message]) -> grpc.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return rpc_status.to_status(status)
