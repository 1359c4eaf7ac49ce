"""The events area: the failover log, circuit transitions, health results; CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context
from sqlalchemy import select
from wtforms import SelectChoice

from app.db import db
from app.models import Relay, utcnow
from app.services import operations
from app.web.events.forms import GROUP_LABELS, EventFilterForm
from app.web.render import page_or_fragment, wants_fragment

bp = Blueprint("events", __name__, url_prefix="/events")

PAGE_SIZE = 100
CSV_COLUMNS = (
    "time_utc",
    "type",
    "relay",
    "from",
    "to",
    "reason",
    "outcome",
    "message",
    "response_ms",
    "detail",
)
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _form() -> EventFilterForm:
    form = EventFilterForm(request.args)
    relays = db.session.execute(select(Relay.id, Relay.name).order_by(Relay.priority, Relay.name))
    form.relay.choices = [SelectChoice("", "any")] + [
        SelectChoice(str(r.id), r.name) for r in relays
    ]
    form.validate()
    return form


@bp.get("/")
def index() -> Response:
    """Show the event log, newest first; htmx polls the table alone."""
    form = _form()
    context: dict[str, Any] = {
        "form": form,
        "filter_args": form.args(),
        "group_labels": GROUP_LABELS,
        "entries": [],
        "older": None,
        "before": None,
    }
    if not form.errors:
        try:
            page = operations.log_page(form.to_filter(), form.before.data or None, PAGE_SIZE)
        except operations.CursorError as exc:
            form.before.errors = [str(exc)]
        else:
            context.update(entries=page.entries, older=page.older, before=form.before.data)
    part = "events/_log_fragment.html" if wants_fragment() else "events/index.html"
    return page_or_fragment("events/index.html", part, **context)


def _cell(value: Any) -> str:
    """Return a CSV cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _row(entry: operations.LogEntry) -> list[str]:
    return [
        _cell(value)
        for value in (
            entry.at.isoformat(timespec="seconds") + "Z",
            entry.kind,
            entry.relay,
            entry.source,
            entry.target,
            entry.reason,
            entry.outcome,
            entry.message_id,
            f"{entry.response_ms:.0f}" if entry.response_ms is not None else None,
            entry.detail,
        )
    ]


@bp.get("/export.csv")
def export() -> Response:
    """Download the log the filters select, as CSV, streamed row by row."""
    form = _form()
    if form.errors:
        problems = "; ".join(f"{name}: {' '.join(errs)}" for name, errs in form.errors.items())
        return Response(f"The filter is not valid: {problems}\n", 400, mimetype="text/plain")
    selection = form.to_filter()

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for n, entry in enumerate(operations.iter_log(selection), 1):
            writer.writerow(_row(entry))
            if n % 200 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    name = f"relayboard-events-{selection.group}-{utcnow():%Y%m%d-%H%M%S}.csv"
    response = Response(stream_with_context(lines()), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
