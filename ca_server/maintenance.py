"""Background upkeep of a running CA: CRL builds (coalesced, off the request path) and the
periodic re-signing of stored OCSP responses."""

from __future__ import annotations

import datetime as dt
import threading
import time

import structlog

from .core.authority import CertificateAuthority

log = structlog.get_logger("signet.maintenance")

REFRESH_BATCH = 500


class Maintenance:
    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        coalesce: float = 0.05,
        poll: float = 1.0,
    ) -> None:
        """coalesce: how long to gather revocations that arrive together into one CRL build;
        poll: how often to look for revocations made by other processes sharing the store."""
        self._ca = authority
        self._coalesce = coalesce
        self._poll = poll
        validity = authority.settings.ocsp_validity
        self._refresh_every = min(validity / 4, dt.timedelta(minutes=5)).total_seconds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)

    def start(self) -> None:
        crls = self._ca.crls
        crls.build()  # the first CRL exists before anyone asks
        crls.background = True
        self._thread.start()

    def stop(self) -> None:
        self._ca.crls.background = False
        self._stop.set()
        self._ca.crls.wanted.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        crls = self._ca.crls
        next_refresh = 0.0
        while not self._stop.is_set():
            if crls.wanted.wait(self._poll):
                self._stop.wait(self._coalesce)  # let a burst of revocations share one build
            crls.wanted.clear()
            try:
                if crls.run_pending():
                    log.info("crl_published", number=crls.current().number)
            except Exception:
                log.exception("crl_build_failed")
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self._refresh_every
                try:
                    # Rotate the delegated responder here, not on a request's thread.
                    self._ca.responder.signer()
                    total = 0
                    while not self._stop.is_set():
                        n = self._ca.refresh_ocsp(REFRESH_BATCH)
                        total += n
                        if n < REFRESH_BATCH:
                            break
                        if crls.wanted.is_set():  # a revocation's CRL comes first
                            next_refresh = 0.0
                            break
                    if total:
                        log.info("ocsp_refreshed", responses=total)
                except Exception:
                    log.exception("ocsp_refresh_failed")
