"""The overview: the gateway's honest state, running drains, queue, relays, failovers and
throughput, live; and the global pause of delivery.

The page includes one partial per widget; each partial is also served alone, for htmx to
poll, by its own endpoint under /partials/.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app.config import settings_of
from app.models import utcnow
from app.services import drains, maintenance, pause, stats
from app.services.relays import maintenance_reason
from app.web.overview.chart import bar_chart
from app.web.overview.forms import PauseForm
from app.web.render import fragment, page_or_fragment

bp = Blueprint("overview", __name__)

# Milliseconds between polls of each widget (app.js polls five times slower in a hidden tab).
POLL_MS = 2000
CHART_POLL_MS = 10000
RATE_WINDOW = timedelta(minutes=5)


def _state() -> dict[str, Any]:
    found = stats.current_state(settings_of(current_app).secret_box)
    line = stats.pause_reason(found.paused) if found.paused else None
    return {
        "state": found.state,
        "reasons": found.reasons,
        "paused": found.paused,
        "pause_line": line[:1].upper() + line[1:] if line else None,
    }


def _drains() -> dict[str, Any]:
    # The running and paused drains alone: nothing past.
    running = drains.progresses(drains.listing(limit=0))
    return {"running": running, "span": stats.span, "unlimited": drains.UNLIMITED}


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
    "drains": ("overview/_drains.html", _drains),
    "queue": ("overview/_queue.html", _queue),
    "relays": ("overview/_relays.html", _relays),
    "failovers": ("overview/_failovers.html", _failovers),
    "chart": ("overview/_chart.html", _chart),
}


def _polling() -> dict[str, Any]:
    return {"poll_ms": POLL_MS, "chart_poll_ms": CHART_POLL_MS, "rendered_at": utcnow()}


def _context(pause_form: PauseForm | None = None) -> dict[str, Any]:
    context = _polling()
    for _, build in WIDGETS.values():
        context.update(build())
    context["has_api_key"] = stats.has_live_api_key()
    context["pause_form"] = pause_form or PauseForm(prefix="pause")
    return context


@bp.get("/")
def index() -> Response:
    """Show the overview: every widget, each refreshing itself."""
    return page_or_fragment("overview/index.html", "overview/_widgets.html", **_context())


def _partial(name: str) -> Response:
    template, build = WIDGETS[name]
    return fragment(template, **_polling(), **build())


@bp.get("/partials/state")
def state() -> Response:
    """Return the state banner alone."""
    return _partial("state")


@bp.get("/partials/drains")
def drains_partial() -> Response:
    """Return the running drains alone."""
    return _partial("drains")


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


# -- the global pause ---------------------------------------------------------------------


def _by() -> str:
    """Name the signed-in operator as the pause records name who did it."""
    return f"operator {current_user.email}"[:128]


@bp.post("/delivery/pause")
def pause_delivery() -> ResponseReturnValue:
    """Pause all delivery, with a note shown to everyone while it lasts."""
    form = PauseForm(prefix="pause")
    if not form.validate_on_submit():
        return render_template("overview/index.html", **_context(form))
    try:
        changed = pause.pause(_by(), form.note.data)
    except pause.PauseError as exc:
        form.note.errors = [*form.note.errors, f"{str(exc)[:1].upper()}{str(exc)[1:]}."]
        return render_template("overview/index.html", **_context(form))
    if changed:
        flash(
            "Delivery paused: no mail goes out until it is resumed. "
            "Queued mail waits; nothing is rewritten.",
            "warning",
        )
    else:
        paused = pause.current()
        line = stats.pause_reason(paused) if paused else "delivery is paused"
        flash(f"Nothing changed: {line}.", "info")
    return redirect(url_for(".index"))


@bp.post("/delivery/resume")
def resume_delivery() -> ResponseReturnValue:
    """Resume delivery: the next pass claims the mail that waited."""
    if pause.resume(_by()):
        flash("Delivery resumed: the mail that waited goes out now.", "success")
    else:
        flash("Delivery was not paused.", "info")
    return redirect(url_for(".index"))
