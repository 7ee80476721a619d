"""Moved to ``ca_server.core.store`` (the core owns its port); kept until ``sqlite.py`` imports
from there."""

from ..core.store import (
    AuditEvent,
    CertificateRecord,
    DuplicateSerial,
    ListQuery,
    OcspUpdate,
    RevokeOutcome,
    Status,
    StatusRow,
    Store,
    TokenRecord,
)

__all__ = [
    "AuditEvent",
    "CertificateRecord",
    "DuplicateSerial",
    "ListQuery",
    "OcspUpdate",
    "RevokeOutcome",
    "Status",
    "StatusRow",
    "Store",
    "TokenRecord",
]
