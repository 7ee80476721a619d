"""Group commit: one thread owns the write connection, and every write of this process is a job
queued to it. Jobs that arrive while a commit is being made to disk go into the next
transaction together, so N concurrent issuances cost one fsync, not N, and writers never
queue inside SQLite's busy handler (which sleeps in growing steps: the cause of long tails).

Each job runs under its own SAVEPOINT: a job that fails (a duplicate serial, a conditional
update that finds nothing) is rolled back alone and the rest of the batch commits. A caller
gets its result only after the COMMIT holding its rows has returned (synchronous=FULL: on
disk). A full queue, or a database that cannot be written, is ``Unavailable`` at once or
within ``timeout`` seconds, never a long wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ..core.errors import ErrorReason, Unavailable

Job = Callable[[sqlite3.Connection], Any]
MAX_BATCH = 512
log = structlog.get_logger("signet.store")
# observer(batch size, seconds the write lock was held), after every commit: the metrics'.
commit_observers: list[Callable[[int, float], None]] = []


def describe(exc: sqlite3.Error) -> str:
    """What a person should be told about a failed database operation."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "the database is locked by another process; try again shortly"
    if "full" in text:
        return "the database's disk is full"
    if "readonly" in text or "read-only" in text:
        return "the database is read-only"
    return f"the database cannot be written: {text}"


class _Slot:
    """One job and its outcome. The caller waits on a bare lock the writer releases: cheaper
    than an Event (a Condition and a notify) for a wait that always has one waiter."""

    __slots__ = ("done", "error", "job", "result")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitWriter:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_queue: int = 4096,
        timeout: float = 8.0,
        on_batch: Callable[[int], None] | None = None,
        lock_path: Path | None = None,
    ) -> None:
        """connect() opens the write connection (in autocommit mode, busy_timeout set); it is
        called again after a failure, so a database that becomes writable again recovers.

        lock_path: a file other processes' writers lock too (workers sharing the database).
        SQLite makes a writer that finds the database locked sleep and retry in growing steps
        (1, 2, 5, 10... ms), so two busy processes spent much of their time asleep; waiting
        on an flock instead wakes the next writer the moment the lock is released."""
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.Queue[_Slot | None] = queue.Queue(max_queue)
        self._timeout = timeout
        self._on_batch = on_batch
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._lock_path = lock_path
        self._lock_fd: int | None = None

    def submit(self, job: Job) -> Any:
        """Run job(conn) in the next group transaction; return its result once committed."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="store-writer", daemon=True
                    )
                    self._thread.start()
        slot = _Slot(job)
        try:
            self._queue.put_nowait(slot)
        except queue.Full:
            raise Unavailable(
                "the CA is busy: its database write queue is full; try again shortly",
                reason=ErrorReason.STORE_UNAVAILABLE,
            ) from None
        if not slot.done.acquire(timeout=self._timeout):
            # It may still commit later: then a row exists that nobody was handed, which is
            # safe; the reverse (handing out what is not stored) never happens.
            raise Unavailable(
                f"the database did not commit within {self._timeout:g} s",
                reason=ErrorReason.STORE_UNAVAILABLE,
            )
        if slot.error is not None:
            raise slot.error
        return slot.result

    def close(self) -> None:
        """Commit what is queued and stop the thread; a later submit starts a new one. All
        under the start lock: a submit racing close() must not start a thread that would use
        the connection while it is being closed (SQLite crashes on that)."""
        with self._start_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
                thread.join(timeout=30)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._commit(batch)
            except BaseException as exc:  # the thread must outlive any job: nobody left waiting
                # What failed is for the CA's log, not for the caller (it may quote rows).
                log.error("store_write_failed", error=repr(exc), batch=len(batch))
                self._drop()
                self._fail(
                    batch,
                    Unavailable(
                        "the database write failed; the CA's log has the details",
                        reason=ErrorReason.STORE_UNAVAILABLE,
                    ),
                )
            if stop:
                return

    def _commit(self, batch: list[_Slot]) -> None:
        locked = self._lock()
        start = time.perf_counter()
        try:
            self._transaction(batch)
        finally:
            if locked:
                self._unlock()
        held = time.perf_counter() - start
        for observe in commit_observers:
            observe(len(batch), held)

    def _lock(self) -> bool:
        if self._lock_path is None:
            return False
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError:
            return False  # e.g. a read-only directory: SQLite's own locking still holds
        return True

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _transaction(self, batch: list[_Slot]) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._drop()
            self._fail(batch, Unavailable(describe(exc), reason=ErrorReason.STORE_UNAVAILABLE))
            return
        try:
            for slot in batch:
                self._run_one(conn, slot)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A failure outside a job's own error handling (disk full, I/O error): nothing of
            # this batch is kept, and every caller is told so.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            # And a new connection next time: one opened while the file was read-only (or
            # the disk full) stays that way after the fault is gone.
            self._drop()
            self._fail(batch, Unavailable(describe(exc), reason=ErrorReason.STORE_UNAVAILABLE))
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for slot in batch:
            slot.done.release()

    @staticmethod
    def _run_one(conn: sqlite3.Connection, slot: _Slot) -> None:
        conn.execute("SAVEPOINT job")
        try:
            slot.result = slot.job(conn)
        except sqlite3.OperationalError:
            raise  # the database itself failed: the whole batch goes
        except Exception as exc:
            slot.error = exc
            conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")

    def _fail(self, batch: list[_Slot], error: Unavailable) -> None:
        for slot in batch:
            if not slot.done.locked():
                continue  # already answered
            slot.result = None
            slot.error = error
            slot.done.release()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
