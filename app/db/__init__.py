"""The one database set-up: the Flask-SQLAlchemy object and the engine's invariants.

Every connection Relayboard opens comes from the engine made here, and what must hold
for every one of them (SQLite's WAL, its durability setting, foreign keys, the busy
timeout, the write lock) is attached to that engine when the app is created: no service
names a pragma or takes a lock, and no write can go around them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, event
from sqlalchemy.orm import DeclarativeBase

from app import logs
from app.db import sqlite
from app.db.writelock import WriteLockedConnection

__all__ = ["Base", "Reachability", "db", "init_app", "is_unreachable", "reachability"]

log = logs.get("database")


class Base(DeclarativeBase):
    """Declarative base of every model."""


db = SQLAlchemy(model_class=Base)


def engine_options(database_url: str) -> dict[str, Any]:
    """Return the engine options for a database URL."""
    if database_url.startswith("sqlite"):
        return {
            "connect_args": {
                # Connections are shared between threads only through the pool, one at a time.
                "check_same_thread": False,
                "timeout": sqlite.BUSY_SECONDS,
                # Writers take the write lock (app/db/writelock.py) before SQLite's own.
                "factory": WriteLockedConnection,
            }
        }
    # A connection the server dropped (a restart, a failover) is replaced before use.
    return {"pool_pre_ping": True}


def init_app(app: Flask, database_url: str) -> Engine:
    """Bind `db` to the app and attach the invariants to its engine; return the engine."""
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(database_url)
    db.init_app(app)
    with app.app_context():
        engine: Engine = db.engine
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite.on_connect)
    return engine


def is_unreachable(exc: BaseException) -> bool:
    """Say whether an error means the database cannot be reached or used right now."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Reachability:
    """Whether this process last found the database reachable; logged once per change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None

    def failed(self, exc: BaseException, who: str) -> None:
        """Note a failure to reach the database; log it if it is news."""
        with self._lock:
            news, self.down_since = self.down_since is None, self.down_since or time.monotonic()
        if news:
            log.error("database unreachable", extra={"who": who, "error": _first_line(exc)})

    def succeeded(self, who: str) -> None:
        """Note a success; log the recovery if the database was unreachable."""
        if self.down_since is None:
            return
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            log.warning(
                "database reachable again",
                extra={"who": who, "after_seconds": round(time.monotonic() - since, 1)},
            )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


reachability = Reachability()
