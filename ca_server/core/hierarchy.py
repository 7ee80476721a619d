"""The CA's own certificates as one snapshot: the published roots, the intermediates that still
answer for what they issued, the cross-certificates that join an old root to a new one, and
which of them issues now. Built from the store's records (so every process and replica sees
the same rotation) and the keys this process holds (files, found by the caller).

Each is named by its key id (the subjectKeyIdentifier, which for our certificates is also the
SHA-1 issuerKeyHash of an OCSP CertID): the store, the URLs in certificates and the OCSP
responder pick an issuer by it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from .keys import SigningKey, signature_hash
from .profile import (
    Issuer,
    PublicUrls,
    build_intermediate,
    build_root,
    ca_key_usage,
    ca_name,
    publication,
    random_serial,
    serial_hex,
)
from .store import CaCertificateRecord, CaKind, CaState


def key_id(cert: x509.Certificate) -> str:
    """The certificate's subjectKeyIdentifier in hex (every CA certificate we make has one)."""
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def authority_key_id(cert: x509.Certificate) -> str:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return key_id(cert)  # a self-signed root without AKI
    return (aki.key_identifier or b"").hex() or key_id(cert)


def generation_name(
    trust_domain: str, what: str, public_key: CertificatePublicKeyTypes
) -> x509.Name:
    """A name of its own for each new CA certificate (what its key id begins with): chain
    builders and nginx's CRL lookup go by names, and two CAs with one name confuse them."""
    kid = x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()[:8]
    return ca_name(trust_domain, f"Signet {what} ({trust_domain}) {kid}")


def record_for(
    cert: x509.Certificate,
    kind: CaKind,
    state: CaState,
    now: dt.datetime,
    overlap_until: dt.datetime | None = None,
) -> CaCertificateRecord:
    return CaCertificateRecord(
        serial=serial_hex(cert.serial_number),
        kind=kind,
        state=state,
        key_id=key_id(cert),
        issuer_key_id=authority_key_id(cert),
        der=cert.public_bytes(Encoding.DER),
        not_after=cert.not_valid_after_utc,
        created_at=now,
        overlap_until=overlap_until,
    )


def new_root(
    key: SigningKey, trust_domain: str, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    subject = generation_name(trust_domain, "Root CA", key.public_key())
    return build_root(key, subject, not_before, not_after)


def new_intermediate(
    root: Issuer,
    public_key: CertificatePublicKeyTypes,
    trust_domain: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    urls: PublicUrls | None,
) -> x509.Certificate:
    subject = generation_name(trust_domain, "Intermediate CA", public_key)
    return build_intermediate(root, public_key, subject, not_before, not_after, urls)


def cross_certificate(
    old_root: Issuer, new_root: x509.Certificate, now: dt.datetime, urls: PublicUrls | None
) -> x509.Certificate:
    """The new root's name and key, vouched for by the old root: a client that trusts only the
    old root follows leaf -> intermediate -> this -> old root. Valid while both roots are."""
    old = old_root.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(new_root.subject)
        .issuer_name(old.subject)
        .public_key(new_root.public_key())
        .serial_number(random_serial())
        .not_valid_before(now)
        .not_valid_after(min(new_root.not_valid_after_utc, old.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(
            new_root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value,
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                old.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
    )
    if urls is not None:
        for extension in publication(
            urls.ocsp, urls.ca_cert(key_id(old)), urls.ca_crl(key_id(old))
        ):
            builder = builder.add_extension(extension, critical=False)
    return builder.sign(old_root.key, signature_hash(old_root.key))


@dataclass(frozen=True, slots=True)
class CaCert:
    record: CaCertificateRecord
    certificate: x509.Certificate
    key: SigningKey | None  # None: this process does not hold it (offline, or not copied here)

    @property
    def key_id(self) -> str:
        return self.record.key_id

    @property
    def serial(self) -> str:
        return self.record.serial


KeyFor = Callable[[CaCertificateRecord, x509.Certificate], SigningKey | None]


class Hierarchy:
    """An immutable snapshot; a rotation makes a new one (see CertificateAuthority.reload)."""

    def __init__(self, entries: Sequence[CaCert], generation: int = 0) -> None:
        self.entries = tuple(entries)
        self.generation = generation
        newest_first = sorted(self.entries, key=lambda e: e.record.created_at, reverse=True)
        order = {"active": 0, "retiring": 1}

        def ranked(kind: str) -> list[CaCert]:
            found = [e for e in newest_first if e.record.kind == kind and e.record.state in order]
            return sorted(found, key=lambda e: order[e.record.state])  # stable: newest first

        self.roots = tuple(ranked("root"))
        self.intermediates = tuple(ranked("intermediate"))
        self.crosses = tuple(e for e in ranked("cross") if e.record.state == "active")
        if not self.roots or not self.intermediates:
            raise ValueError("a CA needs a published root and an intermediate")

    @classmethod
    def load(
        cls, records: Sequence[CaCertificateRecord], key_for: KeyFor, generation: int = 0
    ) -> Hierarchy:
        entries = []
        for r in records:
            cert = x509.load_der_x509_certificate(r.der)
            key = key_for(r, cert) if r.state != "retired" and r.kind != "cross" else None
            entries.append(CaCert(r, cert, key))
        return cls(entries, generation)

    @classmethod
    def of(
        cls,
        root: x509.Certificate,
        intermediate: x509.Certificate,
        *,
        root_key: SigningKey | None = None,
        intermediate_key: SigningKey | None = None,
        now: dt.datetime | None = None,
    ) -> Hierarchy:
        """One root and one intermediate, both active (a new CA, or one from before rotations)."""
        at = now or intermediate.not_valid_before_utc
        return cls(
            [
                CaCert(record_for(root, "root", "active", at), root, root_key),
                CaCert(record_for(intermediate, "intermediate", "active", at), intermediate,
                       intermediate_key),
            ]
        )  # fmt: skip

    @property
    def active_root(self) -> CaCert:
        return self.roots[0]

    @property
    def issuing(self) -> CaCert:
        """The intermediate that issues: the active one if its key is here, else (a replica not
        yet given the new key) the newest answering one whose key is."""
        for entry in self.intermediates:
            if entry.key is not None:
                return entry
        raise ValueError("no intermediate key in this data directory")

    @property
    def key_missing(self) -> CaCert | None:
        """The active intermediate, when this process cannot issue from it (no key here)."""
        active = self.intermediates[0]
        return active if active.record.state == "active" and active.key is None else None

    def chain(self, entry: CaCert) -> tuple[x509.Certificate, ...]:
        """What a leaf of `entry` travels with: the intermediate, and a cross-certificate to
        the older root while one is published (so old-root-only clients verify it too)."""
        crosses = [c.certificate for c in self.crosses if c.key_id == entry.record.issuer_key_id]
        return (entry.certificate, *crosses)

    def issuer(self, entry: CaCert) -> Issuer:
        if entry.key is None:
            raise ValueError(f"no key for {entry.certificate.subject.rfc4514_string()}")
        return Issuer(entry.certificate, entry.key, self.chain(entry))

    def intermediate(self, kid: str) -> CaCert | None:
        return next((e for e in self.intermediates if e.key_id == kid), None)

    def root(self, kid: str) -> CaCert | None:
        return next((e for e in self.roots if e.key_id == kid), None)

    def find(self, serial: str) -> CaCert | None:
        return next((e for e in self.entries if e.serial == serial), None)

    def issued_by(self, root: CaCert) -> list[CaCert]:
        """The published CA certificates `root` signed (intermediates and cross-certificates):
        what its OCSP answers, signed ahead of time, are about."""
        below = [*self.intermediates, *self.crosses]
        return [e for e in below if e.record.issuer_key_id == root.key_id]

    @property
    def roots_pem(self) -> str:
        return "".join(_pem(e.certificate) for e in self.roots)

    @property
    def intermediates_pem(self) -> str:
        """The active chain first, then the intermediates that still answer for their leaves."""
        certs = list(self.chain(self.intermediates[0]))
        certs += [e.certificate for e in self.intermediates[1:]]
        return "".join(_pem(c) for c in dict.fromkeys(certs))


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()
