"""The overview: the gateway's honest state, queue, relays, failovers and throughput, live.

The page includes one partial per widget; each partial is also served alone, for htmx to
poll, by its own endpoint under /partials/.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app

from app.config import settings_of
from app.models import utcnow
from app.services import maintenance, stats
from app.services.relays import maintenance_reason
from app.web.overview.chart import bar_chart
from app.web.render import fragment, page_or_fragment

bp = Blueprint("overview", __name__)

# Milliseconds between polls of each widget (app.js polls five times slower in a hidden tab).
POLL_MS = 2000
CHART_POLL_MS = 10000
RATE_WINDOW = timedelta(minutes=5)


def _state() -> dict[str, Any]:
    state, reasons = stats.overall_state(settings_of(current_app).secret_box)
    return {"state": state, "reasons": reasons}


def _queue() -> dict[str, Any]:
    age = stats.oldest_queued_age()
    return {
        "depth": stats.queue_depth(),
        "oldest_age": stats.span(age) if age is not None else None,
        "delayed": age is not None and age > stats.DELAY_THRESHOLD.total_seconds(),
    }


def _relays() -> dict[str, Any]:
    tiles = stats.relay_tiles()
    # The held count is shown beside a maintenance badge: none to ask for while no relay
    # is in maintenance.
    held = (
        maintenance.held_counts()
        if any(tile.relay.maintenance_since is not None for tile in tiles)
        else {}
    )
    return {"tiles": tiles, "held": held, "maintenance_of": maintenance_reason}


def _failovers() -> dict[str, Any]:
    return {"failovers": stats.recent_failovers()}


def _chart() -> dict[str, Any]:
    minutes = stats.series(60)
    return {
        "chart": bar_chart(minutes),
        "chart_start": minutes[0].start,
        "sends_per_minute": stats.sends_per_minute(RATE_WINDOW),
        "rate_window": int(RATE_WINDOW.total_seconds() // 60),
    }


WIDGETS = {
    "state": ("overview/_state.html", _state),
    "queue": ("overview/_queue.html", _queue),
    "relays": ("overview/_relays.html", _relays),
    "failovers": ("overview/_failovers.html", _failovers),
    "chart": ("overview/_chart.html", _chart),
}


def _polling() -> dict[str, Any]:
    return {"poll_ms": POLL_MS, "chart_poll_ms": CHART_POLL_MS, "rendered_at": utcnow()}


@bp.get("/")
def index() -> Response:
    """Show the overview: every widget, each refreshing itself."""
    context = _polling()
    for _, build in WIDGETS.values():
        context.update(build())
    context["has_api_key"] = stats.has_live_api_key()
    return page_or_fragment("overview/index.html", "overview/_widgets.html", **context)


def _partial(name: str) -> Response:
    template, build = WIDGETS[name]
    return fragment(template, **_polling(), **build())


@bp.get("/partials/state")
def state() -> Response:
    """Return the state banner alone."""
    return _partial("state")


@bp.get("/partials/queue")
def queue() -> Response:
    """Return the queue figures alone."""
    return _partial("queue")


@bp.get("/partials/relays")
def relays() -> Response:
    """Return the relay tiles alone."""
    return _partial("relays")


@bp.get("/partials/failovers")
def failovers() -> Response:
    """Return the recent failovers alone."""
    return _partial("failovers")


@bp.get("/partials/chart")
def chart() -> Response:
    """Return the throughput chart alone."""
    return _partial("chart")
