"""SQLite's settings, set on every connection the engine opens.

- WAL: readers never block the writer, nor the writer them.
- synchronous=FULL: a commit returns only once its WAL frames are on disk (fsync), so a
  202 answered after the commit survives a power loss, as Postfix's 250 does. NORMAL
  would sync only at checkpoints, and a power loss could take the last commits with it.
- busy_timeout: a writer that finds another writing waits for it instead of failing.
  pysqlite begins a transaction just before the first INSERT, UPDATE or DELETE, so every
  write transaction here starts with its write and waiting is always safe.
- foreign_keys: SQLite leaves them off unless asked.
"""

from __future__ import annotations

import sqlite3
from typing import Any

BUSY_SECONDS = 30
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}",
    "PRAGMA foreign_keys=ON",
)


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Apply PRAGMAS to a new connection."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        for pragma in PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
