"""API keys: created random, shown once, stored hashed, revocable."""

from __future__ import annotations

import re
import time
from datetime import timedelta

from sqlalchemy import bindparam, select, update

from app import crypto, prepared, writelock
from app.extensions import db
from app.models import ApiKey, utcnow

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyError(ValueError):
    """An API key cannot be created or changed as asked."""


def create(name: str) -> tuple[ApiKey, str]:
    """Create a key; return its row and the key itself, which is never shown again."""
    if not _NAME.match(name or ""):
        raise ApiKeyError("name must be 1-64 characters: letters, digits, and _ . @ - (not first)")
    if db.session.scalar(select(ApiKey.id).where(ApiKey.name == name)):
        raise ApiKeyError(f"an API key named {name!r} already exists")
    key = crypto.new_api_key()
    row = ApiKey(name=name, prefix=key[:10], key_hash=crypto.hash_api_key(key))
    db.session.add(row)
    db.session.commit()
    return row, key


def listing() -> list[ApiKey]:
    """Return every key, newest first."""
    return list(db.session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc())))


def revoke(name: str) -> ApiKey:
    """Revoke a key by name; it stops working at once."""
    row = db.session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise ApiKeyError(f"no API key named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()
    return row


def authenticate(key: str) -> int | None:
    """Return the id of the live key that matches, or None; note its use about once a minute."""
    if not key.startswith("rb_") or len(key) > 128:
        return None
    digest = crypto.hash_api_key(key)
    # The lookup is by digest: a timing difference reveals nothing about the key itself.
    engine = db.engine
    with prepared.raw_cursor(engine) as cursor:
        row = _LIVE_KEY.on(engine).execute(cursor, {"digest": digest}).fetchone()
    if row is None or not crypto.same(row[1], digest):
        return None
    key_id = int(row[0])
    now = time.monotonic()
    noted = _last_noted.get(digest)
    if noted is None or now - noted > LAST_USED_RESOLUTION.total_seconds():
        _last_noted[digest] = now  # per process: each worker writes at most once a minute
        with writelock.transaction(engine) as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))
    return key_id


# Run on every API request: the key's id and digest, neither needing result processing.
_LIVE_KEY = prepared.Statements(
    select(ApiKey.id, ApiKey.key_hash).where(
        ApiKey.key_hash == bindparam("digest"), ApiKey.revoked_at.is_(None)
    ),
    ("digest",),
)
_last_noted: dict[str, float] = {}  # by digest: ids repeat across databases in tests


def created_recently(name: str, seconds: float = 300) -> bool:
    """Say whether a live key of that name was created in the last few minutes."""
    row = db.session.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    return row is not None and (utcnow() - row.created_at).total_seconds() < seconds
