"""API keys: created random, shown once, stored hashed, scoped, revocable.

A key's scope says what it may read: `send` keys read only the messages they sent;
`read-all` keys read every message (and send too). Which messages a key may read is
decided in one place, `messages_for`, which every API read starts from.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, select, update

from app import crypto
from app.db import db
from app.models import ApiKey, Message, utcnow

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
LAST_USED_RESOLUTION = timedelta(minutes=1)
SEND, READ_ALL = "send", "read-all"
SCOPES = (SEND, READ_ALL)

# A key found live is trusted for this long without asking the database again: the lookup
# would otherwise run on every API request. A revocation or a change of scope reaches this
# process at once, and the other processes (gunicorn workers, the CLI) within LIVE_FOR.
LIVE_FOR = 1.0


@dataclass(frozen=True)
class Authenticated:
    """A live API key: its row id, its digest (the rate limits' identity) and its scope."""

    id: int
    digest: str
    scope: str = SEND


class ApiKeyError(ValueError):
    """An API key cannot be created or changed as asked."""


def messages_for(key: Authenticated) -> Select[Any]:
    """Select the messages a key may read: its own, or every one for a read-all key."""
    query = select(Message)
    if key.scope != READ_ALL:
        # Messages without a key (the dashboard's test emails) belong to no send key.
        query = query.where(Message.api_key_id == key.id)
    return query


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ApiKeyError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return scope


def create(name: str, scope: str = SEND) -> tuple[ApiKey, str]:
    """Create a key; return its row and the key itself, which is never shown again."""
    if not _NAME.match(name or ""):
        raise ApiKeyError("name must be 1-64 characters: letters, digits, and _ . @ - (not first)")
    _check_scope(scope)
    if db.session.scalar(select(ApiKey.id).where(ApiKey.name == name)):
        raise ApiKeyError(f"an API key named {name!r} already exists")
    key = crypto.new_api_key()
    row = ApiKey(name=name, prefix=key[:10], key_hash=crypto.hash_api_key(key), scope=scope)
    db.session.add(row)
    db.session.commit()
    return row, key


def listing() -> list[ApiKey]:
    """Return every key, newest first."""
    return list(db.session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc())))


def _named(name: str) -> ApiKey:
    row = db.session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise ApiKeyError(f"no API key named {name!r}")
    return row


def revoke(name: str) -> ApiKey:
    """Revoke a key by name: at once in this process, within LIVE_FOR seconds in the others."""
    row = _named(name)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()
    _live.pop(row.key_hash, None)
    return row


def set_scope(name: str, scope: str) -> ApiKey:
    """Change what a key may read: at once in this process, within LIVE_FOR elsewhere."""
    row = _named(name)
    row.scope = _check_scope(scope)
    db.session.commit()
    _live.pop(row.key_hash, None)
    return row


def trusted(key: str) -> Authenticated | None:
    """Return the key if this process found it live less than LIVE_FOR seconds ago."""
    if len(key) > 128:
        return None
    return _trusted(crypto.hash_api_key(key), time.monotonic())


def _trusted(digest: str, now: float) -> Authenticated | None:
    live = _live.get(digest)
    if live is not None and now - live[1] < LIVE_FOR:
        return live[0]
    return None


def authenticate(key: str) -> Authenticated | None:
    """Return the live key that matches, or None; note its use about once a minute."""
    if not key.startswith("rb_") or len(key) > 128:
        return None
    digest = crypto.hash_api_key(key)
    now = time.monotonic()
    found = _trusted(digest, now)
    if found is not None:
        return found
    # The lookup is by digest: a timing difference reveals nothing about the key itself.
    with db.engine.connect() as conn:
        row: Any = conn.execute(
            select(ApiKey.id, ApiKey.key_hash, ApiKey.scope).where(
                ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
            )
        ).first()
    if row is None or not crypto.same(row.key_hash, digest):
        _live.pop(digest, None)
        return None
    found = Authenticated(int(row.id), digest, row.scope)
    _live[digest] = (found, now)
    if len(_live) > 10_000:  # keys are few; bound it anyway
        _live.clear()
    noted = _last_noted.get(digest)
    if noted is None or now - noted > LAST_USED_RESOLUTION.total_seconds():
        _last_noted[digest] = now  # per process: each worker writes at most once a minute
        with db.engine.begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == found.id).values(last_used_at=utcnow()))
    return found


# Both by digest (key ids repeat across the databases of a test run).
_last_noted: dict[str, float] = {}  # digest → when this process last wrote last_used_at
_live: dict[str, tuple[Authenticated, float]] = {}  # digest → (the key, when it was read)


def created_recently(name: str, seconds: float = 300) -> bool:
    """Say whether a live key of that name was created in the last few minutes."""
    row = db.session.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    return row is not None and (utcnow() - row.created_at).total_seconds() < seconds
