"""ca_client.TrustBundle: a Python relying party's trust bundle that follows WatchTrustBundle
through a real intermediate rotation, and through the CA going away and coming back."""

from __future__ import annotations

from pathlib import Path

from ca_client.trust_bundle import TrustBundle
from ca_server.cli import main as ca_server_main
from signet.ca.v1 import ca_pb2
from tests.conftest import start_ca, stop_ca
from tests.test_nginx import _free_port

TIMEOUT = 30


def test_a_trust_bundle_follows_a_rotation_and_a_ca_restart(tmp_path: Path) -> None:
    data, port = tmp_path / "ca-data", _free_port()
    ca = start_ca(data, server={"listen": f"127.0.0.1:{port}"})
    chain, key = ca.admin_credentials()
    channel = ca.channel(chain, key)
    bundle = TrustBundle(channel, first_retry=0.05, max_retry=0.2).start()
    heard: list[str] = []
    bundle.on_change.append(lambda b: heard.append(b.intermediates_pem))
    try:
        first = bundle.intermediates_pem
        assert bundle.roots_pem == ca.root_pem.decode()
        assert ca_server_main(["intermediate", "rotate", "--data-dir", str(data)]) == 0
        assert bundle.wait_for_change(1, TIMEOUT), bundle.last_error
        assert heard == [bundle.intermediates_pem] and bundle.intermediates_pem != first
        with ca.admin_channel() as ch:
            now = ca.stub(ch).GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
        assert bundle.intermediates_pem == now.intermediate_certificates_pem
        second = bundle.intermediates_pem
        # The CA goes away and comes back: the same bundle again is no change.
        stop_ca(ca)
        ca = start_ca(data)
        assert ca_server_main(["intermediate", "rotate", "--data-dir", str(data)]) == 0
        assert bundle.wait_for_change(2, TIMEOUT), bundle.last_error
        assert bundle.intermediates_pem != second and heard[-1] == bundle.intermediates_pem
        assert len(heard) == 2 and bundle.last_error is not None
    finally:
        bundle.stop()
        channel.close()
        stop_ca(ca)
