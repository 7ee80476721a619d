"""The one gRPC load driver every row uses: client processes that keep calls in flight.

The parent (bench.py) starts P processes with the 'spawn' start method (a fresh interpreter:
no gRPC state is inherited across fork) and keeps them for the whole run. For each row it sends
a RowSpec; each process builds its connections and pre-generates its requests (CSRs, tokens)
*before* the timed window, reports ready, and is then given one shared schedule on the
system-wide monotonic clock: warm up until t_measure, count until t_end. Only calls that
complete inside [t_measure, t_end] count; every non-OK call anywhere is an error. Each process
reports its own CPU time over the window (getrusage), so the parent can say what the load
generator cost.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing as mp
import multiprocessing.connection
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
CALL_TIMEOUT = 30.0  # seconds; a call slower than this is an error, not a hang
CA_SERVER_NAME = "ca.signet.invalid"  # the name the bootstrap listener's certificate carries
FRESH_THREADS = 8  # per process, for rows that open a connection per call
# Separate channels must not share one connection: gRPC's global subchannel pool would.
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)
FRESH_KINDS = {"fresh_health", "enroll"}
PREPARE_TIMEOUT = 300.0  # generating CSRs and connecting, per row


@dataclass(frozen=True)
class RowSpec:
    """What one client process should do for one row."""

    kind: str  # health, sign, renew, status, crl, fresh_health, enroll
    data_dir: str
    api: str  # host:port of the mTLS API
    # Several replicas: connection k of process p goes to apis[(k + p) % len(apis)] (so the
    # connections are spread evenly over them); empty: every connection goes to `api`.
    apis: tuple[str, ...] = ()
    bootstrap: str = ""  # host:port of the server-TLS enrollment listener
    index: int = 0  # this process's number, for distinct identities
    processes: int = 1
    connections: int = 8
    inflight: int = 16
    driver: str = "futures"  # futures | threads (fresh-connection rows always use threads)
    max_calls: int = 10_000  # also the size of the CSR pool for rows that need one
    rate: float = 0.0  # calls/s for this process; 0 = as fast as the server answers
    serial: str = ""  # for GetCertificateStatus
    tokens: tuple[str, ...] = ()  # for Enroll, one per call
    id_offset: int = 0  # SignCertificate identities are spiffe://signet.local/bench/N


@dataclass
class ProcessResult:
    latencies: list[float] = field(default_factory=list)  # seconds, OK calls in the window
    per_second: list[int] = field(default_factory=list)  # OK calls completed in each second
    errors: int = 0
    first_error: str = ""
    started: int = 0
    exhausted: bool = False  # ran out of pre-generated requests before t_end
    cpu_seconds: float = 0.0  # this process, user + system, over the window
    prepare_seconds: float = 0.0


class Workload(Protocol):
    def start(self, i: int) -> Any: ...  # a grpc.Future for call i
    def call(self, i: int) -> None: ...  # call i, blocking
    def close(self) -> None: ...


# --- building requests and connections (runs in the client process) -------------------------


def _csrs(count: int, name: Callable[[int], str] | None) -> list[str]:
    from tests.pki import make_csr, spiffe

    return [make_csr(uris=[spiffe(name(n))] if name else [])[1] for n in range(count)]


def presented_chain(cert_pem: bytes) -> bytes:
    """What a client presents to the CA: admin/cert.pem (leaf, then intermediate), or the leaf
    alone when an ML-DSA CA signed it: grpcio's server side drops a client Certificate message
    over ~8 KB, and an ML-DSA-signed leaf and intermediate are ~10 KB (ca_client does the same)."""
    from cryptography import x509

    ml_dsa = {
        x509.SignatureAlgorithmOID.ML_DSA_44,
        x509.SignatureAlgorithmOID.ML_DSA_65,
        x509.SignatureAlgorithmOID.ML_DSA_87,
    }
    if x509.load_pem_x509_certificate(cert_pem).signature_algorithm_oid not in ml_dsa:
        return cert_pem
    end = b"-----END CERTIFICATE-----\n"
    return cert_pem[: cert_pem.index(end) + len(end)]


def _files(spec: RowSpec) -> tuple[bytes, bytes, bytes]:
    data = Path(spec.data_dir)
    return (
        (data / "root.pem").read_bytes(),
        (data / "admin" / "key.pem").read_bytes(),
        presented_chain((data / "admin" / "cert.pem").read_bytes()),
    )


def _targets(spec: RowSpec) -> list[str]:
    """The address of each of the spec's K connections."""
    if not spec.apis:
        return [spec.api] * spec.connections
    return [spec.apis[(k + spec.index) % len(spec.apis)] for k in range(spec.connections)]


def _ready_channels(
    targets: list[str], creds: list[Any], options: list[tuple[str, Any]]
) -> list[Any]:
    """One channel per credential, the i-th to targets[i], each connected before it is used."""
    import grpc

    channels = [
        grpc.secure_channel(t, c, options=[LOCAL_POOL, *options])
        for t, c in zip(targets, creds, strict=True)
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
    return channels


class PersistentWorkload:
    """K long-lived connections; call i goes over connection i % K."""

    def __init__(self, channels: list[Any], method: Callable[[Any], Any], request: Any) -> None:
        self._channels = channels
        self._methods = [method(c) for c in channels]
        self._request: Callable[[int], Any] = request if callable(request) else lambda i: request

    def start(self, i: int) -> Any:
        return self._methods[i % len(self._methods)].future(self._request(i), timeout=CALL_TIMEOUT)

    def call(self, i: int) -> None:
        self._methods[i % len(self._methods)](self._request(i), timeout=CALL_TIMEOUT)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


class FreshWorkload:
    """A new TLS connection for every call, closed after it: what a fleet of new clients costs."""

    def __init__(
        self, target: str, creds: Any, options: list[tuple[str, Any]], invoke: Callable[..., Any]
    ) -> None:
        self._target, self._creds, self._options, self._invoke = target, creds, options, invoke

    def start(self, i: int) -> Any:
        raise NotImplementedError("fresh-connection rows are driven by threads")

    def call(self, i: int) -> None:
        import grpc

        options = [LOCAL_POOL, *self._options]
        with grpc.secure_channel(self._target, self._creds, options=options) as channel:
            self._invoke(channel, i)

    def close(self) -> None:
        pass


def _admin_workload(spec: RowSpec, method_name: str, request: Any) -> PersistentWorkload:
    import grpc

    from signet.ca.v1 import ca_pb2_grpc

    root, key, chain = _files(spec)
    creds = [grpc.ssl_channel_credentials(root, key, chain)] * spec.connections
    channels = _ready_channels(_targets(spec), creds, [])
    return PersistentWorkload(
        channels, lambda c: getattr(ca_pb2_grpc.CertificateAuthorityStub(c), method_name), request
    )


def _health(spec: RowSpec) -> Workload:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    root, key, chain = _files(spec)
    creds = [grpc.ssl_channel_credentials(root, key, chain)] * spec.connections
    channels = _ready_channels(_targets(spec), creds, [])
    request = health_pb2.HealthCheckRequest(service="")
    return PersistentWorkload(channels, lambda c: health_pb2_grpc.HealthStub(c).Check, request)


def _sign(spec: RowSpec) -> Workload:
    from signet.ca.v1 import ca_pb2

    def identity(n: int) -> str:
        return f"bench/{spec.id_offset + n * spec.processes + spec.index}"

    requests = [ca_pb2.SignCertificateRequest(csr_pem=c) for c in _csrs(spec.max_calls, identity)]
    return _admin_workload(spec, "SignCertificate", requests.__getitem__)


def _workload_credentials(spec: RowSpec) -> list[Any]:
    """One workload identity per connection, each first issued by SignCertificate (as admin)."""
    import grpc

    from signet.ca.v1 import ca_pb2, ca_pb2_grpc
    from tests.pki import key_pem, make_csr, spiffe

    root, key, chain = _files(spec)
    (admin,) = _ready_channels([spec.api], [grpc.ssl_channel_credentials(root, key, chain)], [])
    stub = ca_pb2_grpc.CertificateAuthorityStub(admin)
    creds = []
    for k in range(spec.connections):
        wkey, csr = make_csr(uris=[spiffe(f"bench/renew/{spec.index}-{k}")])
        issued = stub.SignCertificate(ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=30)
        leaf_chain = (issued.certificate_pem + issued.chain_pem).encode()
        creds.append(grpc.ssl_channel_credentials(root, key_pem(wkey), leaf_chain))
    admin.close()
    return creds


def _renew(spec: RowSpec) -> Workload:
    from signet.ca.v1 import ca_pb2, ca_pb2_grpc

    channels = _ready_channels(_targets(spec), _workload_credentials(spec), [])
    requests = [ca_pb2.RenewCertificateRequest(csr_pem=c) for c in _csrs(spec.max_calls, None)]
    return PersistentWorkload(
        channels,
        lambda c: ca_pb2_grpc.CertificateAuthorityStub(c).RenewCertificate,
        requests.__getitem__,
    )


def _status(spec: RowSpec) -> Workload:
    from signet.ca.v1 import ca_pb2

    request = ca_pb2.GetCertificateStatusRequest(serial_number=spec.serial)
    return _admin_workload(spec, "GetCertificateStatus", request)


def _crl(spec: RowSpec) -> Workload:
    from signet.ca.v1 import ca_pb2

    return _admin_workload(spec, "GetCRL", ca_pb2.GetCRLRequest())


def _fresh_health(spec: RowSpec) -> Workload:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    root, key, chain = _files(spec)
    request = health_pb2.HealthCheckRequest(service="")

    def invoke(channel: Any, i: int) -> None:
        health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT)

    return FreshWorkload(spec.api, grpc.ssl_channel_credentials(root, key, chain), [], invoke)


def _enroll(spec: RowSpec) -> Workload:
    import grpc

    from signet.ca.v1 import ca_pb2, ca_pb2_grpc

    root = _files(spec)[0]
    requests = [
        ca_pb2.EnrollRequest(token=t, csr_pem=c)
        for t, c in zip(spec.tokens, _csrs(len(spec.tokens), None), strict=True)
    ]

    def invoke(channel: Any, i: int) -> None:
        ca_pb2_grpc.CertificateAuthorityStub(channel).Enroll(requests[i], timeout=CALL_TIMEOUT)

    options = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    return FreshWorkload(spec.bootstrap, grpc.ssl_channel_credentials(root), options, invoke)


WORKLOADS: dict[str, Callable[[RowSpec], Workload]] = {
    "health": _health,
    "sign": _sign,
    "renew": _renew,
    "status": _status,
    "crl": _crl,
    "fresh_health": _fresh_health,
    "enroll": _enroll,
}


def call_limit(spec: RowSpec) -> int:
    """Rows that consume pre-generated requests can make no more calls than they have."""
    if spec.kind == "enroll":
        return len(spec.tokens)
    return spec.max_calls


# --- driving the calls ----------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"


class Schedule:
    """Hands out call numbers until the count or the time runs out. With a rate, call i is due
    at t_start + i / rate, and its latency is counted from then (not from when it was sent), so
    a server that falls behind shows it instead of silently slowing the driver down."""

    def __init__(self, limit: int, t_start: float, t_measure: float, t_end: float, rate: float):
        self.limit, self.t_start, self.t_measure, self.t_end = limit, t_start, t_measure, t_end
        self.rate = rate
        self.result = ProcessResult(per_second=[0] * max(1, math.ceil(t_end - t_measure)))
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[int, float] | None:
        with self._lock:
            i = self._next
            if i >= self.limit:
                self.result.exhausted = time.monotonic() < self.t_end
                return None
            due = self.t_start + i / self.rate if self.rate else time.monotonic()
            if due >= self.t_end or time.monotonic() >= self.t_end:
                return None
            self._next += 1
            self.result.started += 1
            return i, due

    def done(self, since: float, error: BaseException | None) -> None:
        end = time.monotonic()
        with self._lock:
            if error is not None:
                self.result.errors += 1
                self.result.first_error = self.result.first_error or describe(error)
            elif self.t_measure <= end <= self.t_end:
                self.result.latencies.append(end - since)
                second = min(int(end - self.t_measure), len(self.result.per_second) - 1)
                self.result.per_second[second] += 1


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class FuturesDriver:
    """`inflight` calls kept in flight with stub.Method.future(); each completion callback
    (on gRPC's own thread) starts the next call, so no Python thread waits per call."""

    def __init__(self, workload: Workload, schedule: Schedule, inflight: int) -> None:
        self._workload, self._schedule, self._inflight = workload, schedule, inflight
        self._active = inflight
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._local = threading.local()

    def start(self) -> None:
        if self._schedule.rate:
            threading.Thread(target=self._paced, daemon=True).start()
        else:
            self._launch(self._inflight)

    def wait(self, timeout: float) -> None:
        self._finished.wait(timeout)

    def _slot_done(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._finished.set()

    def _launch(self, count: int) -> None:
        # A callback that fires inline (the future was already done) must not recurse into
        # _launch: it adds to `pending` and this loop starts the call instead.
        self._local.pending = count
        self._local.launching = True
        try:
            while self._local.pending:
                self._local.pending -= 1
                ticket = self._schedule.take()
                if ticket is None:
                    self._slot_done()
                    continue
                self._start(ticket[0], time.monotonic(), self._on_done)
        finally:
            self._local.launching = False

    def _start(self, i: int, since: float, callback: Callable[[float, Any], None]) -> None:
        try:
            future = self._workload.start(i)
        except Exception as exc:  # a call that cannot even be sent is an error too
            self._schedule.done(since, exc)
            callback(since, None)
            return
        future.add_done_callback(functools.partial(callback, since))

    def _on_done(self, since: float, future: Any) -> None:
        if future is not None:
            self._schedule.done(since, future.exception())
        if getattr(self._local, "launching", False):
            self._local.pending += 1
        else:
            self._launch(1)

    def _paced(self) -> None:
        """Rate-limited: one thread starts each call when it is due, at most `inflight` open."""
        slots = threading.BoundedSemaphore(self._inflight)

        def release(since: float, future: Any) -> None:
            if future is not None:
                self._schedule.done(since, future.exception())
            slots.release()

        while (ticket := self._schedule.take()) is not None:
            i, due = ticket
            _sleep_until(due)
            if not slots.acquire(timeout=max(0.0, self._schedule.t_end - time.monotonic())):
                break
            self._start(i, due, release)
        for _ in range(self._inflight):  # drain: every slot back means every call has finished
            slots.acquire(timeout=CALL_TIMEOUT)
        self._finished.set()


class ThreadsDriver:
    """`inflight` threads, each making blocking calls one after another."""

    def __init__(self, workload: Workload, schedule: Schedule, inflight: int) -> None:
        self._workload, self._schedule = workload, schedule
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(inflight)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (ticket := self._schedule.take()) is not None:
            i, due = ticket
            if self._schedule.rate:
                _sleep_until(due)
            since = due if self._schedule.rate else time.monotonic()
            try:
                self._workload.call(i)
            except Exception as exc:
                self._schedule.done(since, exc)
            else:
                self._schedule.done(since, None)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(
    spec: RowSpec, workload: Workload, t_start: float, t_measure: float, t_end: float
) -> ProcessResult:
    schedule = Schedule(call_limit(spec), t_start, t_measure, t_end, spec.rate)
    driver: FuturesDriver | ThreadsDriver
    if spec.kind in FRESH_KINDS:
        driver = ThreadsDriver(workload, schedule, FRESH_THREADS)
    elif spec.driver == "threads":
        driver = ThreadsDriver(workload, schedule, spec.inflight)
    else:
        driver = FuturesDriver(workload, schedule, spec.inflight)
    _sleep_until(t_start)
    driver.start()
    _sleep_until(t_measure)
    cpu = _cpu_seconds()
    _sleep_until(t_end)
    schedule.result.cpu_seconds = _cpu_seconds() - cpu
    driver.wait(CALL_TIMEOUT + 5)
    return schedule.result


# --- the client process and the parent's handle on it ----------------------------------------


def worker_main(conn: multiprocessing.connection.Connection) -> None:
    """Loop of a client process: prepare a row, run it on the parent's schedule, report."""
    sys.path.insert(0, str(REPO))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message[0] == "stop":
            return
        spec: RowSpec = message[1]
        began = time.monotonic()
        try:
            workload = WORKLOADS[spec.kind](spec)
        except Exception:
            conn.send(("failed", traceback.format_exc()))
            continue
        conn.send(("ready", time.monotonic() - began))
        message = conn.recv()
        if message[0] != "run":  # another process failed to prepare: the parent gives up
            workload.close()
            return
        try:
            result = run(spec, workload, *message[1:])
        except Exception:
            conn.send(("failed", traceback.format_exc()))
            continue
        finally:
            workload.close()
        result.prepare_seconds = time.monotonic() - began
        conn.send(("result", result))


class SetupError(RuntimeError):
    """The bench could not set something up: a report without it would lie."""


@dataclass
class Window:
    """One row's timed window as seen by the parent, and what the client processes sent."""

    t_measure: float
    t_end: float
    results: list[ProcessResult]
    prepare_seconds: float


class ClientPool:
    """P client processes, started once (spawned, never forked) and reused by every row."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._conns)

    def _recv(self, conn: multiprocessing.connection.Connection, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise SetupError(f"a client process did not answer within {timeout:.0f} s")
        return conn.recv()

    def run(
        self,
        specs: list[RowSpec],
        warmup: float,
        seconds: float,
        during: Callable[[float, float], None],
    ) -> Window:
        """Prepare every process, then run them all on one schedule; `during(t_measure, t_end)`
        runs here meanwhile (it samples the server) and must return by t_end."""
        began = time.monotonic()
        for conn, spec in zip(self._conns, specs, strict=True):
            conn.send(("prepare", spec))
        for conn in self._conns:
            kind, payload = self._recv(conn, PREPARE_TIMEOUT)
            if kind != "ready":
                raise SetupError(f"a client process could not prepare {specs[0].kind}:\n{payload}")
        prepare = time.monotonic() - began
        t_start = time.monotonic() + 0.1
        t_measure, t_end = t_start + warmup, t_start + warmup + seconds
        for conn in self._conns:
            conn.send(("run", t_start, t_measure, t_end))
        during(t_measure, t_end)
        results = []
        for conn in self._conns:
            kind, payload = self._recv(conn, seconds + warmup + 2 * CALL_TIMEOUT)
            if kind != "result":
                raise SetupError(f"a client process failed running {specs[0].kind}:\n{payload}")
            results.append(payload)
        return Window(t_measure, t_end, results, prepare)

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a client process that already died
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()  # only our own client processes, by handle
                proc.join(5)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (nan if empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]
