"""The API benchmark's baseline: a bare Flask route that stores each message durably.

`POST /api/send` parses the JSON body (`request.get_json()`) and commits one row holding
the raw body to SQLite (WAL, `PRAGMA synchronous=FULL`), each request its own
transaction, then answers 202 {"id": ROWID}. Each worker process opens its own
connection on its first request (after gunicorn's fork). The database file is named by
BENCH_BARE_DB. Run as `gunicorn -w 2 -k sync bare_app:app`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from datetime import UTC, datetime
from typing import Any

from flask import Flask, jsonify, request

SCHEMA = "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, created_at TEXT, data BLOB)"

app = Flask(__name__)
_conn: tuple[int, sqlite3.Connection] | None = None


def connection() -> sqlite3.Connection:
    """Return this process's connection, opened on first use (never inherited over a fork)."""
    global _conn
    if _conn is None or _conn[0] != os.getpid():
        conn = sqlite3.connect(os.environ["BENCH_BARE_DB"], timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(SCHEMA)
        _conn = (os.getpid(), conn)
    return _conn[1]


@app.post("/api/send")
def send() -> Any:
    """Parse the JSON, commit it as one row, answer 202 with the row's id."""
    request.get_json()
    conn = connection()
    with conn:  # one transaction: BEGIN before the INSERT, COMMIT after it
        cursor = conn.execute(
            "INSERT INTO messages (created_at, data) VALUES (?, ?)",
            (datetime.now(UTC).isoformat(), request.get_data()),
        )
    return jsonify(id=cursor.lastrowid), 202


@app.post("/hooks/mailersend")
def hook() -> Any:
    """The webhook benchmark's baseline: check the HMAC-SHA256 signature of the raw body
    in constant time with one secret (BENCH_BARE_SECRET), commit the body as one row,
    answer 200."""
    body = request.get_data()
    expected = hmac.new(os.environ["BENCH_BARE_SECRET"].encode(), body, hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), request.headers.get("Signature", "")):
        return jsonify(error="bad signature"), 401
    conn = connection()
    with conn:
        conn.execute(
            "INSERT INTO messages (created_at, data) VALUES (?, ?)",
            (datetime.now(UTC).isoformat(), body),
        )
    return jsonify(status="ok"), 200
