"""Reading the google.rpc.Status a refused call carries, as any gRPC client would: through
grpcio-status from the grpc-status-details-bin trailer, not through the server's code."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "signet.ca.v1"


@dataclass(frozen=True)
class Details:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]  # BadRequest (field, reason), in order
    retry_seconds: int | None  # RetryInfo's delay, when there is one


def details_of(error: grpc.RpcError) -> Details:
    """The details of a refusal; fails unless they are as AIP-193 has them: the same code and
    message as the status itself, exactly one ErrorInfo of our domain, at most one BadRequest
    and one RetryInfo, and nothing else."""
    call: grpc.Call = error  # type: ignore[assignment]  # a unary call's error is its Call
    status = rpc_status.from_call(call)
    assert status is not None, f"no google.rpc.Status with {error.code()}: {error.details()}"
    assert (status.code, status.message) == (error.code().value[0], error.details())
    infos, requests, retries = [], [], []
    for item in status.details:
        for kind, found in (
            (error_details_pb2.ErrorInfo, infos),
            (error_details_pb2.BadRequest, requests),
            (error_details_pb2.RetryInfo, retries),
        ):
            if item.Is(kind.DESCRIPTOR):
                message = kind()
                item.Unpack(message)
                found.append(message)
                break
        else:
            raise AssertionError(f"unexpected detail {item.type_url}")
    assert len(infos) == 1 and len(requests) <= 1 and len(retries) <= 1, status
    [info] = infos
    assert info.domain == DOMAIN
    violations = [(v.field, v.reason) for r in requests for v in r.field_violations]
    return Details(
        code=error.code(),
        message=error.details() or "",
        reason=info.reason,
        metadata=dict(info.metadata),
        violations=violations,
        retry_seconds=retries[0].retry_delay.seconds if retries else None,
    )


def assert_refused(
    error: grpc.RpcError,
    code: grpc.StatusCode,
    reason: str,
    field: str | None = None,
) -> Details:
    """The refusal has this code and reason and, when a field is at fault, names it both in
    the ErrorInfo's metadata and in the one BadRequest field violation."""
    got = details_of(error)
    assert (got.code, got.reason) == (code, reason), got
    assert got.metadata.get("field") == field, got
    if field is not None and code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        assert got.violations == [(field, reason)], got
    else:
        assert got.violations == [], got
    return got
