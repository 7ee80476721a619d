"""The README's walk-through works as printed (only the port differs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ca_server.core.policy import CA_SERVER_NAME
from tests.conftest import CaServer

README = Path(__file__).resolve().parent.parent / "README.md"


def _walkthrough() -> str:
    section = README.read_text().split("## Walk-through with grpcurl", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the walk-through has no sh block"
    return match.group(1)


def test_readme_walkthrough_runs_as_printed(ca: CaServer, tmp_path: Path) -> None:
    script = _walkthrough()
    assert "127.0.0.1:50051" in script and "127.0.0.1:8080" in script
    (tmp_path / "ca-data").symlink_to(ca.data_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script.replace("127.0.0.1:50051", ca.address).replace(
                "127.0.0.1:8080", ca.running.http_address
            ),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "signet.ca.v1.CertificateAuthority" in out
    assert "web.pem: OK" in out
    assert "URI:spiffe://signet.local/web, DNS:web.internal, DNS:api.web.internal" in out
    assert "REVOKED" in out
    assert "Response verify OK" in out and "web.pem: revoked" in out
    assert "Key Compromise" in out
    assert "certificate revoked" in out
    assert '"certificates"' in out
    assert "web2.pem: good" in out  # OCSP over HTTP, at the URL the certificate carries
    assert "crlNumber=" in out


def test_every_grpcurl_in_the_readme_checks_the_cas_reserved_name() -> None:
    # Verifying 127.0.0.1 would accept any leaf this CA issued for it (see SECURITY.md).
    text = README.read_text().replace("\\\n", " ")
    calls = [line for line in text.splitlines() if re.search(r"(^|[\s/\"|])grpcurl -", line)]
    assert len(calls) >= 3, calls
    for line in calls:
        assert f"-authority {CA_SERVER_NAME}" in line, line


def test_every_test_security_md_names_exists() -> None:
    """SECURITY.md cites tests as proof: a renamed or deleted one must not stay cited."""
    text = (README.parent / "SECURITY.md").read_text()
    files = {p.name: p.read_text() for p in (README.parent / "tests").glob("test_*.py")}
    for cited in re.findall(r"`tests/(test_\w+\.py)", text):
        assert cited in files, cited
    names = set(re.findall(r"\b(test_\w+)`", text)) | set(re.findall(r"::(test_\w+)", text))
    assert len(names) > 30
    for name in names:
        assert any(re.search(rf"^def {name}\(", src, re.M) for src in files.values()), name
