"""Credentials on disk, in the shapes our users' software reads, replaced all at once.

Every renewal writes a complete new set of files into a fresh hidden directory and then
swaps one symlink (`..data`) to it with rename(2), the way Kubernetes' atomic writer updates
secret volumes: `cert.pem`, `key.pem`, ... are symlinks through `..data`, so a reader sees the
whole old set or the whole new set, never a key beside a certificate it does not match."""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

DATA_LINK = "..data"
_VERSION = re.compile(r"\.\.\d{8}T\d{6}\.[0-9a-f]{8}")
FORMATS = ("pem", "bundle", "combined", "pkcs12", "kubernetes")
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True, slots=True)
class Credentials:
    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # intermediates, issuer first
    roots: tuple[x509.Certificate, ...]

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


def pem_parts(creds: Credentials) -> tuple[bytes, bytes, bytes]:
    """(private key, certificate + chain, trusted roots) as PEM: what TLS libraries take."""
    return (
        _key_pem(creds.key),
        _pem([creds.certificate, *creds.chain]),
        _pem(creds.roots),
    )


def _pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def check_formats(formats: Iterable[str], p12_password: bytes | None) -> None:
    """Refuse bad output options up front, before anything irreversible (a token spent)."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
        if fmt == "pkcs12" and p12_password is None:
            raise ValueError("PKCS#12 output needs a password (file or environment)")


def render(
    creds: Credentials, formats: Iterable[str] = ("pem",), p12_password: bytes | None = None
) -> dict[str, tuple[bytes, int]]:
    """File name -> (content, mode) for the requested formats."""
    leaf, chain, roots = _pem([creds.certificate]), _pem(creds.chain), _pem(creds.roots)
    key = _key_pem(creds.key)
    files: dict[str, tuple[bytes, int]] = {}
    for fmt in formats:
        if fmt == "pem":
            files |= {
                "cert.pem": (leaf, PUBLIC_MODE),
                "key.pem": (key, SECRET_MODE),
                "chain.pem": (chain, PUBLIC_MODE),
                "ca.pem": (roots, PUBLIC_MODE),
            }
        elif fmt == "bundle":
            files["bundle.pem"] = (leaf + chain, PUBLIC_MODE)
        elif fmt == "combined":  # for tools that want one file (HAProxy and the like)
            files["combined.pem"] = (leaf + chain + key, SECRET_MODE)
        elif fmt == "kubernetes":
            files |= {
                "tls.crt": (leaf + chain, PUBLIC_MODE),
                "tls.key": (key, SECRET_MODE),
                "ca.crt": (roots, PUBLIC_MODE),
            }
        elif fmt == "pkcs12":
            if p12_password is None:
                raise ValueError("PKCS#12 output needs a password (file or environment)")
            files["keystore.p12"] = (_pkcs12(creds, p12_password), SECRET_MODE)
        else:
            raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    return files


def _pkcs12(creds: Credentials, password: bytes) -> bytes:
    # PBES2 with AES-256 and a SHA-256 MAC: what OpenSSL 3 and Java's keytool (11+) read.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(
        b"signet",
        creds.key,  # type: ignore[arg-type]
        creds.certificate,
        [*creds.chain, *creds.roots],
        encryption,
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def write_atomically(out_dir: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Publish `files` in out_dir as one atomic change (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    version = out_dir / f"..{stamp}.{secrets.token_hex(4)}"
    version.mkdir(mode=0o700)
    for name, (data, mode) in files.items():
        _write(version / name, data, mode)
    version.chmod(0o755)  # the directory is traversable; secrets keep their own 0600
    _fsync_dir(version)
    data_link = out_dir / DATA_LINK
    old = os.readlink(data_link) if data_link.is_symlink() else None
    _replace_symlink(data_link, version.name)  # the one atomic step
    for name in files:
        link = out_dir / name
        if not (link.is_symlink() and os.readlink(link) == f"{DATA_LINK}/{name}"):
            if link.exists() and not link.is_symlink():
                link.unlink()  # a plain file from an older layout: replaced by the link
            _replace_symlink(link, f"{DATA_LINK}/{name}")
    _fsync_dir(out_dir)
    # Only ever delete a version directory of our own making (a bare "..<stamp>.<hex>" name,
    # a real directory): ..data could have been pointed anywhere by whoever can write here.
    if old and old != version.name and _VERSION.fullmatch(old):
        previous = out_dir / old
        if previous.is_dir() and not previous.is_symlink():
            shutil.rmtree(previous)


def read_credentials(out_dir: Path) -> Credentials | None:
    """The credentials in out_dir's PEM files, or None if there are none (yet)."""
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    if not cert_path.exists() or not key_path.exists():
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    # cert.pem may hold the leaf alone or leaf + chain (as ca-server init's admin/cert.pem).
    leaf, *chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    chain += _certs(out_dir / "chain.pem")
    return Credentials(key, leaf, tuple(dict.fromkeys(chain)), tuple(_certs(out_dir / "ca.pem")))


def _certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes() if path.exists() else b""
    return x509.load_pem_x509_certificates(data) if data.strip() else []
