"""What a refusal from the CA says to a program: the google.rpc.ErrorInfo reason that every
Signet error carries (the list is enum signet.ca.v1.ErrorReason in protos/.../errors.proto)."""

from __future__ import annotations

from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_reason(exc: grpc.RpcError) -> str | None:
    """The ErrorInfo reason of a failed call, or None when it carries none (an error from
    gRPC itself, such as a refused connection, or a server that is not Signet)."""
    if not hasattr(exc, "trailing_metadata"):
        return None
    try:
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except ValueError:  # trailer and status disagree: not one to trust
        return None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason or None
    return None


def describe_error(exc: grpc.RpcError) -> str:
    """CODE (REASON): message, for a person and for grep."""
    reason = error_reason(exc)
    code = exc.code().name if exc.code() else "UNKNOWN"
    return f"{code}{f' ({reason})' if reason else ''}: {exc.details()}"
