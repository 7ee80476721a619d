"""A key and certificate chain that every worker of one data directory uses — the serving
certificate, the delegated OCSP responder — kept in one 0600 file (key, then certificates,
leaf first) so that a reader never sees a key beside a certificate it does not match.

Whoever finds it due first replaces it, under an exclusive file lock, after reading it again
(another worker may have just done so); the rest take up the new file when it changes. So a
rotation happens once per data directory, not once per worker."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .core.keys import SigningKey
from .core.ocsp import OcspSigner
from .files import atomic_write, check_key_file_mode

_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class Credential:
    key: SigningKey
    key_pem: bytes
    chain: tuple[x509.Certificate, ...]  # leaf first
    chain_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


def credential(key: SigningKey, chain: tuple[x509.Certificate, ...]) -> Credential:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return Credential(key, key_pem, chain, chain_pem)


class SharedCredential:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: tuple[int, int] | None = None  # (st_mtime_ns, st_ino) of what we loaded

    def changed(self) -> bool:
        """Whether the file differs from the one last loaded (a cheap stat)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._seen is not None
        return (st.st_mtime_ns, st.st_ino) != self._seen

    def load(self) -> Credential | None:
        """The current file's credential, or None if there is none or it cannot be used."""
        try:
            check_key_file_mode(self.path)
            st = os.stat(self.path)
            data = self.path.read_bytes()
        except (FileNotFoundError, OSError):
            return None
        self._seen = (st.st_mtime_ns, st.st_ino)
        cut = data.find(_CERT_BEGIN)
        try:
            key = serialization.load_pem_private_key(data[:cut], None)
            chain = tuple(x509.load_pem_x509_certificates(data[cut:]))
        except (ValueError, TypeError):
            return None
        if not isinstance(key, SigningKey) or not chain:
            return None
        return Credential(key, data[:cut], chain, data[cut:])

    def replace(
        self,
        is_due: Callable[[Credential | None], bool],
        make: Callable[[], Credential],
    ) -> Credential:
        """Under the lock: read the file again; if what it holds is still due, make a new one
        and write it. Returns what the file holds afterwards."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.load()
            if current is not None and not is_due(current):
                return current
            fresh = make()
            atomic_write(self.path, fresh.key_pem + fresh.chain_pem, 0o600)
            st = os.stat(self.path)
            self._seen = (st.st_mtime_ns, st.st_ino)
            return fresh
        finally:
            os.close(fd)  # releases the lock


class SharedSignerSlot:
    """The delegated OCSP responder, kept as a SharedCredential (see core.responder.SignerSlot)."""

    def __init__(self, path: Path) -> None:
        self._file = SharedCredential(path)

    def changed(self) -> bool:
        return self._file.changed()

    def load(self) -> OcspSigner | None:
        cred = self._file.load()
        return None if cred is None else OcspSigner(cred.certificate, cred.key, delegated=True)

    def replace(
        self, is_due: Callable[[OcspSigner | None], bool], make: Callable[[], OcspSigner]
    ) -> OcspSigner:
        def due(cred: Credential | None) -> bool:
            return is_due(None if cred is None else OcspSigner(cred.certificate, cred.key, True))

        def fresh() -> Credential:
            signer = make()
            return credential(signer.key, (signer.certificate,))

        cred = self._file.replace(due, fresh)
        return OcspSigner(cred.certificate, cred.key, delegated=True)
