"""The ``ca-server`` command: ``init`` creates a CA, ``serve`` runs it (initialising first when
the data directory is empty). Every flag can also come from SIGNET_<FLAG> or config.toml."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from .ceremony import (
    Local,
    activate_intermediate,
    open_local,
    prepare_intermediate,
    rotate_intermediate_now,
    rotate_root_now,
    sign_intermediate_csr,
)
from .config import DEFAULT_KEY_TYPE, DEFAULT_TRUST_DOMAIN, load_config, resolved_workers
from .core.audit_chain import verify_store
from .core.authority import RenewalSelector
from .core.bootstrap import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL
from .core.durations import format_duration, parse_duration
from .core.errors import ConfigurationError, SignetError
from .core.hierarchy import key_id
from .core.keys import CA_KEY_TYPES
from .core.policy import CA_SERVER_NAME, Caller
from .core.profile import fingerprint_sha256
from .datadir import DataDir, init_ca, load_ca, rewrap_keys
from .logs import configure_logging
from .migrate import migrate, terminal_progress
from .server import raise_open_file_limit, start_server
from .status_report import collect, render
from .store import open_store
from .store.sql import SqlStore
from .supervisor import Supervisor, check_loads

log = structlog.get_logger("signet.cli")

LOCAL_OPERATOR = "signet:local-operator"
PASSPHRASE_ENV = "SIGNET_CA_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def _env(name: str) -> str | None:
    return os.environ.get("SIGNET_" + name.upper()) or None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ca-server", description="Signet certificate authority")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, at_init: bool = True) -> None:
        """The flags every command on a data directory takes; `at_init`: also the ones that
        only matter when a CA is created (init, and serve on an empty directory)."""
        sp.add_argument("--data-dir", help="CA data directory (default ./ca-data; SIGNET_DATA_DIR)")
        sp.add_argument(
            "--passphrase-file",
            help=f"file holding the passphrase of the CA keys (SIGNET_PASSPHRASE_FILE; "
            f"or put the passphrase itself in {PASSPHRASE_ENV})",
        )
        _log_level(sp)
        sp.add_argument("--store", help="database URL (default sqlite:///<data-dir>/ca.db)")
        if not at_init:
            sp.set_defaults(trust_domain=None, key_type=None)
            return
        sp.add_argument(
            "--trust-domain", help=f"SPIFFE trust domain, at init (default {DEFAULT_TRUST_DOMAIN})"
        )
        sp.add_argument(
            "--key-type",
            choices=CA_KEY_TYPES,
            help=f"CA key type, at init (default {DEFAULT_KEY_TYPE})",
        )

    init = sub.add_parser("init", help="create a new CA in the data directory")
    common(init)
    init.add_argument(
        "--public-url",
        help="base URL relying parties reach the HTTP listener at; the intermediate carries it "
        "for life (default http://<the http_listen address>)",
    )

    token = sub.add_parser("token", help="bootstrap tokens, minted locally (no server needed)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="mint a one-time enrollment token")
    common(create, at_init=False)
    create.add_argument("--identity", required=True, help="SPIFFE ID the certificate will carry")
    create.add_argument("--dns-name", action="append", default=[], help="repeatable")
    create.add_argument("--ip-address", action="append", default=[], help="repeatable")
    create.add_argument(
        "--token-ttl",
        help=f"how long the token can be used, e.g. 1h (default "
        f"{format_duration(DEFAULT_TOKEN_TTL)}, at most {_hours(MAX_TOKEN_TTL)})",
    )
    create.add_argument(
        "--certificate-ttl",
        help="lifetime of the certificate it yields, e.g. 24h (default: the CA's default_validity)",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")

    renew_now = sub.add_parser(
        "renew-now",
        help="pull the renewal window of matching certificates into the past, so that their "
        "holders renew when they next ask (within retry_after); criteria combine (all must "
        "match), at least one is needed",
    )
    common(renew_now, at_init=False)
    renew_now.add_argument("--serial", default="", help="one certificate, by serial (hex)")
    renew_now.add_argument(
        "--identity", default="", help="SPIFFE ID pattern ('*' one segment, '**' one or more)"
    )
    renew_now.add_argument(
        "--issued-before",
        type=_instant,
        help="certificates issued before this time (ISO 8601, e.g. 2026-01-31T12:00:00Z)",
    )
    renew_now.add_argument(
        "--issuer", default="", help="SHA-256 fingerprint of the issuing CA certificate"
    )
    renew_now.add_argument(
        "--explanation-url", default="", help="a page saying why, answered with the window"
    )
    renew_now.add_argument("--json", action="store_true", help="machine-readable output")

    root = sub.add_parser("root", help="what the root signs (run where the root key is kept)")
    root_sub = root.add_subparsers(dest="root_command", required=True)
    root_sign = root_sub.add_parser(
        "sign",
        help="sign the roots' CRLs and their OCSP answers about the intermediates into the "
        "store (a server with the root key does this by itself; with the key offline, run this "
        "before they expire: the server warns months ahead); with --csr, also sign a new "
        "intermediate prepared by `ca-server intermediate prepare`",
    )
    common(root_sign)
    root_sign.add_argument(
        "--csr", help="the intermediate's CSR (intermediate-<key id>.csr.pem) to sign as the root"
    )
    root_sign.add_argument(
        "--out", help="where to write the signed intermediate (default: beside the CSR, .pem)"
    )
    root_rotate = root_sub.add_parser(
        "rotate",
        help="a new root, published with the current one for --overlap (and a cross-certificate "
        "so that clients trusting only the old root still verify), and a new intermediate under "
        "it; the old root is withdrawn once the overlap is over and nothing chains to it",
    )
    common(root_rotate)
    root_rotate.add_argument(
        "--overlap",
        required=True,
        help="how long both roots are published at least, e.g. 30d: longer than your clients "
        "take to refresh their trust bundle (ca-client refreshes it at every renewal)",
    )

    inter = sub.add_parser("intermediate", help="rotate the online intermediate")
    inter_sub = inter.add_subparsers(dest="intermediate_command", required=True)
    rotate = inter_sub.add_parser(
        "rotate",
        help="a new intermediate signed by the root (its key in the data directory), issuing at "
        "once; the old one answers OCSP and CRL for what it issued until that expires",
    )
    common(rotate)
    prepare = inter_sub.add_parser(
        "prepare",
        help="the offline ceremony, step 1: a new intermediate key (secrets/) and its CSR "
        "(intermediate-<key id>.csr.pem) for `ca-server root sign --csr` where the root key is",
    )
    common(prepare)
    activate = inter_sub.add_parser(
        "activate",
        help="the offline ceremony, step 3: install the intermediate the root signed; it "
        "issues at once, on every worker and replica (each needs its key: see docs/deploy.md)",
    )
    common(activate)
    activate.add_argument("--cert", required=True, help="the signed intermediate (PEM)")

    status = sub.add_parser(
        "status",
        help="the CA's state: its certificates and their expiries, the store, the listeners, "
        "the last CRL, counts (--json for scripts)",
    )
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_sub.add_parser(
        "verify",
        help="check the audit trail's hash chain; names the first edited, deleted or "
        "reordered event (exit 1), else prints the chain's head to keep as an anchor",
    )
    common(audit_verify)

    keys = sub.add_parser("keys", help="the CA keys at rest")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rewrap = keys_sub.add_parser(
        "rewrap",
        help="re-encrypt the CA keys in secrets/ as PKCS#12 (PBKDF2-HMAC-SHA256, 600,000 "
        "iterations, AES-256-CBC), with the passphrase serve uses",
    )
    common(rewrap)

    move = sub.add_parser(
        "migrate", help="copy a CA's whole history into a new database (e.g. SQLite to PostgreSQL)"
    )
    move.add_argument("--from", dest="source", required=True, help="sqlite:///path/to/ca.db")
    move.add_argument("--to", dest="target", required=True, help="postgresql://user@host/db")
    _log_level(move)

    serve = sub.add_parser("serve", help="run the CA (initialises an empty data directory first)")
    common(serve)
    serve.add_argument("--listen", help="API address HOST:PORT, mTLS (default 127.0.0.1:50051)")
    serve.add_argument(
        "--server-name",
        action="append",
        help="extra DNS name or IP on the server certificate (repeatable; SIGNET_SERVER_NAME, "
        "comma-separated)",
    )
    serve.add_argument(
        "--bootstrap-listen",
        help='enrollment address HOST:PORT, server TLS (default 127.0.0.1:50052; "" = off)',
    )
    serve.add_argument(
        "--http-listen",
        help='HTTP address HOST:PORT for OCSP and the CRL (default 127.0.0.1:8080; "" = off)',
    )
    serve.add_argument(
        "--metrics-listen",
        help='Prometheus GET /metrics and GET /healthz HOST:PORT (default 127.0.0.1:9469; "" = '
        "off; SIGNET_METRICS_LISTEN)",
    )
    serve.add_argument(
        "--public-url", help="base URL issued certificates carry for OCSP, CA issuers and CRL"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the ports (default: one per core; SIGNET_WORKERS)",
    )
    return p


def _log_level(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least severe log lines written to stderr (default info; SIGNET_LOG_LEVEL)",
    )


def _hours(delta: dt.timedelta) -> str:
    """A duration as an operator writes a token's: whole hours as hours ("24h", not "1d")."""
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h" if seconds and seconds % 3600 == 0 else format_duration(delta)


def _instant(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _token_ttl(text: str | None) -> dt.timedelta | None:
    """--token-ttl, refused here with the limits written as durations (0s would otherwise
    fall back to the default)."""
    if text is None:
        return None
    ttl = parse_duration(text)
    if not dt.timedelta(0) < ttl <= MAX_TOKEN_TTL:
        raise ConfigurationError(
            f"--token-ttl must be more than 0s and at most {_hours(MAX_TOKEN_TTL)}, "
            f"got {_hours(ttl)}"
        )
    return ttl


def _passphrase(args: argparse.Namespace) -> bytes | None:
    path = args.passphrase_file or _env("passphrase_file")
    if path:
        try:
            text = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read passphrase file {path}: {exc.strerror}"
            ) from None
        if not text:
            raise ConfigurationError(f"passphrase file {path} is empty")
        return text
    secret = os.environ.get(PASSPHRASE_ENV)
    return secret.encode() if secret else None


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "trust_domain": args.trust_domain,
        "key_type": args.key_type,
        "store": args.store,
        "log_level": args.log_level,
        "listen": getattr(args, "listen", None),
        "http_listen": getattr(args, "http_listen", None),
        "metrics_listen": getattr(args, "metrics_listen", None),
        "bootstrap_listen": getattr(args, "bootstrap_listen", None),
        "server_name": getattr(args, "server_name", None),
        "public_url": getattr(args, "public_url", None),
        "workers": getattr(args, "workers", None),
    }


def _init(data_dir: Path, args: argparse.Namespace) -> None:
    boot = load_config(data_dir, _overrides(args))  # flags/env for trust domain and key type
    init_ca(
        data_dir,
        trust_domain=boot.trust_domain,
        key_type=boot.key_type,
        passphrase=_passphrase(args),
        store_url=boot.server.store or None,
        public_url=boot.issuance.public_urls.base if boot.issuance.public_urls else None,
        http_listen=boot.server.http_listen,
    )
    log.info("ca_initialised", data_dir=str(data_dir), trust_domain=boot.trust_domain)


def _display_path(path: Path) -> str:
    rel = os.path.relpath(path)
    return shlex.quote(rel if not rel.startswith("..") else str(path.resolve()))


def _grpcurl() -> str:
    """'grpcurl' if it is on PATH; else the one installed beside ca-server (the [grpcurl] extra),
    so the printed command works as printed from a venv that is not activated."""
    if shutil.which("grpcurl"):
        return "grpcurl"
    beside = Path(sys.executable).parent / "grpcurl"
    if beside.exists():
        return _display_path(beside)
    return "grpcurl"


def grpcurl_command(data_dir: Path, address: str) -> str:
    host, _, port = address.rpartition(":")
    # A wildcard bind is reachable on loopback.
    if host in {"", "0.0.0.0", "[::]", "::"}:  # noqa: S104
        host = "127.0.0.1"
    admin = data_dir / "admin"
    # The CA is verified by its reserved name, which policy grants to no one, as ca-client
    # does: a leaf this CA issued for localhost or 127.0.0.1 could otherwise pose as it.
    return (
        f"{_grpcurl()} -cacert {_display_path(admin / 'ca.pem')}"
        f" -cert {_display_path(admin / 'cert.pem')} -key {_display_path(admin / 'key.pem')}"
        f" -authority {CA_SERVER_NAME} {host}:{port} list"
    )


def _serve(data_dir: Path, args: argparse.Namespace) -> int:
    d = DataDir(data_dir)
    if not d.is_empty_or_missing() and not d.exists():
        raise ConfigurationError(
            f"{data_dir} is not empty and holds no Signet CA (no config.toml or root.pem)"
        )
    lock = d.lock()  # held until we exit: one server per data directory, init included
    if not d.exists():
        _init(data_dir, args)
    d.check_permissions()  # before config.toml is believed
    config = load_config(data_dir, _overrides(args))
    configure_logging(config.server.log_level)
    passphrase = _passphrase(args)
    grace = config.server.shutdown_grace.total_seconds()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    raise_open_file_limit()  # before any worker is forked: they inherit it
    workers = resolved_workers(config.server)
    if workers == 1:
        ca = load_ca(config, passphrase)
        running = start_server(ca)
        _print_ready(data_dir, config.trust_domain)
        stop.wait()
        log.info("shutting_down", grace_seconds=grace)
        running.stop(grace)
        ca.store.close()
    else:
        check_loads(config, passphrase)
        supervisor = Supervisor(config, passphrase, workers)
        supervisor.start()
        _print_ready(data_dir, config.trust_domain)
        supervisor.run(stop)
        log.info("shutting_down", grace_seconds=grace, workers=workers)
        supervisor.stop(grace)
    lock.close()
    log.info("stopped")
    return 0


def _print_ready(data_dir: Path, trust_domain: str) -> None:
    """The addresses as serve.json has them (ports resolved), each with what to do with it."""
    ready = json.loads(DataDir(data_dir).serve_json.read_text())
    address = ready["listen"]
    print(f"Signet CA ready on {address} (trust domain {trust_domain})", flush=True)
    if ready.get("bootstrap_listen"):
        boot = ready["bootstrap_listen"]
        print(f"Enroll on {boot} (bootstrap TLS: ca-client enroll --server {boot})", flush=True)
    if ready.get("http_listen"):
        base = f"http://{ready['http_listen']}"
        print(f"Relying parties: OCSP {base}/ocsp, CRL {base}/crl", flush=True)
    if ready.get("metrics_listen"):
        m = f"http://{ready['metrics_listen']}"
        print(f"Metrics: {m}/metrics (health: {m}/healthz)", flush=True)
    print(f"Try it: {grpcurl_command(data_dir, address)}", flush=True)


def _token_create(data_dir: Path, args: argparse.Namespace) -> int:
    """Mint a token straight into the store, as the operator at this machine (an admin)."""
    if not DataDir(data_dir).exists():
        raise ConfigurationError(f"{data_dir} holds no Signet CA: run ca-server init first")
    DataDir(data_dir).check_permissions()
    ca = load_ca(load_config(data_dir, _overrides(args)), _passphrase(args))
    try:
        operator = Caller(LOCAL_OPERATOR, "", is_admin=True)
        token, expires_at = ca.authority.create_token(
            operator,
            args.identity,
            args.dns_name,
            args.ip_address,
            _token_ttl(args.token_ttl),
            parse_duration(args.certificate_ttl) if args.certificate_ttl else None,
        )
        fingerprint = ca.authority.root_fingerprint()
    finally:
        ca.store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "token": token,
                    "expires_at": expires_at.isoformat(),
                    "root_fingerprint_sha256": fingerprint,
                }
            )
        )
    else:
        print(f"token: {token}\nexpires: {expires_at.isoformat()}\nroot fingerprint: {fingerprint}")
    return 0


def _renew_now(data_dir: Path, args: argparse.Namespace) -> int:
    """Pull windows forward straight in the store, as the operator at this machine (an admin):
    every worker and replica answers the new window at once."""
    if not DataDir(data_dir).exists():
        raise ConfigurationError(f"{data_dir} holds no Signet CA: run ca-server init first")
    DataDir(data_dir).check_permissions()
    ca = load_ca(load_config(data_dir, _overrides(args)), _passphrase(args))
    try:
        result = ca.authority.renew_now(
            Caller(LOCAL_OPERATOR, "", is_admin=True),
            RenewalSelector(
                serial=args.serial,
                identity=args.identity,
                issued_before=args.issued_before,
                issuer_fingerprint=args.issuer,
                explanation_url=args.explanation_url,
            ),
        )
    finally:
        ca.store.close()
    if args.json:
        window = {"start": result.window.start.isoformat(), "end": result.window.end.isoformat()}
        print(json.dumps({"certificates": result.count, "renewal_window": window}))
    else:
        print(
            f"{result.count} certificates are due for renewal now (window ended "
            f"{result.window.end.isoformat()}); their holders renew when they next ask"
        )
    return 0


def _local(data_dir: Path, args: argparse.Namespace) -> Local:
    if not DataDir(data_dir).exists():
        raise ConfigurationError(f"{data_dir} holds no Signet CA: run ca-server init first")
    DataDir(data_dir).check_permissions()
    return open_local(load_config(data_dir, _overrides(args)), _passphrase(args))


def _root(data_dir: Path, args: argparse.Namespace) -> int:
    """Sign what the roots sign (and a prepared intermediate), or rotate the root."""
    d = DataDir(data_dir)
    local = _local(data_dir, args)
    try:
        if args.root_command == "rotate":
            root = rotate_root_now(local, parse_duration(args.overlap))
            print(
                f"new root {root.subject.rfc4514_string()} (sha256 {fingerprint_sha256(root)}), "
                f"published with the old one for at least {args.overlap}; a new intermediate "
                "under it issues now. root.pem holds both roots: hand it to relying parties."
            )
            return 0
        if not local.root_documents().has_key:
            raise ConfigurationError(
                f"{d.root_key} is missing: run this where the root key is kept (a copy of the "
                "data directory with the root key put back, and the same --store)"
            )
        if args.csr:
            csr = Path(args.csr)
            out = (
                Path(args.out)
                if args.out
                else csr.with_name(csr.name.removesuffix(".csr.pem") + ".pem")
            )
            cert = sign_intermediate_csr(local, csr, out)
            print(
                f"signed {cert.subject.rfc4514_string()} into {out}; install it where its key "
                f"is: ca-server intermediate activate --cert {out.name}"
            )
            return 0
        publisher = local.root_documents()
        publisher.sign()
    finally:
        local.close()
    until = publisher.next_update()
    print(
        f"signed the root's CRL and its OCSP answers about the intermediates, valid until "
        f"{until.isoformat() if until else '?'}; servers take them up within a minute"
    )
    return 0


def _intermediate(data_dir: Path, args: argparse.Namespace) -> int:
    local = _local(data_dir, args)
    try:
        if args.intermediate_command == "rotate":
            cert = rotate_intermediate_now(local)
            print(
                f"new intermediate {cert.subject.rfc4514_string()} issues now (valid until "
                f"{cert.not_valid_after_utc.isoformat()}); servers take it up within a second. "
                f"Replicas need its key: copy secrets/intermediate-{key_id(cert)}.key.* to them"
            )
        elif args.intermediate_command == "prepare":
            key_path, csr_path = prepare_intermediate(local)
            print(
                f"wrote {_display_path(key_path)} (copy it to every replica now) and "
                f"{_display_path(csr_path)}; where the root key is: ca-server root sign "
                f"--csr {csr_path.name}"
            )
        else:
            cert = activate_intermediate(local, Path(args.cert))
            print(
                f"intermediate {cert.subject.rfc4514_string()} issues now; servers take it up "
                "within a second"
            )
    finally:
        local.close()
    return 0


def _audit_verify(data_dir: Path, args: argparse.Namespace) -> int:
    if not DataDir(data_dir).exists():
        raise ConfigurationError(f"{data_dir} holds no Signet CA: run ca-server init first")
    store = open_store(load_config(data_dir, _overrides(args)).store_url)
    try:
        verdict = verify_store(store)
        pending = bool(store.unsealed_audit(1))
    finally:
        store.close()
    if not verdict.ok:
        bad = verdict.first_bad
        assert bad is not None
        print(
            f"audit chain BROKEN at event {bad.id} (chain position {bad.seq}, "
            f"{bad.at.isoformat()} {bad.action} by {bad.actor}): {verdict.problem}; "
            f"the {verdict.sealed} events before it verify",
            file=sys.stderr,
        )
        return 1
    print(
        f"audit chain OK: {verdict.sealed} events; head {verdict.head_seq} "
        f"{verdict.head_hash}" + ("; newer events are not sealed yet" if pending else "")
    )
    return 0


def _keys_rewrap(data_dir: Path, args: argparse.Namespace) -> int:
    d = DataDir(data_dir)
    if not d.exists():
        raise ConfigurationError(f"{data_dir} holds no Signet CA")
    d.check_permissions()
    for old, new in rewrap_keys(data_dir, _passphrase(args)):
        print(f"re-encrypted {_display_path(old)} -> {_display_path(new)}")
    return 0


def _status(data_dir: Path, args: argparse.Namespace) -> int:
    if not DataDir(data_dir).exists():
        raise ConfigurationError(f"{data_dir} holds no Signet CA: run ca-server init first")
    report = collect(data_dir)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Copy everything; the source CA must not be serving meanwhile (its serve.lock)."""
    if not args.source.startswith("sqlite:///"):
        raise ConfigurationError("--from must be sqlite:///<path to ca.db>")
    path = Path(args.source.removeprefix("sqlite:///"))
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist")
    lock = DataDir(path.parent).lock() if (path.parent / "serve.lock").exists() else None
    source, target = open_store(args.source), open_store(args.target)
    try:
        if not isinstance(source, SqlStore) or not isinstance(target, SqlStore):
            raise ConfigurationError("migrate copies between SQL stores")
        summary = migrate(source, target, str(path.resolve()), terminal_progress())
    finally:
        source.close()
        target.close()
        if lock is not None:
            lock.close()
    rows = ", ".join(f"{n:,} {table}" for table, n in summary.copied.items())
    if summary.already_done:
        print(f"already migrated: the target holds {rows}")
    else:
        print(f"migrated {rows}")
    print(f'next: set store = "{args.target}" in [server] of config.toml (or --store)')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level or _env("log_level") or "info")
    data_dir = Path(getattr(args, "data_dir", None) or _env("data_dir") or "ca-data")
    try:
        if args.command == "token":
            return _token_create(data_dir, args)
        if args.command == "renew-now":
            return _renew_now(data_dir, args)
        if args.command == "migrate":
            return _migrate(args)
        if args.command == "root":
            return _root(data_dir, args)
        if args.command == "intermediate":
            return _intermediate(data_dir, args)
        if args.command == "audit":
            return _audit_verify(data_dir, args)
        if args.command == "status":
            return _status(data_dir, args)
        if args.command == "keys":
            return _keys_rewrap(data_dir, args)
        if args.command == "init":
            _init(data_dir, args)
            print(
                f"Created a Signet CA in {data_dir}; "
                f"start it with: ca-server serve --data-dir {data_dir}"
            )
            return 0
        return _serve(data_dir, args)
    except (ConfigurationError, SignetError, ValueError) as exc:
        print(f"ca-server: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
