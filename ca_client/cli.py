"""The `ca-client` command: renew a workload's certificate on disk, and the status, revoke and
crl RPCs for scripts (`--json`). The credentials in --out DIR (cert.pem, key.pem, ca.pem) are
the mTLS identity every call uses."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from ca_server.core.durations import parse_duration
from ca_server.logs import configure_logging
from signet.ca.v1 import ca_pb2

from .agent import Agent, AgentConfig, AgentGaveUp
from .client import CaClient
from .enroll import PinMismatch, enroll, fetch_pinned_root, normalize_fingerprint
from .files import FORMATS, check_formats, read_credentials, render, write_atomically

P12_PASSWORD_ENV = "SIGNET_P12_PASSWORD"  # noqa: S105 - the variable's name, not a secret


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
        "--server", default=os.environ.get("SIGNET_SERVER"), help="bootstrap address HOST:PORT"
    )
    enroll.add_argument("--token", default=os.environ.get("SIGNET_TOKEN"), help="one-time token")
    enroll.add_argument("--token-file", help="file holding the token (keeps it out of argv)")
    enroll.add_argument(
        "--root-fingerprint",
        default=os.environ.get("SIGNET_ROOT_FINGERPRINT"),
        help="SHA-256 of the root certificate (CreateBootstrapToken returns it)",
    )
    enroll.add_argument("--out", default=os.environ.get("SIGNET_OUT"), help="where to write")
    enroll.add_argument("--json", action="store_true", help="machine-readable output")
    enroll.add_argument("--format", default="pem", help="comma-separated outputs (as renew)")
    enroll.add_argument("--p12-password-file", help=f"or env {P12_PASSWORD_ENV}")

    agent = sub.add_parser("agent", help="keep DIR's certificate renewed, for ever")
    agent.add_argument("--server", default=os.environ.get("SIGNET_SERVER"), help="HOST:PORT")
    agent.add_argument("--out", default=os.environ.get("SIGNET_OUT"), help="credentials directory")
    agent.add_argument(
        "--bootstrap-server",
        default=os.environ.get("SIGNET_BOOTSTRAP_SERVER"),
        help="bootstrap address for (re-)enrolling (default: --server's host, port 50052)",
    )
    agent.add_argument("--token", default=os.environ.get("SIGNET_TOKEN"))
    agent.add_argument("--token-file", help="file holding a token (re-read at each enroll)")
    agent.add_argument("--root-fingerprint", default=os.environ.get("SIGNET_ROOT_FINGERPRINT"))
    agent.add_argument("--format", default="pem", help="comma-separated outputs (as renew)")
    agent.add_argument("--p12-password-file", help=f"or env {P12_PASSWORD_ENV}")
    agent.add_argument("--validity", help="requested lifetime of each renewal, e.g. 24h")
    agent.add_argument(
        "--renew-at", type=float, default=2 / 3, help="fraction of the lifetime (default 2/3)"
    )
    agent.add_argument("--on-renew", help="shell command to run after each renewal")
    agent.add_argument("--signal", default="HUP", help="signal for --signal-pid / --pid-file")
    agent.add_argument("--signal-pid", type=int, help="process to signal after each renewal")
    agent.add_argument("--pid-file", help="file holding the pid of the process to signal")
    agent.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    renew = sub.add_parser("renew", help="renew DIR's certificate with a new key, atomically")
    common(renew)
    renew.add_argument("--validity", help="requested lifetime, e.g. 24h (default: as before)")
    renew.add_argument(
        "--format",
        default="pem",
        help=f"comma-separated outputs: {', '.join(FORMATS)} (default pem)",
    )
    renew.add_argument(
        "--p12-password-file", help=f"password for keystore.p12 (or env {P12_PASSWORD_ENV})"
    )
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
    return CaClient(args.server, creds)


def _p12_password(args: argparse.Namespace) -> bytes | None:
    if args.p12_password_file:
        return Path(args.p12_password_file).read_bytes().rstrip(b"\r\n")
    secret = os.environ.get(P12_PASSWORD_ENV)
    return secret.encode() if secret else None


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
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    check_formats(formats, _p12_password(args))  # before the token is spent
    root = fetch_pinned_root(args.server, normalize_fingerprint(args.root_fingerprint))
    creds = enroll(args.server, args.token, root)
    files = render(creds, formats, _p12_password(args))
    write_atomically(Path(args.out), files)
    serial = f"{creds.certificate.serial_number:x}"
    _print(
        args,
        {"serial_number": serial, "not_after": creds.not_after.isoformat(), "files": sorted(files)},
        f"enrolled: serial {serial}, valid until {creds.not_after.isoformat()}, "
        f"written to {args.out}",
    )
    return 0


def _agent(args: argparse.Namespace) -> int:
    if not args.server or not args.out:
        raise UsageError("--server and --out are required")
    configure_logging(args.log_level)
    host = args.server.rpartition(":")[0]
    name = args.signal.upper().removeprefix("SIG")
    try:
        signal_number = signal.Signals["SIG" + name]
    except KeyError:
        raise UsageError(f"unknown signal {args.signal!r}") from None
    if not 0 < args.renew_at < 1:
        raise UsageError("--renew-at must be a fraction between 0 and 1, e.g. 0.667")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    check_formats(formats, _p12_password(args))
    config = AgentConfig(
        server=args.server,
        out=Path(args.out),
        bootstrap_server=args.bootstrap_server or f"{host}:50052",
        token_file=Path(args.token_file) if args.token_file else None,
        token=args.token,
        root_fingerprint=args.root_fingerprint,
        formats=formats,
        p12_password=_p12_password(args),
        validity=parse_duration(args.validity) if args.validity else None,
        fraction=args.renew_at,
        on_renew=args.on_renew,
        signal_number=signal_number,
        signal_pid=args.signal_pid,
        pid_file=Path(args.pid_file) if args.pid_file else None,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        Agent(config).run(stop)
    except AgentGaveUp as exc:
        print(f"ca-client: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "enroll":
        return _enroll(args)
    if args.command == "agent":
        return _agent(args)
    with _client(args) as client:
        if args.command == "renew":
            formats = [f.strip() for f in args.format.split(",") if f.strip()]
            validity = parse_duration(args.validity) if args.validity else None
            check_formats(formats, _p12_password(args))  # bad options fail before the CA
            creds = client.renew(validity, args.revoke_previous)
            files = render(creds, formats, _p12_password(args))
            write_atomically(Path(args.out), files)
            serial = f"{creds.certificate.serial_number:x}"
            _print(
                args,
                {
                    "serial_number": serial,
                    "not_after": creds.not_after.isoformat(),
                    "files": sorted(files),
                },
                f"renewed: serial {serial}, valid until {creds.not_after.isoformat()}, "
                f"written to {args.out}",
            )
        elif args.command == "status":
            reply = client.status(args.serial)
            data = _message(reply)
            data.pop("ocsp_response", None)
            status = ca_pb2.CertificateStatus.Name(reply.status)
            _print(args, data, f"{args.serial}: {status}")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except grpc.RpcError as exc:
        print(f"ca-client: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError, PinMismatch) as exc:
        print(f"ca-client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
