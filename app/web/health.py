"""Liveness and readiness: GET /healthz."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import func, select

from app.db import db, reachability
from app.models import QUEUED, Message, Relay

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """Say whether the database answers, with the queue depth and usable relays.

    A database that does not answer makes this 503 with Retry-After (app.database_unavailable).
    """
    queued = db.session.scalar(
        select(func.count()).select_from(Message).where(Message.status == QUEUED)
    )
    relays = db.session.scalar(
        select(func.count()).select_from(Relay).where(Relay.enabled.is_(True))
    )
    reachability.succeeded("web")
    return jsonify(status="ok", database="ok", queued=queued, enabled_relays=relays)
