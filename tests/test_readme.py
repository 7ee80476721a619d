"""README.md works as printed, from where it says to run it: `bash scripts/serve.sh` from the
directory that holds (or should hold) ca-data, the ready message it shows, and the walk-through
and client blocks run from the repository root (only the ports differ). The shells get a PATH
without the venv, as a new user's has, so a bare `grpcurl` or `ca-client` fails here too."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ca_server.core.policy import CA_SERVER_NAME
from tests.conftest import CaServer
from tests.test_cli import TRY_IT, serving

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV = Path(sys.prefix)  # what scripts/serve.sh installs into: ROOT/.venv, or SIGNET_VENV
STAMP = VENV / ".signet-serve-stamp"
PRINTED_PORTS = {
    "api": "127.0.0.1:50051",
    "bootstrap": "127.0.0.1:50052",
    "http": "127.0.0.1:8080",
    "metrics": "127.0.0.1:9469",
}
# Commands the blocks may use without the README listing them: the shell's and POSIX's own.
BASIC_COMMANDS = {"cat", "cd", "chmod", "cut", "echo", "grep", "tr", "!"}
# Deployment examples: they name other machines, where Signet is installed with pip.
ELSEWHERE = re.compile(r"\b(?:ca|db)\.internal\b|/media/offline")


def _section(heading: str) -> str:
    text = README.read_text()
    assert f"\n## {heading}\n" in text, heading
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def _printed_block(section: str) -> str:
    """The unlabelled block showing what the server prints."""
    match = re.search(r"it prints:\n\n```\n(.*?)```", section, re.S)
    assert match, "the README does not show what the server prints"
    return match.group(1)


def _new_user_env() -> dict[str, str]:
    """The test's environment without the venv on PATH and without SIGNET_* settings."""
    venv_bin = str(VENV / "bin")
    path = [d for d in os.environ["PATH"].split(os.pathsep) if d and d != venv_bin]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_")}
    return {**env, "PATH": os.pathsep.join(path), "SIGNET_VENV": str(VENV)}


def _repo_root_like(tmp_path: Path, data_dir: Path) -> Path:
    """A directory laid out like the repository root for what the blocks touch: ca-data (the
    test's CA) and .venv (the one scripts/serve.sh installed)."""
    (tmp_path / "ca-data").symlink_to(data_dir)
    (tmp_path / ".venv").symlink_to(VENV)
    return tmp_path


def _run_block(script: str, ports: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    for name, printed in PRINTED_PORTS.items():
        script = script.replace(printed, ports[name])
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=_new_user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ports(ca: CaServer) -> dict[str, str]:
    running = ca.running
    return {
        "api": ca.address,
        "bootstrap": running.bootstrap_address,
        "http": running.http_address,
        "metrics": running.metrics_address,
    }


def _walkthrough() -> str:
    blocks = _sh_blocks(_section("Walk-through with grpcurl"))
    assert len(blocks) == 1, "the walk-through is one sh block"
    return blocks[0]


def _client_blocks() -> list[str]:
    blocks = [
        b for b in _sh_blocks(_section("The client (`ca-client`)")) if not ELSEWHERE.search(b)
    ]
    assert len(blocks) == 2, "enroll, then the workload's own commands"
    return blocks


def test_readme_walkthrough_runs_as_printed_from_the_repository_root(
    ca: CaServer, tmp_path: Path
) -> None:
    script = _walkthrough()
    assert PRINTED_PORTS["api"] in script and PRINTED_PORTS["http"] in script
    result = _run_block(script, _ports(ca), _repo_root_like(tmp_path, ca.data_dir))
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
    calls = [
        line for line in text.splitlines() if re.search(r"(^|[\s/\"|$])(grpcurl|GRPCURL) -", line)
    ]
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


def test_readme_client_blocks_mint_a_token_enroll_and_manage_the_certificate_as_printed(
    ca: CaServer, tmp_path: Path
) -> None:
    cwd = _repo_root_like(tmp_path, ca.data_dir)
    enroll, manage = _client_blocks()
    assert "ca-server token create" in enroll and "token.txt" in enroll
    first = _run_block(enroll, _ports(ca), cwd)
    assert first.returncode == 0, first.stdout + first.stderr
    minted = json.loads((cwd / "token.json").read_text())
    assert (cwd / "token.txt").read_text().strip() == minted["token"]
    assert "enrolled: serial" in first.stdout
    assert (cwd / "web-tls" / "key.pem").is_file()
    second = _run_block(manage, _ports(ca), cwd)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert '"status": "GOOD"' in out
    assert "renewed: serial" in out and (cwd / "web-tls" / "tls.crt").is_file()
    assert ": revoked (SUPERSEDED)" in out
    assert (cwd / "ca.crl").stat().st_size > 0


def test_serve_sh_runs_from_the_directory_that_should_hold_ca_data_installing_only_once(
    tmp_path: Path,
) -> None:
    """`bash /path/to/signet/scripts/serve.sh` from another directory: says what it installs
    (and only when pyproject.toml changed), creates ./ca-data there, prints what the README
    shows, and the printed grpcurl command works as printed from there."""
    section = _section("The two commands")
    assert _sh_blocks(section)[0].strip() == "bash scripts/serve.sh"
    assert "bash /path/to/signet/scripts/serve.sh" in section
    serve_sh = str(ROOT / "scripts" / "serve.sh")
    env = _new_user_env()
    for stamp, said in [
        (None, "serve.sh: installing Signet and grpcurl into"),  # the first start
        ("0 elsewhere\n", "serve.sh: pyproject.toml changed since the last install"),
    ]:
        STAMP.unlink(missing_ok=True)
        if stamp is not None:
            STAMP.write_text(stamp)
        install = subprocess.run(
            ["bash", serve_sh, "--help"], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert install.returncode == 0, install.stderr
        assert said in install.stderr
        assert "usage: ca-server serve" in install.stdout
    assert not (tmp_path / "ca-data").exists()

    ports = ("--listen", "--bootstrap-listen", "--http-listen", "--metrics-listen")
    args = [a for flag in ports for a in (flag, "127.0.0.1:0")]
    with serving(*args, "--workers", "1", cwd=tmp_path, env=env, command=["bash", serve_sh]) as s:
        printed = [s.wait_for_line("Signet CA ready on ")]
        printed += [s.wait_for_line("Enroll on "), s.wait_for_line("Relying parties: ")]
        printed.append(s.wait_for_line("Metrics: "))
        printed.append(s.wait_for_line(TRY_IT))
        assert (tmp_path / "ca-data" / "root.pem").is_file()
        ready = json.loads((tmp_path / "ca-data" / "serve.json").read_text())
        expected = _printed_block(section)
        for name, key in (("api", "listen"), ("bootstrap", "bootstrap_listen")):
            expected = expected.replace(PRINTED_PORTS[name], ready[key])
        expected = expected.replace(PRINTED_PORTS["http"], ready["http_listen"])
        expected = expected.replace(PRINTED_PORTS["metrics"], ready["metrics_listen"])
        # The README's .venv/bin/grpcurl is relative to the repository root; from elsewhere the
        # server prints the same file by its absolute path.
        # (or grpcurl alone, as the README says, when one is on PATH).
        on_path = shutil.which("grpcurl", path=env["PATH"])
        grpcurl = "grpcurl" if on_path else str(VENV / "bin" / "grpcurl")
        expected = expected.replace(".venv/bin/grpcurl", grpcurl)
        assert printed == expected.splitlines()

        tried = subprocess.run(
            shlex.split(printed[-1].removeprefix(TRY_IT)), cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert "signet.ca.v1.CertificateAuthority" in tried.stdout.split()
        assert s.terminate() == 0, s.stderr
    assert "serve.sh:" not in s.stderr  # nothing changed since the install: no pip run


def _commands(script: str) -> set[str]:
    """The programs a block runs: the first word of each pipeline stage and $(...)."""
    script = re.sub(r"\\\n", " ", script)
    found: set[str] = set()
    for line in script.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for stage in re.split(r"\||\$\(|&&|;", line):
            words = stage.strip().split()
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words = words[1:]  # assignments before a command
            if words and not words[0].startswith(("$", '"', "'", "-", ")")):
                found.add(words[0])
    return found


def test_readme_lists_every_tool_its_blocks_use() -> None:
    section = _section("The two commands")
    needs = section.split("Both need", 1)[1].split("\n\n", 1)[0]
    used = set().union(*(_commands(b) for b in [_walkthrough(), *_client_blocks()]))
    assert {"openssl", "jq", "curl", "base64"} <= used  # the parser sees what is there
    ours = {c for c in used if c.startswith(".venv/bin/")}
    assert ours == {".venv/bin/ca-server", ".venv/bin/ca-client"}
    missing = sorted(c for c in used - ours - BASIC_COMMANDS if f"`{c}`" not in needs)
    assert missing == [], f"the README does not say the blocks need {missing}"


def _audit_block() -> str:
    [block] = _sh_blocks(_section("The audit trail"))
    return block


def test_the_audit_verify_block_runs_as_printed(ca: CaServer, tmp_path: Path) -> None:
    ca.issue("web/audited-readme")
    result = _run_block(_audit_block(), _ports(ca), _repo_root_like(tmp_path, ca.data_dir))
    assert result.returncode == 0, result.stderr
    assert "audit chain OK" in result.stdout


def test_every_sh_block_is_run_by_these_tests_or_is_for_another_machine() -> None:
    tested = {"bash scripts/serve.sh", "bash scripts/test.sh", _walkthrough().strip()}
    tested.add(_audit_block().strip())
    tested |= {b.strip() for b in _client_blocks()}
    for block in _sh_blocks(README.read_text()):
        if block.strip() in tested:
            continue
        assert ELSEWHERE.search(block), f"a README block no test runs:\n{block}"
