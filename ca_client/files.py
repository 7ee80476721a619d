"""Credentials on disk, in the shapes our users' software reads, replaced all at once.

Every renewal writes a complete new set of files into a fresh hidden directory and then
swaps one symlink (`..data`) to it with rename(2), the way Kubernetes' atomic writer updates
secret volumes: `cert.pem`, `key.pem`, ... are symlinks through `..data`, so a reader sees the
whole old set or the whole new set, never a key beside a certificate it does not match.
Each version also holds a record of the formats it was written in (`OutputSet`), so that a
renewal writes the same set again; a link whose file the new set lacks is removed with the swap.

`cert.pem` is the leaf followed by its intermediates (what a TLS peer must present, as
step-ca's and cert-manager's `tls.crt`), `leaf.pem` the leaf alone, `ca.pem` the root(s)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from .schedule import Advice
from .serial import serial_hex

DATA_LINK = "..data"
# In each version directory, beside the files; read through ..data, never linked itself.
OUTPUTS_RECORD = ".signet-outputs.json"
_VERSION = re.compile(r"\.\.\d{8}T\d{6}\.[0-9a-f]{8}")
FORMATS = ("pem", "bundle", "combined", "pkcs12", "kubernetes")
P12_PASSWORD_ENV = "SIGNET_P12_PASSWORD"  # noqa: S105 - the variable's name, not a secret
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
# Directories we create, whatever the umask: key.pem is the owner's alone (0600), so no reader
# of the set can be anyone else, and others must not be able to swap ..data or plant ca.pem.
DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class Credentials:
    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # intermediates, issuer first
    roots: tuple[x509.Certificate, ...]
    # What the CA said about renewing it, when it came from the CA (never on disk).
    advice: Advice | None = field(default=None, compare=False)

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


def identity_of(cert: x509.Certificate) -> str:
    """The SPIFFE ID (first URI SAN), else the subject: who the certificate says we are."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return uris[0] if uris else cert.subject.rfc4514_string()


def describe(creds: Credentials) -> dict[str, str]:
    """What logs and command output say about a certificate (serials in the CA's form)."""
    return {
        "serial": serial_hex(creds.certificate.serial_number),
        "identity": identity_of(creds.certificate),
        "not_after": creds.not_after.isoformat(),
    }


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


def with_pem(formats: Iterable[str]) -> tuple[str, ...]:
    """`formats` plus the PEM set, always written: it is the identity the next call reads."""
    return tuple(dict.fromkeys(("pem", *formats)))


# The file that shows a format is present, for directories written before the record existed.
_FORMAT_MARKERS = {
    "pem": "cert.pem",
    "bundle": "bundle.pem",
    "combined": "combined.pem",
    "pkcs12": "keystore.p12",
    "kubernetes": "tls.crt",
}


@dataclass(frozen=True, slots=True)
class OutputSet:
    """The formats a directory holds, recorded in it so that a renewal writes the same set.

    The PKCS#12 password itself is never recorded. Only where it came from is: the absolute
    path of the password file (a file the operator already keeps, guarded by its own mode), or
    nothing when it came from SIGNET_P12_PASSWORD or from the calling program, which must then
    give it again; a renewal that needs it and lacks it stops before it contacts the CA."""

    formats: tuple[str, ...] = ("pem",)
    p12_password_file: Path | None = field(default=None)

    def to_json(self) -> bytes:
        source = self.p12_password_file
        pkcs12_settings = {"password_file": str(source) if source else None}
        record = {
            "formats": list(self.formats),
            "pkcs12": pkcs12_settings if "pkcs12" in self.formats else None,
        }
        return json.dumps(record, indent=2).encode() + b"\n"


def remembered_outputs(out_dir: Path) -> OutputSet | None:
    """The set out_dir holds: its record, else what its files show; None for a new directory."""
    try:
        record = json.loads((out_dir / DATA_LINK / OUTPUTS_RECORD).read_text())
        formats = tuple(f for f in record["formats"] if f in FORMATS)
        password_file = (record.get("pkcs12") or {}).get("password_file")
        if formats:
            return OutputSet(formats, Path(password_file) if password_file else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # an older layout, or a damaged record: the files themselves tell
    present = tuple(f for f, name in _FORMAT_MARKERS.items() if (out_dir / name).exists())
    return OutputSet(present) if present else None


def resolve_outputs(
    out_dir: Path,
    formats: Iterable[str] | None = None,
    p12_password_file: Path | None = None,
    p12_password: bytes | None = None,
) -> tuple[OutputSet, bytes | None]:
    """The set to write into out_dir, and the PKCS#12 password, checked before any call: the
    formats asked for, else those out_dir already holds, else pem (pem always: see with_pem).
    The password: given, else read from the file given or recorded, else SIGNET_P12_PASSWORD."""
    remembered = remembered_outputs(out_dir)
    asked = formats if formats is not None else (remembered.formats if remembered else ())
    chosen = with_pem(asked)
    if p12_password is None and p12_password_file is None and remembered:
        p12_password_file = remembered.p12_password_file
    if p12_password is None and p12_password_file is not None:
        p12_password = read_password_file(p12_password_file)
    if p12_password is None and os.environ.get(P12_PASSWORD_ENV):
        p12_password = os.environ[P12_PASSWORD_ENV].encode()
    if "pkcs12" in chosen and p12_password is None:
        why = f"{out_dir} holds keystore.p12" if formats is None else "PKCS#12 output"
        raise ValueError(
            f"{why}: its password is needed (--p12-password-file or {P12_PASSWORD_ENV}; "
            "it is never stored), or choose other outputs with --format"
        )
    check_formats(chosen, p12_password)
    source = p12_password_file.resolve() if p12_password_file else None
    return OutputSet(chosen, source), p12_password


def read_password_file(path: Path) -> bytes:
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read the PKCS#12 password file {path}: {exc.strerror}") from None


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output place that cannot be written, before anything irreversible happens."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a directory: name a directory")
    base = out_dir
    while not base.exists():  # the nearest existing ancestor is where mkdir must work
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"--out {out_dir}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir}: cannot write in {base} (permission denied)")


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
                "cert.pem": (leaf + chain, PUBLIC_MODE),
                "leaf.pem": (leaf, PUBLIC_MODE),
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
        view = memoryview(data)
        while view:  # a short write (a disk filling up) is not a whole file
            view = view[os.write(fd, view) :]
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


def _make_dirs(path: Path) -> None:
    """mkdir -p, but every directory made is DIR_MODE (mkdir's own mode goes through the umask,
    and Path.mkdir(parents=True) gives parents the umask's mode); existing ones are left alone."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, as it is
        directory.chmod(DIR_MODE)


def write_atomically(
    out_dir: Path, files: Mapping[str, tuple[bytes, int]], outputs: OutputSet | None = None
) -> None:
    """Publish `files` in out_dir as one atomic change (see the module docstring), recording
    `outputs` beside them when given."""
    _make_dirs(out_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    version = out_dir / f"..{stamp}.{secrets.token_hex(4)}"
    version.mkdir(mode=DIR_MODE)
    try:
        version.chmod(DIR_MODE)  # exactly, whatever the umask took away
        for name, (data, mode) in files.items():
            _write(version / name, data, mode)
        if outputs is not None:
            _write(version / OUTPUTS_RECORD, outputs.to_json(), PUBLIC_MODE)
        _fsync_dir(version)
    except OSError:
        shutil.rmtree(version, ignore_errors=True)  # never published: leave no half set
        raise
    data_link = out_dir / DATA_LINK
    old = os.readlink(data_link) if data_link.is_symlink() else None
    _replace_symlink(data_link, version.name)  # the one atomic step
    for name in files:
        link = out_dir / name
        if not (link.is_symlink() and os.readlink(link) == f"{DATA_LINK}/{name}"):
            if link.exists() and not link.is_symlink():
                link.unlink()  # a plain file from an older layout: replaced by the link
            _replace_symlink(link, f"{DATA_LINK}/{name}")
    _remove_stale_links(out_dir, files)
    _fsync_dir(out_dir)
    # Only ever delete a version directory of our own making (a bare "..<stamp>.<hex>" name,
    # a real directory): ..data could have been pointed anywhere by whoever can write here.
    if old and old != version.name and _VERSION.fullmatch(old):
        previous = out_dir / old
        if previous.is_dir() and not previous.is_symlink():
            shutil.rmtree(previous)


def _remove_stale_links(out_dir: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Links into ..data that the new set does not fill would dangle: remove them."""
    for entry in out_dir.iterdir():
        if entry.name in files or not entry.is_symlink():
            continue
        if os.readlink(entry).startswith(f"{DATA_LINK}/"):
            entry.unlink()


def read_credentials(out_dir: Path) -> Credentials | None:
    """The credentials in out_dir's PEM files, or None if there are none (yet)."""
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    if not cert_path.exists() or not key_path.exists():
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    # cert.pem is leaf + chain; directories written before that hold the leaf alone there.
    leaf, *chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    chain += _certs(out_dir / "chain.pem")
    return Credentials(key, leaf, tuple(dict.fromkeys(chain)), tuple(_certs(out_dir / "ca.pem")))


def _certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes() if path.exists() else b""
    return x509.load_pem_x509_certificates(data) if data.strip() else []
