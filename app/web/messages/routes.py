"""The messages area: the filtered list, bulk actions, and a message's page and actions."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import defer
from werkzeug.wrappers import Response

from app.config import settings_of
from app.db import db
from app.domain.links import extract_links
from app.models import PRIORITY_NAMES, Attempt, Message
from app.services import drains, operations, queue
from app.web.messages.forms import MessageFilterForm
from app.web.messages.headers import stored_headers
from app.web.render import flash_trigger, fragment, htmx, page_or_fragment, wants_fragment

bp = Blueprint("messages", __name__, url_prefix="/messages")

PAGE_SIZE = 50
ACTIONS = {"retry": operations.retry_now, "cancel": operations.cancel}


def _page_or_fragment(page: str, part: str, **context: Any) -> Response:
    """Render the page or its partial, with Vary: HX-Request either way."""
    return page_or_fragment(page, part if wants_fragment() else page, **context)


def _list_context(form: MessageFilterForm) -> dict[str, Any]:
    """Read the page of messages a filter form asks for (nothing when it is invalid)."""
    context: dict[str, Any] = {
        "form": form,
        "filter_args": form.args(),
        "priorities": PRIORITY_NAMES,
        "messages": [],
        "total": 0,
        "older": None,
        "filtered": False,
    }
    if form.errors:
        return context
    selection = form.to_filter()
    query = operations.filter_query(selection)
    # The list never shows the stored MIME: leave it (up to megabytes a row) in the database.
    page_query = query.options(defer(Message.data)).limit(PAGE_SIZE + 1)
    if form.before.data:
        page_query = page_query.where(Message.id < form.before.data)
    rows = list(db.session.scalars(page_query))
    context.update(
        messages=rows[:PAGE_SIZE],
        total=operations.count(query),
        older=rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None,
        filtered=not selection.is_empty(),
        before=form.before.data,
    )
    return context


@bp.get("/")
def index() -> Response:
    """List messages, filtered; htmx asks for the results alone (filter changes, polls)."""
    form = MessageFilterForm(request.args)
    form.validate()
    return _page_or_fragment(
        "messages/index.html", "messages/_results_fragment.html", **_list_context(form)
    )


@bp.post("/bulk/<action>")
def bulk(action: str) -> Response:
    """Retry, cancel or release (paced, through a drain) every message the filter in the
    query string matches."""
    if action not in (*ACTIONS, "release"):
        abort(404)
    form = MessageFilterForm(request.args)
    if not form.validate():
        text, category = "Fix the filter first: nothing was changed.", "error"
    elif action == "release":
        text, category = _release_held(form)
    else:
        ids = operations.matching_ids(form.to_filter())
        result = ACTIONS[action](ids, current_user.email)
        text = result.summary().capitalize() + "."
        category = "success" if result.done or not ids else "warning"
    if htmx:
        form.before.data = None  # the selection changed: show its newest page
        response = fragment("messages/_results_fragment.html", **_list_context(form))
        return flash_trigger(response, text, category)
    flash(text, category)
    args: dict[str, Any] = form.args()
    return redirect(url_for("messages.index", **args))


def _release_held(form: MessageFilterForm) -> tuple[str, str]:
    """Start a drain of the held messages the filter matches: released at the ramp's pace,
    highest priority first, like the end of a maintenance."""
    matching = operations.filter_query(form.to_filter()).with_only_columns(Message.id)
    drain = drains.start(
        Message.id.in_(matching.scalar_subquery()) & drains.held_filter(),
        ramp=drains.ramp_for(settings_of(current_app), None),
        by=f"operator {current_user.email}",
        reason="held mail released by hand from the messages page",
    )
    if drain is None:
        return "No held message matches this filter: nothing was released.", "info"
    return (
        f"Drain {drain.id} releases {drain.backlog} held "
        f"{'message' if drain.backlog == 1 else 'messages'}, highest priority first, at a "
        "pace that ramps up.",
        "success",
    )


def _message_or_404(message_pk: int) -> Message:
    row = db.session.get(Message, message_pk)
    if row is None:
        abort(404, f"There is no message {message_pk}.")
    return row


def _version(row: Message) -> str:
    """What the header shows has changed when this has (status, or another attempt)."""
    return f"{row.status}.{row.attempt_count}"


def _timeline(row: Message) -> list[tuple[str, Any]]:
    """Merge the message's attempts and events into one history, oldest first."""
    attempts = db.session.scalars(select(Attempt).where(Attempt.message_id == row.id))
    items: list[tuple[Any, int, int, str, Any]] = [(a.at, 0, a.id, "attempt", a) for a in attempts]
    items += [(e.at, 1, e.id or 0, "event", e) for e in queue.history_events(row)]
    items.sort(key=lambda item: item[:3])
    return [(kind, value) for *_, kind, value in items]


def _header_context(row: Message) -> dict[str, Any]:
    return {
        "message": row,
        "version": _version(row),
        "active": row.status in operations.ACTIVE,
        "can_retry": row.status in operations.RETRYABLE,
        "can_cancel": row.status in operations.CANCELLABLE,
        "priorities": PRIORITY_NAMES,
    }


@bp.get("/<int:message_pk>")
def show(message_pk: int) -> Response:
    """Show a message: header, history, links and stored headers; htmx polls the header."""
    row = _message_or_404(message_pk)
    context = _header_context(row)
    if not wants_fragment():
        context.update(
            timeline=_timeline(row),
            links=extract_links(row.data),
            headers=stored_headers(row.data),
        )
    response = _page_or_fragment("messages/show.html", "messages/_header.html", **context)
    if wants_fragment() and request.args.get("seen", context["version"]) != context["version"]:
        # The header moved on: have the timeline follow (it listens on the body).
        response.headers["HX-Trigger"] = json.dumps({"rb-message-changed": row.id})
    return response


@bp.get("/<int:message_pk>/timeline")
def timeline(message_pk: int) -> Response:
    """Return the message's history alone (refreshed when its header changes)."""
    row = _message_or_404(message_pk)
    return fragment("messages/_timeline.html", message=row, timeline=_timeline(row))


def _act(message_pk: int, action: str) -> Response:
    row = _message_or_404(message_pk)
    result = ACTIONS[action]([row.id], current_user.email)
    if result.done:
        flash(f"Message {row.id} {result.verb}.", "success")
    else:
        flash(
            f"Message {row.id} was not {result.verb}: {result.refusal() or 'not allowed'}.",
            "error",
        )
    return redirect(url_for("messages.show", message_pk=row.id))


@bp.post("/<int:message_pk>/retry")
def retry(message_pk: int) -> Response:
    """Retry a deferred, held or failed message now."""
    return _act(message_pk, "retry")


@bp.post("/<int:message_pk>/cancel")
def cancel(message_pk: int) -> Response:
    """Cancel a queued, deferred or held message."""
    return _act(message_pk, "cancel")
