"""Domain errors raised by the core. The gRPC adapter maps each class to one status code, and
each error's `reason` (one of ErrorReason, the closed list that protos/signet/ca/v1/errors.proto
publishes) to the google.rpc.ErrorInfo a program can switch on.

SignetError
├── InvalidRequest        a malformed or unacceptable request (bad CSR, bad field)
│   ├── WeakKey           a key type or size the CA does not accept
│   └── OutOfRange        a position past the end (a stream resumed ahead of the CA)
├── PolicyViolation       the caller may not have what it asked for
├── Unauthenticated       no usable caller identity (unknown, revoked, expired)
├── NotFound              no such certificate
├── Conflict              the certificate's state does not allow it
│   └── AlreadyRevoked    revoking a certificate that is already revoked
├── RequestIdReused       a request_id already used for another request (or whose answer,
│                         a token, is not kept to be given again)
├── LimitExceeded         a size or rate limit
├── Unavailable           a dependency (the database) cannot serve now: retry shortly
└── ConfigurationError    the CA's own files or settings are unusable (start-up only)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ErrorReason(enum.StrEnum):
    """Why a call failed, in a word a program can act on (AIP-193 ErrorInfo.reason). Every
    value is listed, with what it means, in protos/signet/ca/v1/errors.proto and the README;
    tests/test_error_details.py keeps the three in step. Values are stable: never rename one."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name  # each value is its own name, as ErrorInfo.reason carries it

    # The request as a whole
    REQUEST_MALFORMED = enum.auto()
    REQUEST_TOO_LARGE = enum.auto()
    REQUEST_INVALID = enum.auto()
    # The CSR
    CSR_MISSING = enum.auto()
    CSR_NOT_PEM = enum.auto()
    CSR_MALFORMED = enum.auto()
    CSR_TOO_LARGE = enum.auto()
    CSR_SIGNATURE_INVALID = enum.auto()
    CSR_IDENTITY_COUNT = enum.auto()
    KEY_NOT_ALLOWED = enum.auto()
    RENEWAL_KEY_REUSED = enum.auto()
    # Names and fields
    NAME_INVALID = enum.auto()
    TOO_MANY_NAMES = enum.auto()
    VALIDITY_OUT_OF_RANGE = enum.auto()
    TOKEN_TTL_OUT_OF_RANGE = enum.auto()
    TIMESTAMP_INVALID = enum.auto()
    TIME_RANGE_INVALID = enum.auto()
    SERIAL_INVALID = enum.auto()
    REVOCATION_REASON_INVALID = enum.auto()
    INVALIDITY_DATE_IN_FUTURE = enum.auto()
    STATUS_FILTER_INVALID = enum.auto()
    FILTER_TOO_LONG = enum.auto()
    PAGE_SIZE_INVALID = enum.auto()
    PAGE_TOKEN_INVALID = enum.auto()
    # Policy and roles
    POLICY_DENIED = enum.auto()
    NAME_RESERVED = enum.auto()
    IDENTITY_OUTSIDE_TRUST_DOMAIN = enum.auto()
    IDENTITY_NOT_OWN = enum.auto()
    NAME_NOT_ALLOWED = enum.auto()
    CERTIFICATE_NOT_OWN = enum.auto()
    ADMIN_REQUIRED = enum.auto()
    # The caller
    CLIENT_CERTIFICATE_MISSING = enum.auto()
    CLIENT_CERTIFICATE_INVALID = enum.auto()
    CALLER_UNKNOWN = enum.auto()
    CALLER_WITHOUT_IDENTITY = enum.auto()
    CALLER_EXPIRED = enum.auto()
    CALLER_REVOKED = enum.auto()
    TOKEN_INVALID = enum.auto()
    # Certificates' state
    CERTIFICATE_NOT_FOUND = enum.auto()
    STATE_CONFLICT = enum.auto()
    NOT_ON_HOLD = enum.auto()
    ALREADY_REVOKED = enum.auto()
    # Limits
    LIMIT_EXCEEDED = enum.auto()
    IDENTITY_RATE_LIMITED = enum.auto()
    IDENTITY_LIVE_LIMIT = enum.auto()
    ENROLL_RATE_LIMITED = enum.auto()
    # The CA itself
    STORE_UNAVAILABLE = enum.auto()
    CA_MISCONFIGURED = enum.auto()
    INTERNAL = enum.auto()
    # Watch streams
    SEQUENCE_AHEAD = enum.auto()
    WATCHERS_EXHAUSTED = enum.auto()
    SHUTTING_DOWN = enum.auto()
    # Retries (request_id)
    REQUEST_ID_INVALID = enum.auto()
    REQUEST_ID_REUSED = enum.auto()
    ANSWER_NOT_KEPT = enum.auto()
    REQUEST_IN_PROGRESS = enum.auto()
    # Renewal windows (RenewNow)
    SELECTOR_EMPTY = enum.auto()
    URL_INVALID = enum.auto()
    FINGERPRINT_INVALID = enum.auto()
    CERTIFICATE_NOT_LIVE = enum.auto()
    # The CA's own rotation (ca-server intermediate / root commands)
    ROTATION_REFUSED = enum.auto()


class SignetError(Exception):
    """Base of every error the core raises on purpose; the message is meant for a person.

    reason: what a program acts on (the class's default_reason when not given); field: the
    request field at fault, if one is; metadata: more about what is at fault (a name, a
    limit) as strings. Never a key, token or CSR in any of them: they leave the CA."""

    default_reason = ErrorReason.REQUEST_INVALID

    def __init__(
        self,
        message: str,
        *,
        reason: ErrorReason | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.field = field
        self.metadata = dict(metadata or {})


class InvalidRequest(SignetError):
    default_reason = ErrorReason.REQUEST_INVALID


class WeakKey(InvalidRequest):
    default_reason = ErrorReason.KEY_NOT_ALLOWED


class OutOfRange(InvalidRequest):
    default_reason = ErrorReason.SEQUENCE_AHEAD


class PolicyViolation(SignetError):
    default_reason = ErrorReason.POLICY_DENIED


class Unauthenticated(SignetError):
    default_reason = ErrorReason.CALLER_UNKNOWN


class NotFound(SignetError):
    default_reason = ErrorReason.CERTIFICATE_NOT_FOUND


def certificate_not_found(serial: str) -> NotFound:
    """The one answer for a serial this CA never issued (or has pruned)."""
    return NotFound(
        f"no certificate with serial {serial} was issued by this CA",
        reason=ErrorReason.CERTIFICATE_NOT_FOUND,
        field="serial_number",
        metadata={"serial_number": serial},
    )


class Conflict(SignetError):
    default_reason = ErrorReason.STATE_CONFLICT


class AlreadyRevoked(Conflict):
    default_reason = ErrorReason.ALREADY_REVOKED


class RequestIdReused(SignetError):
    default_reason = ErrorReason.REQUEST_ID_REUSED


class LimitExceeded(SignetError):
    default_reason = ErrorReason.LIMIT_EXCEEDED

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        *,
        reason: ErrorReason | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """retry_after: seconds until the same request could succeed, when known."""
        super().__init__(message, reason=reason, field=field, metadata=metadata)
        self.retry_after = retry_after


class Unavailable(SignetError):
    """Transient: the store is locked, full, read-only or unreachable, or its write queue is
    full. Nothing was half-written; the same request can be retried."""

    default_reason = ErrorReason.STORE_UNAVAILABLE
    retry_after: float | None = 1.0


class ConfigurationError(SignetError):
    default_reason = ErrorReason.CA_MISCONFIGURED
