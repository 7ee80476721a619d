"""The data directory on disk: what init creates, with which modes, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca_server.core.errors import ConfigurationError
from ca_server.datadir import DataDir, init_ca
from ca_server.files import make_private_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_init_under_umask_000_creates_every_directory_0700(tmp_path: Path, umask_000: None) -> None:
    data_dir = tmp_path / "new" / "ca-data"  # a missing parent too
    init_ca(data_dir, trust_domain="signet.local", key_type="ec-p256")
    d = DataDir(data_dir)
    for directory in (tmp_path / "new", data_dir, d.secrets, d.admin):
        assert _mode(directory) == 0o700, f"{directory} is {_mode(directory):04o}"
    for key in (d.root_key, d.intermediate_key, d.admin / "key.pem"):
        assert _mode(key) == 0o600, f"{key} is {_mode(key):04o}"
    for path in data_dir.rglob("*"):
        assert not _mode(path) & 0o022, f"{path} is writable by others ({_mode(path):04o})"
    d.check_permissions()  # what init made, serve accepts


def test_the_serve_lock_under_umask_000_is_not_world_writable(
    tmp_path: Path, umask_000: None
) -> None:
    d = DataDir(tmp_path / "ca-data")
    d.lock().close()
    assert _mode(d.path) == 0o700
    assert _mode(d.lock_file) == 0o644


def test_a_private_dir_is_0700_under_an_umask_that_strips_its_owners_bits(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        make_private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir(mode=0o750)
    make_private_dir(tmp_path / "kept")
    assert _mode(tmp_path / "kept") == 0o750


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("made") / "ca-data"
    init_ca(data_dir, trust_domain="signet.local", key_type="ec-p256")
    return data_dir


@pytest.mark.parametrize(
    ("where", "mode", "says"),
    [
        (".", 0o777, "writable by any local user"),
        ("secrets", 0o703, "writable by any local user"),
        ("admin", 0o702, "writable by any local user"),
        ("config.toml", 0o646, "writable by any local user"),
        ("admin/key.pem", 0o640, "readable by group or others"),
        ("admin/key.pem", 0o604, "readable by group or others"),
    ],
)
def test_permissions_another_local_user_could_abuse_are_refused(
    made: Path, where: str, mode: int, says: str
) -> None:
    path = made / where
    before = _mode(path)
    path.chmod(mode)
    try:
        with pytest.raises(ConfigurationError, match=says) as info:
            DataDir(made).check_permissions()
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    finally:
        path.chmod(before)
    DataDir(made).check_permissions()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_admin_key_owned_by_another_user_is_refused(made: Path) -> None:
    key = made / "admin" / "key.pem"
    os.chown(key, 65534, -1)
    try:
        with pytest.raises(ConfigurationError, match=r"owned by uid 65534, not by this server"):
            DataDir(made).check_permissions()
    finally:
        os.chown(key, os.geteuid(), -1)
