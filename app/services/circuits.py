"""A relay's circuit as stored: its columns, the event of a transition, the guarded write.

Every writer of a circuit (a delivery pass, an operator forcing it, a good health probe)
goes through `save`, which writes only if nobody changed the circuit since the writer
read it: `circuit_changed_at` is the version, bumped with every transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, update

from app.domain.breaker import Circuit, Transition
from app.models import Event, Relay
from app.services.records import EventRecord


def values(circuit: Circuit) -> dict[str, Any]:
    """Return a circuit as the columns of its relay's row."""
    return {
        "circuit_state": circuit.state.value,
        "circuit_failures": circuit.failures,
        "circuit_successes": circuit.successes,
        "circuit_open_until": circuit.open_until,
        "circuit_reason": circuit.reason,
    }


def transition_event(
    relay_id: int,
    relay_name: str,
    transition: Transition,
    at: datetime,
    detail: str | None = None,
    **extra: Any,
) -> EventRecord:
    """Return the event of a circuit transition (who forced it, what triggered it: `extra`)."""
    return EventRecord(
        at=at,
        type="circuit_" + transition.after.value,
        relay_id=relay_id,
        detail=detail or transition.reason,
        data={
            "relay": relay_name,
            "from": transition.before.value,
            "to": transition.after.value,
            "reason": transition.reason,
            **extra,
        },
    )


def save(
    conn: Connection,
    relay_id: int,
    expected_changed_at: datetime | None,
    circuit: Circuit,
    events: Sequence[EventRecord],
    now: datetime,
    **more: Any,
) -> bool:
    """Write a relay's circuit (and `more` columns) if it is still the version read.

    1. One conditional UPDATE, on the `circuit_changed_at` the writer read; a transition
       (there are events) bumps it to `now`.
    2. Its row count says whether it was written; only then are the events inserted.
    """
    unchanged = (
        Relay.circuit_changed_at.is_(None)
        if expected_changed_at is None
        else Relay.circuit_changed_at == expected_changed_at
    )
    columns = {**values(circuit), **more}
    if events:
        columns["circuit_changed_at"] = now
    written = conn.execute(
        update(Relay).where(Relay.id == relay_id, unchanged).values(**columns)
    ).rowcount
    if written and events:
        conn.execute(insert(Event), [event.row() for event in events])
    return bool(written)
