"""The durable queue: what enqueue stores, and one message per Idempotency-Key under a race."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db import db
from app.domain import mime
from app.models import Message, utcnow
from app.services import api_keys, queue

pytestmark = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)


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
