"""Rotating the CA's own certificates from a data directory: the steps behind ``ca-server
intermediate rotate|prepare|activate``, ``root sign [--csr]`` and ``root rotate``, and the
automatic intermediate rotation of a server that has the root key.

Each writes the new keys into ``secrets/`` first and then records the change in the store in
one transaction: running servers (every worker and replica) take it up within a second. The
roots' documents (their CRLs and OCSP answers about the CA certificates they issued) are
signed for the new certificates wherever the root key is at hand."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .config import CaConfig
from .core.authority import CertificateAuthority
from .core.clock import Clock, SystemClock, utc_seconds
from .core.errors import ConfigurationError, InvalidRequest, SignetError
from .core.hierarchy import Hierarchy, generation_name, key_id, new_intermediate
from .core.keys import generate_key, signature_hash
from .core.policy import Caller
from .core.profile import Issuer, certificate_names, pem, serial_hex
from .core.revocation import Reason
from .core.rollover import activation, rotate_intermediate, rotate_root
from .core.root_documents import RootDocuments, RootPublisher
from .core.store import AuditEvent, CaCertificateRecord, Store
from .datadir import (
    CaKeys,
    DataDir,
    hierarchy_loader,
    initial_public_urls,
    publish_ca_files,
    seed_from_files,
    write_admin_credentials,
    write_public,
)
from .store import open_store

log = structlog.get_logger("signet.ceremony")

OPERATOR = "signet:local-operator"
ROOT_VALIDITY = dt.timedelta(days=3650)


@dataclass
class Local:
    """A data directory opened for one command: its store, keys and hierarchy."""

    data: DataDir
    config: CaConfig
    store: Store
    keys: CaKeys
    clock: Clock

    def hierarchy(self) -> Hierarchy:
        return hierarchy_loader(self.store, self.keys)()

    def now(self) -> dt.datetime:
        return utc_seconds(self.clock.now())

    def root_documents(self) -> RootPublisher:
        return RootPublisher(
            store=self.store,
            clock=self.clock,
            hierarchy=self.hierarchy,
            validity=self.config.issuance.root_crl_validity,
        )

    def close(self) -> None:
        self.store.close()


def open_local(
    config: CaConfig,
    passphrase: bytes | None,
    clock: Clock | None = None,
    store: Store | None = None,
) -> Local:
    d = DataDir(config.data_dir)
    if not d.exists():
        raise ConfigurationError(f"{d.path} holds no Signet CA: run ca-server init first")
    clock = clock or SystemClock()
    store = store or open_store(config.store_url)
    local = Local(d, config, store, CaKeys(d, passphrase), clock)
    if not store.ca_certificates():
        seed_from_files(d, store, local.now())
    return local


def _record(
    local: Local, records: list[CaCertificateRecord], action: str, detail: str, actor: str
) -> Hierarchy:
    local.store.save_ca_certificates(records, AuditEvent(local.now(), action, actor, None, detail))
    hierarchy = local.hierarchy()
    publish_ca_files(local.data, hierarchy)
    return hierarchy


def _sign_roots(local: Local, also: list[x509.Certificate] | None = None) -> RootDocuments | None:
    publisher = local.root_documents()
    if not publisher.has_key:
        return None
    return publisher.sign(also or [])


def rotate_intermediate_now(local: Local, actor: str = OPERATOR) -> x509.Certificate:
    """A new intermediate signed by the active root (its key must be here), issuing at once."""
    hierarchy = local.hierarchy()
    key = generate_key(local.config.key_type)
    cert, records = rotate_intermediate(
        hierarchy,
        key,
        local.config.trust_domain,
        local.now(),
        local.config.issuance.intermediate_validity,
        initial_public_urls(local.config),
    )
    local.keys.write("intermediate", key_id(cert), key)  # the key first, then the record
    _record(local, records, "rotate-intermediate", f"new intermediate {key_id(cert)}", actor)
    _sign_roots(local)
    log.info("intermediate_rotated", key_id=key_id(cert), not_after=str(cert.not_valid_after_utc))
    return cert


def prepare_intermediate(local: Local) -> tuple[Path, Path]:
    """The ceremony's first step, on the server: a new intermediate key (secrets/) and its CSR
    for the root to sign. Returns (key file, CSR file)."""
    key = generate_key(local.config.key_type)
    subject = generation_name(local.config.trust_domain, "Intermediate CA", key.public_key())
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    csr = builder.sign(key, signature_hash(key))
    kid = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()
    key_path = local.keys.write("intermediate", kid, key)
    csr_path = local.data.intermediate_csr(kid)
    write_public(csr_path, csr.public_bytes(serialization.Encoding.PEM).decode())
    return key_path, csr_path


def sign_intermediate_csr(local: Local, csr_path: Path, out: Path) -> x509.Certificate:
    """Where the root key is: sign the prepared CSR as an intermediate of the active root, and
    sign the root's answer about it ahead of time (so it is ready when it is activated)."""
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{csr_path} is not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise ConfigurationError(f"{csr_path}: the request's signature does not verify")
    hierarchy = local.hierarchy()
    root = hierarchy.active_root
    if root.key is None:
        raise ConfigurationError(
            "the root key is not in this data directory: run this where it is kept"
        )
    now = local.now()
    cert = new_intermediate(
        Issuer(root.certificate, root.key, ()),
        csr.public_key(),
        local.config.trust_domain,
        now,
        now + local.config.issuance.intermediate_validity,
        initial_public_urls(local.config),
    )
    write_public(out, pem(cert))
    _sign_roots(local, [cert])
    return cert


def activate_intermediate(local: Local, cert_path: Path, actor: str = OPERATOR) -> x509.Certificate:
    """The ceremony's last step, on the server: install the signed intermediate (its key must
    be the one prepare wrote) as the issuing one."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{cert_path} is not a PEM certificate: {exc}") from None
    hierarchy = local.hierarchy()
    try:
        records = activation(hierarchy, cert, local.now())
    except InvalidRequest as exc:
        raise ConfigurationError(f"{cert_path}: {exc}") from None
    if local.keys.key_for(records[-1], cert) is None:
        raise ConfigurationError(
            f"{cert_path} is not for a key in {local.data.secrets}: activate it where "
            "`ca-server intermediate prepare` made its key"
        )
    _record(local, records, "activate-intermediate", f"intermediate {key_id(cert)}", actor)
    if local.root_documents().has_key:
        _sign_roots(local)
    return cert


def rotate_root_now(local: Local, overlap: dt.timedelta, actor: str = OPERATOR) -> x509.Certificate:
    """A new root published beside the current one for `overlap` (at least), its
    cross-certificate, and a new intermediate under it, issuing at once."""
    hierarchy = local.hierarchy()
    root_key = generate_key(local.config.key_type)
    int_key = generate_key(local.config.key_type)
    try:
        rotation = rotate_root(
            hierarchy,
            root_key,
            int_key,
            local.config.trust_domain,
            local.now(),
            root_validity=ROOT_VALIDITY,
            intermediate_validity=local.config.issuance.intermediate_validity,
            overlap=overlap,
            urls=initial_public_urls(local.config),
        )
    except InvalidRequest as exc:
        raise ConfigurationError(str(exc)) from None
    local.keys.write("root", key_id(rotation.root), root_key)
    local.keys.write("intermediate", key_id(rotation.intermediate), int_key)
    hierarchy = _record(
        local, rotation.records, "rotate-root", f"new root {key_id(rotation.root)}", actor
    )
    _sign_roots(local)
    _reissue_admin(local, hierarchy)
    return rotation.root


def _reissue_admin(local: Local, hierarchy: Hierarchy) -> None:
    """admin/ under the new root, the old one revoked as superseded: the operator's own
    credentials must not keep the old root published (nor stop working once it is gone)."""
    cert_file = local.data.admin / "cert.pem"
    if not cert_file.exists():
        return
    old = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    identity = certificate_names(old)[0]
    if identity is None:
        return
    authority = CertificateAuthority(
        store=local.store,
        clock=local.clock,
        policy=local.config.policy,
        settings=local.config.issuance,
        hierarchy=hierarchy,
    )
    write_admin_credentials(authority, local.data.admin, identity)
    with contextlib.suppress(SignetError):  # revoked or gone already: the same outcome
        authority.revoke(
            Caller(OPERATOR, "", is_admin=True), serial_hex(old.serial_number),
            Reason.SUPERSEDED,
        )  # fmt: skip
