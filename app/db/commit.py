"""Group commit: messages enqueued by concurrent requests share one transaction and its fsync.

A 202 promises the message is on disk: its commit is synced (SQLite synchronous=FULL,
PostgreSQL synchronous_commit=on) before the answer. Synced commits one at a time make
the disk's flush the price of every request; here the requests of one process that
arrive while a commit is being flushed wait for it and go together in the next one.

No thread of its own: the first request finding no commit under way leads, writing
everything queued at that moment (its own row included) in one multi-row INSERT and one
commit; the others wait for their row's id, or lead the next batch. A batch whose INSERT
fails on a unique key (two requests racing with one Idempotency-Key) is written again
row by row, so that only the row at fault fails.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Table, insert
from sqlalchemy.exc import IntegrityError


@dataclass
class _Ticket:
    """One row waiting to be committed, and what became of it."""

    values: Mapping[str, Any]
    id: int | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class GroupCommit:
    """Insert rows of one table, each returning its id, batched across threads."""

    engine: Engine
    table: Table
    batches: int = 0  # transactions committed (the test of the gain counts them)
    rows: int = 0
    _queue: list[_Ticket] = field(default_factory=list)
    _writing: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        # One multi-row INSERT for the batch; the ids come back in the rows' order.
        self.statement = insert(self.table).returning(
            self.table.c.id, sort_by_parameter_order=True
        )

    def insert(self, values: Mapping[str, Any]) -> int:
        """Insert one row durably and return its id; raise what its INSERT raised."""
        ticket = _Ticket(values)
        with self._changed:
            self._queue.append(ticket)
            while self._writing and not ticket.done:
                self._changed.wait()
            if not ticket.done:  # lead: write everything queued so far
                self._writing = True
                batch, self._queue = self._queue, []
        if not ticket.done:
            try:
                self._write(batch)
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.id is not None
        return ticket.id

    def _write(self, batch: list[_Ticket]) -> None:
        """Commit a batch in one transaction; on a unique-key clash, row by row."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(self.statement, [ticket.values for ticket in batch])
                ids = [row[0] for row in result]
        except IntegrityError as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            for ticket in batch:
                self._write([ticket])
            return
        except BaseException as exc:
            self._fail(batch, exc)
            raise
        self.batches += 1
        self.rows += len(batch)
        for ticket, new_id in zip(batch, ids, strict=True):
            ticket.id, ticket.done = int(new_id), True

    @staticmethod
    def _fail(batch: list[_Ticket], exc: BaseException) -> None:
        """Mark every ticket of a failed batch done, with the error."""
        for ticket in batch:
            ticket.error, ticket.done = exc, True


_by_engine: weakref.WeakKeyDictionary[Engine, dict[str, GroupCommit]] = (
    weakref.WeakKeyDictionary()
)
_guard = threading.Lock()


def group_commit(engine: Engine, table: Table) -> GroupCommit:
    """Return the group commit of a table on an engine (one per process, engine and table)."""
    with _guard:
        tables = _by_engine.setdefault(engine, {})
        found = tables.get(table.name)
        if found is None:
            found = tables[table.name] = GroupCommit(engine, table)
        return found
