"""Revocation reasons (RFC 5280 5.3.1) and the revocation data the CRL and OCSP builders use."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509


class Reason(enum.IntEnum):
    """CRLReason codes; the values are the RFC's (7 is unused)."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @property
    def flag(self) -> x509.ReasonFlags:
        return _FLAGS[self]


_FLAGS = {
    Reason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    Reason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    Reason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    Reason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    Reason.SUPERSEDED: x509.ReasonFlags.superseded,
    Reason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    Reason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    Reason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    Reason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    Reason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: Reason
    invalidity_date: dt.datetime | None = None
