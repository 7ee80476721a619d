"""cfssl (Debian's golang-cfssl 1.2) beside Signet: the same jobs through its own tools.

Commands, each checked on this machine before being relied on (`cfssl <cmd> -h`):
  cfssl gencert -initca ca-csr.json            -> JSON {cert, key, csr}: an ECDSA P-256 CA
  cfssl serve -address 127.0.0.1 -port P -ca ca.pem -ca-key ca-key.pem -config config.json
        -loglevel 5                            (5 = fatal only: no log line per request)
  POST /api/v1/cfssl/sign {"certificate_request": PEM, "hosts": [...]}
  cfssl ocspsign -ca ca.pem -responder ca.pem -responder-key ca-key.pem -cert leaf.pem
                                               -> JSON {"ocspResponse": base64 DER}
  cfssl ocspserve -address 127.0.0.1 -port P -responses FILE -loglevel 5
                                               (FILE: one base64 DER response per line)
  cfssl gencrl SERIALS ca.pem ca-key.pem       -> base64 DER CRL on stdout (decimal serials;
                                               the optional TIME argument is read as a file
                                               name in 1.2, so it is left out: 7 days)

cfssl 1.2's OCSP GET handler cannot decode any request: it base64-decodes the URL path with
its leading "/" still on, and turns "+" into " ". So cfssl's OCSP is loaded with POST (the
bench checks GET once and records what it answered), and Signet gets a POST row too.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench_http import WrkResult, ocsp_get_path, ocsp_request_der, post_script, run_wrk
from bench_load import SetupError
from cryptography import x509
from cryptography.x509 import ocsp

CA_CSR = {"CN": "bench cfssl CA", "key": {"algo": "ecdsa", "size": 256}, "names": [{"O": "bench"}]}
# A profile like Signet's leaves: 24 h, digitalSignature, serverAuth + clientAuth.
CONFIG = {
    "signing": {
        "default": {
            "expiry": "24h",
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        }
    }
}
SIGNED_FOR_OCSP = 10  # certificates cfssl signs, each with a pre-signed OCSP response
CRL_REPEATS = 3


@dataclass
class CfsslResults:
    version: str
    sign: WrkResult
    ocsp: WrkResult
    ocsp_method: str
    ocsp_get_status: int  # what cfssl answered to one well-formed GET request
    crl_seconds: float  # median wall time of `cfssl gencrl` for crl_entries serials
    crl_entries: int
    crl_bytes: int
    commands: list[str]


def have_cfssl() -> bool:
    return shutil.which("cfssl") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"cfssl exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SetupError(f"cfssl did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _request(
    port: int, method: str, path: str, body: bytes | None, ctype: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Cfssl:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def _run(self, args: list[str], shown: str | None, timeout: float = 120) -> bytes:
        """Run a cfssl command; `shown` is how the report lists it (None: already listed)."""
        if shown is not None:
            self.commands.append(shown)
        done = subprocess.run(args, cwd=self.dir, capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise SetupError(f"{shown} failed: {done.stderr.decode(errors='replace')[-400:]}")
        return done.stdout

    def _start(self, args: list[str], shown: str, port: int) -> subprocess.Popen[bytes]:
        self.commands.append(shown)
        proc = subprocess.Popen(
            args, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._procs.append(proc)
        _wait_for_port(port, proc)
        return proc

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()  # our own cfssl processes, by handle
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()

    def version(self) -> str:
        out = subprocess.run(["cfssl", "version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].split(":", 1)[-1].strip() if out.stdout else "?"

    def make_ca(self) -> None:
        (self.dir / "ca-csr.json").write_text(json.dumps(CA_CSR))
        (self.dir / "config.json").write_text(json.dumps(CONFIG))
        out = json.loads(
            self._run(
                ["cfssl", "gencert", "-initca", "ca-csr.json"],
                "cfssl gencert -initca ca-csr.json  # ECDSA P-256; JSON out: cert, key",
            )
        )
        (self.dir / "ca.pem").write_text(out["cert"])
        (self.dir / "ca-key.pem").write_text(out["key"])

    def serve(self) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        args = ["-address", "127.0.0.1", "-port", str(port), "-ca", "ca.pem", "-ca-key"]
        args += ["ca-key.pem", "-config", "config.json", "-loglevel", "5"]
        proc = self._start(["cfssl", "serve", *args], "cfssl serve " + " ".join(args), port)
        return port, proc

    def sign(self, port: int, csr_pem: str) -> str:
        body = json.dumps({"certificate_request": csr_pem, "hosts": ["bench.internal"]})
        status, reply = _request(
            port, "POST", "/api/v1/cfssl/sign", body.encode(), "application/json"
        )
        answer = json.loads(reply)
        if status != 200 or not answer.get("success"):
            raise SetupError(f"cfssl sign answered {status}: {answer.get('errors')}")
        return str(answer["result"]["certificate"])

    def ocsp_responses(self, leaves: list[Path]) -> Path:
        self.commands.append(
            "cfssl ocspsign -ca ca.pem -responder ca.pem -responder-key ca-key.pem"
            f" -cert leafN.pem  # for each of {len(leaves)} leaves cfssl signed"
        )
        lines = []
        for leaf in leaves:
            args = ["-ca", "ca.pem", "-responder", "ca.pem", "-responder-key", "ca-key.pem"]
            out = self._run(["cfssl", "ocspsign", *args, "-cert", leaf.name], None)
            lines.append(json.loads(out)["ocspResponse"])
        path = self.dir / "responses.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    def ocspserve(self, responses: Path) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        args = ["-address", "127.0.0.1", "-port", str(port), "-responses", responses.name]
        args += ["-loglevel", "5"]
        proc = self._start(["cfssl", "ocspserve", *args], "cfssl ocspserve " + " ".join(args), port)
        return port, proc

    def gencrl(self, entries: int, repeats: int) -> tuple[float, int]:
        """Median wall time of `cfssl gencrl` over `repeats` runs, and the CRL's DER size."""
        serials = self.dir / "serials.txt"
        serials.write_text("".join(f"{secrets.randbits(127) + 1}\n" for _ in range(entries)))
        self.commands.append(f"cfssl gencrl serials.txt ca.pem ca-key.pem  # {entries} serials")
        times, der = [], b""
        for _ in range(repeats):
            start = time.perf_counter()
            out = self._run(["cfssl", "gencrl", serials.name, "ca.pem", "ca-key.pem"], None)
            times.append(time.perf_counter() - start)
            der = base64.b64decode(out)
        x509.load_der_x509_crl(der)  # it must be a CRL, not an error message
        return statistics.median(times), len(der)


def _check_ocsp(status: int, body: bytes, how: str) -> None:
    if status != 200:
        raise SetupError(f"cfssl ocspserve answered {status} to {how}")
    response = ocsp.load_der_ocsp_response(body)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise SetupError(f"cfssl ocspserve: {response.response_status} to {how}")


def run_cfssl(workdir: Path, csr_pems: list[str], seconds: float, crl_entries: int) -> CfsslResults:
    """csr_pems: SIGNED_FOR_OCSP + 1 CSRs; the first is the one the sign row sends every time."""
    cf = Cfssl(workdir)
    try:
        cf.make_ca()
        port, proc = cf.serve()
        leaves = []
        for n, csr in enumerate(csr_pems[1 : SIGNED_FOR_OCSP + 1]):
            leaf = cf.dir / f"leaf{n}.pem"
            leaf.write_text(cf.sign(port, csr))
            leaves.append(leaf)
        body = json.dumps({"certificate_request": csr_pems[0], "hosts": ["bench.internal"]})
        script = post_script(cf.dir / "sign.lua", body.encode(), "application/json")
        sign = run_wrk(f"http://127.0.0.1:{port}/api/v1/cfssl/sign", seconds, proc.pid, script)

        ocsp_port, ocsp_proc = cf.ocspserve(cf.ocsp_responses(leaves))
        issuer = x509.load_pem_x509_certificate((cf.dir / "ca.pem").read_bytes())
        leaf0 = x509.load_pem_x509_certificate(leaves[0].read_bytes())
        request = ocsp_request_der(leaf0, issuer)
        get_status, get_body = _request(ocsp_port, "GET", "/" + ocsp_get_path(request), None, "")
        base = f"http://127.0.0.1:{ocsp_port}"
        if get_status == 200:
            _check_ocsp(get_status, get_body, "GET")
            method, url, lua = "GET", f"{base}/{ocsp_get_path(request)}", None
        else:
            status, reply = _request(ocsp_port, "POST", "/", request, "application/ocsp-request")
            _check_ocsp(status, reply, "POST")
            lua = post_script(cf.dir / "ocsp.lua", request, "application/ocsp-request")
            method, url = "POST", base + "/"
        ocsp_row = run_wrk(url, seconds, ocsp_proc.pid, lua)
        cf.stop()
        crl_seconds, crl_bytes = cf.gencrl(crl_entries, CRL_REPEATS)
        return CfsslResults(
            cf.version(),
            sign,
            ocsp_row,
            method,
            get_status,
            crl_seconds,
            crl_entries,
            crl_bytes,
            cf.commands,
        )
    finally:
        cf.stop()
