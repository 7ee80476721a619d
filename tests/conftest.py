"""Shared fixtures: a real CA in a temporary data directory, served over real mTLS on
127.0.0.1 (port 0), with the admin credentials init wrote and helpers to mint workloads."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ca_server.config import load_config
from ca_server.core.clock import Clock
from ca_server.datadir import DataDir, LoadedCa, init_ca, load_ca
from ca_server.logs import configure_logging
from ca_server.server import RunningServer, start_server
from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.pg import pg_cluster, pg_url  # noqa: F401 - fixtures for every test module
from tests.pki import TRUST_DOMAIN, key_pem, make_csr, make_key, spiffe
from tests.tools import Grpcurl

# Workloads under /web/* may hold names under web.internal and IPs in 10.0.0.0/8.
TEST_POLICY = f"""
[[policy.workloads]]
identity = "spiffe://{TRUST_DOMAIN}/web/*"
dns_names = ["*.web.internal", "web.internal"]
ip_ranges = ["10.0.0.0/8"]
"""


@dataclass
class Credentials:
    key_pem: bytes
    cert_pem: bytes  # leaf only
    chain_pem: bytes  # intermediate(s)
    serial: str

    @property
    def fullchain(self) -> bytes:
        return self.cert_pem + self.chain_pem

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "cert.pem", directory / "key.pem"
        cert.write_bytes(self.fullchain)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


@dataclass
class CaServer:
    data_dir: Path
    loaded: LoadedCa
    running: RunningServer

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def authority(self):  # type: ignore[no-untyped-def]
        return self.loaded.authority

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.loaded.store

    @property
    def root_pem(self) -> bytes:
        return DataDir(self.data_dir).root_cert.read_bytes()

    @property
    def admin_dir(self) -> Path:
        return self.data_dir / "admin"

    def admin_credentials(self) -> tuple[bytes, bytes]:
        return (self.admin_dir / "cert.pem").read_bytes(), (self.admin_dir / "key.pem").read_bytes()

    def channel(
        self, chain: bytes | None = None, key: bytes | None = None, root: bytes | None = None
    ) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=root or self.root_pem, private_key=key, certificate_chain=chain
        )
        return grpc.secure_channel(self.address, creds)

    def admin_channel(self) -> grpc.Channel:
        cert, key = self.admin_credentials()
        return self.channel(cert, key)

    def stub(self, channel: grpc.Channel) -> ca_pb2_grpc.CertificateAuthorityStub:
        return ca_pb2_grpc.CertificateAuthorityStub(channel)

    def grpcurl(self, cert: Path | None = None, key: Path | None = None) -> Grpcurl:
        if cert is None:
            cert, key = self.admin_dir / "cert.pem", self.admin_dir / "key.pem"
        return Grpcurl(self.address, self.admin_dir / "ca.pem", cert, key)

    def issue(
        self,
        path: str = "web/frontend",
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        key_type: str = "ec-p256",
        validity: dt.timedelta | None = None,
    ) -> Credentials:
        """Issue a workload certificate through SignCertificate with the admin credentials."""
        key, csr = make_csr(make_key(key_type), uris=[spiffe(path)], dns=dns, ips=ips)
        request = ca_pb2.SignCertificateRequest(csr_pem=csr)
        if validity is not None:
            request.validity.FromTimedelta(validity)
        with self.admin_channel() as ch:
            reply = self.stub(ch).SignCertificate(request, timeout=30)
        return Credentials(
            key_pem(key),
            reply.certificate_pem.encode(),
            reply.chain_pem.encode(),
            reply.serial_number,
        )


def start_ca(
    data_dir: Path,
    *,
    clock: Clock | None = None,
    extra_config: str = TEST_POLICY,
    issuance: dict[str, str] | None = None,
    server: dict[str, str] | None = None,
    store_url: str | None = None,
    public_url: str | None = None,
    key_type: str = "ec-p256",
) -> CaServer:
    """Initialise a CA in data_dir (if new), adjust config.toml, and serve it on 127.0.0.1:0.
    The store: store_url, else a new PostgreSQL database when the suite runs with
    SIGNET_TEST_STORE=postgresql (the API tests against the shared store), else SQLite."""
    if not DataDir(data_dir).exists():
        if store_url is None and NEW_POSTGRES_DATABASE:
            store_url = NEW_POSTGRES_DATABASE[0]()
        init_ca(
            data_dir, trust_domain=TRUST_DOMAIN, key_type=key_type, clock=clock,
            store_url=store_url, public_url=public_url,
        )  # fmt: skip
        config_path = data_dir / "config.toml"
        text = config_path.read_text()
        settings = {"min_validity": "1s", **(issuance or {})}
        for name, value in settings.items():
            text = _set(text, name, f'"{value}"')
        for name, value in {
            "listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "bootstrap_listen": "127.0.0.1:0",
            **(server or {}),
        }.items():
            bare = value.startswith("[") or value.isdigit()  # TOML arrays and integers
            text = _set(text, name, value if bare else f'"{value}"')
        config_path.write_text(text + extra_config)
    loaded = load_ca(load_config(data_dir, env={}), None, clock)
    return CaServer(data_dir, loaded, start_server(loaded))


def _set(text: str, name: str, value: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{name} = ") or line.startswith(f"# {name} = "):
            lines[i] = f"{name} = {value}"
            return "\n".join(lines) + "\n"
    raise KeyError(name)


def stop_ca(ca: CaServer) -> None:
    ca.running.stop(0)
    ca.store.close()


# Set by the _test_store fixture when SIGNET_TEST_STORE=postgresql: makes a new database.
NEW_POSTGRES_DATABASE: list[Callable[[], str]] = []


@pytest.fixture(scope="session", autouse=True)
def _test_store(request: pytest.FixtureRequest) -> None:
    store = os.environ.get("SIGNET_TEST_STORE", "sqlite")
    if store == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        NEW_POSTGRES_DATABASE.append(cluster.new_database)
    elif store != "sqlite":
        raise pytest.UsageError(f"SIGNET_TEST_STORE={store!r}: use sqlite or postgresql")


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("info", json=True)  # info: tests assert on the per-RPC lines


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    """One CA for the session: tests that only add certificates share it."""
    server = start_ca(tmp_path_factory.mktemp("ca") / "ca-data")
    yield server
    stop_ca(server)


@pytest.fixture
def admin(ca: CaServer) -> Iterator[ca_pb2_grpc.CertificateAuthorityStub]:
    with ca.admin_channel() as ch:
        yield ca.stub(ch)


@pytest.fixture
def own_ca(tmp_path: Path) -> Iterator[CaServer]:
    """A CA for one test: for tests that count audit rows or list certificates, which the
    other tests sharing the session CA would change under them."""
    server = start_ca(tmp_path / "ca-data")
    yield server
    stop_ca(server)


@pytest.fixture
def own_admin(own_ca: CaServer) -> Iterator[ca_pb2_grpc.CertificateAuthorityStub]:
    with own_ca.admin_channel() as ch:
        yield own_ca.stub(ch)
