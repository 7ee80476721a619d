"""Key types the CA uses and accepts, and how private keys live on disk (0600, optionally
encrypted with PKCS#8 under a passphrase)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from .errors import ConfigurationError, WeakKey

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519"]
CA_KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-3072", "ed25519")

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
SignatureHash = hashes.SHA256 | hashes.SHA384 | None

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # bigger keys only cost the CA CPU to verify
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


def generate_key(key_type: str) -> SigningKey:
    match key_type:
        case "ec-p256":
            return ec.generate_private_key(ec.SECP256R1())
        case "ec-p384":
            return ec.generate_private_key(ec.SECP384R1())
        case "rsa-2048" | "rsa-3072" | "rsa-4096":
            return rsa.generate_private_key(65537, int(key_type.split("-")[1]))
        case "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}; choose one of {', '.join(CA_KEY_TYPES)}")


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> SignatureHash:
    """The digest to sign with: matched to the key's strength; Ed25519 takes none."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def check_subject_key(key: CertificatePublicKeyTypes) -> None:
    """Refuse keys we will not certify: RSA < 2048, curves other than P-256/P-384, exotic types."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKey(
                f"RSA key of {key.key_size} bits is too weak: use at least {MIN_RSA_BITS}"
            )
        if key.key_size > MAX_RSA_BITS:
            raise WeakKey(f"RSA key of {key.key_size} bits is larger than {MAX_RSA_BITS}")
        if key.public_numbers().e != 65537:
            raise WeakKey("RSA public exponent must be 65537")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise WeakKey(f"EC curve {key.curve.name} is not allowed: use P-256 or P-384")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise WeakKey(
        f"key type {type(key).__name__} is not allowed: use EC P-256/P-384, RSA >= 2048 or Ed25519"
    )


def write_private_key(path: Path, key: PrivateKeyTypes, passphrase: bytes | None = None) -> None:
    """Write a PKCS#8 PEM key created 0600 from the start (never briefly world-readable)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # A stale or planted temp file (or symlink) must not lend us its mode: start from nothing.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def check_key_file_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"refusing to use {path}: it is readable by group or others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def load_private_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    if not path.exists():
        raise ConfigurationError(f"key file {path} does not exist")
    check_key_file_mode(path)
    data = path.read_bytes()
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise ConfigurationError(
            f"{path} is encrypted: set SIGNET_CA_PASSPHRASE or pass --passphrase-file"
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot load {path}: wrong passphrase or damaged key") from exc
    if not isinstance(key, SigningKey):
        raise ConfigurationError(f"{path} holds an unsupported key type {type(key).__name__}")
    return key
