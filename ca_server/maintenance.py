"""Background upkeep of a running CA, in every server process: notice revocations made by
other processes (and drop cached "not revoked" answers within ``poll``) and rotations of the
CA's own certificates (reload them within ``poll``), and — in the one process holding the
store's maintenance lease — build each intermediate's CRL (coalesced, off the request path),
seal new audit rows into the hash chain (within ``poll``), re-sign stored OCSP responses, and
move the CA's certificates along (retire what is over, rotate the intermediate when due).
The others take up the CRLs the holder stored."""

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
from .core.rollover import blocking_roots, intermediate_due, retirements
from .core.store import AuditEvent

log = structlog.get_logger("signet.maintenance")

REFRESH_BATCH = 500
SEAL_BATCH = 500  # audit rows sealed into the hash chain per transaction
PRUNE_BATCH = 1000  # expired certificates deleted per transaction
ROOT_LOOK_EVERY = 60.0  # seconds between looks at the root's documents (they change yearly)
ROOT_WARN_EVERY = 3600.0  # seconds between warnings that they need the root key
ROLLOVER_EVERY = 60.0  # seconds between looks at what the CA's certificates need
CA_ACTOR = "signet:ca"


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
        rotate_intermediate: Callable[[], object] | None = None,
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
        self._warned: dict[str, float] = {}
        self._generation: int | None = None
        # Makes and records a new intermediate (the root key is here): see rollover().
        self._rotate_intermediate = rotate_intermediate

    def start(self) -> None:
        self._epoch = self._ca.store.revocation_epoch()
        self._generation = self._ca.store.ca_generation()
        self._lead(self._lease.hold())
        if self.leader:
            for crls in self._ca.crl_publishers():
                crls.build()  # the first CRLs exist before anyone asks
        self._root_documents()
        self._ca.issuers.set_background(background=True)
        self._thread.start()

    def stop(self) -> None:
        self._ca.issuers.set_background(background=False)
        self._stop.set()
        self._ca.issuers.wanted.set()
        self._thread.join(timeout=30)
        try:
            self._lease.release()  # another process can take over at once, not after the TTL
        except Exception:
            log.warning("lease_release_failed", lease=self._lease.name)

    def _lead(self, held: bool) -> None:
        if held != self.leader:
            log.info("maintenance_lease", held=held, holder=self._lease.holder)
        self.leader = held
        self._ca.issuers.set_background(builder=held)

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
            if n < PRUNE_BATCH or self._ca.issuers.wanted.is_set():
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
        if self.leader:
            root.refresh()
        else:
            root.reload()
        if not self.leader:
            return
        self._job_done("root_documents")
        if not root.needs_signing():
            return
        if time.monotonic() - self._root_warned < ROOT_WARN_EVERY:
            return
        self._root_warned = time.monotonic()
        expires = root.next_update()
        log.warning(
            "root_documents_need_the_root_key",
            detail="the root's CRL and its OCSP answers about the intermediates are due to be "
            "re-signed and the root key is not in the data directory: run `ca-server root "
            "sign --data-dir DIR` where the root key is kept, before they expire",
            expires=expires.isoformat() if expires else None,
        )

    def _warn(self, event: str, **details: object) -> None:
        """Say it hourly, not every minute."""
        if time.monotonic() - self._warned.get(event, -ROOT_WARN_EVERY) < ROOT_WARN_EVERY:
            return
        self._warned[event] = time.monotonic()
        log.warning(event, **details)

    def rollover(self) -> None:
        """The lease holder moves the CA's certificates along: retiring intermediates with
        nothing unexpired left, and retiring roots past their overlap with nothing under them,
        are retired; the issuing intermediate is replaced once it is due (with the root key
        here; else it says what to run)."""
        ca, now = self._ca, self._ca.clock.now()
        hierarchy = ca.hierarchy
        changes = retirements(
            hierarchy, now, lambda kid, live: ca.store.unexpired_issued_by(kid, now, live)
        )
        if changes:
            detail = ", ".join(f"{r.kind} {r.key_id}" for r in changes)
            ca.store.save_ca_certificates(
                changes, AuditEvent(now, "retire-ca", CA_ACTOR, None, detail)
            )
            log.info("ca_certificates_retired", retired=detail)
            ca.reload()
            hierarchy = ca.hierarchy
        for root in blocking_roots(hierarchy, now):
            self._warn(
                "old_root_still_needed",
                root=root.key_id,
                detail="the overlap is over but certificates under the old root are still "
                "live; it stays published until they expire or are revoked",
            )
        if intermediate_due(hierarchy, now, ca.settings.intermediate_rotate_at):
            if hierarchy.active_root.key is not None and self._rotate_intermediate is not None:
                self._rotate_intermediate()
                ca.reload()
            else:
                self._warn(
                    "intermediate_rotation_due",
                    detail="the issuing intermediate has lived [issuance] intermediate_rotate_at "
                    "of its life and the root key is not here: run `ca-server intermediate "
                    "prepare`, `ca-server root sign --csr` where the root key is, then "
                    "`ca-server intermediate activate`",
                    not_after=hierarchy.intermediates[
                        0
                    ].certificate.not_valid_after_utc.isoformat(),
                )
        missing = ca.hierarchy.key_missing
        if missing is not None:
            self._warn(
                "intermediate_key_missing",
                key_id=missing.key_id,
                detail="the active intermediate's key is not in this data directory: copy "
                f"secrets/intermediate-{missing.key_id}.key.* here; meanwhile the previous "
                "intermediate issues",
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
        generation = self._ca.store.ca_generation()
        if generation != self._generation:
            self._generation = generation
            if self._ca.reload():
                log.info("ca_certificates_reloaded", generation=generation)

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
        wanted = self._ca.issuers.wanted
        next_refresh = 0.0
        next_root = time.monotonic() + ROOT_LOOK_EVERY
        next_rollover = 0.0
        while not self._stop.is_set():
            if wanted.wait(self._poll):
                self._stop.wait(self._coalesce)  # let a burst of revocations share one build
            wanted.clear()
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
                    for crls in self._ca.crl_publishers():
                        crls.follow()
                    continue
                for crls in self._ca.crl_publishers():
                    if crls.run_pending():
                        log.info("crl_published", number=crls.current().number, issuer=crls.key_id)
                self._job_done("crl")
                while (
                    seal_pending(self._ca.store, SEAL_BATCH) == SEAL_BATCH and not wanted.is_set()
                ):
                    pass  # a backlog (a trail from before v11) is sealed a batch at a time
                self._job_done("audit_seal")
                if time.monotonic() >= next_rollover:
                    next_rollover = time.monotonic() + ROLLOVER_EVERY
                    self.rollover()
                    self._job_done("ca_rollover")
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
                        if wanted.is_set():  # a revocation's CRL comes first
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
