"""Liveness and readiness: GET /healthz."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.extensions import db
from app.models import QUEUED, Message, Relay

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """Say whether the database answers, with the queue depth and usable relays."""
    try:
        queued = db.session.scalar(
            select(func.count()).select_from(Message).where(Message.status == QUEUED)
        )
        relays = db.session.scalar(
            select(func.count()).select_from(Relay).where(Relay.enabled.is_(True))
        )
    except SQLAlchemyError as exc:
        return jsonify(status="error", database="unreachable", error=type(exc).__name__), 503
    return jsonify(status="ok", database="ok", queued=queued, enabled_relays=relays)
