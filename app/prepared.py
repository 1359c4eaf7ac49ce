"""Core statements compiled once and run on a raw DBAPI cursor: the API's hot path.

SQLAlchemy's execution layer (connection checkout events, compiled-cache lookup, result
proxies) costs tens of microseconds per statement. That is nothing for a page, but
`POST /api/send` runs a key lookup and an insert per request and is measured against a
route that runs none. A `Prepared` statement keeps SQLAlchemy's part that matters — the SQL as the
dialect writes it and each column type's bind processing (JSON, DateTime on SQLite) —
and skips the rest. Only plain INSERT and SELECT statements on one engine use it; every
other query goes through the ORM or Core as usual.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import Compiled


class Prepared:
    """One statement compiled for one dialect, with its parameters' bind processors."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled: Compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        binds = compiled.binds  # type: ignore[attr-defined]
        order: Sequence[str] = (
            compiled.positiontup  # type: ignore[attr-defined]
            if dialect.positional
            else list(binds)
        )
        missing = [name for name in order if name not in keys]
        if missing:
            raise ValueError(f"the statement needs values for {missing}")
        self.positional = dialect.positional
        self.order = tuple(order)
        # (name, the type's bind processor or None, the type), in parameter order
        plan = []
        for name in self.order:
            impl = binds[name].type.dialect_impl(dialect)
            plan.append((name, impl.bind_processor(dialect), type(impl)))
        self.plan: tuple[tuple[str, Callable[[Any], Any] | None, type], ...] = tuple(plan)

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """Return the DBAPI parameters for `values`, each processed as its column's type."""
        processed: list[Any] = []
        done: dict[tuple[int, type], Any] = {}  # one timestamp in 3 columns: formatted once
        for name, process, kind in self.plan:
            value = values[name]
            if process is not None and value is not None:
                key = (id(value), kind)
                if key not in done:
                    done[key] = process(value)
                value = done[key]
            processed.append(value)
        if self.positional:
            return tuple(processed)
        return dict(zip(self.order, processed, strict=True))

    def run(self, cursor: DBAPICursor, parameters: Sequence[Any] | dict[str, Any]) -> DBAPICursor:
        """Run the statement with parameters from `parameters()`; fetch rows from the cursor."""
        cursor.execute(self.sql, parameters)
        return cursor

    def returning(self, cursor: DBAPICursor, parameters: Sequence[Any] | dict[str, Any]) -> Any:
        """Run an INSERT … RETURNING one column; return that value."""
        row = self.run(cursor, parameters).fetchone()
        if row is None:
            raise RuntimeError(f"no row returned by {self.sql[:60]}")
        return row[0]

    def execute(self, cursor: DBAPICursor, values: Mapping[str, Any]) -> DBAPICursor:
        """Run the statement with `values`; fetch its rows from the cursor."""
        return self.run(cursor, self.parameters(values))


class Statements:
    """Statements prepared lazily per engine (each gunicorn worker has its own engine)."""

    def __init__(self, statement: ClauseElement, keys: Sequence[str]) -> None:
        self.statement = statement
        self.keys = tuple(keys)
        self._by_engine: weakref.WeakKeyDictionary[Engine, Prepared] = weakref.WeakKeyDictionary()

    def on(self, engine: Engine) -> Prepared:
        """Return the statement compiled for `engine`'s dialect."""
        prepared = self._by_engine.get(engine)
        if prepared is None:
            prepared = self._by_engine[engine] = Prepared(self.statement, engine.dialect, self.keys)
        return prepared


class _Kept:
    """One SQLite connection a process keeps for the hot path, lent to one thread at a time."""

    def __init__(self, engine: Engine) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.connection: Any = None  # a pool connection detached from its pool
        event.listen(engine, "engine_disposed", self.close)

    def close(self, _connection: Any = None) -> None:
        """Close the kept connection (when its engine is disposed), unless it is lent out."""
        if self.lock.acquire(blocking=False):
            try:
                if self.connection is not None and self.pid == os.getpid():
                    self.connection.close()
                self.connection = None
            finally:
                self.lock.release()


_kept: weakref.WeakKeyDictionary[Engine, _Kept] = weakref.WeakKeyDictionary()
_kept_guard = threading.Lock()
_inherited: list[Any] = []  # connections a forked child must neither use nor close


def _kept_for(engine: Engine) -> _Kept | None:
    if engine.dialect.name != "sqlite":
        return None  # elsewhere the pool's pre-ping keeps connections fresh: use the pool
    if engine.url.database in (None, "", ":memory:"):
        return None  # an in-memory database lives in the pool's one connection: leave it there
    kept = _kept.get(engine)
    if kept is None or kept.pid != os.getpid():
        with _kept_guard:
            kept = _kept.get(engine)
            if kept is None or kept.pid != os.getpid():
                if kept is not None:
                    _inherited.append(kept.connection)
                kept = _kept[engine] = _Kept(engine)
    return kept


@contextlib.contextmanager
def connection(engine: Engine) -> Iterator[DBAPIConnection]:
    """Lend a DBAPI connection: on SQLite the one this process keeps, else from the pool.

    A pool checkout and return cost as much as the query they wrap. The kept connection
    skips both; a thread that finds it lent out (threaded servers, tests) uses the pool.
    Callers end their own transactions; a connection left in one is not kept.
    """
    kept = _kept_for(engine)
    if kept is None or not kept.lock.acquire(blocking=False):
        pooled: DBAPIConnection = engine.raw_connection()
        try:
            yield pooled
        finally:
            pooled.close()  # back to the pool, which rolls back what is left
        return
    try:
        if kept.connection is None:
            fairy = engine.raw_connection()
            fairy.detach()  # no longer the pool's: closing it closes it
            kept.connection = fairy
        yield kept.connection.dbapi_connection
    finally:
        if kept.connection is not None and kept.connection.dbapi_connection.in_transaction:
            kept.connection.close()  # something went wrong mid-transaction: start afresh
            kept.connection = None
        kept.lock.release()


@contextlib.contextmanager
def raw_transaction(
    engine: Engine, lock: Callable[[Engine], AbstractContextManager[None]] | None = None
) -> Iterator[DBAPICursor]:
    """Yield a cursor in a transaction; commit on success, roll back on error.

    `lock` (writelock.writing) is taken once the connection is in hand and released after
    the commit, so the time under it is the statements and the commit alone.
    """
    with connection(engine) as dbapi_connection:
        cursor = dbapi_connection.cursor()
        try:
            with lock(engine) if lock else contextlib.nullcontext():
                try:
                    yield cursor
                    dbapi_connection.commit()
                except BaseException:
                    dbapi_connection.rollback()
                    raise
        finally:
            cursor.close()


@contextlib.contextmanager
def raw_cursor(engine: Engine) -> Iterator[DBAPICursor]:
    """Yield a cursor for reads."""
    with connection(engine) as dbapi_connection:
        cursor = dbapi_connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
