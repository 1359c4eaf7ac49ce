"""One writer at a time on SQLite, queued in the kernel instead of SQLite's busy-wait.

SQLite allows one writer; a second one sleeps in its busy handler for 1, 2, 5, 10, …
milliseconds between retries. Under a burst of API requests from several gunicorn
workers those sleeps, not the writes, set the latency. An flock() on a file beside the
database queues writers and wakes the next one the moment the lock is free. On other
databases this is a no-op.

The lock also keeps the WAL checkpoint out of every writer's way. SQLite runs an
automatic checkpoint inside the commit that crosses its threshold — copying the WAL's
pages into the database and syncing both, several milliseconds — while that writer
still holds the lock, so every other writer waits for the disk. Here each process runs
a passive checkpoint after every CHECKPOINT_EVERY writes, once it has released the
lock; the automatic one stays on at a higher threshold as a backstop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from sqlalchemy import Connection, Engine

CHECKPOINT_EVERY = 200  # writes by one process between its passive WAL checkpoints
AUTOCHECKPOINT_PAGES = 10_000  # SQLite's own checkpoint, in pages (default 1000): a backstop


class _FileLock:
    """One database's lock file in this process, and its writes since the last checkpoint."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path + ".writelock", os.O_CREAT | os.O_RDWR, 0o600)
        self.threads = threading.Lock()  # threads share the open file: flock can't separate them
        self.writes = 0


_locks: dict[tuple[int, str], _FileLock] = {}
_guard = threading.Lock()


def _lock_for(path: str) -> _FileLock:
    key = (os.getpid(), path)  # a forked worker needs its own open file
    lock = _locks.get(key)
    if lock is None:
        with _guard:
            lock = _locks.get(key)
            if lock is None:
                lock = _locks[key] = _FileLock(path)
    return lock


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[None]:
    """Hold the database's write lock (SQLite files only) for the duration of a write."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock = _lock_for(database)
    with lock.threads:
        fcntl.flock(lock.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fd, fcntl.LOCK_UN)
        lock.writes += 1
        due = lock.writes >= CHECKPOINT_EVERY
        if due:
            lock.writes = 0
    if due:
        checkpoint(engine)


def checkpoint(engine: Engine) -> None:
    """Copy the WAL into the database as far as readers allow, without blocking writers."""
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        cursor.fetchall()
        cursor.close()
    finally:
        connection.close()


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """Begin a write transaction under the write lock; commit on success."""
    with writing(engine), engine.begin() as conn:
        yield conn
