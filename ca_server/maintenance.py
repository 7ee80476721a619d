"""Background upkeep of a running CA, in every server process: notice revocations made by
other processes (and drop cached "not revoked" answers within ``poll``), and — in the one
process holding the store's maintenance lease — build CRLs (coalesced, off the request path),
seal new audit rows into the hash chain (within ``poll``) and re-sign stored OCSP responses.
The others take up the CRL the holder stored."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import structlog

from .core.audit_chain import seal_pending
from .core.authority import CertificateAuthority
from .core.enrollment import FAILURE_WINDOW
from .core.errors import Unavailable
from .core.lease import Lease

log = structlog.get_logger("signet.maintenance")

REFRESH_BATCH = 500
SEAL_BATCH = 500  # audit rows sealed into the hash chain per transaction
PRUNE_BATCH = 1000  # expired certificates deleted per transaction
ROOT_LOOK_EVERY = 60.0  # seconds between looks at the root's documents (they change yearly)
ROOT_WARN_EVERY = 3600.0  # seconds between warnings that they need the root key


class Maintenance:
    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        lease: Lease | None = None,
        coalesce: float = 0.05,
        poll: float = 0.25,
        on_store_health: Callable[[bool], None] | None = None,
        on_job_done: Callable[[str], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        """coalesce: how long to gather revocations that arrive together into one CRL build;
        poll: how often to look for revocations made by other processes sharing the store
        (a revocation elsewhere is honoured here within about this long)."""
        self._ca = authority
        self._lease = lease or Lease(authority.store, authority.clock)
        self._coalesce = coalesce
        self._poll = poll
        validity = authority.settings.ocsp_validity
        self._refresh_every = min(validity / 4, dt.timedelta(minutes=5)).total_seconds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._epoch: int | None = None
        self._store_ok = True
        self._on_store_health = on_store_health
        self._job_done = on_job_done or (lambda job: None)
        self._on_poll = on_poll or (lambda: None)
        self.leader = False
        self._root_warned = -ROOT_WARN_EVERY

    def start(self) -> None:
        crls = self._ca.crls
        self._epoch = self._ca.store.revocation_epoch()
        self._lead(self._lease.hold())
        if self.leader:
            crls.build()  # the first CRL exists before anyone asks
        self._root_documents()
        crls.background = True
        self._thread.start()

    def stop(self) -> None:
        self._ca.crls.background = False
        self._stop.set()
        self._ca.crls.wanted.set()
        self._thread.join(timeout=30)
        try:
            self._lease.release()  # another process can take over at once, not after the TTL
        except Exception:
            log.warning("lease_release_failed", lease=self._lease.name)

    def _lead(self, held: bool) -> None:
        if held != self.leader:
            log.info("maintenance_lease", held=held, holder=self._lease.holder)
        self.leader = held
        self._ca.crls.builder = held

    def _prune_expired(self) -> None:
        """Retention: certificates expired longer than retain_expired leave the store, a batch
        per transaction (their audit events stay)."""
        keep = self._ca.settings.retain_expired
        if keep is None:
            return
        total = 0
        while not self._stop.is_set():
            n = self._ca.store.prune_expired(self._ca.clock.now() - keep, PRUNE_BATCH)
            total += n
            if n < PRUNE_BATCH or self._ca.crls.wanted.is_set():
                break
        if total:
            log.info("certificates_pruned", certificates=total, expired_before=str(keep))

    def _prune_requests(self) -> None:
        """Answers kept for retries of idempotent calls leave the store once expired (lookups
        already ignore them), a batch per transaction."""
        total = 0
        while not self._stop.is_set():
            n = self._ca.store.prune_requests(self._ca.clock.now(), PRUNE_BATCH)
            total += n
            if n < PRUNE_BATCH or self._ca.crls.wanted.is_set():
                break
        if total:
            log.info("request_ids_pruned", records=total)

    def _root_documents(self) -> None:
        """Take up the root's CRL and OCSP answer from the store; the lease holder re-signs them
        when due if it has the root key, and otherwise warns (hourly) from then on, while
        months remain."""
        root = self._ca.root_documents
        docs = root.refresh() if self.leader else root.reload()
        if not self.leader:
            return
        self._job_done("root_documents")
        now = self._ca.clock.now()
        if docs is not None and not docs.due(now):
            return
        if time.monotonic() - self._root_warned < ROOT_WARN_EVERY:
            return
        self._root_warned = time.monotonic()
        log.warning(
            "root_documents_need_the_root_key",
            detail="the root's CRL and its OCSP answer about the intermediate are due to be "
            "re-signed and the root key is not in the data directory: run `ca-server root "
            "sign --data-dir DIR` where the root key is kept, before they expire",
            expires=docs.next_update.isoformat() if docs else None,
        )

    def _watch_revocations(self) -> None:
        """Also half the store's health check: this read fails while the database does."""
        try:
            epoch = self._ca.store.revocation_epoch()
        except Unavailable as exc:
            self._store_health(False, str(exc))
            raise
        if epoch != self._epoch:
            self._epoch = epoch
            self._ca.revocations_changed()

    @property
    def store_ok(self) -> bool:
        return self._store_ok

    def _store_health(self, ok: bool, reason: str = "") -> None:
        if ok == self._store_ok:
            return
        self._store_ok = ok
        if ok:
            log.info("store_recovered")
        else:
            log.error("store_unavailable", error=reason)
        if self._on_store_health is not None:
            self._on_store_health(ok)

    def _run(self) -> None:
        crls = self._ca.crls
        next_refresh = 0.0
        next_root = time.monotonic() + ROOT_LOOK_EVERY
        while not self._stop.is_set():
            if crls.wanted.wait(self._poll):
                self._stop.wait(self._coalesce)  # let a burst of revocations share one build
            crls.wanted.clear()
            try:
                self._watch_revocations()
                self._on_poll()
                self._lead(self._lease.hold())
                # The other half: taking or renewing the lease is a write. A database that
                # reads but cannot be written (locked, read-only, full) issues nothing, so
                # callers should go elsewhere meanwhile.
                error = self._lease.error
                self._store_health(not isinstance(error, Unavailable), str(error))
                # Rotate the delegated responder here, not on a request's thread.
                self._ca.responder.signer()
                if time.monotonic() >= next_root:
                    next_root = time.monotonic() + ROOT_LOOK_EVERY
                    self._root_documents()
                if not self.leader:
                    crls.follow()
                    continue
                if crls.run_pending():
                    log.info("crl_published", number=crls.current().number)
                self._job_done("crl")
                while (
                    seal_pending(self._ca.store, SEAL_BATCH) == SEAL_BATCH
                    and not crls.wanted.is_set()
                ):
                    pass  # a backlog (a trail from before v11) is sealed a batch at a time
                self._job_done("audit_seal")
            except Unavailable:
                continue  # said once by _store_health; retried every poll
            except Exception:
                log.exception("maintenance_failed")
                continue
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self._refresh_every
                try:
                    total = 0
                    while not self._stop.is_set():
                        n = self._ca.refresh_ocsp(REFRESH_BATCH)
                        total += n
                        if n < REFRESH_BATCH:
                            break
                        if crls.wanted.is_set():  # a revocation's CRL comes first
                            next_refresh = 0.0
                            break
                        self._lead(self._lease.hold())  # a long refresh keeps its lease
                        if not self.leader:
                            break
                    if total:
                        log.info("ocsp_refreshed", responses=total)
                    self._ca.store.prune_enroll_failures(self._ca.clock.now() - FAILURE_WINDOW)
                    self._prune_expired()
                    self._prune_requests()
                    self._job_done("ocsp_refresh")
                except Exception:
                    log.exception("ocsp_refresh_failed")
