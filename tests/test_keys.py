"""ca_server.core.keys: key types, keys on disk (0600, optionally encrypted) and the subject
keys the CA refuses to certify."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, mldsa, rsa, x25519

from ca_server.core.errors import ConfigurationError, WeakKey
from ca_server.core.keys import (
    CA_KEY_TYPES,
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    SigningKey,
    check_subject_key,
    generate_key,
    signature_hash,
)
from ca_server.files import KDF_ROUNDS, is_weakly_encrypted, load_private_key, write_private_key
from tests.tools import openssl

PASSPHRASE = b"correct horse battery staple"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_der(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def ca_keys() -> dict[str, SigningKey]:
    return {kind: generate_key(kind) for kind in CA_KEY_TYPES}


@pytest.fixture
def ec_key() -> SigningKey:
    return generate_key("ec-p256")


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- generate_key / signature_hash --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls", "size"),
    [
        ("ec-p256", ec.EllipticCurvePrivateKey, 256),
        ("ec-p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa-3072", rsa.RSAPrivateKey, 3072),
        ("ed25519", ed25519.Ed25519PrivateKey, None),
        ("ml-dsa-65", mldsa.MLDSA65PrivateKey, None),
    ],
)
def test_generate_key_makes_the_named_key_type(
    kind: str, cls: type, size: int | None, ca_keys: dict[str, SigningKey]
) -> None:
    key = ca_keys[kind]
    assert isinstance(key, cls)
    if size is not None:
        assert key.key_size == size  # type: ignore[union-attr]


def test_generate_rsa_key_uses_exponent_65537(ca_keys: dict[str, SigningKey]) -> None:
    key = ca_keys["rsa-3072"]
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers().e == 65537


def test_generate_key_refuses_an_unknown_type_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown key type 'ec-p521'") as info:
        generate_key("ec-p521")
    assert "ec-p256, ec-p384, rsa-3072, ed25519, ml-dsa-65" in str(info.value)


@pytest.mark.parametrize(
    ("kind", "digest"),
    [("ec-p256", hashes.SHA256), ("ec-p384", hashes.SHA384), ("rsa-3072", hashes.SHA256)],
)
def test_signature_hash_matches_key_strength(
    kind: str, digest: type[hashes.HashAlgorithm], ca_keys: dict[str, SigningKey]
) -> None:
    assert isinstance(signature_hash(ca_keys[kind]), digest)


def test_signature_hash_is_none_for_ed25519(ca_keys: dict[str, SigningKey]) -> None:
    assert signature_hash(ca_keys["ed25519"]) is None


# -- write_private_key --------------------------------------------------------------------------


def test_write_private_key_creates_a_0600_file(tmp_path: Path, ec_key: SigningKey) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key)
    assert mode_of(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")


def test_write_private_key_is_0600_even_with_a_permissive_umask(
    tmp_path: Path, ec_key: SigningKey, permissive_umask: None
) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key)
    assert mode_of(path) == 0o600


def test_write_private_key_replaces_a_world_readable_file_with_a_0600_one(
    tmp_path: Path, ec_key: SigningKey
) -> None:
    path = tmp_path / "ca.key"
    path.write_text("old")
    path.chmod(0o644)
    write_private_key(path, ec_key)
    assert mode_of(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_write_private_key_creates_parent_directories_and_leaves_no_temp_file(
    tmp_path: Path, ec_key: SigningKey
) -> None:
    path = tmp_path / "a" / "b" / "ca.key"
    write_private_key(path, ec_key)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ca.key"]


def test_write_private_key_is_0600_even_over_a_stale_world_readable_temp_file(
    tmp_path: Path, ec_key: SigningKey
) -> None:
    path = tmp_path / "ca.key"
    stale = tmp_path / "ca.key.tmp"
    stale.write_text("left over")
    stale.chmod(0o644)
    write_private_key(path, ec_key)
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("kind", CA_KEY_TYPES)
def test_written_key_loads_back_as_the_same_key(
    tmp_path: Path, kind: str, ca_keys: dict[str, SigningKey]
) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ca_keys[kind])
    loaded = load_private_key(path)
    assert type(loaded) is type(ca_keys[kind])
    assert public_der(loaded) == public_der(ca_keys[kind])


# -- load_private_key: file modes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o700 | 0o007])
def test_load_refuses_a_key_readable_by_group_or_others_naming_chmod(
    tmp_path: Path, ec_key: SigningKey, mode: int
) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key)
    path.chmod(mode)
    with pytest.raises(ConfigurationError) as info:
        load_private_key(path)
    message = str(info.value)
    assert f"(mode {mode:04o})" in message
    assert message.endswith(f"run: chmod 600 {path}")
    assert "readable by group or others" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_accepts_a_key_only_its_owner_can_read(
    tmp_path: Path, ec_key: SigningKey, mode: int
) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key)
    path.chmod(mode)
    assert public_der(load_private_key(path)) == public_der(ec_key)


def test_load_of_a_missing_key_is_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(ConfigurationError, match=f"key file {path} does not exist"):
        load_private_key(path)


def test_load_of_a_damaged_key_is_configuration_error(tmp_path: Path, ec_key: SigningKey) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key)
    lines = path.read_text().splitlines()
    del lines[2]  # a line out of the base64 body: the DER inside is cut short
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    with pytest.raises(
        ConfigurationError, match=r"^cannot load .*: wrong passphrase or damaged key$"
    ):
        load_private_key(path)


@pytest.mark.parametrize(
    "factory",
    [ed448.Ed448PrivateKey.generate, x25519.X25519PrivateKey.generate],
    ids=["ed448", "x25519"],
)
def test_load_of_an_unsupported_key_type_is_configuration_error(tmp_path: Path, factory) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ca.key"
    write_private_key(path, factory())
    with pytest.raises(ConfigurationError, match="holds an unsupported key type"):
        load_private_key(path)


# -- encrypted keys -----------------------------------------------------------------------------


def write_legacy_pkcs8(path: Path, key: SigningKey, passphrase: bytes) -> None:
    """An encrypted key as Signet wrote it before PKCS#12 (PBKDF2 with 2,048 iterations)."""
    encryption = serialization.BestAvailableEncryption(passphrase)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)


@pytest.fixture(params=["pkcs12", "legacy-pkcs8"])
def encrypted_key(request: pytest.FixtureRequest, tmp_path: Path, ec_key: SigningKey) -> Path:
    path = tmp_path / "ca.key"
    if request.param == "pkcs12":
        write_private_key(path, ec_key, PASSPHRASE)
    else:
        write_legacy_pkcs8(path, ec_key, PASSPHRASE)
    return path


@pytest.mark.parametrize("kind", [k for k in CA_KEY_TYPES if not k.startswith("ml-dsa")])
def test_key_written_with_a_passphrase_is_pkcs12_pbes2_aes256_600k_iterations_and_0600(
    tmp_path: Path, ca_keys: dict[str, SigningKey], kind: str
) -> None:
    path = tmp_path / "ca.p12"
    write_private_key(path, ca_keys[kind], PASSPHRASE)
    assert mode_of(path) == 0o600
    # Judged by openssl, not by the code that wrote it.
    info = openssl(
        "pkcs12", "-info", "-noout", "-in", path, "-passin", f"pass:{PASSPHRASE.decode()}"
    )
    assert KDF_ROUNDS >= 600_000
    assert (
        f"Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration {KDF_ROUNDS}, PRF hmacWithSHA256"
        in info.stderr + info.stdout
    ), info.stderr
    assert "MAC: sha256" in info.stderr + info.stdout
    pem = openssl(
        "pkcs12", "-in", path, "-nocerts", "-noenc", "-passin", f"pass:{PASSPHRASE.decode()}"
    ).stdout
    extracted = serialization.load_pem_private_key(pem.encode(), None)
    assert public_der(extracted) == public_der(ca_keys[kind])  # type: ignore[arg-type]
    wrong = openssl("pkcs12", "-in", path, "-nocerts", "-noenc", "-passin", "pass:x", check=False)
    assert wrong.returncode != 0
    assert not is_weakly_encrypted(path)


def test_a_legacy_pkcs8_encrypted_key_still_loads_and_is_flagged_for_rewrap(
    tmp_path: Path, ec_key: SigningKey
) -> None:
    path = tmp_path / "old.key.pem"
    write_legacy_pkcs8(path, ec_key, PASSPHRASE)
    assert is_weakly_encrypted(path)
    assert public_der(load_private_key(path, PASSPHRASE)) == public_der(ec_key)


def test_encrypted_key_loads_with_its_passphrase(encrypted_key: Path, ec_key: SigningKey) -> None:
    assert public_der(load_private_key(encrypted_key, PASSPHRASE)) == public_der(ec_key)


@pytest.mark.parametrize("passphrase", [None, b""])
def test_encrypted_key_without_passphrase_is_configuration_error_saying_how_to_give_one(
    encrypted_key: Path, passphrase: bytes | None
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_private_key(encrypted_key, passphrase)
    assert str(info.value) == (
        f"{encrypted_key} is encrypted: set SIGNET_CA_PASSPHRASE or pass --passphrase-file"
    )


def test_encrypted_key_with_wrong_passphrase_is_configuration_error(encrypted_key: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_private_key(encrypted_key, b"wrong horse")
    assert str(info.value) == f"cannot load {encrypted_key}: wrong passphrase or damaged key"


def test_a_passphrase_for_an_unencrypted_key_is_refused_not_ignored(
    tmp_path: Path, ec_key: SigningKey
) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key)
    with pytest.raises(ConfigurationError, match="not encrypted"):
        load_private_key(path, PASSPHRASE)


def test_empty_passphrase_writes_an_unencrypted_key(tmp_path: Path, ec_key: SigningKey) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, ec_key, b"")
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")


# -- check_subject_key --------------------------------------------------------------------------


def rsa_public(bits: int, e: int = 65537) -> rsa.RSAPublicKey:
    """An RSA public key of exactly ``bits`` bits without the cost of generating one."""
    n = (1 << (bits - 1)) | 1  # odd, top bit set: the key size is what counts here
    return rsa.RSAPublicNumbers(e, n).public_key()


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        rsa_public(MIN_RSA_BITS),
        rsa_public(3072),
        rsa_public(MAX_RSA_BITS),
    ],
    ids=["p-256", "p-384", "ed25519", "rsa-2048", "rsa-3072", "rsa-8192"],
)
def test_check_subject_key_accepts_p256_p384_ed25519_and_rsa_2048_to_8192(key) -> None:  # type: ignore[no-untyped-def]
    check_subject_key(key)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (rsa_public(1024), "RSA key of 1024 bits is too weak: use at least 2048"),
        (rsa_public(2047), "RSA key of 2047 bits is too weak: use at least 2048"),
        (rsa_public(8193), "RSA key of 8193 bits is larger than 8192"),
        (rsa_public(2048, e=3), "RSA public exponent must be 65537"),
        (rsa_public(2048, e=65539), "RSA public exponent must be 65537"),
        (
            ec.generate_private_key(ec.SECP521R1()).public_key(),
            "EC curve secp521r1 is not allowed: use P-256 or P-384",
        ),
        (
            ec.generate_private_key(ec.SECP256K1()).public_key(),
            "EC curve secp256k1 is not allowed: use P-256 or P-384",
        ),
        (
            ec.generate_private_key(ec.SECP224R1()).public_key(),
            "EC curve secp224r1 is not allowed",
        ),
        (
            ec.generate_private_key(ec.BrainpoolP256R1()).public_key(),
            "EC curve brainpoolP256r1 is not allowed",
        ),
        (ed448.Ed448PrivateKey.generate().public_key(), "key type Ed448PublicKey is not allowed"),
        (
            x25519.X25519PrivateKey.generate().public_key(),
            "key type X25519PublicKey is not allowed",
        ),
        (
            dsa.generate_private_key(1024).public_key(),  # noqa: S505 - refused
            "key type DSAPublicKey is not allowed: use EC P-256/P-384, RSA >= 2048 or Ed25519",
        ),
    ],
    ids=[
        "rsa-1024",
        "rsa-2047",
        "rsa-8193",
        "rsa-e3",
        "rsa-e65539",
        "p-521",
        "secp256k1",
        "p-224",
        "brainpool",
        "ed448",
        "x25519",
        "dsa",
    ],
)
def test_check_subject_key_refuses_weak_or_unaccepted_keys_with_weak_key(  # type: ignore[no-untyped-def]
    key, message: str
) -> None:
    with pytest.raises(WeakKey) as info:
        check_subject_key(key)
    assert message in str(info.value)


# -- ML-DSA: a CA key type, never a subject key -------------------------------------------------


def test_ml_dsa_65_ca_key_signs_without_a_separate_digest(ca_keys: dict[str, SigningKey]) -> None:
    key = ca_keys["ml-dsa-65"]
    assert isinstance(key, mldsa.MLDSA65PrivateKey)
    assert signature_hash(key) is None


@pytest.mark.parametrize(
    "key",
    [
        mldsa.MLDSA44PrivateKey.generate().public_key(),
        mldsa.MLDSA65PrivateKey.generate().public_key(),
        mldsa.MLDSA87PrivateKey.generate().public_key(),
    ],
    ids=["ml-dsa-44", "ml-dsa-65", "ml-dsa-87"],
)
def test_check_subject_key_refuses_ml_dsa_saying_why_and_what_to_use(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WeakKey) as info:
        check_subject_key(key, "csr_pem")
    assert info.value.reason == "KEY_NOT_ALLOWED"
    assert "grpcio's TLS cannot complete a handshake with an ML-DSA leaf key" in str(info.value)
    assert "use an EC P-256 key" in str(info.value)


def test_an_ml_dsa_key_with_a_passphrase_is_refused_not_weakly_encrypted(
    tmp_path: Path, ca_keys: dict[str, SigningKey]
) -> None:
    path = tmp_path / "ca.p12"
    with pytest.raises(ConfigurationError, match="ML-DSA CA keys cannot be encrypted"):
        write_private_key(path, ca_keys["ml-dsa-65"], PASSPHRASE)
    assert not path.exists()
