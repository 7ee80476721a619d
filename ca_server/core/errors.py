"""Domain errors raised by the core. The gRPC adapter maps each class to one status code.

SignetError
├── InvalidRequest        a malformed or unacceptable request (bad CSR, bad field)
│   └── WeakKey           a key type or size the CA does not accept
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


class SignetError(Exception):
    """Base of every error the core raises on purpose; the message is meant for a person."""


class InvalidRequest(SignetError):
    pass


class WeakKey(InvalidRequest):
    pass


class PolicyViolation(SignetError):
    pass


class Unauthenticated(SignetError):
    pass


class NotFound(SignetError):
    pass


class Conflict(SignetError):
    pass


class AlreadyRevoked(Conflict):
    pass


class RequestIdReused(SignetError):
    pass


class LimitExceeded(SignetError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        """retry_after: seconds until the same request could succeed, when known."""
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(SignetError):
    """Transient: the store is locked, full, read-only or unreachable, or its write queue is
    full. Nothing was half-written; the same request can be retried."""

    retry_after: float | None = 1.0


class ConfigurationError(SignetError):
    pass
