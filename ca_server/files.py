"""Files on disk: atomic writes (temp + fsync + rename) and private keys (0600; unencrypted
PKCS#8 PEM, or passphrase-encrypted PKCS#12), refused when group- or world-readable."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .core.errors import ConfigurationError
from .core.keys import SigningKey

PASSPHRASE_HINT = "set SIGNET_CA_PASSPHRASE or pass --passphrase-file"  # noqa: S105 - a hint
# PBKDF2-HMAC-SHA256 iterations for encrypted keys: OWASP's current figure. cryptography cannot
# set the count for PKCS#8 (it uses 2,048), so encrypted keys are PKCS#12, which openssl reads.
KDF_ROUNDS = 600_000
ENCRYPTED_KEY_SUFFIX = ".p12"
# python-cryptography 50 writes no ML-DSA key into PKCS#12, and its encrypted PKCS#8 is fixed at
# 2,048 PBKDF2 iterations: rather than keys weakly encrypted, none encrypted, said plainly.
ML_DSA_KEYS_UNENCRYPTABLE = (
    "ML-DSA CA keys cannot be encrypted with a passphrase yet (python-cryptography cannot put "
    "an ML-DSA key in PKCS#12): unset SIGNET_CA_PASSPHRASE / --passphrase-file and protect "
    "secrets/ otherwise, or use another --key-type"
)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data so that readers see the old file or the new one, never a mix,
    and the new one is created with `mode` from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own (two writers of one file must not share a temp file), created with
    # O_EXCL: a planted file or symlink cannot lend us its mode.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents 0700 whatever the umask: under umask 000 a plain
    mkdir makes them 0777, and any local user could then replace config.toml or root.pem.
    Directories that already exist are left as they are (check_not_world_writable judges them)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:  # made meanwhile by someone else: theirs to judge
            continue
        os.chmod(directory, 0o700)  # an odd umask (e.g. 0200) also strips our own bits


def check_not_world_writable(path: Path) -> None:
    """Refuse a file or directory any local user may change (or, for a directory, whose
    entries any local user may replace)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o002:
        raise ConfigurationError(
            f"refusing to start: {path} is writable by any local user (mode {mode:04o}), who "
            f"could replace what the CA trusts; run: chmod o-w {path}"
        )


def write_private_key(path: Path, key: SigningKey, passphrase: bytes | None = None) -> None:
    """Write a key, mode 0600: with a passphrase, a PKCS#12 file (PBES2, PBKDF2-HMAC-SHA256
    with KDF_ROUNDS iterations, AES-256-CBC; SHA-256 MAC); without, a PKCS#8 PEM."""
    if passphrase:
        if isinstance(key, mldsa.MLDSA65PrivateKey):
            raise ConfigurationError(ML_DSA_KEYS_UNENCRYPTABLE)
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(passphrase)
        )
        data = pkcs12.serialize_key_and_certificates(b"signet CA key", key, None, None, encryption)
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    atomic_write(path, data, 0o600)


def is_weakly_encrypted(path: Path) -> bool:
    """An encrypted PKCS#8 PEM key (2,048 PBKDF2 iterations): `ca-server keys rewrap` it."""
    with path.open("rb") as f:
        return b"ENCRYPTED" in f.readline()


def check_key_file_mode(path: Path) -> None:
    st = path.stat()
    # Another user's key could have been planted (or be read) by that user.
    if st.st_uid != os.geteuid():
        raise ConfigurationError(
            f"refusing to use {path}: it is owned by uid {st.st_uid}, not by this server's user "
            f"(uid {os.geteuid()}); run: chown {os.geteuid()} {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
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
    if not data.startswith(b"-----BEGIN"):
        return _load_pkcs12(path, data, passphrase)
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise ConfigurationError(f"{path} is encrypted: {PASSPHRASE_HINT}")
    if passphrase and not encrypted:
        # Silently accepting would let an operator believe the keys are encrypted at rest.
        raise ConfigurationError(
            f"a passphrase was given but {path} is not encrypted; unset SIGNET_CA_PASSPHRASE / "
            "--passphrase-file, or re-create the CA with a passphrase"
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot load {path}: wrong passphrase or damaged key") from exc
    if not isinstance(key, SigningKey):
        raise ConfigurationError(f"{path} holds an unsupported key type {type(key).__name__}")
    return key


def _load_pkcs12(path: Path, data: bytes, passphrase: bytes | None) -> SigningKey:
    if not passphrase:
        raise ConfigurationError(f"{path} is encrypted: {PASSPHRASE_HINT}")
    try:
        key, _, _ = pkcs12.load_key_and_certificates(data, passphrase)
    except ValueError:
        raise ConfigurationError(f"cannot load {path}: wrong passphrase or damaged key") from None
    if not isinstance(key, SigningKey):
        kind = "no key" if key is None else f"an unsupported key type {type(key).__name__}"
        raise ConfigurationError(f"{path} holds {kind}")
    return key
