"""ESP webhooks: POST /hooks/mailersend (signed by the ESP; no session, no CSRF token)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from app.config import settings_of
from app.domain.webhooks import MAX_BODY_BYTES
from app.services import webhooks

bp = Blueprint("hooks", __name__, url_prefix="/hooks")


@bp.post("/mailersend")
def mailersend() -> Any:
    """Verify, store and acknowledge a MailerSend webhook; it is acted on off this request.

    401 when the signature does not verify (nothing stored), 400 for a body that is not a
    webhook, 413 above the size limit, 200 for everything stored or already stored.
    """
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _answer(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    body = request.stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return _answer(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    receipt = webhooks.receive(
        body, request.headers.get("Signature"), settings_of(current_app).secret_box
    )
    return _answer(receipt.status, receipt.message, duplicate=receipt.duplicate)


def _answer(status: int, message: str, duplicate: bool = False) -> Any:
    if status >= 400:
        code = {400: "bad_request", 401: "unauthorized", 413: "too_large"}[status]
        return jsonify(error={"code": code, "message": message, "fields": {}}), status
    return jsonify(status="ok", message=message, duplicate=duplicate), status
