"""The data directory: where each file lives, creating a new CA (init), and loading it (serve).

The CA's certificates and their states live in the store (every worker and replica sees a
rotation); their keys are files here, one per CA certificate (``secrets/<kind>-<key id>``, or
the original ``secrets/root`` and ``secrets/intermediate``). ``root.pem``, ``intermediate.pem``
and ``admin/ca.pem`` are rewritten to follow the store, for the people and tools that read them."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .config import CaConfig, load_config, render_default_config
from .core.authority import CertificateAuthority
from .core.clock import Clock, SystemClock, utc_seconds
from .core.errors import ConfigurationError
from .core.hierarchy import Hierarchy, key_id, record_for
from .core.keys import SigningKey, generate_key
from .core.profile import Issuer, PublicUrls, build_intermediate, build_root, ca_name, pem
from .core.root_documents import CA_OCSP, LEGACY_INTERMEDIATE_OCSP, LEGACY_ROOT_CRL, ROOT_CRL
from .core.store import AuditEvent, CaCertificateRecord, Store
from .files import (
    ENCRYPTED_KEY_SUFFIX,
    ML_DSA_KEYS_UNENCRYPTABLE,
    PASSPHRASE_HINT,
    atomic_write,
    check_key_file_mode,
    check_not_world_writable,
    is_weakly_encrypted,
    load_private_key,
    make_private_dir,
    write_private_key,
)
from .store import open_store

ROOT_VALIDITY = dt.timedelta(days=3650)
INTERMEDIATE_VALIDITY = dt.timedelta(days=1825)
ADMIN_VALIDITY = dt.timedelta(days=365)
INIT_ACTOR = "signet:init"

log = structlog.get_logger("signet.datadir")


@dataclass(frozen=True, slots=True)
class DataDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def root_cert(self) -> Path:
        return self.path / "root.pem"

    @property
    def intermediate_cert(self) -> Path:
        return self.path / "intermediate.pem"

    @property
    def secrets(self) -> Path:
        return self.path / "secrets"

    @property
    def serving_credential(self) -> Path:
        """The serving certificate's key and chain, shared by every worker."""
        return self.secrets / "serving.pem"

    @property
    def ocsp_responder_credential(self) -> Path:
        """The delegated OCSP responder's key and certificate, shared by every worker."""
        return self.secrets / "ocsp-responder.pem"

    def key_file(self, name: str, *, encrypted: bool | None = None) -> Path:
        """A CA key: secrets/<name>.key.p12 (PKCS#12, passphrase-encrypted) or the PKCS#8 PEM
        secrets/<name>.key.pem (unencrypted, or encrypted by an older Signet). By default the
        one there is, the .p12 first; `encrypted` names the one to write."""
        p12 = self.secrets / f"{name}.key{ENCRYPTED_KEY_SUFFIX}"
        if encrypted is None:
            encrypted = p12.exists()
        return p12 if encrypted else self.secrets / f"{name}.key.pem"

    @property
    def root_key(self) -> Path:
        return self.key_file("root")

    def ca_key_file(self, kind: str, kid: str, *, encrypted: bool | None = None) -> Path:
        """The key of one CA certificate made by a rotation: secrets/<kind>-<key id>.key.*"""
        return self.key_file(f"{kind}-{kid}", encrypted=encrypted)

    def keys_encrypted(self) -> bool:
        """Whether this directory's CA keys are kept encrypted (new ones are written alike)."""
        return any(p.name.endswith(f".key{ENCRYPTED_KEY_SUFFIX}") for p in self.secrets.glob("*"))

    def intermediate_csr(self, kid: str) -> Path:
        return self.path / f"intermediate-{kid}.csr.pem"

    @property
    def intermediate_key(self) -> Path:
        return self.key_file("intermediate")

    @property
    def admin(self) -> Path:
        return self.path / "admin"

    @property
    def serve_json(self) -> Path:
        return self.path / "serve.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "serve.lock"

    def exists(self) -> bool:
        return self.config.exists() or self.root_cert.exists()

    def is_empty_or_missing(self) -> bool:
        if not self.path.exists():
            return True
        return all(p == self.lock_file for p in self.path.iterdir())

    def check_permissions(self) -> None:
        """Refuse to serve what another local user could have changed: a world-writable data
        directory, subdirectory or config.toml, or an admin key readable by others or not
        ours. (The CA keys are checked as they are loaded.)"""
        for path in (self.path, self.secrets, self.admin, self.config):
            if path.exists():
                check_not_world_writable(path)
        admin_key = self.admin / "key.pem"
        if admin_key.exists():
            check_key_file_mode(admin_key)

    def lock(self) -> IO[str]:
        """Take the data directory's serve lock (released when the process exits), or raise
        ConfigurationError naming the process that holds it."""
        make_private_dir(self.path)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = open(fd, "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigurationError(
                f"{self.path} is already being served (pid {holder}); stop that server first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle


def initial_public_urls(config: CaConfig) -> PublicUrls | None:
    """Where the intermediate says its status is published, for its whole life: public_url if
    set, else the configured HTTP listener (what the leaves carry by default), if it has a
    fixed port."""
    if config.issuance.public_urls is not None:
        return config.issuance.public_urls
    listen = config.server.http_listen
    if not listen or listen.rsplit(":", 1)[-1] in ("", "0"):
        return None
    return PublicUrls(f"http://{listen}")


def write_public(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def init_ca(
    data_dir: Path,
    *,
    trust_domain: str,
    key_type: str,
    passphrase: bytes | None = None,
    store_url: str | None = None,
    clock: Clock | None = None,
    public_url: str | None = None,
    http_listen: str | None = None,
) -> CaConfig:
    """Create a root, an online intermediate, admin credentials, the database and config.toml.
    Refuses to touch a directory that already holds a CA."""
    d = DataDir(data_dir)
    if d.exists():
        raise ConfigurationError(f"{data_dir} already holds a CA; refusing to overwrite it")
    if passphrase and key_type == "ml-dsa-65":  # before anything is made
        raise ConfigurationError(ML_DSA_KEYS_UNENCRYPTABLE)
    clock = clock or SystemClock()
    make_private_dir(data_dir)
    # The database first: an unusable or unreachable store, or one that already holds a CA
    # (a shared PostgreSQL database), stops init before any key is made.
    store = open_store(store_url or f"sqlite:///{data_dir / 'ca.db'}")
    try:
        if store.audit_events(limit=1):
            raise ConfigurationError(
                "the database already holds a CA; refusing to overwrite it (replicas use a "
                "copy of the first data directory: see the README)"
            )
        make_private_dir(d.secrets)
        make_private_dir(d.admin)
        write_public(
            d.config,
            render_default_config(trust_domain, key_type, store_url or "", public_url or ""),
        )
        overrides = {"store": store_url, "http_listen": http_listen}
        config = load_config(data_dir, overrides)
        now = utc_seconds(clock.now())

        root_key = generate_key(key_type)
        root_cert = build_root(
            root_key,
            ca_name(trust_domain, f"Signet Root CA ({trust_domain})"),
            now,
            now + ROOT_VALIDITY,
        )
        int_key = generate_key(key_type)
        int_cert = build_intermediate(
            Issuer(root_cert, root_key, ()),
            int_key.public_key(),
            ca_name(trust_domain, f"Signet Intermediate CA ({trust_domain})"),
            now,
            now + INTERMEDIATE_VALIDITY,
            initial_public_urls(config),
        )
        encrypted = bool(passphrase)
        write_private_key(d.key_file("root", encrypted=encrypted), root_key, passphrase)
        write_private_key(d.key_file("intermediate", encrypted=encrypted), int_key, passphrase)
        write_public(d.root_cert, pem(root_cert))
        write_public(d.intermediate_cert, pem(int_cert))

        store.append_audit(
            AuditEvent(now, "init", INIT_ACTOR, None, f"trust_domain={trust_domain}")
        )
        records = _seed_records(root_cert, int_cert, now)
        store.seed_ca_certificates(records, key_id(int_cert))
        authority = CertificateAuthority(
            store=store,
            clock=clock,
            policy=config.policy,
            settings=config.issuance,
            hierarchy=Hierarchy.of(
                root_cert, int_cert, root_key=root_key, intermediate_key=int_key, now=now
            ),
        )
        authority.root_documents.sign()
        write_admin_credentials(authority, d.admin, f"spiffe://{trust_domain}/admin")
    finally:
        store.close()
    return config


def write_admin_credentials(authority: CertificateAuthority, out: Path, identity: str) -> None:
    key = generate_key("ec-p256")
    issued = authority.issue_for(
        public_key=key.public_key(),
        identity=identity,
        lifetime=ADMIN_VALIDITY,
        actor=INIT_ACTOR,
        action="issue-admin",
    )
    write_private_key(out / "key.pem", key)
    # Leaf then intermediate: what TLS clients (grpcurl, curl, Go, Python) present as a chain.
    write_public(out / "cert.pem", issued.certificate_pem + issued.chain_pem)
    write_public(out / "ca.pem", authority.hierarchy.roots_pem)


def _seed_records(
    root: x509.Certificate, intermediate: x509.Certificate, now: dt.datetime
) -> list[CaCertificateRecord]:
    return [
        record_for(root, "root", "active", now),
        record_for(intermediate, "intermediate", "active", now),
    ]


class CaKeys:
    """The CA keys this data directory holds, found by the certificate they belong to (and
    checked against it), loaded once each."""

    def __init__(self, data: DataDir, passphrase: bytes | None) -> None:
        self._d, self._passphrase = data, passphrase
        self._loaded: dict[tuple[Path, int], SigningKey] = {}
        self._lock = threading.Lock()

    def candidates(self, kind: str, kid: str) -> list[Path]:
        legacy = "root" if kind == "root" else "intermediate"
        return [self._d.ca_key_file(kind, kid), self._d.key_file(legacy)]

    def key_for(self, record: CaCertificateRecord, cert: x509.Certificate) -> SigningKey | None:
        for path in self.candidates(record.kind, record.key_id):
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            with self._lock:
                key = self._loaded.get((path, mtime))
            if key is None:
                key = load_private_key(path, self._passphrase)  # bad mode, passphrase: say so
                with self._lock:
                    self._loaded[(path, mtime)] = key
            if _spki(key) == cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ):
                return key
        return None

    def write(self, kind: str, kid: str, key: SigningKey) -> Path:
        path = self._d.ca_key_file(kind, kid, encrypted=bool(self._passphrase))
        if path.exists():
            raise ConfigurationError(f"{path} already exists")
        write_private_key(path, key, self._passphrase)
        return path


def seed_from_files(d: DataDir, store: Store, now: dt.datetime) -> None:
    """A CA from before rotations keeps its root and intermediate in root.pem and
    intermediate.pem alone: record them in the store, once (every later start reads the store)."""
    for path in (d.root_cert, d.intermediate_cert, d.intermediate_key):
        if not path.exists():
            raise ConfigurationError(f"{path} is missing: is {d.path} a Signet data directory?")
    root = x509.load_pem_x509_certificate(d.root_cert.read_bytes())
    int_cert = x509.load_pem_x509_certificate(d.intermediate_cert.read_bytes())
    store.seed_ca_certificates(
        _seed_records(root, int_cert, now),
        key_id(int_cert),
        [
            (LEGACY_ROOT_CRL, ROOT_CRL + key_id(root)),
            (LEGACY_INTERMEDIATE_OCSP, CA_OCSP + _serial(int_cert)),
        ],
    )


def _serial(cert: x509.Certificate) -> str:
    from .core.profile import serial_hex

    return serial_hex(cert.serial_number)


def hierarchy_loader(store: Store, keys: CaKeys) -> Callable[[], Hierarchy]:
    def load() -> Hierarchy:
        generation = store.ca_generation()  # first: a change after it is seen next time
        return Hierarchy.load(store.ca_certificates(), keys.key_for, generation)

    return load


def publish_ca_files(d: DataDir, hierarchy: Hierarchy) -> None:
    """root.pem (every published root), intermediate.pem (the issuing one) and admin/ca.pem
    follow the store; rewritten only when they differ (several workers may do this at once:
    each write is atomic and the same)."""
    issuing = pem(hierarchy.issuing.certificate)
    for path, text in (
        (d.root_cert, hierarchy.roots_pem),
        (d.intermediate_cert, issuing),
        (d.admin / "ca.pem", hierarchy.roots_pem),
    ):
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            if path.parent == d.admin and not d.admin.exists():
                continue
        write_public(path, text)


@dataclass(frozen=True, slots=True)
class LoadedCa:
    config: CaConfig
    store: Store
    authority: CertificateAuthority
    keys: CaKeys | None = None


def load_ca(config: CaConfig, passphrase: bytes | None, clock: Clock | None = None) -> LoadedCa:
    """Open an initialised data directory for serving. Needs an intermediate key only: the
    root key may live offline."""
    d = DataDir(config.data_dir)
    clock = clock or SystemClock()
    # Fail now on bad modes or a wrong passphrase.
    for key in (d.root_key, d.intermediate_key):
        if key.exists():
            load_private_key(key, passphrase)
            if is_weakly_encrypted(key):
                log.warning(
                    "ca_key_weakly_encrypted",
                    path=str(key),
                    hint=f"2,048 PBKDF2 iterations; run: ca-server keys rewrap --data-dir {d.path}",
                )
    store = open_store(config.store_url)
    try:
        if not store.audit_events(limit=1):  # init always records itself
            where = (
                config.store_url.removeprefix("sqlite:///")
                if "sqlite" in config.store_url
                else ("the store")
            )
            raise ConfigurationError(
                f"{where} holds nothing of this CA (emptied, or a new database): restore it "
                "from a backup; serving from it would forget every certificate and revocation"
            )
        keys = CaKeys(d, passphrase)
        if not store.ca_certificates():
            seed_from_files(d, store, utc_seconds(clock.now()))
        load = hierarchy_loader(store, keys)
        hierarchy = load()
        try:
            hierarchy.issuing  # noqa: B018 - raises when no intermediate key is here
        except ValueError:
            active = hierarchy.intermediates[0]
            raise ConfigurationError(
                f"no key for the intermediate {active.certificate.subject.rfc4514_string()} in "
                f"{d.secrets} (expected {keys.candidates('intermediate', active.key_id)[0].name}): "
                "copy it from the machine that made it"
            ) from None
    except BaseException:
        store.close()
        raise
    authority = CertificateAuthority(
        store=store,
        clock=clock,
        policy=config.policy,
        settings=config.issuance,
        hierarchy=hierarchy,
        load_hierarchy=load,
    )
    return LoadedCa(config, store, authority, keys)


def rewrap_keys(data_dir: Path, passphrase: bytes | None) -> list[tuple[Path, Path]]:
    """Re-encrypt the CA keys in secrets/ (those not moved offline) as PKCS#12 with
    KDF_ROUNDS iterations; return (old, new) paths. The new file is written and read back
    before the old one goes: at every moment one of them holds the key."""
    if not passphrase:
        raise ConfigurationError(f"keys rewrap needs the keys' passphrase: {PASSPHRASE_HINT}")
    d = DataDir(data_dir)
    done = []
    made = sorted({p.name.split(".key")[0] for p in d.secrets.glob("*-*.key.*")})
    for name in ("root", "intermediate", *made):  # and those made by rotations
        old = d.key_file(name)
        if not old.exists():
            continue  # the root key may live offline
        key = load_private_key(old, passphrase)
        new = d.key_file(name, encrypted=True)
        write_private_key(new, key, passphrase)
        if _spki(load_private_key(new, passphrase)) != _spki(key):
            raise ConfigurationError(f"{new} does not read back as the key of {old}")
        if old != new:
            old.unlink(missing_ok=True)
        done.append((old, new))
    if not done:
        raise ConfigurationError(f"no CA key in {d.secrets}: is {d.path} a Signet data directory?")
    return done


def _spki(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
