"""Stored secrets: where they live, and their rotation to the current secret key.

Every column that holds a secret sealed with the SecretBox is listed in SECRET_COLUMNS,
so `relayboard secrets rotate` covers each of them, now and as new ones are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from app.crypto import SecretBox, SecretUnreadable
from app.db import db
from app.models import Relay

# (model, the column holding a sealed secret, the column that names the row)
SECRET_COLUMNS: tuple[tuple[Any, str, str], ...] = (
    (Relay, "password_encrypted", "name"),
    (Relay, "webhook_secret_encrypted", "name"),
)


@dataclass
class Rotation:
    """What a rotation did."""

    rotated: int = 0  # re-encrypted under the current key
    current: int = 0  # already under the current key
    unreadable: list[str] = field(default_factory=list)  # "relays.password_encrypted of X"


def rotate(box: SecretBox) -> Rotation:
    """Re-encrypt every stored secret under the current key, in one transaction."""
    report = Rotation()
    with db.engine.begin() as conn:
        for model, column, label in SECRET_COLUMNS:
            table = model.__table__
            secret, name = table.c[column], table.c[label]
            rows = conn.execute(select(table.c.id, name, secret).where(secret.is_not(None)))
            for row_id, row_name, token in rows.all():
                if box.is_current(token):
                    report.current += 1
                    continue
                try:
                    fresh = box.rotate(token)
                except SecretUnreadable:
                    report.unreadable.append(f"{table.name}.{column} of {row_name!r}")
                    continue
                conn.execute(update(table).where(table.c.id == row_id).values({column: fresh}))
                report.rotated += 1
    return report
