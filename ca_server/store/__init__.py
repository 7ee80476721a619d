"""Storage: implementations of the interface the core defines (``core.store.Store``)."""

from ..core.errors import ConfigurationError
from ..core.store import (
    AuditEvent,
    CertificateRecord,
    DuplicateSerial,
    ListQuery,
    OcspUpdate,
    RevokeOutcome,
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
    "StatusRow",
    "Store",
    "TokenRecord",
    "open_store",
]


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str) -> Store:
    """Open a store from a URL: ``sqlite:///path/to/ca.db`` (the embedded default) or
    ``postgresql://user@host/db`` (shared by several replicas)."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use sqlite:///<path> or postgresql://user@host/db"
    )
