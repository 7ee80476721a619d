"""Configuration: ``<data-dir>/config.toml``, overridden by ``SIGNET_*`` environment variables,
overridden by command-line flags. Parsed once, validated once, into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .core.authority import IssuanceSettings
from .core.durations import format_duration, parse_duration
from .core.errors import ConfigurationError
from .core.keys import CA_KEY_TYPES
from .core.names import normalize_dns_name, parse_spiffe_id, validate_trust_domain
from .core.policy import Policy, WorkloadRule
from .core.profile import PublicUrls

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9469"
DEFAULT_BOOTSTRAP_LISTEN = "127.0.0.1:50052"
DEFAULT_TRUST_DOMAIN = "signet.local"
DEFAULT_KEY_TYPE = "ec-p256"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str = DEFAULT_LISTEN
    bootstrap_listen: str = DEFAULT_BOOTSTRAP_LISTEN  # "" turns enrollment off
    http_listen: str = DEFAULT_HTTP_LISTEN  # "" turns the relying-party listener off
    metrics_listen: str = DEFAULT_METRICS_LISTEN  # Prometheus /metrics and /healthz; "" = off
    http_request_timeout: dt.timedelta = dt.timedelta(seconds=10)
    http_max_body: int = 16 * 1024
    server_names: tuple[str, ...] = ()
    log_level: str = "info"
    serving_validity: dt.timedelta = dt.timedelta(hours=24)
    shutdown_grace: dt.timedelta = dt.timedelta(seconds=10)
    max_workers: int = 16
    # WatchRevocations streams each hold a thread while open: at most this many per process
    # (more are RESOURCE_EXHAUSTED), served by threads of their own beside max_workers.
    max_watchers: int = 256
    # A stream whose reader has not taken a message for this long is cut off.
    watch_stall_timeout: dt.timedelta = dt.timedelta(seconds=30)
    workers: int = 0  # server processes sharing the ports; 0: one per core
    store: str = ""  # empty: sqlite:///<data-dir>/ca.db


@dataclass(frozen=True, slots=True)
class CaConfig:
    data_dir: Path
    trust_domain: str
    key_type: str
    server: ServerSettings
    issuance: IssuanceSettings
    policy: Policy

    @property
    def store_url(self) -> str:
        return self.server.store or f"sqlite:///{self.data_dir / 'ca.db'}"


def audited_settings(config: CaConfig) -> dict[str, str]:
    """The settings in force, flattened to "section.name" -> text, for the audit trail's
    record of configuration changes. config.toml holds no secrets; a store URL's password
    (from the environment) is left out all the same."""
    out = {"trust_domain": config.trust_domain, "key_type": config.key_type}
    for section, values in (
        ("server", config.server),
        ("issuance", config.issuance),
        ("policy", config.policy),
    ):
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if field.name == "store" and url_has_password(str(value)):
                value = "<a URL with a password>"
            text = format_duration(value) if isinstance(value, dt.timedelta) else str(value)
            out[f"{section}.{field.name}"] = text
    return out


def url_has_password(url: str) -> bool:
    """Whether a database URL carries a password (user:password@ or password=)."""
    netloc = url.split("://", 1)[-1].split("/", 1)[0]
    return ("@" in netloc and ":" in netloc.rsplit("@", 1)[0]) or "password=" in url


def default_admin_patterns(trust_domain: str) -> list[str]:
    return [f"spiffe://{trust_domain}/admin", f"spiffe://{trust_domain}/admin/*"]


def render_default_config(
    trust_domain: str, key_type: str, store: str = "", public_url: str = ""
) -> str:
    """The config.toml that init writes: every setting, at its default, with what it means.
    A store URL given at init is kept (so that copies of the directory, the replicas, find the
    shared database) unless it holds a password: config.toml is not a secret."""
    if store and url_has_password(store):
        store = ""
    s, i = ServerSettings(), IssuanceSettings()
    admins = ", ".join(f'"{p}"' for p in default_admin_patterns(trust_domain))
    d = format_duration
    return f"""\
# Signet CA configuration, written by `ca-server init`.
# Precedence: command-line flag > environment variable SIGNET_<NAME> > this file > default.
# Durations: a number and a unit (s, m, h, d), e.g. "24h", "90m".

# SPIFFE trust domain of every identity this CA issues (spiffe://<trust_domain>/...). Fixed at init.
trust_domain = "{trust_domain}"
# Algorithm of the CA keys (ec-p256, ec-p384, rsa-3072, ed25519, ml-dsa-65). Fixed at init.
key_type = "{key_type}"

[server]
# API address, mTLS only (flag --listen, env SIGNET_LISTEN). Port 0 picks a free port.
listen = "{s.listen}"
# Server-authenticated TLS serving Enroll alone: a one-time bootstrap token stands in for a
# client certificate (flag --bootstrap-listen, env SIGNET_BOOTSTRAP_LISTEN). "" turns it off.
bootstrap_listen = "{s.bootstrap_listen}"
# Plain HTTP for relying parties: OCSP (/ocsp), the CRL (/crl), the CA certificate (/ca.crt)
# (flag --http-listen, env SIGNET_HTTP_LISTEN). "" turns it off.
http_listen = "{s.http_listen}"
# Prometheus GET /metrics and GET /healthz, never on the mTLS port (flag --metrics-listen, env
# SIGNET_METRICS_LISTEN). "" turns it off.
metrics_listen = "{s.metrics_listen}"
# Limits of that listener: time to receive a request body, and its largest size in bytes
# (an OCSP request is ~100 bytes).
http_request_timeout = "{d(s.http_request_timeout)}"
http_max_body = {s.http_max_body}
# Extra DNS names / IPs on the server's own certificate, besides localhost and 127.0.0.1.
server_names = []
# debug, info, warning, error (flag --log-level, env SIGNET_LOG_LEVEL).
log_level = "{s.log_level}"
# Lifetime of the server's own serving certificate; it is replaced at 2/3 of it, without restart.
serving_validity = "{d(s.serving_validity)}"
# On SIGTERM, in-flight RPCs get this long to finish.
shutdown_grace = "{d(s.shutdown_grace)}"
# Threads serving RPCs, in each server process.
max_workers = {s.max_workers}
# Open WatchRevocations streams per server process (each holds a thread of its own), and how
# long a stream's reader may leave a message untaken before the stream is cut off.
max_watchers = {s.max_watchers}
watch_stall_timeout = "{d(s.watch_stall_timeout)}"
# Server processes sharing the ports (flag --workers, env SIGNET_WORKERS); 0: one per core.
workers = {s.workers}
# Database URL; empty means sqlite:///<data-dir>/ca.db (flag --store, env SIGNET_STORE).
# postgresql://user@host/db is shared by several replicas (put a password in SIGNET_STORE or in
# ~/.pgpass, not here).
store = "{store}"
# Base URL that issued certificates carry in AIA (OCSP, caIssuers) and CRL Distribution Points.
# Unset: http://<the bound http_listen address>; set it to the name relying parties can reach
# (flag --public-url, env SIGNET_PUBLIC_URL). The intermediate carries the one known at init
# (its AIA and CRL Distribution Points point at the root's answers) for its whole life.
{f'public_url = "{public_url}"' if public_url else '# public_url = "http://ca.example.internal:8080"'}

[issuance]
# Lifetime of a certificate when the request does not ask for one.
default_validity = "{d(i.default_validity)}"
# Longest lifetime a request may ask for (longer requests are refused, not shortened).
max_validity = "{d(i.max_validity)}"
# Shortest lifetime a request may ask for.
min_validity = "{d(i.min_validity)}"
# not_before is set this far in the past, for clients whose clocks run slow.
backdate = "{d(i.backdate)}"
# How long a CRL is valid (nextUpdate - thisUpdate); it is rebuilt on revocation and at half-life.
crl_validity = "{d(i.crl_validity)}"
# How long the root's CRL and its OCSP answer about the intermediate are valid. The root signs
# them ahead of time; they are re-signed at 2/3 of this by a server that has the root key, or
# by `ca-server root sign` where the key is kept offline (the server warns from then on).
root_crl_validity = "{d(i.root_crl_validity)}"
# How long an OCSP response is valid (nextUpdate - thisUpdate). A response is signed when first
# asked for, kept, and re-signed at half this.
ocsp_validity = "{d(i.ocsp_validity)}"
# Who signs OCSP responses: "delegated" (a short-lived responder certificate with EKU
# OCSPSigning, issued by the intermediate and replaced automatically) or "ca" (the intermediate).
ocsp_signing = "delegated"
# Lifetime of the delegated responder certificate (at least 3 x ocsp_validity).
ocsp_signer_validity = "{d(i.ocsp_signer_validity)}"
# How long a caller's "not revoked" check is reused before asking the store again.
# A revocation by any process sharing the database voids it within 250 ms regardless.
auth_cache_ttl = "{d(i.auth_cache_ttl)}"
# Most DNS names + IP addresses on one certificate, and so on one bootstrap token (the SPIFFE ID
# is not counted). More is refused with RESOURCE_EXHAUSTED.
max_names = {i.max_names}
# Per identity (SPIFFE ID): at most identity_rate_limit certificates issued within
# identity_rate_window, and at most identity_live_limit unrevoked and unexpired at once; more
# is refused with RESOURCE_EXHAUSTED and a RetryInfo saying when. 0 turns a limit off. The CA's
# own certificates are not counted.
identity_rate_limit = {i.identity_rate_limit}
identity_rate_window = "{d(i.identity_rate_window)}"
identity_live_limit = {i.identity_live_limit}
# Certificates expired longer than this are deleted from the database (their audit events
# stay); expired ones have already left the CRL. "off" keeps every certificate.
retain_expired = "{d(i.retain_expired) if i.retain_expired else "off"}"
# When the issuing intermediate has lived this fraction of its life, a server with the root key
# makes a new one (without it, it warns: run the ceremony, see docs/operations.md); "off" rotates
# only on demand (ca-server intermediate rotate). New intermediates live intermediate_validity.
intermediate_rotate_at = "2/3"
intermediate_validity = "{d(i.intermediate_validity)}"

[policy]
# SPIFFE ID patterns with the admin role ('*' = one path segment, '**' = one or more).
admins = [{admins}]
# DNS names (patterns: '*' alone = any; '*.example.com' = one label) and IP ranges admins may sign.
admin_dns_names = ["*"]
admin_ip_ranges = ["0.0.0.0/0", "::/0"]

# Workloads: which DNS names and IPs an identity may hold besides its own SPIFFE ID.
# A workload may sign and renew only for its own identity, and revoke only its own certificates.
# [[policy.workloads]]
# identity = "spiffe://{trust_domain}/web/*"
# dns_names = ["*.web.internal", "web.internal"]
# ip_ranges = ["10.0.0.0/8"]
"""


class _Section:
    """Reads one TOML table, rejecting keys it does not know (typos fail loudly)."""

    def __init__(self, name: str, data: Mapping[str, Any], known: set[str]) -> None:
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(
                f"config.toml: unknown setting(s) {', '.join(sorted(unknown))} in [{name}]"
            )
        self.name, self.data = name, data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def duration(self, key: str, default: dt.timedelta) -> dt.timedelta:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            raise ConfigurationError(f"config.toml [{self.name}] {key}: {exc}") from None


def _networks(
    values: list[str], where: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise ConfigurationError(f"config.toml {where}: {exc}") from None


def _listen_or_off(name: str, value: object) -> str:
    text = str(value).strip()
    if text.lower() in ("", "off", "none"):
        return ""
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f'{name} {text!r}: use HOST:PORT, or "" to turn it off')
    return text


def _rotate_at(value: object) -> float | None:
    """A fraction of the intermediate's life (2/3, 0.75, 75%), or "off"."""
    if value == "off":
        return None
    text = str(value).strip()
    try:
        fraction = Fraction(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    except (ValueError, ZeroDivisionError):
        fraction = Fraction(0)
    if not 0 < fraction < 1:
        raise ConfigurationError(
            f"config.toml [issuance] intermediate_rotate_at {value!r}: write a fraction "
            'between 0 and 1 (e.g. "2/3", "75%") or "off"'
        )
    return float(fraction)


def _ocsp_signing(value: object) -> bool:
    if value not in ("delegated", "ca"):
        raise ConfigurationError(
            f'config.toml [issuance] ocsp_signing: {value!r}; use "delegated" or "ca"'
        )
    return value == "delegated"


def _check_server_name(name: str) -> None:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        try:
            normalize_dns_name(name)
        except ValueError as exc:
            raise ConfigurationError(f"server name {name!r}: {exc}") from None


def _positive_int(value: Any, name: str, section: str = "server") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"config.toml [{section}] {name}: {value!r} is not a positive integer"
        )
    return value


def _count(value: Any, name: str) -> int:
    """A limit of [issuance]: 0 (off) or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"config.toml [issuance] {name}: {value!r} is not a whole number (0 turns it off)"
        )
    return value


def _workers(value: Any) -> int:
    """0 (one per core) or a positive count; from a flag or env as text, from TOML as int."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 256:
        raise ConfigurationError(
            f"workers: {value!r} is not a number of processes (0 = one per core, at most 256)"
        )
    return value


def resolved_workers(settings: ServerSettings) -> int:
    return settings.workers or os.cpu_count() or 1


def _identity_patterns(patterns: list[str], trust_domain: str, where: str) -> tuple[str, ...]:
    """Patterns are SPIFFE IDs of this trust domain whose segments may be '*' or '**'."""
    for p in patterns:
        concrete = "/".join("x" if seg in ("*", "**") else seg for seg in str(p).split("/"))
        try:
            ok = parse_spiffe_id(concrete).trust_domain == trust_domain
        except ValueError:
            ok = False
        if not ok:
            raise ConfigurationError(
                f"config.toml {where}: {p!r} is not a SPIFFE ID pattern in the trust domain "
                f"{trust_domain!r} (spiffe://{trust_domain}/path, segments may be * or **)"
            )
    return tuple(str(p) for p in patterns)


def _fixed_at_init(path: Path, raw: Mapping[str, Any], name: str, chosen: str) -> None:
    """A flag or env var must not silently re-point an existing CA at another domain or key."""
    if name in raw and chosen != raw[name]:
        raise ConfigurationError(
            f"{name} is fixed when the CA is created: {path} says {raw[name]!r}, "
            f"but {chosen!r} was asked for (flag or SIGNET_{name.upper()})"
        )


def load_config(
    data_dir: Path, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> CaConfig:
    """Load <data_dir>/config.toml (defaults if absent), then env SIGNET_*, then overrides
    (flag values; None means "not given")."""
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = data_dir / "config.toml"
    try:
        raw = tomllib.loads(path.read_text()) if path.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None

    top = _Section("top level", raw, {"trust_domain", "key_type", "server", "issuance", "policy"})
    srv = _Section(
        "server",
        raw.get("server", {}),
        {
            "bootstrap_listen",
            "http_listen",
            "metrics_listen",
            "http_request_timeout",
            "http_max_body",
            "listen",
            "server_names",
            "log_level",
            "serving_validity",
            "shutdown_grace",
            "max_workers",
            "max_watchers",
            "watch_stall_timeout",
            "workers",
            "store",
            "public_url",
        },
    )
    iss = _Section(
        "issuance",
        raw.get("issuance", {}),
        {
            "default_validity",
            "max_validity",
            "min_validity",
            "backdate",
            "crl_validity",
            "root_crl_validity",
            "ocsp_validity",
            "auth_cache_ttl",
            "ocsp_signing",
            "ocsp_signer_validity",
            "max_names",
            "identity_rate_limit",
            "identity_rate_window",
            "identity_live_limit",
            "retain_expired",
            "intermediate_rotate_at",
            "intermediate_validity",
        },
    )
    pol = _Section(
        "policy",
        raw.get("policy", {}),
        {"admins", "admin_dns_names", "admin_ip_ranges", "workloads"},
    )

    def pick(name: str, file_value: Any) -> Any:
        if name in overrides:
            return overrides[name]
        env_value = env.get("SIGNET_" + name.upper())
        if env_value:
            return env_value
        return file_value

    trust_domain = str(pick("trust_domain", top.get("trust_domain", DEFAULT_TRUST_DOMAIN)))
    _fixed_at_init(path, raw, "trust_domain", trust_domain)
    try:
        validate_trust_domain(trust_domain)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    key_type = str(pick("key_type", top.get("key_type", DEFAULT_KEY_TYPE)))
    _fixed_at_init(path, raw, "key_type", key_type)
    if key_type not in CA_KEY_TYPES:
        raise ConfigurationError(f"key_type {key_type!r}: choose one of {', '.join(CA_KEY_TYPES)}")

    server_names = pick("server_name", srv.get("server_names", []))
    if isinstance(server_names, str):
        server_names = [n.strip() for n in server_names.split(",") if n.strip()]
    for name in server_names:
        _check_server_name(str(name))
    log_level = str(pick("log_level", srv.get("log_level", "info"))).lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        raise ConfigurationError(f"log_level {log_level!r}: choose debug, info, warning or error")
    store = str(pick("store", srv.get("store", "")))
    if store and not store.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigurationError(
            f"unsupported store URL {store!r}: use sqlite:///<path> (the default is "
            "<data-dir>/ca.db) or postgresql://user@host/db"
        )
    defaults = ServerSettings()
    server = ServerSettings(
        listen=str(pick("listen", srv.get("listen", DEFAULT_LISTEN))),
        bootstrap_listen=_listen_or_off(
            "bootstrap_listen",
            pick("bootstrap_listen", srv.get("bootstrap_listen", DEFAULT_BOOTSTRAP_LISTEN)),
        ),
        http_listen=_listen_or_off(
            "http_listen", pick("http_listen", srv.get("http_listen", DEFAULT_HTTP_LISTEN))
        ),
        metrics_listen=_listen_or_off(
            "metrics_listen",
            pick("metrics_listen", srv.get("metrics_listen", DEFAULT_METRICS_LISTEN)),
        ),
        http_request_timeout=srv.duration("http_request_timeout", defaults.http_request_timeout),
        http_max_body=_positive_int(
            srv.get("http_max_body", defaults.http_max_body), "http_max_body"
        ),
        server_names=tuple(server_names),
        log_level=log_level,
        serving_validity=srv.duration("serving_validity", defaults.serving_validity),
        shutdown_grace=srv.duration("shutdown_grace", defaults.shutdown_grace),
        max_workers=_positive_int(srv.get("max_workers", defaults.max_workers), "max_workers"),
        max_watchers=_positive_int(srv.get("max_watchers", defaults.max_watchers), "max_watchers"),
        watch_stall_timeout=srv.duration("watch_stall_timeout", defaults.watch_stall_timeout),
        workers=_workers(pick("workers", srv.get("workers", defaults.workers))),
        store=store,
    )
    public_url = pick("public_url", srv.get("public_url"))

    i = IssuanceSettings()
    issuance = IssuanceSettings(
        default_validity=iss.duration("default_validity", i.default_validity),
        max_validity=iss.duration("max_validity", i.max_validity),
        min_validity=iss.duration("min_validity", i.min_validity),
        backdate=iss.duration("backdate", i.backdate),
        crl_validity=iss.duration("crl_validity", i.crl_validity),
        root_crl_validity=iss.duration("root_crl_validity", i.root_crl_validity),
        ocsp_validity=iss.duration("ocsp_validity", i.ocsp_validity),
        auth_cache_ttl=iss.duration("auth_cache_ttl", i.auth_cache_ttl),
        public_urls=PublicUrls(str(public_url)) if public_url else None,
        ocsp_delegated=_ocsp_signing(iss.get("ocsp_signing", "delegated")),
        ocsp_signer_validity=iss.duration("ocsp_signer_validity", i.ocsp_signer_validity),
        max_names=_positive_int(iss.get("max_names", i.max_names), "max_names", "issuance"),
        identity_rate_limit=_count(
            iss.get("identity_rate_limit", i.identity_rate_limit), "identity_rate_limit"
        ),
        identity_rate_window=iss.duration("identity_rate_window", i.identity_rate_window),
        identity_live_limit=_count(
            iss.get("identity_live_limit", i.identity_live_limit), "identity_live_limit"
        ),
        retain_expired=None
        if iss.get("retain_expired") == "off"
        else iss.duration("retain_expired", i.retain_expired or dt.timedelta(days=90)),
        intermediate_rotate_at=_rotate_at(iss.get("intermediate_rotate_at", "2/3")),
        intermediate_validity=iss.duration("intermediate_validity", i.intermediate_validity),
    )
    if issuance.ocsp_signer_validity < 3 * issuance.ocsp_validity:
        raise ConfigurationError(
            "config.toml [issuance]: ocsp_signer_validity must be at least 3 x ocsp_validity, "
            "so that no response outlives the certificate that signed it"
        )
    if not issuance.min_validity <= issuance.default_validity <= issuance.max_validity:
        raise ConfigurationError(
            "config.toml [issuance]: need min_validity <= default_validity <= max_validity"
        )

    workloads = []
    for n, entry in enumerate(pol.get("workloads", [])):
        w = _Section(f"policy.workloads #{n + 1}", entry, {"identity", "dns_names", "ip_ranges"})
        if "identity" not in entry:
            raise ConfigurationError(f"config.toml [[policy.workloads]] #{n + 1} needs identity")
        workloads.append(
            WorkloadRule(
                identity=_identity_patterns(
                    [w.get("identity", "")], trust_domain, f"[[policy.workloads]] #{n + 1}"
                )[0],
                dns_names=tuple(w.get("dns_names", [])),
                ip_ranges=_networks(w.get("ip_ranges", []), f"[[policy.workloads]] #{n + 1}"),
            )
        )
    policy = Policy(
        trust_domain=trust_domain,
        admins=_identity_patterns(
            pol.get("admins", default_admin_patterns(trust_domain)), trust_domain, "[policy] admins"
        ),
        admin_dns_names=tuple(pol.get("admin_dns_names", ["*"])),
        admin_ip_ranges=_networks(pol.get("admin_ip_ranges", ["0.0.0.0/0", "::/0"]), "[policy]"),
        workloads=tuple(workloads),
    )
    return CaConfig(data_dir, trust_domain, key_type, server, issuance, policy)
