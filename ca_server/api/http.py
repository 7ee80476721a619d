"""Plain HTTP for relying parties (nginx, Envoy, Go, Java, OpenSSL): RFC 6960 OCSP (POST and
the RFC 5019 GET form, for every answering intermediate: the CertID picks it), the DER CRLs of
the issuing intermediate (/crl) and of the active root (/root.crl), every CA's CRL and
certificate by key id (/ca/<key id>.crl, /ca/<key id>.crt: what certificates carry in CRL
Distribution Points and AIA caIssuers, so each names its own issuer's after a rotation), all
the CRLs of the chains in one PEM file (/crl.pem, for nginx ssl_crl), and the CA certificates
(/ca.crt, /root.crt).

A thin adapter like the gRPC servicer: every answer comes from the core's caches (OCSP
responses kept in the store, the published CRLs); nothing here signs or builds in the common
case. The path is lean on purpose — an OCSP answer is a dictionary lookup, so HTTP framework
overhead was most of its cost: an asyncio protocol on uvloop with httptools (llhttp, Node's
parser) doing the parsing, and a small routing function. It also owns the limits a framework
left open: time to send the headers (slow-header clients), time to send the body, idle
keep-alive connections, header and body sizes. It runs its own loop on a thread beside gRPC."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import functools
import hashlib
import socket
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import httptools
import structlog

try:
    import uvloop
except ImportError:  # pragma: no cover - optional speed-up (not on every platform)
    uvloop = None  # type: ignore[assignment]
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from ..core.authority import CertificateAuthority
from ..core.crl_publisher import CrlResult
from ..core.ocsp import SignedStatus, unsuccessful_response

log = structlog.get_logger("signet.http")

OCSP_REQUEST_MAX = 16 * 1024  # an OCSP request is ~100 bytes; anything near this is not one
HEADERS_MAX = 16 * 1024  # request line and headers together
CRL_MAX_AGE = 60  # seconds: CRLs are rebuilt on revocation, so caches should look again soon
KEEPALIVE_TIMEOUT = 30.0
# Open connections this listener keeps (per process), and from one address: beyond them a new
# connection is closed at once, so that no flood of idle connections starves the API.
MAX_CONNECTIONS = 2048
MAX_PER_PEER = 256
# A client that sends requests faster than it reads the answers: past this much unsent reply
# data we stop reading from it, and past this many requests waiting we close it.
WRITE_BUFFER_MAX = 1024 * 1024
PIPELINED_MAX = 64
FEED_SLICE = 8 * 1024  # bytes handed to the parser at a time, so limits apply as data arrives
OCSP_PATH = "/ocsp"
CRL_PATH = "/crl"
CA_CERT_PATH = "/ca.crt"
ROOT_CERT_PATH = "/root.crt"
ROOT_CRL_PATH = "/root.crl"
CRL_PEM_PATH = "/crl.pem"  # every CRL of the chain in one PEM file, as nginx ssl_crl wants
SPIFFE_BUNDLE_PATH = "/spiffe-bundle"  # the roots as a SPIFFE bundle (JWK Set)
BY_KEY_PATH = "/ca/"  # /ca/<key id>.crt and /ca/<key id>.crl, for every published CA
OCSP_TYPE = b"application/ocsp-response"

_REASONS = {
    200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    503: b"Service Unavailable",
}  # fmt: skip


@functools.lru_cache(maxsize=4096)  # the same few thisUpdate/nextUpdate values recur
def _http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)


@functools.lru_cache(maxsize=1024)
def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


@dataclass(frozen=True, slots=True)
class _Published:
    ca_cert: bytes  # the issuing intermediate, DER
    root_cert: bytes  # the active root, DER
    spiffe_bundle: bytes
    by_key: dict[str, bytes]  # key id -> DER, every published CA certificate


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes


def _text(status: int, text: str, *, close: bool = False, **headers: str) -> Reply:
    return Reply(status, text.encode() + b"\n", headers=headers, close=close)


def _not_modified(request: Request, etag: str, last_modified: dt.datetime) -> bool:
    match = request.headers.get(b"if-none-match")
    if match:
        return etag in [t.strip() for t in match.decode("latin-1").split(",")]
    since_text = request.headers.get(b"if-modified-since")
    if not since_text:
        return False
    try:
        since = email.utils.parsedate_to_datetime(since_text.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    # Strictly earlier: HTTP dates have one-second resolution, and a CRL rebuilt within the
    # second a client last fetched must not be answered "not modified".
    return last_modified < since


class RelyingParty:
    """What each path answers, as plain values; knows nothing of sockets."""

    def __init__(self, authority: CertificateAuthority, inline_reads: bool = True) -> None:
        """inline_reads: the store answers reads at once (a local SQLite file), so they may
        run on the event loop; a networked database may make a read wait, so they go to a
        thread (see slow())."""
        self._ca = authority
        self._inline = inline_reads
        self._published: tuple[object, _Published] | None = None
        self._crl_pem: tuple[tuple[bytes, ...], bytes] | None = None  # (CRLs, PEM of them)

    def _certificates(self) -> _Published:
        """The certificates and bundle served, made again after a rotation."""
        hierarchy = self._ca.hierarchy
        cached = self._published
        if cached is None or cached[0] is not hierarchy:
            der = serialization.Encoding.DER
            by_key = {e.key_id: e.certificate.public_bytes(der) for e in hierarchy.intermediates}
            by_key |= {e.key_id: e.certificate.public_bytes(der) for e in hierarchy.roots}
            cached = self._published = (
                hierarchy,
                _Published(
                    self._ca.issuer.certificate.public_bytes(der),
                    self._ca.root.public_bytes(der),
                    self._ca.spiffe_bundle().encode(),
                    by_key,
                ),
            )
        return cached[1]

    def route(self, request: Request, *, may_block: bool = False) -> Reply | None:
        """The reply, or None when it may have to wait (a CRL being rebuilt, a read from a
        networked store): then slow() makes it, off the event loop."""
        path = _path(request.target)
        method = request.method
        reads = self._inline or may_block
        if path in (OCSP_PATH, OCSP_PATH + "/"):
            if method != "POST":
                return _text(405, "use POST, or GET /ocsp/<base64 request>", Allow="POST")
            return self.ocsp(request.body, cache=False) if reads else None
        if path.startswith(OCSP_PATH + "/"):
            if method not in ("GET", "HEAD"):
                return _text(405, "method not allowed", Allow="GET, HEAD")
            # RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER request}.
            try:
                der = base64.b64decode(
                    urllib.parse.unquote(path[len(OCSP_PATH) + 1 :]), validate=True
                )
            except (binascii.Error, ValueError):
                der = b""  # answered as malformedRequest by the responder
            return self.ocsp(der, cache=True) if reads else None
        if path == CRL_PATH:
            if method not in ("GET", "HEAD"):
                return _text(405, "method not allowed", Allow="GET, HEAD")
            if may_block:
                return self._crl(request, self._ca.crl())
            crl = self._ca.crls.ready() if reads else None
            return None if crl is None else self._crl(request, crl)
        if path == CRL_PEM_PATH:
            if method not in ("GET", "HEAD"):
                return _text(405, "method not allowed", Allow="GET, HEAD")
            return self._crl_chain(request, reads, may_block)
        if path == SPIFFE_BUNDLE_PATH:
            if method not in ("GET", "HEAD"):
                return _text(405, "method not allowed", Allow="GET, HEAD")
            return Reply(200, self._certificates().spiffe_bundle, b"application/json")
        if path.startswith(BY_KEY_PATH):
            if method not in ("GET", "HEAD"):
                return _text(405, "method not allowed", Allow="GET, HEAD")
            return self._by_key(request, path[len(BY_KEY_PATH) :], reads, may_block)
        if path in (CA_CERT_PATH, ROOT_CERT_PATH, ROOT_CRL_PATH):
            if method not in ("GET", "HEAD"):
                return _text(405, "method not allowed", Allow="GET, HEAD")
            if path == CA_CERT_PATH:
                return Reply(200, self._certificates().ca_cert, b"application/pkix-cert")
            if path == ROOT_CERT_PATH:
                return Reply(200, self._certificates().root_cert, b"application/pkix-cert")
            root = self._ca.root_documents.current()
            if root is None:
                return _text(503, "the root's CRL has not been signed yet: run ca-server root sign")
            return self._signed(request, root.crl.der, root.crl.this_update, root.crl.next_update)
        return _text(404, "not found")

    def slow(self, request: Request) -> Reply:
        """What route() left: blocks, so run it off the event loop."""
        reply = self.route(request, may_block=True)
        assert reply is not None
        return reply

    def ocsp(self, der: bytes, *, cache: bool) -> Reply:
        reply = self._ca.ocsp_answer(der)
        if not isinstance(reply, SignedStatus):  # malformedRequest, unauthorized: no caching
            return Reply(200, reply, OCSP_TYPE)
        headers = {}
        if cache:
            # RFC 5019 6.2: let HTTP caches keep a response until its nextUpdate.
            max_age = max(0, int((reply.next_update - self._ca.clock.now()).total_seconds()))
            headers = {
                "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
                "Last-Modified": _http_date(reply.this_update),
                "Expires": _http_date(reply.next_update),
                "ETag": _etag(reply.der),
            }
        return Reply(200, reply.der, OCSP_TYPE, headers)

    def _crl(self, request: Request, crl: CrlResult) -> Reply:
        return self._signed(request, crl.der, crl.this_update, crl.next_update)

    def _signed(
        self,
        request: Request,
        body: bytes,
        this_update: dt.datetime,
        next_update: dt.datetime,
        content_type: bytes = b"application/pkix-crl",
    ) -> Reply:
        etag = _etag(body)
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(this_update),
            "Expires": _http_date(next_update),
            "Cache-Control": f"max-age={CRL_MAX_AGE}, public, no-transform",
        }
        if _not_modified(request, etag, this_update):
            return Reply(304, b"", b"", headers)
        return Reply(200, body, content_type, headers)

    def _by_key(self, request: Request, name: str, reads: bool, may_block: bool) -> Reply | None:
        """/ca/<key id>.crt: that CA's certificate; /ca/<key id>.crl: its CRL."""
        kid, _, kind = name.partition(".")
        if kind == "crt":
            der = self._certificates().by_key.get(kid)
            if der is None:
                return _text(404, "no published CA certificate has that key id")
            return Reply(200, der, b"application/pkix-cert")
        if kind != "crl":
            return _text(404, "not found: /ca/<key id>.crt or /ca/<key id>.crl")
        services = self._ca.issuers.get(kid)
        if services is not None:
            if may_block:
                return self._crl(request, services.crls.current())
            crl = services.crls.ready() if reads else None
            return None if crl is None else self._crl(request, crl)
        root = self._ca.root_documents.of(kid)
        if root is None:
            return _text(404, "no CRL is published for that key id")
        return self._signed(request, root.crl.der, root.crl.this_update, root.crl.next_update)

    def _crl_chain(self, request: Request, reads: bool, may_block: bool) -> Reply | None:
        """Every answering intermediate's CRL, the issuing one's first, then every published
        root's, PEM: nginx ssl_crl wants a CRL for every CA of the chain, in one file, and
        refuses every client without one (during a rollover, of either chain)."""
        documents: list[tuple[bytes, dt.datetime, dt.datetime]] = []
        for services in self._ca.issuers.all():
            crl = (
                services.crls.current() if may_block else (services.crls.ready() if reads else None)
            )
            if crl is None:
                return None  # a build is due: made off the event loop
            documents.append((crl.der, crl.this_update, crl.next_update))
        roots = self._ca.root_documents.crls()
        if not roots:
            return _text(503, "the root's CRL has not been signed yet: run ca-server root sign")
        documents += [(d.der, d.this_update, d.next_update) for d in roots]
        ders = tuple(d[0] for d in documents)
        cached = self._crl_pem
        if (
            cached is None
            or len(cached[0]) != len(ders)
            or any(a is not b for a, b in zip(cached[0], ders, strict=True))
        ):
            text = b"".join(
                x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM) for der in ders
            )
            cached = self._crl_pem = (ders, text)
        # Changes with any CRL: dated by the newest of them.
        newest = max(d[1] for d in documents)
        soonest = min(d[2] for d in documents)
        return self._signed(request, cached[1], newest, soonest, b"application/x-pem-file")

    def internal_error(self, request: Request) -> Reply:
        if _path(request.target).startswith(OCSP_PATH):
            return Reply(200, unsuccessful_response(ocsp.OCSPResponseStatus.INTERNAL_ERROR),
                         OCSP_TYPE)  # fmt: skip
        return _text(500, "internal error")


def _path(target: bytes) -> str:
    """The path of an origin-form or absolute-form target (GET http://host/ocsp/...), raw
    (still percent-encoded), without its query."""
    if not target.startswith(b"/"):
        try:
            target = httptools.parse_url(target).path or b"/"
        except httptools.HttpParserInvalidURLError:
            return ""
    return target.split(b"?", 1)[0].decode("latin-1")


class _Date:
    """The Date header, rendered once a second rather than per response."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


class _Connection(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order, enforce the limits."""

    def __init__(self, listener: HttpListener) -> None:
        self._l = listener
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False  # a slow reply is being made: later requests wait their turn
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._timer_at = 0.0
        self._peer = ""
        self._in_headers = True
        self._raw_header_bytes = 0
        self._write_paused = False
        # the message being parsed
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body = bytearray()
        self._last_field = b""

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else "?"
        if not self._l.admit(self):
            # Over this listener's or this address's share: idle connections from outside
            # must not use up the descriptors the mTLS API needs (no reply: nothing was asked).
            self._closing = True
            self._transport.abort()
            return
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_MAX)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self._l.request_timeout)  # the first request's headers must come in time

    def connection_lost(self, exc: Exception | None) -> None:
        self._l.release(self)
        self._closing = True
        self._disarm()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            for start in range(0, len(data), FEED_SLICE):
                piece = data[start : start + FEED_SLICE]
                if self._in_headers:
                    # httptools joins a header before calling on_header: a header that never
                    # ends must be refused as it arrives (allowing a slice of the next one)
                    self._raw_header_bytes += len(piece)
                    if self._raw_header_bytes > HEADERS_MAX + FEED_SLICE:
                        raise _Refused(431, "request line and headers too large")
                self._parser.feed_data(piece)
                if self._closing:
                    return
        except httptools.HttpParserCallbackError as exc:  # raised by one of our callbacks
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._fail(refused.status, refused.text)
            else:
                log.error("http_callback_failed", error=repr(refused))
                self._fail(500, "internal error")
        except _Refused as refused:  # counted before the parser saw it
            self._fail(refused.status, refused.text)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not supported")
        except httptools.HttpParserError:
            self._fail(400, "malformed HTTP request")

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_headers = True
        self._url, self._headers, self._header_bytes = b"", {}, 0
        self._body = bytearray()
        self._last_field = b""
        self._arm(self._l.request_timeout)  # headers and body within the request timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        key = name.lower()
        if key in self._headers:
            self._headers[key] += b", " + value
        else:
            self._headers[key] = value

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._raw_header_bytes = 0

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self._l.max_body:
            raise _Refused(413, "request body too large")
        self._body += body

    def on_message_complete(self) -> None:
        request = Request(
            self._parser.get_method().decode("ascii", "replace"),
            self._url,
            self._headers,
            bytes(self._body),
        )
        if len(self._queue) >= PIPELINED_MAX:
            raise _Refused(503, "too many requests sent ahead of their answers")
        self._queue.append((request, self._parser.should_keep_alive()))
        self._arm(KEEPALIVE_TIMEOUT)
        self._drain()

    # -- answering ---------------------------------------------------------------------------
    def _drain(self) -> None:
        while self._queue and not self._busy and not self._closing:
            if self._write_paused:
                return  # resume_writing() drains the rest once the client has read
            request, keep_alive = self._queue.popleft()
            try:
                reply = self._l.app.route(request)
            except Exception:
                log.exception("http_internal_error", path=_path(request.target))
                reply = self._l.app.internal_error(request)
            if reply is None:
                self._busy = True
                asyncio.get_running_loop().create_task(self._slow(request, keep_alive))
                return
            self._send(request, reply, keep_alive)

    async def _slow(self, request: Request, keep_alive: bool) -> None:
        try:
            reply = await asyncio.get_running_loop().run_in_executor(
                None, self._l.app.slow, request
            )
        except Exception:
            log.exception("http_internal_error", path=_path(request.target))
            reply = self._l.app.internal_error(request)
        self._busy = False
        self._send(request, reply, keep_alive)
        self._drain()

    def _send(self, request: Request, reply: Reply, keep_alive: bool) -> None:
        if self._transport is None or self._closing:
            return
        close = reply.close or not keep_alive
        head = [
            b"HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, b"")),
            b"Date: " + self._l.date() + b"\r\n",
        ]
        if reply.content_type:
            head.append(b"Content-Type: " + reply.content_type + b"\r\n")
        if reply.status != 304:
            head.append(b"Content-Length: %d\r\n" % len(reply.body))
        for name, value in reply.headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if close:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        body = b"" if request.method == "HEAD" or reply.status == 304 else reply.body
        self._transport.write(b"".join(head) + body)
        if close:
            self._close()

    # -- flow control: asyncio calls these as the unsent reply data crosses its water marks --
    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            self._drain()

    def _fail(self, status: int, text: str) -> None:
        """A request we cannot read to its end: answer it and close (the stream is lost)."""
        if self._transport is None or self._closing:
            return
        reply = _text(status, text, close=True)
        self._send(Request("GET", b"/", {}, b""), reply, keep_alive=False)

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._disarm()
        if self._transport is not None:
            self._transport.close()

    # -- limits ------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > HEADERS_MAX:
            raise _Refused(431, "request line and headers too large")

    def _arm(self, seconds: float) -> None:
        """Set the deadline; one timer per connection checks it (re-arming a timer for every
        request cost a tenth of an OCSP answer)."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + seconds
        if self._timer is not None and self._deadline < self._timer_at:
            self._disarm()  # a shorter limit now applies (a request after keep-alive)
        if self._timer is None:
            self._timer_at = self._deadline
            self._timer = loop.call_at(self._deadline, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        """Idle, or too slow sending a request: a connection is not held for ever."""
        self._timer = None
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        if self._busy:  # we are the slow one
            self._deadline = max(self._deadline, loop.time() + KEEPALIVE_TIMEOUT)
        if loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = loop.call_at(self._deadline, self._expired)
            return
        self._close()


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class HttpListener:
    """The relying-party listener on its own event loop thread."""

    def __init__(
        self,
        authority: CertificateAuthority,
        listen: str,
        request_timeout: float = 10.0,
        max_body: int = OCSP_REQUEST_MAX,
        *,
        reuse_port: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        max_per_peer: int = MAX_PER_PEER,
        inline_reads: bool = True,
    ) -> None:
        self.app = RelyingParty(authority, inline_reads)
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self._per_peer: dict[str, int] = {}
        self.request_timeout = request_timeout
        self.max_body = max_body
        self.date = _Date()
        self._listen = listen
        self._reuse_port = reuse_port
        # uvloop's libuv loop serves this small-request traffic markedly faster than asyncio's.
        self._loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        self.address = ""

    def admit(self, connection: _Connection) -> bool:
        """Count a new connection in, unless the listener or its peer is at its cap (runs on
        the loop thread only)."""
        peer = connection._peer
        if len(self.connections) >= self.max_connections:
            return False
        if self._per_peer.get(peer, 0) >= self.max_per_peer:
            return False
        self.connections.add(connection)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return True

    def release(self, connection: _Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            left = self._per_peer.get(connection._peer, 1) - 1
            if left:
                self._per_peer[connection._peer] = left
            else:
                self._per_peer.pop(connection._peer, None)

    def start(self) -> str:
        """Bind and serve; return the bound host:port (port 0 picks a free one)."""
        host, _, port = self._listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._thread.start()

        async def up() -> str:
            self._server = await self._loop.create_server(
                lambda: _Connection(self),
                host,
                int(port),
                reuse_port=self._reuse_port or None,
                backlog=1024,
            )
            bound = self._server.sockets[0].getsockname()[1]
            return f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"

        try:
            self.address = asyncio.run_coroutine_threadsafe(up(), self._loop).result(timeout=30)
        except OSError:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            raise
        return self.address

    def stop(self) -> None:
        if self._thread.is_alive():

            async def down() -> None:
                if self._server is not None:
                    self._server.close()
                for connection in list(self.connections):
                    connection.close()

            asyncio.run_coroutine_threadsafe(down(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
