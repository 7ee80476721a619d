"""Wraps every RPC of ours (unary and server-streaming): maps domain errors to statuses and writes
one log line per call."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..core.errors import InvalidRequest, SignetError
from ..metrics import instruments
from .errors import status_for

log = structlog.get_logger("signet.rpc")

_OUR_SERVICE = "/signet.ca.v1."

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
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
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
            return _call(method, behavior, deserialize, raw, context)

        return grpc.unary_unary_rpc_method_handler(
            wrapper, response_serializer=handler.response_serializer
        )


def _with_retry_info(code: grpc.StatusCode, message: str, seconds: float) -> grpc.Status:
    detail = any_pb2.Any()
    delay = duration_pb2.Duration(seconds=max(1, math.ceil(seconds)))
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(status)


def _parse(deserialize: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return deserialize(raw)
    except DecodeError as exc:
        raise InvalidRequest(f"the request is not a valid protobuf message: {exc}") from None


def _abort(context: grpc.ServicerContext, exc: SignetError) -> None:
    """End the call with the error's status (raises)."""
    code, message = status_for(exc), str(exc)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None:
        context.abort(code, message)
    # google.rpc.Status with a RetryInfo: when the same call could succeed (clients and
    # gRPC retry policies read it from the grpc-status-details-bin trailer).
    context.abort_with_status(_with_retry_info(code, message, retry_after))


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
    message: str | None,
    seconds: float,
    **extra: Any,
) -> None:
    level = "info" if method.startswith(_OUR_SERVICE) else "debug"
    getattr(log, level)(
        "rpc",
        method=method,
        peer=context.peer(),
        code=code.name,
        duration_ms=round(seconds * 1000, 3),
        **({"error": message} if message else {}),
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
    message = None
    try:
        return behavior(_parse(deserialize, raw), context)
    except SignetError as exc:
        code, message = status_for(exc), str(exc)
        _abort(context, exc)
    except Exception:
        code = _unexpected(method, context)
        if code is not grpc.StatusCode.INTERNAL:
            raise
        context.abort(code, "internal error; the CA's log has the details")
    finally:
        _log_call(method, context, code, message, time.perf_counter() - start)


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
    message = None
    messages = 0
    try:
        for response in behavior(_parse(deserialize, raw), context):
            messages += 1
            yield response
    except GeneratorExit:  # grpcio stopped asking: the call was cancelled (or cut off)
        code = grpc.StatusCode.CANCELLED
        raise
    except SignetError as exc:
        code, message = status_for(exc), str(exc)
        _abort(context, exc)
    except Exception:
        code = _unexpected(method, context)
        if code is not grpc.StatusCode.INTERNAL:
            raise
        context.abort(code, "internal error; the CA's log has the details")
    finally:
        _log_call(method, context, code, message, time.perf_counter() - start, messages=messages)
