"""The ``ca-server`` command, run as a subprocess the way an operator runs it: init, serve,
environment variables, passphrases, key-file modes, port clashes and SIGTERM.

Every wait is bounded: server output is read line by line by threads into queues, and each
wait for a line or an exit has a deadline. Every started process is killed in a finally."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from ca_server.files import load_private_key
from tests.test_keys import write_legacy_pkcs8
from tests.tools import Grpcurl, openssl

SERVICE = "signet.ca.v1.CertificateAuthority"
STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0
TRY_IT = "Try it: "


def _ca_server() -> list[str]:
    beside = Path(sys.executable).parent / "ca-server"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "ca_server.cli"]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any SIGNET_* setting leaking in, plus extra. The HTTP
    listener takes a free port: tests run side by side with each other and with real CAs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_")}
    env["SIGNET_HTTP_LISTEN"] = "127.0.0.1:0"
    env["SIGNET_BOOTSTRAP_LISTEN"] = "127.0.0.1:0"
    env["SIGNET_METRICS_LISTEN"] = "127.0.0.1:0"
    env.update(extra or {})
    return env


def _run(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A ca-server command expected to finish by itself (init, or serve that must refuse)."""
    return subprocess.run(
        [*_ca_server(), *map(str, args)],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
    )


class Server:
    """A `ca-server serve` process whose stdout and stderr are read by threads into queues."""

    def __init__(
        self,
        *args: str | Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = (),
    ):
        """`command` replaces `ca-server serve` (e.g. scripts/serve.sh); `env` is then the
        whole environment, not additions to the test's."""
        self.proc = subprocess.Popen(
            [*(command or [*_ca_server(), "serve"]), *map(str, args)],
            cwd=cwd,
            env=dict(env or {}) if command else _env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout_lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_text: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stdout_lines.put(line.rstrip("\n"))
        self.stdout_lines.put(None)  # EOF: the process closed stdout (it exited)

    def _drain(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stderr_text.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_text)

    def wait_for_line(self, prefix: str, timeout: float = STARTUP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line starting {prefix!r} within {timeout}s; stdout so far: {seen}\n"
                    f"stderr: {self.stderr}"
                )
            try:
                line = self.stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=EXIT_TIMEOUT)
                self._join()
                raise AssertionError(
                    f"ca-server exited ({self.proc.returncode}) before printing {prefix!r}; "
                    f"stdout: {seen}\nstderr: {self.stderr}"
                )
            seen.append(line)
            if line.startswith(prefix):
                return line

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        code = self.proc.wait(timeout=timeout)
        self._join()
        return code

    def terminate(self, timeout: float = EXIT_TIMEOUT) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)
        self._join()

    def _join(self) -> None:
        for t in self._threads:
            t.join(timeout=5)


@contextmanager
def serving(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, command: Sequence[str] = ()
) -> Iterator[Server]:
    server = Server(*args, cwd=cwd, env=env, command=command)
    try:
        yield server
    finally:
        server.kill()


def _serve_refused(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ca-server serve ...` that must refuse to start: fails at once if it prints its Try it
    line (it is serving) instead of exiting; returns the exit code and output."""
    with serving(*args, cwd=cwd, env=env) as server:
        seen: list[str] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"ca-server neither served nor exited: {seen}\n{server.stderr}"
            try:
                line = server.stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = server.wait_exit()
                return subprocess.CompletedProcess(
                    server.proc.args, code, "\n".join(seen), server.stderr
                )
            seen.append(line)
            assert not line.startswith(TRY_IT), (
                f"ca-server started serving but should refuse: {line}"
            )


def _address_from_try_it(line: str) -> str:
    """The host:port argument of the printed grpcurl command (the token before `list`)."""
    words = shlex.split(line.removeprefix(TRY_IT))
    assert words[-1] == "list", line
    return words[-2]


def _serve_json(data_dir: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((data_dir / "serve.json").read_text())
    return loaded


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _init(data_dir: Path, cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
    result = _run("init", "--data-dir", data_dir, *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


# -- serve on an empty directory: the first five minutes ---------------------------------------


def test_serve_on_empty_dir_initialises_prints_working_grpcurl_command_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "ca-data"
    data_dir.mkdir()
    with serving("--data-dir", data_dir, "--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        enroll = server.wait_for_line("Enroll on ")
        line = server.wait_for_line(TRY_IT)
        boot = _serve_json(data_dir)["bootstrap_listen"]
        assert enroll == f"Enroll on {boot} (bootstrap TLS: ca-client enroll --server {boot})"

        for name in ("root.pem", "intermediate.pem", "ca.db", "config.toml"):
            assert (data_dir / name).is_file(), name
        for name in ("cert.pem", "key.pem", "ca.pem"):
            assert (data_dir / "admin" / name).is_file(), name
        keys = sorted((data_dir / "secrets").glob("*.key.pem"))
        assert [k.name for k in keys] == ["intermediate.key.pem", "root.key.pem"]
        for key in [*keys, data_dir / "admin" / "key.pem"]:
            assert _mode(key) == 0o600, f"{key} has mode {_mode(key):04o}"

        address = _address_from_try_it(line)
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0, address
        assert _serve_json(data_dir)["listen"] == address

        # The printed command, run exactly as printed from the same directory, works.
        tried = subprocess.run(
            shlex.split(line.removeprefix(TRY_IT)),
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert SERVICE in tried.stdout.split()

        assert server.terminate() == 0, server.stderr
        assert not (data_dir / "serve.json").exists()


def test_serve_takes_listen_and_data_dir_from_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    env = {"SIGNET_LISTEN": "127.0.0.1:0", "SIGNET_DATA_DIR": str(data_dir)}
    with serving(cwd=tmp_path, env=env) as server:
        address = _address_from_try_it(server.wait_for_line(TRY_IT))
        assert address != "127.0.0.1:50051"  # port 0 from SIGNET_LISTEN, not the default
        assert _serve_json(data_dir)["listen"] == address
        assert (data_dir / "root.pem").is_file()
        assert not (tmp_path / "ca-data").exists()  # not the default data directory
        assert server.terminate() == 0, server.stderr


# -- init ---------------------------------------------------------------------------------------


def test_init_twice_refuses_to_overwrite_and_keeps_the_existing_ca(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    _init(data_dir, tmp_path)
    root = (data_dir / "root.pem").read_bytes()
    key = (data_dir / "secrets" / "root.key.pem").read_bytes()

    again = _run("init", "--data-dir", data_dir, cwd=tmp_path)
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert (data_dir / "root.pem").read_bytes() == root
    assert (data_dir / "secrets" / "root.key.pem").read_bytes() == key


def test_init_with_trust_domain_and_p384_makes_p384_root_and_admin_in_that_domain(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "ca"
    _init(data_dir, tmp_path, "--trust-domain", "example.org", "--key-type", "ec-p384")

    root_text = openssl("x509", "-in", data_dir / "root.pem", "-noout", "-text").stdout
    assert "NIST CURVE: P-384" in root_text, root_text
    key_text = openssl("pkey", "-in", data_dir / "secrets" / "root.key.pem", "-noout", "-text")
    assert "NIST CURVE: P-384" in key_text.stdout

    admin_cert = data_dir / "admin" / "cert.pem"  # leaf, then the intermediate
    san = openssl("x509", "-in", admin_cert, "-noout", "-ext", "subjectAltName").stdout
    assert "URI:spiffe://example.org/admin" in san, san
    verified = openssl(
        "verify", "-CAfile", data_dir / "root.pem", "-untrusted", admin_cert, admin_cert
    )
    assert f"{admin_cert}: OK" in verified.stdout


# -- serve refuses what it should ---------------------------------------------------------------


def test_serve_on_non_empty_directory_that_is_not_a_ca_exits_1_and_touches_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "not-a-ca"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("someone else's files\n")

    result = _serve_refused("--data-dir", data_dir, "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 1
    assert "not empty" in result.stderr and "no Signet CA" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("key_file", "mode"),
    [
        pytest.param("intermediate.key.pem", 0o644, id="intermediate-0644"),
        pytest.param("root.key.pem", 0o640, id="root-0640"),
    ],
)
def test_serve_refuses_a_key_file_readable_by_group_or_others_and_says_chmod_600(
    tmp_path: Path, key_file: str, mode: int
) -> None:
    data_dir = tmp_path / "ca"
    _init(data_dir, tmp_path)
    (data_dir / "secrets" / key_file).chmod(mode)

    result = _serve_refused("--data-dir", data_dir, "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 1
    assert "chmod 600" in result.stderr, result.stderr
    assert key_file in result.stderr
    assert "Traceback" not in result.stderr
    assert not (data_dir / "serve.json").exists()


@pytest.mark.parametrize(
    ("where", "mode"),
    [
        pytest.param(".", 0o777, id="data-dir-0777"),
        pytest.param("config.toml", 0o666, id="config-0666"),
        pytest.param("admin/key.pem", 0o644, id="admin-key-0644"),
    ],
)
def test_serve_refuses_what_any_local_user_could_change_or_read_in_one_line(
    tmp_path: Path, where: str, mode: int
) -> None:
    data_dir = tmp_path / "ca"
    _init(data_dir, tmp_path)
    (data_dir / where).chmod(mode)

    result = _serve_refused("--data-dir", data_dir, "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ca-server: error: refusing"), result.stderr
    assert str(data_dir / where).rstrip("/.") in lines[0]
    assert not (data_dir / "serve.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_serve_refuses_a_ca_key_not_owned_by_its_user(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    _init(data_dir, tmp_path)
    os.chown(data_dir / "secrets" / "intermediate.key.pem", 65534, -1)

    result = _serve_refused("--data-dir", data_dir, "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 1
    assert "owned by uid 65534, not by this server's user" in result.stderr, result.stderr
    assert "intermediate.key.pem" in result.stderr and "Traceback" not in result.stderr


def test_init_with_key_type_ml_dsa_65_makes_an_ml_dsa_chain_with_0600_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    _init(data_dir, tmp_path, "--key-type", "ml-dsa-65")
    assert 'key_type = "ml-dsa-65"' in (data_dir / "config.toml").read_text()
    for name in ("root", "intermediate"):
        cert = x509.load_pem_x509_certificate((data_dir / f"{name}.pem").read_bytes())
        assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ML_DSA_65
        key = data_dir / "secrets" / f"{name}.key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_init_ml_dsa_65_with_a_passphrase_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "ca"
    result = _run(
        "init", "--data-dir", data_dir, "--key-type", "ml-dsa-65", cwd=tmp_path,
        env={"SIGNET_CA_PASSPHRASE": "correct horse battery staple"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "ML-DSA CA keys cannot be encrypted with a passphrase yet" in result.stderr
    assert not data_dir.exists()


def test_init_under_umask_000_makes_the_data_directory_0700(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    result = subprocess.run(
        [*_ca_server(), "init", "--data-dir", str(data_dir)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        umask=0,
    )
    assert result.returncode == 0, result.stderr
    for directory in (data_dir, data_dir / "secrets", data_dir / "admin"):
        assert _mode(directory) == 0o700, f"{directory}: {_mode(directory):04o}"
    assert _mode(data_dir / "config.toml") == 0o644


# -- passphrase-protected CA keys ---------------------------------------------------------------


@pytest.fixture(scope="module")
def encrypted_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A CA initialised with SIGNET_CA_PASSPHRASE=secret: (cwd, data dir)."""
    cwd = tmp_path_factory.mktemp("encrypted")
    data_dir = cwd / "ca"
    _init(data_dir, cwd, env={"SIGNET_CA_PASSPHRASE": "secret"})
    return cwd, data_dir


def _pkcs12_key(path: Path, passphrase: str) -> subprocess.CompletedProcess[str]:
    return openssl(
        "pkcs12", "-in", path, "-nocerts", "-noenc", "-passin", f"pass:{passphrase}", check=False
    )


def test_ca_keys_made_with_a_passphrase_are_pkcs12(encrypted_ca: tuple[Path, Path]) -> None:
    _, data_dir = encrypted_ca
    keys = sorted((data_dir / "secrets").glob("*.key.*"))
    assert [k.name for k in keys] == ["intermediate.key.p12", "root.key.p12"]
    for key in keys:
        assert _mode(key) == 0o600
        # openssl cannot read it without the passphrase, and can with it.
        assert _pkcs12_key(key, "").returncode
        assert "PRIVATE KEY" in _pkcs12_key(key, "secret").stdout


def _legacy_encrypted_ca(cwd: Path) -> Path:
    """A data directory as an older Signet made it with a passphrase: PKCS#8 PEM keys
    encrypted with 2,048 PBKDF2 iterations."""
    data_dir = cwd / "old-ca"
    _init(data_dir, cwd, env={"SIGNET_CA_PASSPHRASE": "secret"})
    for p12 in (data_dir / "secrets").glob("*.key.p12"):
        write_legacy_pkcs8(p12.with_suffix(".pem"), load_private_key(p12, b"secret"), b"secret")
        p12.unlink()
    return data_dir


def test_keys_rewrap_moves_legacy_pkcs8_keys_to_pkcs12_and_serve_still_starts(
    tmp_path: Path,
) -> None:
    data_dir = _legacy_encrypted_ca(tmp_path)
    old = sorted((data_dir / "secrets").glob("*.key.pem"))
    assert [k.read_text().splitlines()[0] for k in old] == [
        "-----BEGIN ENCRYPTED PRIVATE KEY-----"
    ] * 2
    env = {"SIGNET_CA_PASSPHRASE": "secret"}
    args = ("--data-dir", data_dir, "--listen", "127.0.0.1:0")
    with serving(*args, cwd=tmp_path, env=env) as server:  # old data directories keep working
        server.wait_for_line(TRY_IT)
        assert server.terminate() == 0, server.stderr
    assert "ca-server keys rewrap" in server.stderr  # and it says how to re-encrypt them

    refused = _run("keys", "rewrap", "--data-dir", data_dir, cwd=tmp_path)
    assert refused.returncode == 1 and "SIGNET_CA_PASSPHRASE" in refused.stderr
    wrong = _run("keys", "rewrap", "--data-dir", data_dir, cwd=tmp_path, env={
        "SIGNET_CA_PASSPHRASE": "not-it"})  # fmt: skip
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr, wrong.stderr
    assert sorted((data_dir / "secrets").glob("*.key.pem")) == old  # untouched

    done = _run("keys", "rewrap", "--data-dir", data_dir, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("re-encrypted") == 2, done.stdout
    keys = sorted((data_dir / "secrets").glob("*.key.*"))
    assert [k.name for k in keys] == ["intermediate.key.p12", "root.key.p12"]
    for key in keys:
        assert _mode(key) == 0o600
        info = openssl("pkcs12", "-info", "-noout", "-in", key, "-passin", "pass:secret")
        assert "AES-256-CBC, Iteration 600000, PRF hmacWithSHA256" in info.stderr, info.stderr
    with serving(*args, cwd=tmp_path, env=env) as server:
        server.wait_for_line(TRY_IT)
        assert server.terminate() == 0, server.stderr
    assert "ca_key_weakly_encrypted" not in server.stderr


def test_serve_without_the_passphrase_exits_1_naming_signet_ca_passphrase(
    encrypted_ca: tuple[Path, Path],
) -> None:
    cwd, data_dir = encrypted_ca
    result = _serve_refused("--data-dir", data_dir, "--listen", "127.0.0.1:0", cwd=cwd)
    assert result.returncode == 1
    assert "SIGNET_CA_PASSPHRASE" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_wrong_passphrase_file_exits_1_saying_wrong_passphrase(
    encrypted_ca: tuple[Path, Path], tmp_path: Path
) -> None:
    cwd, data_dir = encrypted_ca
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret\n")
    result = _serve_refused(
        "--data-dir", data_dir, "--listen", "127.0.0.1:0",
        "--passphrase-file", wrong, cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 1
    assert "wrong passphrase" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_the_passphrase_file_starts_and_stops_cleanly(
    encrypted_ca: tuple[Path, Path], tmp_path: Path
) -> None:
    cwd, data_dir = encrypted_ca
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("secret\n")  # a trailing newline, as `echo secret > file` writes
    passphrase.chmod(0o600)
    args = ("--data-dir", data_dir, "--listen", "127.0.0.1:0", "--passphrase-file", passphrase)
    with serving(*args, cwd=cwd) as server:
        address = _address_from_try_it(server.wait_for_line(TRY_IT))
        assert _serve_json(data_dir)["listen"] == address
        assert server.terminate() == 0, server.stderr


# -- one port, one server -------------------------------------------------------------------------


def test_second_server_on_a_port_already_in_use_exits_1_saying_cannot_listen(
    tmp_path: Path,
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    with serving("--data-dir", first_dir, "--listen", "127.0.0.1:0", cwd=tmp_path) as first:
        address = _address_from_try_it(first.wait_for_line(TRY_IT))

        second = _serve_refused("--data-dir", second_dir, "--listen", address, cwd=tmp_path)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "cannot listen" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert not (second_dir / "serve.json").exists()

        # The first server still owns its port and still answers.
        assert _serve_json(first_dir)["listen"] == address
        admin = first_dir / "admin"
        grpcurl = Grpcurl(address, admin / "ca.pem", admin / "cert.pem", admin / "key.pem")
        listed = grpcurl.run("list")
        assert SERVICE in listed.stdout.split(), listed.stdout + listed.stderr
        assert first.terminate() == 0, first.stderr


def test_second_server_on_the_same_data_directory_is_refused_and_leaves_serve_json(
    tmp_path: Path,
) -> None:
    data = tmp_path / "ca-data"
    with serving("--data-dir", data, "--listen", "127.0.0.1:0", cwd=tmp_path) as first:
        first.wait_for_line(TRY_IT)
        served = _serve_json(data)
        second = _serve_refused("--data-dir", data, "--listen", "127.0.0.1:0", cwd=tmp_path)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already being served" in second.stderr
        assert "Traceback" not in second.stderr
        assert _serve_json(data) == served  # the first server's file is untouched
        assert first.terminate() == 0, first.stderr


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--store", "mysql://db.example/signet", "unsupported store URL"),
        ("--store", "postgresql://signet@127.0.0.1:1/signet", "cannot reach the database"),
        ("--server-name", "bad_name!", "server name 'bad_name!'"),
    ],
)
def test_bad_flag_values_exit_1_with_a_message_not_a_traceback(
    tmp_path: Path, flag: str, value: str, needle: str
) -> None:
    result = _serve_refused(
        "--data-dir", tmp_path / "ca-data", "--listen", "127.0.0.1:0", flag, value, cwd=tmp_path
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unsupported_store_url_fails_before_anything_is_written(tmp_path: Path) -> None:
    data = tmp_path / "ca-data"
    result = _serve_refused("--data-dir", data, "--store", "mysql://x/y", cwd=tmp_path)
    assert result.returncode == 1
    assert not (data / "config.toml").exists() and not (data / "root.pem").exists()
