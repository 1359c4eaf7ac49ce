"""Core statements compiled once and run on a raw DBAPI cursor: the API's hot path.

SQLAlchemy's execution layer (connection checkout events, compiled-cache lookup, result
proxies) costs tens of microseconds per statement. That is nothing for a page, but
`POST /api/send` runs three statements per request and is measured against a route that
runs none. A `Prepared` statement keeps SQLAlchemy's part that matters — the SQL as the
dialect writes it and each column type's bind processing (JSON, DateTime on SQLite) —
and skips the rest. Only plain INSERT and SELECT statements on one engine use it; every
other query goes through the ORM or Core as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine
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
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name in self.order:
            processor = binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """Return the DBAPI parameters for `values`, each processed as its column's type."""
        processed = {
            name: (
                self.processors[name](values[name])
                if name in self.processors and values[name] is not None
                else values[name]
            )
            for name in self.order
        }
        if self.positional:
            return tuple(processed[name] for name in self.order)
        return processed

    def replace(
        self, parameters: Sequence[Any] | dict[str, Any], name: str, value: Any
    ) -> Sequence[Any] | dict[str, Any]:
        """Return `parameters` with one value (one that needs no processing) replaced."""
        if isinstance(parameters, dict):
            return {**parameters, name: value}
        index = self.order.index(name)
        return (*parameters[:index], value, *parameters[index + 1 :])

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
        self._by_engine: dict[int, Prepared] = {}

    def on(self, engine: Engine) -> Prepared:
        """Return the statement compiled for `engine`'s dialect."""
        prepared = self._by_engine.get(id(engine))
        if prepared is None:
            prepared = self._by_engine[id(engine)] = Prepared(
                self.statement, engine.dialect, self.keys
            )
        return prepared


@contextlib.contextmanager
def raw_transaction(
    engine: Engine, lock: Callable[[Engine], AbstractContextManager[None]] | None = None
) -> Iterator[DBAPICursor]:
    """Yield a cursor on a pooled DBAPI connection; commit on success, roll back on error.

    `lock` (writelock.writing) is taken after the connection is checked out and released
    after the commit, so the time under it is the statements and the commit alone.
    """
    connection: DBAPIConnection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            with lock(engine) if lock else contextlib.nullcontext():
                try:
                    yield cursor
                    connection.commit()
                except BaseException:
                    connection.rollback()
                    raise
        finally:
            cursor.close()
    finally:
        connection.close()  # back to the pool


@contextlib.contextmanager
def raw_cursor(engine: Engine) -> Iterator[DBAPICursor]:
    """Yield a cursor on a pooled DBAPI connection for reads (the pool rolls back on return)."""
    connection: DBAPIConnection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
    finally:
        connection.close()
