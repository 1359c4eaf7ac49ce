"""Typed records of what happened, written as rows of `attempts` and `events`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AttemptRecord:
    """One try of one message through one relay."""

    message_id: int
    relay_id: int | None
    relay_name: str
    at: datetime
    outcome: str  # sent | partial | failover | rejected | unknown | deferred | logged
    stage: str | None = None
    code: int | None = None
    enhanced_status: str | None = None
    response: str | None = None
    recipients: dict[str, str] | None = None  # refused recipient → the relay's reply
    duration_ms: float = 0.0
    esp_id: str | None = None  # the id the relay's 250 gave the message

    def row(self) -> dict[str, Any]:
        """Return the values of its `attempts` row."""
        return dict(vars(self))  # shallow: dataclasses.asdict deep-copies every value


@dataclass(frozen=True)
class EventRecord:
    """A transition: of a message, a failover, or a circuit."""

    at: datetime
    type: str
    detail: str
    message_id: int | None = None
    relay_id: int | None = None
    data: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """Return the values of its `events` row."""
        return dict(vars(self))
