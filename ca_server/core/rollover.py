"""Rotating the CA itself, as changes to the hierarchy's records: pure functions of the current
hierarchy, new keys and the time. The caller writes the keys (files in the data directory)
and then the records (one store transaction), which every process takes up (reload).

- An intermediate is replaced by a new one signed by the active root: the new one issues, the
  old one retires (it answers OCSP and CRL for what it issued until the last of that expires).
- A root is replaced by a new one: both are published for an overlap the operator chooses,
  with a cross-certificate (the new root's key and name signed by the old root) so that
  clients that trust only the old root still verify chains under the new one, and a new
  intermediate under the new root issues from then on. Once the overlap is over and nothing
  chains to the old root any more, it is withdrawn from the bundle.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .errors import ErrorReason, InvalidRequest
from .hierarchy import (
    CaCert,
    Hierarchy,
    cross_certificate,
    key_id,
    new_intermediate,
    record_for,
)
from .keys import SigningKey
from .profile import Issuer, PublicUrls, build_root
from .store import CaCertificateRecord


def _retiring(entry: CaCert, **changes: object) -> CaCertificateRecord:
    return dataclasses.replace(entry.record, state="retiring", **changes)  # type: ignore[arg-type]


def activation(
    hierarchy: Hierarchy, cert: x509.Certificate, now: dt.datetime
) -> list[CaCertificateRecord]:
    """Records that make `cert` (an intermediate signed by the active root) the issuing one,
    the current one retiring. Refuses anything else, saying why."""
    root = hierarchy.active_root
    try:
        cert.verify_directly_issued_by(root.certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise InvalidRequest(
            "the certificate is not signed by the active root "
            f"({root.certificate.subject.rfc4514_string()})",
            reason=ErrorReason.ROTATION_REFUSED,
        ) from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InvalidRequest(
            "the certificate is not a CA certificate", reason=ErrorReason.ROTATION_REFUSED
        )
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise InvalidRequest(
            "the certificate is not valid now", reason=ErrorReason.ROTATION_REFUSED
        )
    if any(e.key_id == key_id(cert) for e in hierarchy.entries):
        raise InvalidRequest(
            "an intermediate with this key is already recorded", reason=ErrorReason.ROTATION_REFUSED
        )
    old = [_retiring(e) for e in hierarchy.intermediates if e.record.state == "active"]
    return [*old, record_for(cert, "intermediate", "active", now)]


def rotate_intermediate(
    hierarchy: Hierarchy,
    key: SigningKey,
    trust_domain: str,
    now: dt.datetime,
    validity: dt.timedelta,
    urls: PublicUrls | None,
) -> tuple[x509.Certificate, list[CaCertificateRecord]]:
    """A new intermediate for `key`, signed by the active root (whose key must be here)."""
    root = hierarchy.active_root
    if root.key is None:
        raise InvalidRequest(
            "the root key is not in the data directory: use the ceremony (ca-server "
            "intermediate prepare, root sign --csr, intermediate activate)",
            reason=ErrorReason.ROTATION_REFUSED,
        )
    cert = new_intermediate(
        Issuer(root.certificate, root.key, ()),
        key.public_key(),
        trust_domain,
        now,
        now + validity,
        urls,
    )
    return cert, activation(hierarchy, cert, now)


@dataclasses.dataclass(frozen=True, slots=True)
class RootRotation:
    root: x509.Certificate
    cross: x509.Certificate
    intermediate: x509.Certificate
    records: list[CaCertificateRecord]


def rotate_root(
    hierarchy: Hierarchy,
    root_key: SigningKey,
    intermediate_key: SigningKey,
    trust_domain: str,
    now: dt.datetime,
    *,
    root_validity: dt.timedelta,
    intermediate_validity: dt.timedelta,
    overlap: dt.timedelta,
    urls: PublicUrls | None,
) -> RootRotation:
    """A new root (published beside the old one until at least now + overlap), its
    cross-certificate from the old root, and a new intermediate under it that issues."""
    old = hierarchy.active_root
    if old.key is None:
        raise InvalidRequest(
            "the current root's key is not in the data directory: the cross-certificate "
            "needs it (put it back in a copy of the data directory and run this there)",
            reason=ErrorReason.ROTATION_REFUSED,
        )
    if len(hierarchy.roots) > 1:
        raise InvalidRequest(
            "a root rollover is already under way (two roots are published); wait until the "
            "old one is withdrawn (see ca-server status)",
            reason=ErrorReason.ROTATION_REFUSED,
        )
    # The old root's name: the cross-certificate is then self-issued (its subject and issuer
    # are one name), which RFC 5280 6.1.4 and OpenSSL leave out of the old root's path length
    # (pathLenConstraint 1: leaf, intermediate, cross-certificate, root would exceed it).
    # Chain builders tell the two roots apart by key identifier.
    root = build_root(root_key, old.certificate.subject, now, now + root_validity)
    cross = cross_certificate(Issuer(old.certificate, old.key, ()), root, now, urls)
    intermediate = new_intermediate(
        Issuer(root, root_key, ()),
        intermediate_key.public_key(),
        trust_domain,
        now,
        now + intermediate_validity,
        urls,
    )
    records = [
        _retiring(old, overlap_until=now + overlap),
        *[_retiring(e) for e in hierarchy.intermediates if e.record.state == "active"],
        record_for(root, "root", "active", now),
        record_for(cross, "cross", "active", now),
        record_for(intermediate, "intermediate", "active", now),
    ]
    return RootRotation(root, cross, intermediate, records)


def retirements(
    hierarchy: Hierarchy, now: dt.datetime, issued_by: Callable[[str, bool], int]
) -> list[CaCertificateRecord]:
    """What is over: retiring intermediates with nothing unexpired left (or expired
    themselves); retiring roots past their overlap with nothing live (unrevoked, unexpired)
    under them: every live certificate chains to the new root (their cross-certificates go
    with them). issued_by(intermediate key id, live_only) counts its unexpired certificates."""
    changes: list[CaCertificateRecord] = []
    gone: set[str] = set()
    for e in hierarchy.intermediates:
        if e.record.state != "retiring":
            continue
        if e.record.not_after < now or issued_by(e.key_id, False) == 0:
            changes.append(dataclasses.replace(e.record, state="retired"))
            gone.add(e.serial)
    for root in hierarchy.roots:
        if root.record.state != "retiring" or (
            root.record.overlap_until is not None and now < root.record.overlap_until
        ):
            continue
        below = [e for e in hierarchy.intermediates if e.record.issuer_key_id == root.key_id]
        live = any(e.serial not in gone and issued_by(e.key_id, True) for e in below)
        if live and root.record.not_after >= now:
            continue  # something under it still lives: it stays published
        changes.append(dataclasses.replace(root.record, state="retired"))
        changes += [
            dataclasses.replace(c.record, state="retired")
            for c in hierarchy.crosses
            if c.record.issuer_key_id == root.key_id
        ]
    return changes


def intermediate_due(hierarchy: Hierarchy, now: dt.datetime, fraction: float | None) -> bool:
    """Whether the active intermediate has lived `fraction` of its life."""
    if fraction is None:
        return False
    cert = hierarchy.intermediates[0].certificate
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * fraction


def blocking_roots(hierarchy: Hierarchy, now: dt.datetime) -> Sequence[CaCert]:
    """Retiring roots whose overlap is over but that still have something under them."""
    return [
        r
        for r in hierarchy.roots
        if r.record.state == "retiring"
        and (r.record.overlap_until is None or now >= r.record.overlap_until)
    ]
