"""The sidecar agent: keep DIR's certificate valid for ever, for a process that cannot.

Enroll if there is no usable certificate (and a token was given); then renew at 2/3 of the
lifetime minus jitter, retry failures with capped, jittered backoff that never waits past
expiry, re-enroll if the certificate expired or was revoked and a token is available, and after
each renewal run --on-renew and/or signal the process that reads the files."""

from __future__ import annotations

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

from .client import CaClient
from .enroll import PinMismatch, enroll, fetch_pinned_root, normalize_fingerprint
from .files import Credentials, read_credentials, render, write_atomically
from .schedule import Backoff, renewal_time

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
    formats: tuple[str, ...] = ("pem",)
    p12_password: bytes | None = None
    validity: dt.timedelta | None = None
    fraction: float = 2 / 3
    jitter: float = 1 / 20
    backoff: Backoff = field(default_factory=Backoff)
    on_renew: str | None = None
    signal_number: int = signal.SIGHUP
    signal_pid: int | None = None
    pid_file: Path | None = None


class Agent:
    def __init__(self, config: AgentConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()  # jitter, not secrets
        self.renewals = 0
        # When we got the current certificate: the CA backdates not_before (for clock skew),
        # and that slack must not count as lifetime already used.
        self._received_at: dt.datetime | None = None
        # In-process users (ca_client.Identity) hear about renewals and failures here.
        self.renewed: list[Callable[[Credentials], None]] = []
        self.failed: list[Callable[[Exception], None]] = []

    @staticmethod
    def _now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def _token(self) -> str | None:
        if self.config.token_file and self.config.token_file.exists():
            return self.config.token_file.read_text().strip() or None
        return self.config.token

    def usable(self, creds: Credentials | None) -> bool:
        return creds is not None and creds.not_before <= self._now() < creds.not_after

    def _publish(self, creds: Credentials) -> None:
        # The PEM set is always written too: it is what the agent reads back after a restart.
        formats = ("pem", *(f for f in self.config.formats if f != "pem"))
        files = render(creds, formats, self.config.p12_password)
        write_atomically(self.config.out, files)

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
        except PinMismatch as exc:
            raise AgentGaveUp(str(exc)) from None
        creds = enroll(server, token, root)
        self._publish(creds)
        self._received_at = self._now()
        log.info("enrolled", serial=f"{creds.certificate.serial_number:x}")
        self._notify(creds)
        return creds

    def _renew(self, creds: Credentials) -> Credentials:
        with CaClient(self.config.server, creds) as client:
            fresh = client.renew(self.config.validity)
        self._publish(fresh)
        self._received_at = self._now()
        self.renewals += 1
        log.info(
            "renewed",
            serial=f"{fresh.certificate.serial_number:x}",
            not_after=fresh.not_after.isoformat(),
            renewals=self.renewals,
        )
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

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; raise AgentGaveUp when no certificate can be had."""
        creds = read_credentials(self.config.out)
        if creds is not None:  # written when the file was: the best guess after a restart
            mtime = (self.config.out / "cert.pem").stat().st_mtime
            self._received_at = dt.datetime.fromtimestamp(mtime, dt.UTC)
        backoff = self.config.backoff
        while not stop.is_set():
            try:
                if not self.usable(creds):
                    creds = self._enroll()
                    backoff = self.config.backoff
                assert creds is not None
                start = max(creds.not_before, self._received_at or creds.not_before)
                at = renewal_time(
                    start, creds.not_after, self.rng, self.config.fraction, self.config.jitter
                )
                if stop.wait(max(0.0, (at - self._now()).total_seconds())):
                    return
                creds = self._renew(creds)
                backoff = self.config.backoff
            except AgentGaveUp:
                raise
            except grpc.RpcError as exc:
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
            except OSError as exc:  # the CA unreachable at first contact, a full disk...
                backoff = self._wait_backoff(stop, backoff, creds, exc)

    def _wait_backoff(
        self,
        stop: threading.Event,
        backoff: Backoff,
        creds: Credentials | None,
        error: Exception,
    ) -> Backoff:
        now = self._now()
        # An unusable certificate sets no deadline: back off normally until a new one comes.
        not_after = creds.not_after if self.usable(creds) and creds else None
        retry_at = backoff.retry_at(now, not_after, self.rng)
        detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
        for callback in self.failed:
            try:
                callback(error)
            except Exception:
                log.exception("failure_listener_failed")
        log.warning(
            "renew_failed", error=detail, attempt=backoff.attempt, retry_at=retry_at.isoformat()
        )
        stop.wait(max(0.0, (retry_at - now).total_seconds()))
        return backoff.next()
