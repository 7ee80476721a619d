from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer


def test_admin_can_fetch_trust_bundle(ca: CaServer, admin) -> None:
    reply = admin.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)
    assert reply.root_certificates_pem.encode() == ca.root_pem


def test_issue_workload(ca: CaServer) -> None:
    creds = ca.issue("web/a", dns=("a.web.internal",))
    assert creds.serial
