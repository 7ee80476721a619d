"""Wraps every RPC of ours (unary and server-streaming): maps domain errors to statuses (with
their google.rpc.Status details, see errors.py) and writes one log line per call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
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
    def __init__(self, unary_limit: int | None = None) -> None:
        """unary_limit: at most this many unary calls run at once. The server's thread pool
        is larger by the watch streams' share (each open stream holds a thread); without the
        limit a storm of unary calls would run on all of those threads, and more runnable
        threads contending for the GIL made signing ~18% slower (measured)."""
        # method -> (the servicer's handler, our wrapper of it): built once per method, not
        # once per call (gRPC asks the interceptor on every call).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}
        self._slots = threading.BoundedSemaphore(unary_limit) if unary_limit else None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
            return handler
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler, self._slots)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @staticmethod
    def _wrap(
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        slots: threading.BoundedSemaphore | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = handler.request_deserializer or (lambda raw: raw)
        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            def stream_wrapper(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
                return _stream(method, streaming, deserialize, raw, context)

            return grpc.unary_stream_rpc_method_handler(
                stream_wrapper, response_serializer=handler.response_serializer
            )
        assert handler.unary_unary is not None
        behavior = handler.unary_unary

        # The request arrives as bytes and is parsed inside _call: grpcio would answer a
        # malformed message (e.g. a string field that is not UTF-8) with INTERNAL.
        def wrapper(raw: bytes, context: grpc.ServicerContext) -> Any:
            if slots is None:
                return _call(method, behavior, deserialize, raw, context)
            with slots:
                return _call(method, behavior, deserialize, raw, context)

        return grpc.unary_unary_rpc_method_handler(
            wrapper, response_serializer=handler.response_serializer
        )


def _parse(deserialize: Callable[[bytes], Any], raw: bytes) -> Any:
    if len(raw) > MAX_REQUEST_BYTES:
        raise LimitExceeded(
            f"the request is {len(raw)} bytes; the limit is {MAX_REQUEST_BYTES}",
            reason=ErrorReason.REQUEST_TOO_LARGE,
            metadata={"limit": str(MAX_REQUEST_BYTES)},
        )
    try:
        return deserialize(raw)
    except DecodeError as exc:
        raise InvalidRequest(
            f"the request is not a valid protobuf message: {exc}",
            reason=ErrorReason.REQUEST_MALFORMED,
        ) from None


def _unexpected(method: str, context: grpc.ServicerContext) -> grpc.StatusCode:
    """After an exception that is not a SignetError: the status the call ends with. A handler
    that aborted on purpose keeps its code (the caller re-raises); anything else is a bug,
    logged here and answered INTERNAL."""
    aborted = cast(Any, context).code()  # grpc-stubs lacks ServicerContext.code()
    if aborted not in (None, grpc.StatusCode.OK):
        return cast(grpc.StatusCode, aborted)
    log.exception("rpc_internal_error", method=method)
    return grpc.StatusCode.INTERNAL


def _log_call(
    method: str,
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    error: SignetError | None,
    seconds: float,
    **extra: Any,
) -> None:
    level = "info" if method.startswith(_OUR_SERVICE) else "debug"
    if error is not None:
        extra.update(error=str(error), reason=error.reason.value)
    elif code is grpc.StatusCode.INTERNAL:
        extra.update(reason=ErrorReason.INTERNAL.value)
    getattr(log, level)(
        "rpc",
        method=method,
        peer=context.peer(),
        code=code.name,
        duration_ms=round(seconds * 1000, 3),
        **extra,
    )
    instruments().rpc(method, code.name, seconds)


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
    error = None
    try:
        return behavior(_parse(deserialize, raw), context)
    except SignetError as exc:
        code, error = status_for(exc), exc
        context.abort_with_status(rich_status(exc))
    except Exception:
        code = _unexpected(method, context)
        if code is not grpc.StatusCode.INTERNAL:
            raise
        context.abort_with_status(internal_status())
    finally:
        _log_call(method, context, code, error, time.perf_counter() - start)


def _stream(
    method: str,
    behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
    deserialize: Callable[[bytes], Any],
    raw: bytes,
    context: grpc.ServicerContext,
) -> Iterator[Any]:
    """As _call, for a server-streaming RPC: an error may come after any message, and the log
    line is written when the stream ends."""
    structlog.contextvars.clear_contextvars()
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    error = None
    messages = 0
    try:
        for response in behavior(_parse(deserialize, raw), context):
            messages += 1
            yield response
    except GeneratorExit:  # grpcio stopped asking: the call was cancelled (or cut off)
        code = grpc.StatusCode.CANCELLED
        raise
    except SignetError as exc:
        code, error = status_for(exc), exc
        context.abort_with_status(rich_status(exc))
    except Exception:
        code = _unexpected(method, context)
        if code is not grpc.StatusCode.INTERNAL:
            raise
        context.abort_with_status(internal_status())
    finally:
        _log_call(method, context, code, error, time.perf_counter() - start, messages=messages)
