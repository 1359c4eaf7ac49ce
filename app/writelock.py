"""One writer at a time on SQLite, queued in the kernel instead of SQLite's busy-wait.

SQLite allows one writer; a second one sleeps in its busy handler for 1, 2, 5, 10, …
milliseconds between retries. Under a burst of API requests from several gunicorn
workers those sleeps, not the writes, set the latency. An flock() on a file beside the
database queues writers and wakes the next one the moment the lock is free. On other
databases this is a no-op.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from sqlalchemy import Connection, Engine

_locks: dict[tuple[int, str], tuple[int, threading.Lock]] = {}
_guard = threading.Lock()


def _lock_for(path: str) -> tuple[int, threading.Lock]:
    key = (os.getpid(), path)  # a forked worker needs its own open file
    with _guard:
        if key not in _locks:
            fd = os.open(path + ".writelock", os.O_CREAT | os.O_RDWR, 0o600)
            _locks[key] = (fd, threading.Lock())
        return _locks[key]


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[None]:
    """Hold the database's write lock (SQLite files only) for the duration of a write."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd, local = _lock_for(database)
    with local:  # threads of this process share one open file: flock would not separate them
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """Begin a write transaction under the write lock; commit on success."""
    with writing(engine), engine.begin() as conn:
        yield conn
