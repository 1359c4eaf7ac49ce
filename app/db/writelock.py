"""SQLite writers queue in the kernel, not in SQLite's busy-wait: a lock every connection takes.

SQLite allows one writer at a time. A second one sleeps in its busy handler for 1, 2,
5, 10, … milliseconds between retries, so under a burst of API requests from several
gunicorn workers the sleeps, not the writes, set the pace and the tail latency. Here
every connection the engine opens is a `WriteLockedConnection`: its first INSERT,
UPDATE, DELETE or DDL of a transaction takes an flock() on a file beside the database
(and a thread lock, since threads share the process's open file), and its commit or
rollback releases it, so writers wait in line and the next one runs the moment the
lock is free. Reads never take it. It is attached to the engine in app/db (the
connection factory), so no write can go around it.

Measured (docs/benchmarks.md, "Hot-path machinery"): POST /api/send under 2 gunicorn
workers, 1,101 against 791 req/s without it, p99 24 against 34 ms; tests/test_db.py
checks that writers wait for it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from typing import Any

WAIT_SECONDS = 30.0  # as SQLite's busy timeout: a writer waits this long, then "database is locked"
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC", "CREATE", "DROP T", "DROP I", "ALTER ")


class _Lock:
    """One database's lock file in this process; a thread lock lets one thread at a time in."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path + ".writelock", os.O_CREAT | os.O_RDWR, 0o600)
        self.threads = threading.Lock()

    def acquire(self) -> None:
        if not self.threads.acquire(timeout=WAIT_SECONDS):
            raise sqlite3.OperationalError("database is locked (waited for the write lock)")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self.threads.release()
            raise

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.threads.release()


_locks: dict[tuple[int, str], _Lock] = {}
_guard = threading.Lock()


def _lock_for(path: str) -> _Lock:
    key = (os.getpid(), path)  # a forked worker opens the file again: flock is per open file
    with _guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = _Lock(path)
        return lock


class WriteLockedCursor(sqlite3.Cursor):
    """A cursor whose writes take its connection's write lock first."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        connection: WriteLockedConnection = self.connection  # type: ignore[assignment]
        connection.before(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            connection.after()

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        connection: WriteLockedConnection = self.connection  # type: ignore[assignment]
        connection.before(sql)
        try:
            return super().executemany(sql, parameters)
        finally:
            connection.after()


class WriteLockedConnection(sqlite3.Connection):
    """A SQLite connection that holds the database's write lock from its first write to the end."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        path = os.fspath(database)
        in_memory = path == ":memory:" or path.startswith("file::memory:")
        self._lock = None if in_memory else _lock_for(os.path.abspath(path))
        self._holding = False

    def cursor(self, factory: Any = WriteLockedCursor) -> Any:
        """Return a cursor whose writes take the lock."""
        return super().cursor(factory)

    def before(self, sql: str) -> None:
        """Take the lock before the first write of a transaction."""
        if self._lock is not None and not self._holding and sql.lstrip()[:6].upper() in _WRITES:
            self._lock.acquire()
            self._holding = True

    def after(self) -> None:
        """Give the lock back if the statement left no transaction open (autocommit DDL)."""
        if self._holding and not self.in_transaction:
            self._release()

    def commit(self) -> None:
        """Commit, then give the lock back."""
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        """Roll back, then give the lock back."""
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        """Close, giving the lock back if it was held."""
        try:
            super().close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._holding and self._lock is not None:
            self._holding = False
            self._lock.release()
