"""The one database set-up: SQLite's settings on every connection, the write lock that queues
writers in the kernel, and the group commit that lets concurrent enqueues share a commit.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app.db import db
from app.db.commit import _Ticket, group_commit
from app.db.writelock import WriteLockedConnection
from app.domain.mime import Mailbox, MessageSpec, build_message
from app.models import Message
from app.services import api_keys, queue


def built() -> Any:
    spec = MessageSpec(
        Mailbox("shop@example.com"), [Mailbox("alice@example.org")], [], [], None,
        "Your order", "Thanks!", None, [], {}, [],
    )  # fmt: skip
    return build_message(spec, max_bytes=10_000)


def test_every_sqlite_connection_is_durable_and_in_wal_mode(app: Flask) -> None:
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: fsync per commit
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert isinstance(conn.connection.dbapi_connection, WriteLockedConnection)


def _try_lock(path: str, answer: Any) -> None:
    """In another process: say whether the database's write lock is free right now."""
    with open(path + ".writelock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            answer.put("held")
        else:
            answer.put("free")


def lock_seen_from_another_process(app: Flask) -> str:
    answers: Any = multiprocessing.get_context("fork").Queue()
    path = db.engine.url.database
    assert path
    process = multiprocessing.get_context("fork").Process(target=_try_lock, args=(path, answers))
    process.start()
    process.join(10)
    return str(answers.get(timeout=5))


def test_a_writer_holds_the_write_lock_from_its_first_write_to_its_commit(app: Flask) -> None:
    assert lock_seen_from_another_process(app) == "free"
    with db.engine.connect() as conn:
        conn.execute(select(func.count()).select_from(Message))  # a read takes no lock
        assert lock_seen_from_another_process(app) == "free"
        conn.execute(text("UPDATE relays SET name = name"))  # the first write takes it
        assert lock_seen_from_another_process(app) == "held"
        conn.commit()
        assert lock_seen_from_another_process(app) == "free"


def test_a_second_writer_waits_for_the_lock_not_in_sqlites_busy_handler(app: Flask) -> None:
    first = db.engine.connect()
    first.execute(text("UPDATE relays SET name = name"))
    done = threading.Event()
    waiting_in_sqlite: list[bool] = []

    engine = db.engine

    def second_writer() -> None:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            with conn.begin():
                conn.execute(text("UPDATE relays SET name = name"))
                waiting_in_sqlite.append(bool(raw and raw.in_transaction))
        done.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    # While the first writer holds it, the second has not even begun its transaction.
    assert not done.wait(0.3)
    first.commit()
    first.close()
    assert done.wait(10)
    thread.join()
    assert waiting_in_sqlite == [True]  # it did write, once the lock was its


def test_concurrent_enqueues_share_commits(app: Flask) -> None:
    """The group commit's gain: eight enqueues that arrive during a commit share the next one."""
    writer = group_commit(db.engine, Message.__table__)
    before = (writer.batches, writer.rows)
    # Hold the write lock so the first enqueue's commit waits while the others arrive.
    blocker = db.engine.connect()
    blocker.execute(text("UPDATE relays SET name = name"))
    results: list[int] = []

    def enqueue() -> None:
        with app.app_context():
            results.append(queue.enqueue(built()).id)

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    threads[0].start()
    deadline = threading.Event()
    threading.Timer(20, deadline.set).start()
    while not writer._writing and not deadline.is_set():  # the first leads, waits for the lock
        deadline.wait(0.01)
    for thread in threads[1:]:
        thread.start()
    while len(writer._queue) < 7 and not deadline.is_set():  # the others wait for the next
        deadline.wait(0.01)
    blocker.commit()
    blocker.close()
    for thread in threads:
        thread.join(10)
    assert writer.rows - before[1] == 8 and writer.batches - before[0] == 2
    stored = set(db.session.scalars(select(Message.id)))
    assert sorted(results) == sorted(stored) and len(stored) == 8


def test_a_unique_clash_in_a_shared_commit_fails_only_its_row(app: Flask) -> None:
    writer = group_commit(db.engine, Message.__table__)
    message = built()
    key, _ = api_keys.create("shop")
    values = {
        "api_key_id": key.id,
        "message_id": message.message_id,
        "envelope_from": message.envelope_from,
        "recipients": message.recipients,
        "data": message.data,
        "size": len(message.data),
        "status": "queued",
        "idempotency_key": "order-1",
        "idempotency_hash": "x",
    }
    first = writer.insert(values)
    batch = [_Ticket(values), _Ticket({**values, "idempotency_key": "order-2"})]
    writer._write(batch)
    assert isinstance(batch[0].error, IntegrityError) and batch[0].id is None
    assert batch[1].error is None and batch[1].id == first + 1
    with pytest.raises(IntegrityError):
        writer.insert(values)
