"""What operators do to mail and read from the logs: filter, retry now, cancel, the event log."""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    and_,
    cast,
    false,
    func,
    or_,
    select,
    true,
    update,
)

from app import logs
from app.db import db
from app.models import (
    CANCELLED,
    DEFERRED,
    FAILED,
    HELD,
    LOGGED,
    QUEUED,
    SENDING,
    SENT,
    Event,
    HealthCheck,
    Message,
    Relay,
    utcnow,
)

log = logs.get("operations")

RETRYABLE = (DEFERRED, HELD, FAILED)
CANCELLABLE = (QUEUED, DEFERRED, HELD)
# Messages that may still change by themselves: their page keeps watching them.
ACTIVE = (QUEUED, SENDING, DEFERRED)

# Why a message in some status is left alone by an action.
_RETRY_REFUSALS = {
    QUEUED: "already queued",
    SENDING: "being sent now",
    SENT: "already sent",
    LOGGED: "logged in test mode",
    CANCELLED: "cancelled",
}
_CANCEL_REFUSALS = {
    SENDING: "being sent now",
    SENT: "already sent",
    FAILED: "already failed",
    LOGGED: "logged in test mode",
    CANCELLED: "already cancelled",
}
_CHUNK = 500  # ids per statement: well under SQLite's bound-parameter limit


# -- Messages: the filter shared by the list and its bulk actions ---------------------------


@dataclass(frozen=True)
class MessageFilter:
    """Which messages an operator is looking at (every part optional)."""

    status: str | None = None
    recipient: str | None = None
    tag: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def is_empty(self) -> bool:
        """Say whether this filter matches every message."""
        return not (self.status or self.recipient or self.tag or self.since or self.until)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json_text(column: Any) -> ColumnElement[str]:
    """The JSON column as the text it is stored as (SQLAlchemy's json.dumps, ASCII-escaped)."""
    return cast(column, Text)


def filter_query(f: MessageFilter) -> Select[Any]:
    """Select the messages a filter matches, newest first."""
    query = select(Message).order_by(Message.id.desc())
    if f.status:
        query = query.where(Message.status == f.status)
    if f.recipient:
        # A substring of the stored JSON list, matched the way it is encoded there.
        needle = json.dumps(f.recipient.strip().lower())[1:-1]
        query = query.where(
            func.lower(_json_text(Message.recipients)).like(
                f"%{_like_escape(needle)}%", escape="\\"
            )
        )
    if f.tag:
        # A whole element of the stored list: `"tag"` after `[` or `, `, before `,` or `]`.
        # Inside a JSON string a quote is always escaped, so these cannot match mid-element.
        quoted = _like_escape(json.dumps(f.tag.strip()))
        text = _json_text(Message.tags)
        query = query.where(
            or_(
                *(
                    text.like(f"%{before}{quoted}{after}%", escape="\\")
                    for before in ("[", ", ")
                    for after in ("]", ",")
                )
            )
        )
    if f.since:
        query = query.where(Message.created_at >= f.since)
    if f.until:
        query = query.where(Message.created_at < f.until)
    return query


def count(query: Select[Any]) -> int:
    """Count the rows a select of messages would return (without loading them)."""
    counting = query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    return int(db.session.scalar(counting) or 0)


def matching_ids(f: MessageFilter) -> list[int]:
    """Return the ids of every message the filter matches, newest first."""
    ids = filter_query(f).with_only_columns(Message.id)
    return list(db.session.scalars(ids))


# -- Messages: retry now and cancel ---------------------------------------------------------


@dataclass
class ActionResult:
    """What an action did: the messages it changed, and why it left the others alone."""

    verb: str
    done: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        """Return how many messages were left alone."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Say what happened, e.g. 'retried 12 messages; 3 skipped (already sent)'."""
        n = len(self.done)
        text = f"{self.verb} {n} message{'' if n == 1 else 's'}"
        if self.skipped:
            reasons = ", ".join(
                f"{count} {reason}" if len(self.skipped) > 1 else reason
                for reason, count in self.skipped.most_common()
            )
            text += f"; {self.skipped_total} skipped ({reasons})"
        return text

    def refusal(self) -> str | None:
        """Return the reason a single message was left alone, if it was."""
        return next(iter(self.skipped), None)


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _apply(
    ids: Iterable[int],
    *,
    verb: str,
    allowed: tuple[str, ...],
    refusals: dict[str, str],
    values: dict[str, Any],
    event_type: str,
    operator: str,
) -> ActionResult:
    """Move the messages still in an allowed status, one conditional UPDATE per chunk.

    1. UPDATE … WHERE id IN (chunk) AND status IN (allowed) RETURNING id: the rows it
       returns are the ones changed, so a message claimed or finished meanwhile is
       left alone, never overwritten.
    2. The rest of the chunk is read back in the same transaction to say why.
    3. Each changed message gets an event naming the operator.
    """
    unique = list(dict.fromkeys(ids))
    result = ActionResult(verb)
    now = utcnow()
    with db.engine.begin() as conn:
        for chunk in _chunks(unique):
            changed = list(
                conn.execute(
                    update(Message)
                    .where(Message.id.in_(chunk), Message.status.in_(allowed))
                    .values(**values, updated_at=now)
                    .returning(Message.id)
                    .execution_options(synchronize_session=False)
                ).scalars()
            )
            result.done.extend(changed)
            left = set(chunk) - set(changed)
            if left:
                found = conn.execute(
                    select(Message.status, func.count())
                    .where(Message.id.in_(left))
                    .group_by(Message.status)
                ).all()
                for status, n in found:
                    result.skipped[refusals.get(status, status)] += n
                missing = len(left) - sum(n for _, n in found)
                if missing:
                    result.skipped["not found"] += missing
            if changed:
                conn.execute(
                    Event.__table__.insert(),
                    [
                        {
                            "at": now,
                            "type": event_type,
                            "message_id": mid,
                            "relay_id": None,
                            "detail": f"{verb} by {operator}",
                            "data": {"operator": operator},
                        }
                        for mid in changed
                    ],
                )
    # Rows the session loaded before are stale now.
    db.session.expire_all()
    log.info(
        f"messages {verb}",
        extra={"operator": operator, "changed": len(result.done), "skipped": result.skipped_total},
    )
    return result


def retry_now(ids: Iterable[int], operator: str) -> ActionResult:
    """Make deferred, held and failed messages due now; pending recipients are kept."""
    return _apply(
        ids,
        verb="retried",
        allowed=RETRYABLE,
        refusals=_RETRY_REFUSALS,
        # Queued with next_attempt_at set: the claimable pair, like a fresh message.
        values={"status": QUEUED, "next_attempt_at": utcnow()},
        event_type="retry",
        operator=operator,
    )


def cancel(ids: Iterable[int], operator: str) -> ActionResult:
    """Cancel queued, deferred and held messages so that they are never sent."""
    return _apply(
        ids,
        verb="cancelled",
        allowed=CANCELLABLE,
        refusals=_CANCEL_REFUSALS,
        values={"status": CANCELLED, "next_attempt_at": None},
        event_type="cancelled",
        operator=operator,
    )


# -- The event log: failovers, circuit transitions, health results, message events ----------

EVENT_GROUPS = ("incidents", "all", "failovers", "circuits", "health", "messages")
_CURSOR = re.compile(r"^([eh])([1-9][0-9]{0,17})$")


class CursorError(ValueError):
    """A page cursor that does not name a row of the log."""


@dataclass(frozen=True)
class EventFilter:
    """Which part of the log an operator is looking at."""

    group: str = "incidents"
    relay_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class LogEntry:
    """One line of the log, whichever table it came from."""

    key: str  # "e<id>" for an event, "h<id>" for a health check: the page cursor
    at: datetime
    kind: str  # the event's type, or "health"
    relay: str | None
    message_id: int | None = None
    source: str | None = None  # failover: the relay left; circuit: the state left
    target: str | None = None
    reason: str | None = None
    outcome: str | None = None
    detail: str = ""
    response_ms: float | None = None

    @property
    def is_failover(self) -> bool:
        """Say whether this is a failover from one relay to another."""
        return self.kind == "failover"

    @property
    def is_circuit(self) -> bool:
        """Say whether this is a circuit transition."""
        return self.kind.startswith("circuit_")

    @property
    def is_health(self) -> bool:
        """Say whether this is a health check result."""
        return self.kind == "health"


@dataclass(frozen=True)
class LogPage:
    """Entries of the log, newest first, and the cursor of the next (older) page."""

    entries: list[LogEntry]
    older: str | None


def _relay_name(relay_id: int | None) -> str | None:
    if relay_id is None:
        return None
    return db.session.scalar(select(Relay.name).where(Relay.id == relay_id))


def _event_condition(f: EventFilter) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if f.group == "incidents":
        conditions.append(
            or_(Event.type == "failover", Event.type.like("circuit\\_%", escape="\\"))
        )
    elif f.group == "failovers":
        conditions.append(Event.type == "failover")
    elif f.group == "circuits":
        conditions.append(Event.type.like("circuit\\_%", escape="\\"))
    elif f.group == "messages":
        conditions += [Event.message_id.is_not(None), Event.type != "failover"]
    if f.relay_id is not None:
        # A failover names the relay it left (relay_id) and the one it went to (data).
        name = _relay_name(f.relay_id)
        by_target = (
            and_(Event.type == "failover", Event.data["to"].as_string() == name)
            if name is not None
            else false()
        )
        conditions.append(or_(Event.relay_id == f.relay_id, by_target))
    if f.since:
        conditions.append(Event.at >= f.since)
    if f.until:
        conditions.append(Event.at < f.until)
    return and_(true(), *conditions)


def _health_condition(f: EventFilter) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if f.relay_id is not None:
        conditions.append(HealthCheck.relay_id == f.relay_id)
    if f.since:
        conditions.append(HealthCheck.at >= f.since)
    if f.until:
        conditions.append(HealthCheck.at < f.until)
    return and_(true(), *conditions)


def _parse_cursor(cursor: str) -> tuple[str, int]:
    match = _CURSOR.match(cursor)
    if not match:
        raise CursorError(f"{cursor!r} is not a page of the log")
    return match.group(1), int(match.group(2))


def _cursor_time(stream: str, row_id: int) -> datetime:
    model: Any = Event if stream == "e" else HealthCheck
    at = db.session.scalar(select(model.at).where(model.id == row_id))
    if at is None:
        raise CursorError("that page of the log no longer exists")
    return at


def _after_cursor(
    model: Any, stream: str, cursor: tuple[str, int, datetime] | None
) -> ColumnElement[bool]:
    """Rows after the cursor in the log's order: newest first, events before checks on ties."""
    if cursor is None:
        return true()
    c_stream, c_id, c_at = cursor
    if stream == c_stream:
        return or_(model.at < c_at, and_(model.at == c_at, model.id < c_id))
    if stream == "h":  # cursor on an event: the checks of that instant come after it
        return model.at <= c_at
    return model.at < c_at


def _event_entries(f: EventFilter, after: ColumnElement[bool], limit: int) -> list[LogEntry]:
    rows = db.session.execute(
        select(Event, Relay.name)
        .outerjoin(Relay, Relay.id == Event.relay_id)
        .where(_event_condition(f), after)
        .order_by(Event.at.desc(), Event.id.desc())
        .limit(limit)
    ).all()
    return [_from_event(event, relay) for event, relay in rows]


def _from_event(event: Event, relay: str | None) -> LogEntry:
    data = event.data if isinstance(event.data, dict) else {}
    common: dict[str, Any] = {
        "key": f"e{event.id}",
        "at": event.at,
        "kind": event.type,
        "message_id": event.message_id,
        "detail": event.detail or "",
    }
    if event.type == "failover":
        return LogEntry(
            **common,
            relay=data.get("from") or relay,
            source=data.get("from") or relay,
            target=data.get("to"),
            reason=data.get("reason"),
            outcome=data.get("outcome"),
        )
    if event.type.startswith("circuit_"):
        return LogEntry(
            **common,
            relay=relay or data.get("relay"),
            source=data.get("from"),
            target=data.get("to") or event.type.removeprefix("circuit_"),
            reason=data.get("reason") or event.detail,
            outcome=data.get("to") or event.type.removeprefix("circuit_"),
        )
    return LogEntry(**common, relay=relay, outcome=event.type)


def _health_entries(f: EventFilter, after: ColumnElement[bool], limit: int) -> list[LogEntry]:
    rows = db.session.execute(
        select(HealthCheck, Relay.name)
        .join(Relay, Relay.id == HealthCheck.relay_id)
        .where(_health_condition(f), after)
        .order_by(HealthCheck.at.desc(), HealthCheck.id.desc())
        .limit(limit)
    ).all()
    return [
        LogEntry(
            key=f"h{check.id}",
            at=check.at,
            kind="health",
            relay=relay,
            outcome="ok" if check.ok else "failed",
            reason=check.error,
            detail=f"{check.trigger} check" + ("" if check.ok else f": {check.error or ''}"),
            response_ms=check.response_ms,
        )
        for check, relay in rows
    ]


def _order_key(entry: LogEntry) -> tuple[datetime, int, int]:
    # Sorted in reverse: newest first; on equal times events before checks; higher ids first.
    return (entry.at, 1 if entry.key[0] == "e" else 0, int(entry.key[1:]))


def log_page(f: EventFilter, before: str | None = None, limit: int = 100) -> LogPage:
    """Return a page of the log, newest first, starting after the cursor `before`."""
    cursor = None
    if before:
        stream, row_id = _parse_cursor(before)
        cursor = (stream, row_id, _cursor_time(stream, row_id))
    streams: list[list[LogEntry]] = []
    if f.group != "health":
        streams.append(_event_entries(f, _after_cursor(Event, "e", cursor), limit + 1))
    if f.group in ("health", "all", "incidents"):
        streams.append(_health_entries(f, _after_cursor(HealthCheck, "h", cursor), limit + 1))
    merged = list(heapq.merge(*streams, key=_order_key, reverse=True))
    entries = merged[:limit]
    older = entries[-1].key if len(merged) > limit else None
    return LogPage(entries, older)


def iter_log(f: EventFilter, chunk: int = 500) -> Iterator[LogEntry]:
    """Yield every entry of the log the filter matches, newest first, a page at a time."""
    before: str | None = None
    while True:
        page = log_page(f, before, chunk)
        yield from page.entries
        if page.older is None:
            return
        before = page.older
