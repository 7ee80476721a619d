"""The sidecar agent: keep DIR's certificate valid for ever, for a process that cannot.

Enroll if there is no usable certificate (and a token was given); then renew at a random
instant of the renewal window the CA answers (asking again at its retry_after; at 2/3 of the
lifetime minus jitter from a CA that answers none), retry failures with capped, jittered
backoff that never waits past expiry, re-enroll if the certificate expired or was revoked and
a token is available, and after each renewal run --on-renew and/or signal the process that
reads the files.

At start it says what it holds and asks the CA whether that certificate still stands, so a
revoked one is replaced (or reported) at once, not at the next renewal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from signet.ca.v1 import ca_pb2

from .client import TIMEOUT, CaClient, NotSaved, Pending, save_or_revoke
from .clock import Clock, SystemClock
from .enroll import PinMismatch, enroll, fetch_pinned_root, normalize_fingerprint
from .files import (
    Credentials,
    OutputSet,
    check_out_dir,
    describe,
    read_credentials,
    resolve_outputs,
)
from .listeners import WrongListener, explain
from .schedule import DEFAULT_FRACTION, Backoff, RenewalPlan, check_timing, jitter_for
from .serial import serial_hex

log = structlog.get_logger("signet.agent")


ON_RENEW_TIMEOUT = 60.0  # seconds


class AgentGaveUp(Exception):
    """No valid certificate and no way to get one: the agent exits non-zero with this."""


@dataclass(frozen=True)
class AgentConfig:
    server: str
    out: Path
    bootstrap_server: str | None = None
    token_file: Path | None = None
    token: str | None = None
    root_fingerprint: str | None = None
    formats: tuple[str, ...] | None = None  # None: the set `out` already holds (pem if new)
    p12_password: bytes | None = None
    p12_password_file: Path | None = None  # recorded in `out` (never the password itself)
    validity: dt.timedelta | None = None  # the first certificate's too (renewed at once)
    # None: in the CA's renewal window (2/3 from a CA that has none); a fraction renews there,
    # or earlier when the CA's window says so (an operator's renew-now).
    fraction: float | None = None
    jitter: float | None = None  # None: 1/20 of the lifetime, less for an early --renew-at
    backoff: Backoff = field(default_factory=Backoff)
    on_renew: str | None = None
    signal_number: int = signal.SIGHUP
    signal_pid: int | None = None
    pid_file: Path | None = None
    # How often the trust bundle (the CA's roots) is asked for between renewals: a root
    # rollover reaches ca.pem (and the process reading it) within this. None: at renewals only.
    bundle_refresh: dt.timedelta | None = dt.timedelta(minutes=5)
    rpc_timeout: float = TIMEOUT  # seconds an RPC may take before it is retried (backoff)

    def __post_init__(self) -> None:
        check_timing(self.renewal_fraction, self.renewal_jitter)  # not after a token is spent

    @property
    def renewal_fraction(self) -> float:
        """The fraction of the lifetime the rule renews at (when the CA gives no window)."""
        return DEFAULT_FRACTION if self.fraction is None else self.fraction

    @property
    def renewal_jitter(self) -> float:
        return jitter_for(self.renewal_fraction) if self.jitter is None else self.jitter


class Agent:
    def __init__(
        self, config: AgentConfig, rng: random.Random | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.rng = rng or random.Random()  # jitter, not secrets
        self.clock = clock or SystemClock()  # its time and its waits: tests give a fake one
        self.renewals = 0
        # When we got the current certificate: the CA backdates not_before (for clock skew),
        # and that slack must not count as lifetime already used.
        self._received_at: dt.datetime | None = None
        self._plan: RenewalPlan | None = None
        self._bundle_at: dt.datetime | None = None  # when to ask for the trust bundle next
        self._outputs: tuple[OutputSet, bytes | None] | None = None
        # In-process users (ca_client.Identity) hear about renewals and failures here.
        self.renewed: list[Callable[[Credentials], None]] = []
        self.failed: list[Callable[[Exception], None]] = []
        # The call being retried (what for, its key and request_id): kept across backoff so
        # that a retry after a lost answer is answered with the certificate already issued.
        self._pending: tuple[str, Pending] | None = None

    def _pending_for(self, purpose: str) -> Pending:
        if self._pending is None or self._pending[0] != purpose:
            self._pending = (purpose, Pending.new())
        return self._pending[1]

    def _now(self) -> dt.datetime:
        return self.clock.now()

    @property
    def next_renewal(self) -> dt.datetime | None:
        """When the certificate held will be renewed (None before one is held)."""
        return self._plan.renew_at if self._plan is not None else None

    def _token(self) -> str | None:
        if self.config.token_file and self.config.token_file.exists():
            return self.config.token_file.read_text().strip() or None
        return self.config.token

    def usable(self, creds: Credentials | None) -> bool:
        return creds is not None and creds.not_before <= self._now() < creds.not_after

    def check(self) -> None:
        """Refuse what cannot work (outputs, passwords, the directory) before any call."""
        c = self.config
        try:
            self._outputs = resolve_outputs(c.out, c.formats, c.p12_password_file, c.p12_password)
            check_out_dir(c.out)
        except ValueError as exc:
            raise AgentGaveUp(str(exc)) from None

    def _publish(self, creds: Credentials) -> None:
        if self._outputs is None:
            self.check()
        assert self._outputs is not None
        outputs, password = self._outputs
        save_or_revoke(self.config.server, self.config.out, creds, outputs, password)

    def _received(self, creds: Credentials, received_at: dt.datetime) -> dict[str, str]:
        """Note a certificate we now hold and when to renew it; what to log about it."""
        self._received_at = received_at
        # The CA backdates not_before (for clock skew): that slack is no lifetime used.
        start = max(creds.not_before, received_at)
        self._plan = RenewalPlan(
            start=start,
            not_after=creds.not_after,
            now=received_at,
            rng=self.rng,
            fraction=self.config.fraction,
            jitter=self.config.renewal_jitter,
            advice=creds.advice,
        )
        return {**describe(creds), **self._schedule()}

    def _schedule(self) -> dict[str, str]:
        """The plan, for the log: when it renews and why (the CA's window, or the rule)."""
        plan = self._plan
        assert plan is not None
        said: dict[str, str] = {"renew_at": plan.renew_at.isoformat()}
        if plan.advice is not None:
            said["window_end"] = plan.advice.end.isoformat()
            if plan.advice.explanation_url:
                said["explanation_url"] = plan.advice.explanation_url
        return said

    def _poll(self, creds: Credentials, client: CaClient | None = None) -> None:
        """Ask the CA when to renew what we hold; the plan stands if it cannot say. A refusal
        (revoked) is raised: the caller handles it like a refused renewal."""
        plan = self._plan
        assert plan is not None
        serial = serial_hex(creds.certificate.serial_number)
        try:
            if client is None:
                with CaClient(self.config.server, creds) as own:
                    advice = own.renewal_info(serial)
            else:
                advice = client.renewal_info(serial)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older CA: the rule, as before
                plan.unsupported()
                log.info("renewal_info_unsupported", serial=serial)
                return
            plan.unanswered(self._now())
            log.warning("renewal_info_failed", serial=serial, error=exc.details())
            return
        if advice is None:
            plan.unanswered(self._now())
            return
        before = plan.renew_at
        plan.advised(advice, self._now())
        if plan.renew_at != before:
            log.info("renewal_window", serial=serial, **self._schedule())

    def _enroll(self) -> Credentials:
        token = self._token()
        if not token or not self.config.root_fingerprint:
            raise AgentGaveUp(
                f"no valid certificate in {self.config.out} and no way to get one: "
                "give --token (or --token-file) and --root-fingerprint to enroll"
            )
        server = self.config.bootstrap_server or self.config.server
        try:
            root = fetch_pinned_root(server, normalize_fingerprint(self.config.root_fingerprint))
        except (PinMismatch, WrongListener) as exc:
            raise AgentGaveUp(str(exc)) from None
        pending = self._pending_for("enroll")
        creds = enroll(server, token, root, pending=pending, timeout=self.config.rpc_timeout)
        self._pending = None  # answered: the next call is a new one
        try:
            self._publish(creds)
        except NotSaved as exc:  # the token is spent: nothing more to try
            raise AgentGaveUp(str(exc)) from None
        log.info("enrolled", **self._received(creds, self._now()))
        self._notify(creds)
        if self.config.validity is not None:
            creds = self._apply_validity(creds)
        return creds

    def _apply_validity(self, creds: Credentials) -> Credentials:
        """Enroll cannot ask for a lifetime (the token sets it): renew at once with --validity,
        the enrolled certificate revoked as superseded."""
        try:
            return self._renew(creds, revoke_previous=True)
        except grpc.RpcError as exc:
            self._forget_refused(exc)
            log.warning("validity_not_applied", error=exc.details(), **describe(creds))
            return creds

    def _renew(self, creds: Credentials, revoke_previous: bool = False) -> Credentials:
        pending = self._pending_for("renew, revoking" if revoke_previous else "renew")
        with CaClient(self.config.server, creds, timeout=self.config.rpc_timeout) as client:
            fresh = client.renew(self.config.validity, revoke_previous, pending)
        self._pending = None  # answered: the next renewal is a new call
        self._publish(fresh)
        self.renewals += 1
        log.info("renewed", **self._received(fresh, self._now()), renewals=self.renewals)
        self._notify(fresh)  # in-process users first: a hook below must not hold them up
        self._after_renew()
        return fresh

    def _notify(self, creds: Credentials) -> None:
        for callback in self.renewed:
            try:
                callback(creds)
            except Exception:  # a listener's bug must not stop renewals
                log.exception("renew_listener_failed")

    def _after_renew(self) -> None:
        if self.config.on_renew:
            # The operator's own command, run by their shell, as `--on-renew` promises; bounded
            # in time so that a hung reload cannot keep us from the next renewal.
            try:
                result = subprocess.run(  # noqa: S602
                    self.config.on_renew, shell=True, check=False, timeout=ON_RENEW_TIMEOUT
                )
                if result.returncode != 0:
                    log.warning("on_renew_failed", returncode=result.returncode)
            except subprocess.TimeoutExpired:
                log.warning("on_renew_timed_out", seconds=ON_RENEW_TIMEOUT)
        pid = self.config.signal_pid
        if pid is None and self.config.pid_file and self.config.pid_file.exists():
            text = self.config.pid_file.read_text().strip()
            pid = int(text) if text.isdigit() else None
        if pid is not None:
            if pid <= 1:  # 0 would signal our own process group, 1 is init
                log.warning("signal_pid_refused", pid=pid)
                return
            try:
                os.kill(pid, self.config.signal_number)
            except OSError as exc:
                log.warning("signal_failed", pid=pid, error=str(exc))

    def _held_at_start(self) -> Credentials | None:
        """What `out` holds, said in the log and checked with the CA: None if it must be
        replaced (expired, or revoked with a token to enroll again)."""
        creds = read_credentials(self.config.out)
        if creds is None:
            log.info("holding_nothing", out=str(self.config.out))
            return None
        # Written when the file was: the best guess after a restart.
        mtime = (self.config.out / "cert.pem").stat().st_mtime
        log.info(
            "holding",
            **self._received(creds, dt.datetime.fromtimestamp(mtime, dt.UTC)),
            usable=self.usable(creds),
        )
        if not self.usable(creds):
            return None
        serial = serial_hex(creds.certificate.serial_number)
        try:
            with CaClient(self.config.server, creds) as client:
                reply = client.status(serial)
                if reply.status != ca_pb2.REVOKED:
                    self._poll(creds, client)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:  # how the CA refuses a revoked caller
                self._lost(creds, exc.details() or "refused")
                return None
            wrong = explain(self.config.server, exc, probe=False)
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise AgentGaveUp(wrong or exc.details()) from None
            log.warning("status_unknown", serial=serial, error=wrong or exc.details())
            if self._plan is not None:
                self._plan.unanswered(self._now())  # ask about the window again later
            return creds
        status = ca_pb2.CertificateStatus.Name(reply.status)
        log.info("status", serial=serial, status=status)
        if reply.status == ca_pb2.REVOKED:
            reason = ca_pb2.RevocationReason.Name(reply.reason)
            self._lost(creds, f"revoked, reason {reason}")
            return None
        return creds

    def _lost(self, creds: Credentials, why: str) -> None:
        """Revoked: go on to enroll again if a token allows it, else stop and say why."""
        serial = serial_hex(creds.certificate.serial_number)
        log.warning("certificate_refused", serial=serial, detail=why)
        if self._token() is None or not self.config.root_fingerprint:
            raise AgentGaveUp(
                f"the CA refuses the certificate in {self.config.out} (serial {serial}: {why}) "
                "and no token (with --root-fingerprint) was given to enroll again"
            )

    def refresh_bundle(self, creds: Credentials) -> Credentials:
        """Ask the CA for its roots; if they changed (a root rollover began or ended), write
        the same certificate and key with the new ca.pem and tell whoever reads them."""
        with CaClient(self.config.server, creds) as client:
            roots = client.trusted_roots()
        if set(roots) == set(creds.roots):
            return creds
        fresh = dataclasses.replace(creds, roots=roots)  # the CA's advice kept
        self._publish(fresh)
        log.info("trust_bundle_updated", roots=len(roots), **describe(fresh))
        self._notify(fresh)
        self._after_renew()
        return fresh

    def _next_bundle(self) -> None:
        every = self.config.bundle_refresh
        self._bundle_at = None if every is None else self._now() + every

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; raise AgentGaveUp when no certificate can be had."""
        self.check()
        creds = self._held_at_start()
        backoff = self.config.backoff
        self._next_bundle()
        while not stop.is_set():
            try:
                if not self.usable(creds):
                    creds = self._enroll()
                    backoff = self.config.backoff
                assert creds is not None and self._plan is not None
                at, planned = self._plan.next_event()
                event: str = planned
                # A look at the trust bundle, when it comes before the plan's next event.
                if self._bundle_at is not None and self._bundle_at < at:
                    at, event = self._bundle_at, "bundle"
                if self.clock.wait(stop, max(0.0, (at - self._now()).total_seconds())):
                    return
                if event == "bundle":
                    self._next_bundle()  # first: a failure below is retried at the next one
                    creds = self.refresh_bundle(creds)
                    continue
                if event == "poll":
                    self._poll(creds)
                    continue
                creds = self._renew(creds)
                self._next_bundle()  # a renewal brought the bundle
                backoff = self.config.backoff
            except AgentGaveUp:
                raise
            except grpc.RpcError as exc:
                self._forget_refused(exc)
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a wrong address: no retry helps
                    raise AgentGaveUp(
                        explain(self.config.server, exc, probe=False) or exc.details()
                    ) from None
                refused = exc.code() == grpc.StatusCode.UNAUTHENTICATED
                if refused and creds is None and self.config.token_file is None:
                    # A token given on the command line will not change: stop, say why.
                    raise AgentGaveUp(
                        f"the bootstrap token was refused ({exc.details()}); give a new one"
                    ) from None
                if refused and creds is not None:
                    # Revoked or expired under us: only a new token can help.
                    log.warning("identity_refused", detail=exc.details())
                    creds = None
                    if self._token() is None:
                        raise AgentGaveUp(
                            f"the CA refused our certificate ({exc.details()}) and no token "
                            "was given to enroll again"
                        ) from None
                    continue
                backoff = self._wait_backoff(stop, backoff, creds, exc)
            except (OSError, NotSaved) as exc:  # the CA unreachable at first contact, a full disk
                backoff = self._wait_backoff(stop, backoff, creds, exc)

    def _forget_refused(self, exc: grpc.RpcError) -> None:
        """The request_id is answered ALREADY_EXISTS (used for another request): the retry
        becomes a new call. Other refusals are not remembered by the CA, so keeping the id
        is harmless, and after a transient failure it is what makes the retry safe."""
        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
            self._pending = None

    def _wait_backoff(
        self,
        stop: threading.Event,
        backoff: Backoff,
        creds: Credentials | None,
        error: Exception,
    ) -> Backoff:
        now = self._now()
        # With a usable certificate its plan decides (never past expiry, spread so that an
        # outage's failures do not all come back at once); without one, plain backoff.
        plan = self._plan if self.usable(creds) else None
        if plan is not None:
            attempt, retry_at = plan.attempt, plan.failed(now)
        else:
            attempt, retry_at = backoff.attempt, backoff.retry_at(now, None, self.rng)
        if isinstance(error, grpc.RpcError):
            detail = explain(self.config.server, error, probe=False) or error.details()
        else:
            detail = str(error)
        for callback in self.failed:
            try:
                callback(error)
            except Exception:
                log.exception("failure_listener_failed")
        log.warning("renew_failed", error=detail, attempt=attempt, retry_at=retry_at.isoformat())
        if plan is not None:  # the loop waits for the plan's next event (a retry, or a poll)
            return backoff
        self.clock.wait(stop, max(0.0, (retry_at - now).total_seconds()))
        return backoff.next()
