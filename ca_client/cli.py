"""The `ca-client` command: renew a workload's certificate on disk, and the status, revoke and
crl RPCs for scripts (`--json`). The credentials in --out DIR (cert.pem, key.pem, ca.pem) are
the mTLS identity every call uses."""

from __future__ import annotations

from . import quiet  # noqa: F401 - before grpc is imported: no C-core lines on the terminal

# isort: split
import argparse
import datetime as dt
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import json_format

from ca_server.core.durations import parse_duration
from ca_server.logs import configure_logging
from signet.ca.v1 import ca_pb2

from .agent import Agent, AgentConfig, AgentGaveUp
from .client import CaClient, NotSaved, Retry, save_or_revoke
from .clock import Clock
from .enroll import PinMismatch, enroll, fetch_pinned_root, normalize_fingerprint
from .errors import describe_error
from .files import (
    FORMATS,
    P12_PASSWORD_ENV,
    Credentials,
    OutputSet,
    check_out_dir,
    describe,
    read_credentials,
    resolve_outputs,
)
from .listeners import WrongListener, explain, split_address
from .schedule import parse_fraction
from .serial import canonical_serial

FORMAT_HELP = (
    f"comma-separated outputs: {', '.join(FORMATS)} (pem always); "
    "default: the set DIR already holds, pem for a new DIR"
)
P12_HELP = f"file holding the keystore.p12 password (or env {P12_PASSWORD_ENV})"
FINGERPRINT_HELP = (
    "SHA-256 of the root certificate, hex (CreateBootstrapToken and `ca-server token create` "
    "print it): the only root enroll will trust"
)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ca-client", description="Signet CA client")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--server", default=os.environ.get("SIGNET_SERVER"), help="CA address HOST:PORT"
        )
        sp.add_argument(
            "--out",
            default=os.environ.get("SIGNET_OUT"),
            help="directory holding cert.pem, key.pem and ca.pem (the identity to call with)",
        )
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    enroll = sub.add_parser("enroll", help="first certificate for a new service, with a token")
    enroll.add_argument(
        "--server",
        default=os.environ.get("SIGNET_SERVER"),
        help="the CA's bootstrap listener HOST:PORT (default port 50052)",
    )
    enroll.add_argument(
        "--api-server",
        default=os.environ.get("SIGNET_API_SERVER"),
        help="the CA's mTLS API HOST:PORT, used only to revoke a certificate that could not be "
        "saved (default: --server's host, port 50051)",
    )
    enroll.add_argument("--token", default=os.environ.get("SIGNET_TOKEN"), help="one-time token")
    enroll.add_argument("--token-file", help="file holding the token (keeps it out of argv)")
    enroll.add_argument(
        "--root-fingerprint",
        default=os.environ.get("SIGNET_ROOT_FINGERPRINT"),
        help=FINGERPRINT_HELP,
    )
    enroll.add_argument("--out", default=os.environ.get("SIGNET_OUT"), help="directory to write")
    enroll.add_argument("--json", action="store_true", help="machine-readable output")
    enroll.add_argument("--format", help=FORMAT_HELP)
    enroll.add_argument("--p12-password-file", help=P12_HELP)

    agent = sub.add_parser("agent", help="keep DIR's certificate renewed, for ever")
    agent.add_argument(
        "--server", default=os.environ.get("SIGNET_SERVER"), help="the CA's mTLS API HOST:PORT"
    )
    agent.add_argument("--out", default=os.environ.get("SIGNET_OUT"), help="credentials directory")
    agent.add_argument(
        "--bootstrap-server",
        default=os.environ.get("SIGNET_BOOTSTRAP_SERVER"),
        help="bootstrap address for (re-)enrolling (default: --server's host, port 50052)",
    )
    agent.add_argument(
        "--token",
        default=os.environ.get("SIGNET_TOKEN"),
        help="one-time token to enroll with when DIR holds no valid certificate (or env "
        "SIGNET_TOKEN; --token-file keeps it out of argv)",
    )
    agent.add_argument("--token-file", help="file holding a token (re-read at each enroll)")
    agent.add_argument(
        "--root-fingerprint",
        default=os.environ.get("SIGNET_ROOT_FINGERPRINT"),
        help=FINGERPRINT_HELP,
    )
    agent.add_argument("--format", help=FORMAT_HELP)
    agent.add_argument("--p12-password-file", help=P12_HELP)
    agent.add_argument(
        "--validity",
        type=_duration,
        help="requested lifetime of each certificate, the first one included, e.g. 24h",
    )
    agent.add_argument(
        "--renew-at",
        type=_fraction,
        help="renew at this fraction of the lifetime, e.g. 2/3, 0.5 or 75%%, or earlier when "
        "the CA's renewal window says so (default: at a random instant of the CA's window; "
        "2/3 with a CA that has none)",
    )
    agent.add_argument("--on-renew", help="shell command to run after each renewal")
    agent.add_argument(
        "--bundle-refresh",
        type=_refresh,
        default="5m",
        help="how often to ask the CA for its roots between renewals (a root rollover reaches "
        "ca.pem, and --on-renew runs, within this); off: at renewals only (default 5m)",
    )
    agent.add_argument(
        "--metrics-listen",
        default=os.environ.get("SIGNET_AGENT_METRICS_LISTEN"),
        help="serve Prometheus GET /metrics on HOST:PORT: the certificate's expiry, the next "
        "renewal, renewals and failures (off by default; SIGNET_AGENT_METRICS_LISTEN)",
    )
    agent.add_argument("--signal", default="HUP", help="signal for --signal-pid / --pid-file")
    agent.add_argument("--signal-pid", type=int, help="process to signal after each renewal")
    agent.add_argument("--pid-file", help="file holding the pid of the process to signal")
    agent.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="what the agent logs on stderr (JSON lines unless on a terminal): info = what it "
        "holds at start, enrollments, renewals and failures; warning = failures only "
        "(default info)",
    )

    renew = sub.add_parser("renew", help="renew DIR's certificate with a new key, atomically")
    common(renew)
    renew.add_argument(
        "--validity", type=_duration, help="requested lifetime, e.g. 24h (default: as before)"
    )
    renew.add_argument("--format", help=FORMAT_HELP)
    renew.add_argument("--p12-password-file", help=P12_HELP)
    renew.add_argument(
        "--revoke-previous", action="store_true", help="revoke the old certificate (superseded)"
    )

    status = sub.add_parser("status", help="a certificate's status (GetCertificateStatus)")
    common(status)
    status.add_argument("serial", help="serial number, hex")

    revoke = sub.add_parser("revoke", help="revoke a certificate (RevokeCertificate)")
    common(revoke)
    revoke.add_argument("serial", help="serial number, hex")
    revoke.add_argument(
        "--reason",
        default="UNSPECIFIED",
        choices=list(ca_pb2.RevocationReason.keys()),
        help="RFC 5280 reason",
    )

    crl = sub.add_parser("crl", help="fetch the current CRL (GetCRL)")
    common(crl)
    crl.add_argument("--output", help="write the DER CRL to this file")
    return p


def _client(args: argparse.Namespace) -> CaClient:
    if not args.server:
        raise UsageError("--server HOST:PORT is required (or SIGNET_SERVER)")
    if not args.out:
        raise UsageError("--out DIR is required (or SIGNET_OUT)")
    creds = read_credentials(Path(args.out))
    if creds is None:
        raise UsageError(f"no cert.pem and key.pem in {args.out}: enroll first")
    # Transient failures are retried with the same request (so the same request_id).
    return CaClient(args.server, creds, retry=Retry())


def _duration(text: str) -> dt.timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _refresh(text: str) -> dt.timedelta | None:
    return None if text == "off" else _duration(text)


def _fraction(text: str) -> float:
    try:
        return parse_fraction(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _outputs(args: argparse.Namespace, out: Path) -> tuple[OutputSet, bytes | None]:
    """The formats and PKCS#12 password to write, checked before anything is sent."""
    formats = None if args.format is None else [f.strip() for f in args.format.split(",")]
    password_file = Path(args.p12_password_file) if args.p12_password_file else None
    return resolve_outputs(out, formats and [f for f in formats if f], password_file)


def _sibling(server: str, port: int) -> str:
    """The same host as `server`, at another of the CA's default ports."""
    host, _ = split_address(server)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _report(args: argparse.Namespace, verb: str, creds: Credentials, files: list[str]) -> None:
    about = describe(creds)
    _print(
        args,
        {"serial_number": about["serial"], **about, "files": files},
        f"{verb}: serial {about['serial']} ({about['identity']}), valid until "
        f"{about['not_after']}, written to {args.out}",
    )


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def _message(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def _enroll(args: argparse.Namespace) -> int:
    if args.token_file:
        args.token = Path(args.token_file).read_text().strip()
    for flag in ("server", "token", "root_fingerprint", "out"):
        if not getattr(args, flag):
            raise UsageError(f"--{flag.replace('_', '-')} is required")
    # Everything that can be checked is, before the token is spent.
    fingerprint = normalize_fingerprint(args.root_fingerprint)
    out = Path(args.out)
    check_out_dir(out)
    outputs, password = _outputs(args, out)
    api_server = args.api_server or _sibling(args.server, 50051)
    split_address(api_server)
    root = fetch_pinned_root(args.server, fingerprint)
    creds = enroll(args.server, args.token, root, retry=Retry())
    _report(args, "enrolled", creds, save_or_revoke(api_server, out, creds, outputs, password))
    return 0


def _agent(args: argparse.Namespace, clock: Clock | None = None) -> int:
    if not args.server or not args.out:
        raise UsageError("--server and --out are required")
    name = args.signal.upper().removeprefix("SIG")
    try:
        signal_number = signal.Signals["SIG" + name]
    except KeyError:
        raise UsageError(f"unknown signal {args.signal!r}") from None
    out = Path(args.out)
    check_out_dir(out)
    outputs, password = _outputs(args, out)
    if args.root_fingerprint:
        normalize_fingerprint(args.root_fingerprint)
    config = AgentConfig(
        server=args.server,
        out=out,
        bootstrap_server=args.bootstrap_server or _sibling(args.server, 50052),
        token_file=Path(args.token_file) if args.token_file else None,
        token=args.token,
        root_fingerprint=args.root_fingerprint,
        formats=outputs.formats,
        p12_password=password,
        p12_password_file=outputs.p12_password_file,
        validity=args.validity,
        fraction=args.renew_at,
        on_renew=args.on_renew,
        bundle_refresh=args.bundle_refresh,
        signal_number=signal_number,
        signal_pid=args.signal_pid,
        pid_file=Path(args.pid_file) if args.pid_file else None,
    )
    configure_logging(args.log_level)
    stop = threading.Event()
    # Put back afterwards: main() also runs inside other programs (and the tests).
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    agent = Agent(config, clock=clock)
    if args.metrics_listen:
        from .metrics import serve_metrics

        try:
            address = serve_metrics(agent, args.metrics_listen)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--metrics-listen {args.metrics_listen}: {exc}") from None
        structlog.get_logger("signet.agent").info("metrics_listening", address=address)
    try:
        agent.run(stop)
    except AgentGaveUp as exc:
        print(f"ca-client: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _renew(args: argparse.Namespace) -> int:
    out = Path(args.out or "")
    with _client(args) as client:
        outputs, password = _outputs(args, out)  # bad options fail before the CA is asked
        creds = client.renew(args.validity, args.revoke_previous)
    _report(args, "renewed", creds, save_or_revoke(args.server, out, creds, outputs, password))
    return 0


def _run(args: argparse.Namespace, clock: Clock | None = None) -> int:
    if args.command == "enroll":
        return _enroll(args)
    if args.command == "agent":
        return _agent(args, clock)
    if args.command == "renew":
        return _renew(args)
    with _client(args) as client:
        if args.command == "status":
            reply = client.status(args.serial)
            data = _message(reply)
            data.pop("ocsp_response", None)
            status = ca_pb2.CertificateStatus.Name(reply.status)
            _print(args, data, f"{canonical_serial(args.serial)}: {status}")
        elif args.command == "revoke":
            reason = ca_pb2.RevocationReason.Value(args.reason)
            revoked = client.revoke(args.serial, reason)
            _print(args, _message(revoked), f"{revoked.serial_number}: revoked ({args.reason})")
        elif args.command == "crl":
            crl = client.crl()
            if args.output:
                Path(args.output).write_bytes(crl.crl)
            data = _message(crl)
            data.pop("crl", None)
            _print(args, data, f"CRL number {crl.crl_number}, next update {data['next_update']}")
    return 0


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """`ca-client ARGV...`; `clock`: the agent's time and waits (the system's unless a test
    gives its own)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args, clock)
    except grpc.RpcError as exc:
        message = explain(args.server, exc) if args.server else None
        print(f"ca-client: error: {message or describe_error(exc)}", file=sys.stderr)
        return 1
    except NotSaved as exc:
        print(f"ca-client: error: {exc}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError, PinMismatch, WrongListener) as exc:
        print(f"ca-client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
