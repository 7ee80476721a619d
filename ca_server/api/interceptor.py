"""Wraps every unary RPC: maps domain errors to statuses (with their google.rpc.Status
details, see errors.py) and writes one log line per call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
from google.protobuf.message import DecodeError

from ..core.errors import ErrorReason, InvalidRequest, LimitExceeded, SignetError
from ..metrics import instruments
from .errors import internal_status, rich_status, status_for

log = structlog.get_logger("signet.rpc")

_OUR_SERVICE = "/signet.ca.v1."

# The largest request we read. It is checked here, not by gRPC's own limit, so that the
# refusal carries its details; gRPC's limit (TRANSPORT_LIMIT, what servers are built with)
# stays as a backstop against what is far larger, refused by gRPC's core without details.
MAX_REQUEST_BYTES = 1024 * 1024
TRANSPORT_LIMIT = 4 * MAX_REQUEST_BYTES

if TYPE_CHECKING:  # generic only in grpc-stubs, not at run time
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class RpcInterceptor(_ServerInterceptor):
    def __init__(self) -> None:
        # method -> (the servicer's handler, our wrapper of it): built once per method, not
        # once per call (gRPC asks the interceptor on every call).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @staticmethod
    def _wrap(
        method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        assert handler.unary_unary is not None
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer or (lambda raw: raw)

        # The request arrives as bytes and is parsed inside _call: grpcio would answer a
        # malformed message (e.g. a string field that is not UTF-8) with INTERNAL.
        def wrapper(raw: bytes, context: grpc.ServicerContext) -> Any:
            return _call(method, behavior, deserialize, raw, context)

        return grpc.unary_unary_rpc_method_handler(
            wrapper, response_serializer=handler.response_serializer
        )


def _call(
    method: str,
    behavior: Callable[[Any, grpc.ServicerContext], Any],
    deserialize: Callable[[bytes], Any],
    raw: bytes,
    context: grpc.ServicerContext,
) -> Any:
    structlog.contextvars.clear_contextvars()
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    message = reason = None
    try:
        if len(raw) > MAX_REQUEST_BYTES:
            raise LimitExceeded(
                f"the request is {len(raw)} bytes; the limit is {MAX_REQUEST_BYTES}",
                reason=ErrorReason.REQUEST_TOO_LARGE,
                metadata={"limit": str(MAX_REQUEST_BYTES)},
            )
        try:
            request = deserialize(raw)
        except DecodeError as exc:
            raise InvalidRequest(
                f"the request is not a valid protobuf message: {exc}",
                reason=ErrorReason.REQUEST_MALFORMED,
            ) from None
        return behavior(request, context)
    except SignetError as exc:
        code, message, reason = status_for(exc), str(exc), exc.reason.value
        context.abort_with_status(rich_status(exc))
    except Exception:
        aborted = cast(Any, context).code()  # grpc-stubs lacks ServicerContext.code()
        if aborted not in (None, grpc.StatusCode.OK):  # the handler aborted on purpose
            code = aborted
            raise
        code, reason = grpc.StatusCode.INTERNAL, ErrorReason.INTERNAL.value
        log.exception("rpc_internal_error", method=method)
        context.abort_with_status(internal_status())
    finally:
        seconds = time.perf_counter() - start
        level = "info" if method.startswith(_OUR_SERVICE) else "debug"
        getattr(log, level)(
            "rpc",
            method=method,
            peer=context.peer(),
            code=code.name,
            duration_ms=round(seconds * 1000, 3),
            **({"error": message} if message else {}),
            **({"reason": reason} if reason else {}),
        )
        instruments().rpc(method, code.name, seconds)
