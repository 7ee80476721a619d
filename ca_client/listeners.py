"""Which of the CA's listeners an address reached, when a command went to the wrong one.

The CA serves three: the mTLS API, the bootstrap listener (server-only TLS, Enroll alone) and
plain HTTP for relying parties. Mistaking one for another gives errors that read like
something else (a pin mismatch that looks like an attack, UNIMPLEMENTED, a TLS version
error); `explain` and `WrongListener` say what was reached and which address to use."""

from __future__ import annotations

import socket

import grpc

API = "the mTLS API listener (ca-server --listen, default port 50051)"
BOOTSTRAP = "the bootstrap listener (ca-server --bootstrap-listen, default port 50052)"
HTTP = "the HTTP listener for OCSP and CRLs (ca-server --http-listen, default port 8080)"
PROBE_TIMEOUT = 3.0  # seconds: only spent once a call has already failed


class WrongListener(Exception):
    """The address answers, but it is not the listener this command talks to."""


def split_address(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{server!r} is not HOST:PORT")
    return host.strip("[]"), int(port)  # [::1]:50052


def speaks_http(server: str) -> bool:
    """Whether `server` answers a plain-text HTTP request (so it is no TLS listener)."""
    try:
        with socket.create_connection(split_address(server), timeout=PROBE_TIMEOUT) as raw:
            raw.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return raw.recv(5) == b"HTTP/"
    except (OSError, ValueError):
        return False


def plain_http(server: str, wanted: str) -> WrongListener:
    return WrongListener(
        f"{server} answers plain HTTP, not TLS: that is {HTTP}; this command needs {wanted}"
    )


def explain(server: str, exc: grpc.RpcError, probe: bool = True) -> str | None:
    """What a failed call on the API says about the address, or None if nothing is known.
    `probe` allows one plain-HTTP request to the address (up to PROBE_TIMEOUT): a one-shot
    command can afford it, an agent retrying before expiry cannot."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"{server} does not serve this call: that is {BOOTSTRAP}, which serves Enroll "
            f"alone; renewals and the other calls need {API}"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        if "Connection refused" in details:
            return f"nothing listens at {server} (connection refused): is {API} there?"
        if "WRONG_VERSION_NUMBER" in details or (probe and speaks_http(server)):
            return str(plain_http(server, API))
    return None
