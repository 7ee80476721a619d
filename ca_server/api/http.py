"""Plain HTTP for relying parties (nginx, Envoy, Go, Java, OpenSSL): RFC 6960 OCSP (POST and
the RFC 5019 GET form), the DER CRL and the issuing CA certificate (the AIA caIssuers URL).

A thin adapter like the gRPC servicer: every answer comes from the core's caches (pre-signed
OCSP responses in the store, the published CRL); nothing here signs or builds in the common
case. It runs its own asyncio loop on a thread beside the gRPC server."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import email.utils
import functools
import hashlib
import logging
import threading
import urllib.parse
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover - optional speed-up (not on every platform)
    uvloop = None  # type: ignore[assignment]
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from ..core.authority import CertificateAuthority
from ..core.ocsp import SignedStatus, unsuccessful_response

log = structlog.get_logger("signet.http")
# aiohttp reports every malformed request it rejects with a multi-line traceback on the stdlib
# logger: noise (and a log flood) for what is only a client's mistake, answered with a 400.
logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

OCSP_REQUEST_MAX = 16 * 1024  # an OCSP request is ~100 bytes; anything near this is not one
CRL_MAX_AGE = 60  # seconds: CRLs are rebuilt on revocation, so caches should look again soon
OCSP_PATH = "/ocsp"
CRL_PATH = "/crl"
CA_CERT_PATH = "/ca.crt"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.lru_cache(maxsize=4096)  # the same few thisUpdate/nextUpdate values recur
def _http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _not_modified(request: web.Request, etag: str, last_modified: dt.datetime) -> bool:
    if request.headers.get("If-None-Match"):
        return etag in [t.strip() for t in request.headers["If-None-Match"].split(",")]
    since = request.if_modified_since
    # Strictly earlier: HTTP dates have one-second resolution, and a CRL rebuilt within the
    # second a client last fetched must not be answered "not modified".
    return since is not None and last_modified < since


class RelyingPartyApp:
    def __init__(
        self,
        authority: CertificateAuthority,
        request_timeout: float = 10.0,
        max_body: int = OCSP_REQUEST_MAX,
    ) -> None:
        self._ca = authority
        self._timeout = request_timeout
        self._max_body = max_body
        self._ca_cert_der = authority.issuer.certificate.public_bytes(serialization.Encoding.DER)

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body, middlewares=[self._guard])
        app.router.add_post(OCSP_PATH, self.ocsp_post)
        app.router.add_post(OCSP_PATH + "/", self.ocsp_post)
        app.router.add_get(OCSP_PATH + "/{request:.+}", self.ocsp_get)
        app.router.add_get(CRL_PATH, self.crl)
        app.router.add_get(CA_CERT_PATH, self.ca_cert)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn anything unexpected into a 500, never a crash: this listener faces whatever
        the network sends."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except TimeoutError:
            return web.Response(status=408, text="request timeout\n")
        except Exception:
            log.exception("http_internal_error", path=request.path)
            if request.path.startswith(OCSP_PATH):
                status = ocsp.OCSPResponseStatus.INTERNAL_ERROR
                return self._ocsp_reply(unsuccessful_response(status), cache=False)
            return web.Response(status=500, text="internal error\n")

    # -- OCSP -------------------------------------------------------------------------------
    async def ocsp_post(self, request: web.Request) -> web.StreamResponse:
        async with asyncio.timeout(self._timeout):  # a slow body must not hold a connection
            body = await request.read()
        return self._ocsp_reply(self._ca.ocsp_answer(body), cache=False)

    async def ocsp_get(self, request: web.Request) -> web.StreamResponse:
        # RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER request}.
        # rel_url: also right for an absolute-form target (GET http://host/ocsp/...).
        encoded = request.rel_url.raw_path[len(OCSP_PATH) + 1 :]
        try:
            der = base64.b64decode(urllib.parse.unquote(encoded), validate=True)
        except (binascii.Error, ValueError):
            der = b""  # answered as malformedRequest by the responder
        return self._ocsp_reply(self._ca.ocsp_answer(der), cache=True)

    def _ocsp_reply(self, reply: SignedStatus | bytes, *, cache: bool) -> web.Response:
        if not isinstance(reply, SignedStatus):  # malformedRequest, unauthorized: no caching
            return web.Response(body=reply, content_type="application/ocsp-response")
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
        return web.Response(
            body=reply.der, content_type="application/ocsp-response", headers=headers
        )

    # -- CRL and CA certificate -------------------------------------------------------------
    async def crl(self, request: web.Request) -> web.StreamResponse:
        # current() may wait for the background build after a revocation: not on the loop.
        crl = await asyncio.get_running_loop().run_in_executor(None, self._ca.crl)
        etag = _etag(crl.der)
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(crl.this_update),
            "Expires": _http_date(crl.next_update),
            "Cache-Control": f"max-age={CRL_MAX_AGE}, public, no-transform",
        }
        if _not_modified(request, etag, crl.this_update):
            return web.Response(status=304, headers=headers)
        return web.Response(body=crl.der, content_type="application/pkix-crl", headers=headers)

    async def ca_cert(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._ca_cert_der, content_type="application/pkix-cert")


class HttpListener:
    """The relying-party app on its own event loop thread."""

    def __init__(
        self,
        authority: CertificateAuthority,
        listen: str,
        request_timeout: float = 10.0,
        max_body: int = OCSP_REQUEST_MAX,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._app = RelyingPartyApp(authority, request_timeout, max_body).build()
        self._listen = listen
        self._reuse_port = reuse_port
        # uvloop's libuv loop serves this small-request traffic markedly faster than asyncio's.
        self._loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)
        self._runner = web.AppRunner(self._app, access_log=None, keepalive_timeout=30)
        self.address = ""

    def start(self) -> str:
        """Bind and serve; return the bound host:port (port 0 picks a free one)."""
        host, _, port = self._listen.rpartition(":")
        self._thread.start()

        async def up() -> str:
            await self._runner.setup()
            site = web.TCPSite(
                self._runner, host or "127.0.0.1", int(port), reuse_port=self._reuse_port
            )
            await site.start()
            sockname = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
            return f"{host or '127.0.0.1'}:{sockname[1]}"

        self.address = asyncio.run_coroutine_threadsafe(up(), self._loop).result(timeout=30)
        return self.address

    def stop(self) -> None:
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            future.result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
