"""Group commit: one thread owns the write connection, and every write of this process is a job
queued to it. Jobs that arrive while a commit is being made to disk go into the next
transaction together, so N concurrent issuances cost one fsync, not N, and writers never
queue inside SQLite's busy handler (which sleeps in growing steps: the cause of long tails).

Each job runs under its own SAVEPOINT: a job that fails (a duplicate serial, a conditional
update that finds nothing) is rolled back alone and the rest of the batch commits. A caller
gets its result only after the COMMIT holding its rows has returned (synchronous=FULL: on
disk). A full queue, or a database that cannot be written, is ``Unavailable`` at once or
within ``timeout`` seconds, never a long wait.

The database is reached through a ``WriteConnection``: SQLite's here, PostgreSQL's in
``postgres`` (there, each replica's writer batches its own process's writes; a batch that
PostgreSQL aborts for a deadlock with another replica's is retried one job per transaction).
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
from typing import Any, Protocol

import structlog

from ..core.errors import ErrorReason, Unavailable

Job = Callable[[Any], Any]  # job(db): db is the WriteConnection's handle
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


class WriteConnection(Protocol):
    """One database connection in autocommit mode, as the writer drives it."""

    handle: Any  # what each job is given to run its statements on
    database_error: tuple[type[BaseException], ...]  # any error of the driver
    fatal_error: tuple[type[BaseException], ...]  # the database failed: the whole batch goes
    # the batch lost to a concurrent transaction (a deadlock): its jobs are run again alone
    retry_alone: tuple[type[BaseException], ...]

    def execute(self, sql: str) -> None: ...

    def describe(self, exc: BaseException) -> str:
        """What a person should be told about a failed database operation."""
        ...

    def close(self) -> None: ...


class SqliteWriteConnection:
    database_error: tuple[type[BaseException], ...] = (sqlite3.Error,)
    fatal_error: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    retry_alone: tuple[type[BaseException], ...] = ()  # one writer at a time: no deadlocks

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.handle: Any = conn

    def execute(self, sql: str) -> None:
        self.handle.execute("BEGIN IMMEDIATE" if sql == "BEGIN" else sql)

    def describe(self, exc: BaseException) -> str:
        return describe(exc)  # type: ignore[arg-type]

    def close(self) -> None:
        self.handle.close()


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
        connect: Callable[[], WriteConnection],
        *,
        max_queue: int = 4096,
        timeout: float = 8.0,
        on_batch: Callable[[int], None] | None = None,
        lock_path: Path | None = None,
    ) -> None:
        """connect() opens the write connection (in autocommit mode; SQLite's with busy_timeout
        set), raising Unavailable when it cannot; it is called again after a failure, so a
        database that becomes writable again recovers.

        lock_path: a file other processes' writers lock too (workers sharing the database).
        SQLite makes a writer that finds the database locked sleep and retry in growing steps
        (1, 2, 5, 10... ms), so two busy processes spent much of their time asleep; waiting
        on an flock instead wakes the next writer the moment the lock is released."""
        self._connect = connect
        self._conn: WriteConnection | None = None
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
                self._conn = self._connect()  # raises Unavailable when it cannot
        except Unavailable as exc:
            self._fail(batch, exc)
            return
        conn = self._conn
        try:
            conn.execute("BEGIN")
        except conn.database_error as exc:
            self._drop()
            self._fail(batch, self._unavailable(conn, exc))
            return
        try:
            for slot in batch:
                self._run_one(conn, slot)
            conn.execute("COMMIT")
        except conn.retry_alone as exc:
            # Lost to another process's transaction (PostgreSQL broke a deadlock): nothing of
            # the batch is kept; each job then runs in a transaction of its own, which holds
            # one job's locks at a time and so cannot deadlock that way again.
            self._rollback(conn)
            if len(batch) == 1:
                self._fail(batch, self._unavailable(conn, exc))
                return
            for slot in batch:
                slot.result, slot.error = None, None
                self._transaction([slot])
            return
        except conn.database_error as exc:
            # A failure outside a job's own error handling (disk full, I/O error, a lost
            # connection): nothing of this batch is kept, and every caller is told so.
            self._rollback(conn)
            # And a new connection next time: one opened while the file was read-only (or
            # the disk full) stays that way after the fault is gone.
            self._drop()
            self._fail(batch, self._unavailable(conn, exc))
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for slot in batch:
            slot.done.release()

    @staticmethod
    def _unavailable(conn: WriteConnection, exc: BaseException) -> Unavailable:
        return Unavailable(conn.describe(exc), reason=ErrorReason.STORE_UNAVAILABLE)

    @staticmethod
    def _rollback(conn: WriteConnection) -> None:
        with contextlib.suppress(*conn.database_error):
            conn.execute("ROLLBACK")

    @staticmethod
    def _run_one(conn: WriteConnection, slot: _Slot) -> None:
        conn.execute("SAVEPOINT job")
        try:
            slot.result = slot.job(conn.handle)
        except conn.retry_alone:
            raise  # the whole batch is run again, one job at a time
        except conn.fatal_error:
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
