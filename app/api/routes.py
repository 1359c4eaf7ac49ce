"""The JSON API: POST /api/send, GET /api/messages/<id>, GET /api/messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pydantic
from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from sqlalchemy import select
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app import ratelimit
from app.api.schemas import SendRequest, errors_to_fields
from app.config import settings_of
from app.db import db
from app.domain import mime
from app.domain.links import extract_links
from app.models import PRIORITIES, PRIORITY_NAMES, STATUSES, Attempt, Message, Relay
from app.services import api_keys, queue

bp = Blueprint("api", __name__, url_prefix="/api")


MAX_IDEMPOTENCY_KEY = 255
MAX_PAGE = 500
MAX_ID = 2**63 - 1  # ids are 64-bit: a larger one names no message


def api_error(
    status: int, code: str, message: str, fields: dict[str, str] | None = None
) -> tuple[Response, int]:
    """Return the API's error body: {"error": {"code", "message", "fields"}}."""
    return jsonify(error={"code": code, "message": message, "fields": fields or {}}), status


@bp.before_request
def authenticate() -> Any:
    """Require `Authorization: Bearer KEY` with a live key, within its rate limit.

    An address with too many refused keys lately is refused before its key is looked up,
    unless this process found that key live within the last second (api_keys.LIVE_FOR):
    such a key costs no lookup, and the common request skips the address's counter (a
    round trip when the counts are in Redis).
    """
    limits = ratelimit.of(current_app)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    live = api_keys.trusted(key) if key and scheme.lower() == "bearer" else None
    if live is None:
        address = request.remote_addr or "unknown"
        refusal = limits.guessing(address)
        if refusal is not None:
            return too_many(refusal, "too many refused API keys from this address")
        if scheme.lower() != "bearer" or not key:
            limits.refused(address)
            return api_error(
                401, "unauthorized", "send your API key as 'Authorization: Bearer KEY'"
            )
        live = api_keys.authenticate(key)
        if live is None:
            limits.refused(address)
            return api_error(401, "unauthorized", "the API key is not valid or has been revoked")
    refusal = limits.hit_key(live.digest)
    if refusal is not None:
        return too_many(refusal, "too many requests with this API key")
    g.api_key = live
    return None


def too_many(refusal: ratelimit.Refusal, why: str) -> tuple[Response, int]:
    """Answer 429 with the limit that was reached and when to retry."""
    response, status = api_error(429, "rate_limited", f"{why}: the limit is {refusal.limit}")
    response.headers["Retry-After"] = str(refusal.retry_after)
    return response, status


@bp.errorhandler(RequestEntityTooLarge)
def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
    """Refuse a body over the size limit."""
    limit = settings_of(current_app).max_message_bytes
    return api_error(
        413,
        "too_large",
        f"the request is too large: messages may be at most {limit} bytes "
        f"(RELAYBOARD_MAX_MESSAGE_BYTES), attachments counted before base64",
    )


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[Response, int]:
    """Answer HTTP errors under /api in JSON."""
    return api_error(
        exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or ""
    )


@bp.post("/send")
def send() -> Any:
    """Validate a message, store it durably and queue it; answer 202 with its id."""
    if request.mimetype != "application/json":
        return api_error(
            415,
            "unsupported_media_type",
            "send the message as JSON with 'Content-Type: application/json'",
        )
    settings = settings_of(current_app)
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if (
            not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
            or not idempotency_key.isprintable()
        ):
            return api_error(
                400,
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            )
    body = request.get_data(cache=False)
    try:
        payload = SendRequest.model_validate_json(body)
    except pydantic.ValidationError as exc:
        fields = errors_to_fields(exc)
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return api_error(
                400,
                "malformed_json",
                "the body is not valid JSON: " + "; ".join(fields.values()),
                fields,
            )
        first = "; ".join(f"{path}: {problem}" for path, problem in list(fields.items())[:3])
        return api_error(400, "invalid", f"the message is not valid: {first}", fields)
    try:
        if payload.raw is not None:
            envelope_from, recipients = payload.raw_envelope()
            built = mime.parse_raw(
                payload.raw,
                envelope_from=envelope_from,
                recipients=recipients,
                message_id_domain=settings.message_id_domain,
                max_bytes=settings.max_message_bytes,
            )
        else:
            built = mime.build_message(
                payload.to_message_spec(),
                message_id_domain=settings.message_id_domain,
                max_bytes=settings.max_message_bytes,
            )
    except mime.MessageTooLarge as exc:
        return api_error(413, "too_large", str(exc))
    except mime.InvalidMessage as exc:
        field = "raw" if payload.raw is not None else "message"
        return api_error(400, "invalid", str(exc), {field: str(exc)})
    try:
        queued = queue.enqueue(
            built,
            priority=PRIORITIES[payload.priority],
            tags=list(payload.tags),
            api_key_id=g.api_key.id,
            idempotency_key=idempotency_key,
            idempotency_hash=queue.body_hash(body) if idempotency_key else None,
        )
    except queue.IdempotencyConflict as exc:
        return api_error(409, "idempotency_conflict", str(exc))
    response = jsonify(id=queued.id, status=queued.status, message_id=queued.message_id)
    response.status_code = 202
    response.headers["Location"] = url_for("api.message", message_pk=queued.id)
    if queued.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def _summary(message: Message, relay_name: str | None) -> dict[str, Any]:
    return {
        "id": message.id,
        "status": message.status,
        "message_id": message.message_id,
        "subject": message.subject,
        "from": message.from_header,
        "to": message.to_header,
        "recipients": len(message.recipients),
        "priority": PRIORITY_NAMES.get(message.priority, "normal"),
        "tags": message.tags,
        "created_at": _iso(message.created_at),
        "sent_at": _iso(message.sent_at),
        "next_attempt_at": _iso(message.next_attempt_at),
        "attempt_count": message.attempt_count,
        "last_error": message.last_error,
        "relay": relay_name,
    }


@bp.get("/messages/<int:message_pk>")
def message(message_pk: int) -> Any:
    """Return a message with its attempts, events and links (404 for another key's)."""
    row = None
    if message_pk <= MAX_ID:
        query = api_keys.messages_for(g.api_key).where(Message.id == message_pk)
        row = db.session.scalar(query)
    if row is None:
        return api_error(404, "not_found", f"no message with id {message_pk}")
    relay_name = (
        db.session.scalar(select(Relay.name).where(Relay.id == row.relay_id))
        if row.relay_id
        else None
    )
    attempts = db.session.scalars(
        select(Attempt).where(Attempt.message_id == row.id).order_by(Attempt.id)
    )
    events = queue.history_events(row)
    body = _summary(row, relay_name)
    body["attempts"] = [
        {
            "at": _iso(a.at),
            "relay": a.relay_name,
            "outcome": a.outcome,
            "stage": a.stage,
            "code": a.code,
            "enhanced_status": a.enhanced_status,
            "response": a.response,
            "recipients": a.recipients,
            "duration_ms": a.duration_ms,
        }
        for a in attempts
    ]
    body["events"] = [
        {"at": _iso(e.at), "type": e.type, "detail": e.detail, "data": e.data} for e in events
    ]
    body["pending_recipients"] = row.pending_recipients
    body["links"] = extract_links(row.data)
    return jsonify(body)


@bp.get("/messages")
def messages() -> Any:
    """List messages, newest first: ?status=…&limit=…&before=<id>."""
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        return api_error(
            400,
            "invalid",
            f"status must be one of {', '.join(STATUSES)}",
            {"status": f"unknown status {status!r}"},
        )
    try:
        limit = int(request.args.get("limit", 50))
        before = int(request.args["before"]) if "before" in request.args else None
    except ValueError:
        return api_error(
            400,
            "invalid",
            "limit and before must be whole numbers",
            {
                k: "not a whole number"
                for k in ("limit", "before")
                if k in request.args and not request.args[k].lstrip("-").isdigit()
            },
        )
    if not 1 <= limit <= MAX_PAGE:
        return api_error(
            400, "invalid", f"limit must be between 1 and {MAX_PAGE}", {"limit": "out of range"}
        )
    query = api_keys.messages_for(g.api_key).order_by(Message.id.desc()).limit(limit)
    if status:
        query = query.where(Message.status == status)
    if before:
        query = query.where(Message.id < min(before, MAX_ID))
    rows = list(db.session.scalars(query))
    names = {row.id: row.name for row in db.session.execute(select(Relay.id, Relay.name))}
    items = [_summary(m, names.get(m.relay_id) if m.relay_id else None) for m in rows]
    next_before = rows[-1].id if len(rows) == limit else None
    return jsonify(messages=items, next_before=next_before)
