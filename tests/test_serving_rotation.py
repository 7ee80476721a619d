"""The server's own certificate is replaced before it expires, without a restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from ca_server.core.clock import FakeClock
from ca_server.core.profile import serial_hex
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca
from tests.tools import presented_serial


def _presented_serial(ca: CaServer, tmp_path: Path) -> int:
    return presented_serial(ca.address, ca.admin_dir)


def test_serving_certificate_rotates_at_two_thirds_without_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    # A backdate longer than the jump keeps the rotated certificate valid on the real clock.
    ca = start_ca(
        tmp_path / "ca-data",
        clock=clock,
        issuance={"backdate": "30m"},
        server={"serving_validity": "30m"},
    )
    try:
        first = ca.running.serving.current
        assert _presented_serial(ca, tmp_path) == int(first.serial, 16)
        with ca.admin_channel() as before:
            stub = ca.stub(before)
            stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)

            clock.advance(dt.timedelta(minutes=19))  # before 2/3 of 30 minutes: no change
            assert _presented_serial(ca, tmp_path) == int(first.serial, 16)

            clock.advance(dt.timedelta(minutes=2))  # past 2/3
            rotated = _presented_serial(ca, tmp_path)
            assert rotated != int(first.serial, 16)
            assert ca.running.serving.current.serial == serial_hex(rotated)
            # The connection made before the rotation keeps working.
            stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)
        with ca.admin_channel() as after:
            ca.stub(after).GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)
        record = ca.store.get_certificate(ca.running.serving.current.serial)
        assert record is not None and record.identity.endswith("/signet/server")
        assert record.dns_names == ("localhost", "ca.signet.invalid")
        assert record.ip_addresses == ("127.0.0.1",)
    finally:
        stop_ca(ca)


def test_server_names_are_added_to_the_serving_certificate(tmp_path: Path) -> None:
    ca = start_ca(
        tmp_path / "ca-data", server={"server_names": '["ca.example.internal", "10.9.8.7"]'}
    )
    try:
        cert = ca.running.serving.current.certificate
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [
            "localhost",
            "ca.signet.invalid",
            "ca.example.internal",
        ]
        assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == [
            "127.0.0.1",
            "10.9.8.7",
        ]
    finally:
        stop_ca(ca)


def test_a_revoked_serving_certificate_is_replaced_at_the_next_handshake(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca-data")
    try:
        first = ca.running.serving.current.serial
        with ca.admin_channel() as ch:
            ca.stub(ch).RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(serial_number=first, reason=ca_pb2.KEY_COMPROMISE),
                timeout=10,
            )
        assert _presented_serial(ca, tmp_path) != int(first, 16)
        assert ca.running.serving.current.serial != first
    finally:
        stop_ca(ca)
