"""The API's hot path on raw DBAPI cursors stores exactly what SQLAlchemy would store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select

from app import prepared, writelock
from app.domain import mime
from app.extensions import db
from app.models import Event, Message, utcnow
from app.services import api_keys, queue

pytestmark = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)

WHOLE_SECOND = datetime(2030, 1, 2, 3, 4, 5)  # microsecond 0: the case a naive adapter mangles
INSERT_EVENT = prepared.Statements(
    Event.__table__.insert(), ("at", "type", "message_id", "detail", "relay_id", "data")
)


def event_values(at: datetime, data: Any = None, detail: str = "prepared") -> dict[str, Any]:
    """Every value the prepared event insert needs."""
    return {
        "at": at,
        "type": "circuit",
        "message_id": None,
        "detail": detail,
        "relay_id": None,
        "data": data,
    }


def insert_event(at: datetime, data: Any, detail: str = "prepared") -> None:
    engine = db.engine
    statement = INSERT_EVENT.on(engine)
    values = event_values(at, data, detail)
    with prepared.raw_transaction(engine, writelock.writing) as cursor:
        statement.execute(cursor, values)


def test_values_read_back_as_sqlalchemy_wrote_them(app: Any) -> None:
    insert_event(WHOLE_SECOND, {"from": "primary", "codes": [421, 451]})
    db.session.add(Event(at=WHOLE_SECOND, type="circuit", detail="orm", data={"from": "primary"}))
    db.session.commit()
    rows = {e.detail: e for e in db.session.scalars(select(Event))}
    assert rows["prepared"].at == rows["orm"].at == WHOLE_SECOND
    assert rows["prepared"].data == {"from": "primary", "codes": [421, 451]}
    # Stored in the same form as the ORM's rows, so comparisons in SQL see both.
    later = db.session.scalars(select(Event.detail).where(Event.at >= WHOLE_SECOND)).all()
    assert sorted(later) == ["orm", "prepared"]
    same_second = select(func.count()).where(Event.at == WHOLE_SECOND)
    assert db.session.scalar(same_second) == 2
    earlier = WHOLE_SECOND - timedelta(microseconds=1)
    assert db.session.scalar(select(func.count()).where(Event.at > earlier)) == 2


def test_a_null_json_value_is_stored_as_null(app: Any) -> None:
    insert_event(WHOLE_SECOND, None)
    assert db.session.scalar(select(func.count()).where(Event.data.is_(None))) == 1


def test_a_column_whose_default_sqlalchemy_would_fill_must_be_given(app: Any) -> None:
    """`at` defaults to utcnow in Python: a raw cursor cannot fill it, so preparing refuses."""
    with pytest.raises(ValueError, match="'at'"):
        prepared.Prepared(Event.__table__.insert(), db.engine.dialect, ("type", "detail"))


def test_a_failed_statement_rolls_the_transaction_back(app: Any) -> None:
    engine = db.engine
    statement = INSERT_EVENT.on(engine)
    good = event_values(WHOLE_SECOND, detail="x")
    with (  # noqa: PT012
        pytest.raises(engine.dialect.loaded_dbapi.IntegrityError),
        prepared.raw_transaction(engine, writelock.writing) as cursor,
    ):
        statement.execute(cursor, good)
        statement.execute(cursor, {**good, "type": None})  # NOT NULL
    assert db.session.scalar(select(func.count()).select_from(Event)) == 0


def test_a_message_sent_through_the_api_reads_back_whole(
    client: FlaskClient, send: Callable[..., dict[str, Any]], auth: dict[str, str]
) -> None:
    answer = send(tags=["orders", "eu"], priority="high", cc=["carol@example.org"])
    message = db.session.get(Message, answer["id"])
    assert message is not None
    assert message.recipients == ["alice@example.org", "carol@example.org"]
    assert message.tags == ["orders", "eu"]
    assert message.priority == 0 and message.status == "queued"
    assert message.created_at == message.next_attempt_at == message.updated_at
    assert abs(message.created_at - utcnow()) < timedelta(minutes=1)
    assert message.message_id == answer["message_id"] and message.size == len(message.data)
    shown = client.get(f"/api/messages/{answer['id']}", headers=auth).get_json()
    assert [e["type"] for e in shown["events"]] == ["queued"]
    assert shown["events"][0]["detail"] == f"2 recipient(s), {message.size} bytes"
    # The queue finds it due at once.
    due = db.session.scalars(queue.due_query(10)).all()
    assert due == [answer["id"]]


def test_two_requests_racing_with_one_idempotency_key_store_one_message(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second insert loses on the unique index and answers as a replay of the first."""
    key_row, _ = api_keys.create("racer")
    spec = mime.MessageSpec(
        mime.Mailbox("shop@example.com"),
        [mime.Mailbox("alice@example.org")],
        [],
        [],
        None,
        "Race",
        "hi",
        None,
        [],
        {},
        [],
    )
    built = mime.build_message(spec, max_bytes=10_000)
    first = queue.enqueue(
        built, api_key_id=key_row.id, idempotency_key="k1", idempotency_hash="same"
    )
    looked: list[Any] = []
    real_find = queue._find_idempotent

    def find_late(api_key_id: int | None, key: str) -> Any:
        """The racing request's first look happened before the first one committed."""
        looked.append(key)
        return None if len(looked) == 1 else real_find(api_key_id, key)

    monkeypatch.setattr(queue, "_find_idempotent", find_late)
    again = queue.enqueue(
        built, api_key_id=key_row.id, idempotency_key="k1", idempotency_hash="same"
    )
    assert again.replayed and again.id == first.id and len(looked) == 2
    with pytest.raises(queue.IdempotencyConflict):
        looked.clear()
        queue.enqueue(built, api_key_id=key_row.id, idempotency_key="k1", idempotency_hash="other")
    assert db.session.scalar(select(func.count()).select_from(Message)) == 1


def test_sqlite_keeps_one_connection_and_lends_it_to_one_thread_at_a_time(app: Any) -> None:
    engine = db.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("the kept connection is SQLite's")
    with prepared.connection(engine) as first, prepared.connection(engine) as meanwhile:
        # The kept one is lent out: the second comes from the pool.
        assert meanwhile.dbapi_connection is not first
    with prepared.connection(engine) as again:
        assert again is first
    engine.dispose()  # the kept connection is closed with its engine
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("SELECT 1")
    with prepared.connection(engine) as fresh:
        assert fresh is not first and fresh.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_left_in_a_transaction_is_not_kept(app: Any) -> None:
    engine = db.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("the kept connection is SQLite's")
    with pytest.raises(RuntimeError), prepared.connection(engine) as broken:
        broken.execute("INSERT INTO events (at, type, detail) VALUES ('2030-01-01', 'x', 'y')")
        raise RuntimeError("a bug between the insert and the commit")
    with prepared.connection(engine) as next_one:
        assert next_one is not broken and not next_one.in_transaction
    # Nothing of the abandoned transaction was committed.
    assert db.session.scalar(select(func.count()).select_from(Event)) == 0


def test_an_in_memory_database_stays_in_the_pools_connection(app: Any) -> None:
    """An in-memory SQLite database lives in one connection; taking it out would lose it."""
    engine = create_engine("sqlite://")
    Event.metadata.create_all(engine)
    statement = INSERT_EVENT.on(engine)
    with prepared.raw_transaction(engine) as cursor:
        statement.execute(cursor, event_values(WHOLE_SECOND))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Event)) == 1
    engine.dispose()


def test_the_wal_is_checkpointed_every_few_writes_not_left_to_grow(
    app: Any, send: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own checkpoint waits for 10,000 pages; the write lock runs one every N writes."""
    engine = db.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("the WAL is SQLite's")
    database = Path(engine.url.database or "")

    def in_database_file(message_id: str) -> bool:
        return message_id.strip("<>").encode() in database.read_bytes()

    monkeypatch.setattr(writelock, "CHECKPOINT_EVERY", 1000)
    early = send()["message_id"]
    assert not in_database_file(early)  # committed to the WAL only
    monkeypatch.setattr(writelock, "CHECKPOINT_EVERY", 1)
    late = send()["message_id"]
    assert in_database_file(early) and in_database_file(late)
