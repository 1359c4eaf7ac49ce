"""The drains area: running and paused drains, live, with pause, resume and cancel; the past
drains and how long each backlog took to clear; the release of held mail by hand."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import func, select
from werkzeug.wrappers import Response
from wtforms import SelectChoice

from app.config import settings_of
from app.db import db
from app.models import Drain, Message, Relay
from app.services import drains, relays, stats
from app.services.relays import maintenance_reason
from app.web.drains.forms import ALL, ReleaseForm
from app.web.render import flash_trigger, fragment, htmx

bp = Blueprint("drains", __name__, url_prefix="/drains")

# Milliseconds between polls (app.js polls five times slower in a hidden tab).
POLL_MS = 2000
PAST_POLL_MS = 10000
PAST_SHOWN = 20


def _by() -> str:
    """Name the signed-in operator as drain records name who did it."""
    return f"operator {current_user.email}"[:128]


def _drain(drain_id: int) -> Drain:
    try:
        return drains.get(drain_id)
    except drains.DrainError:
        abort(404)


def _running() -> dict[str, Any]:
    """Return what the live part shows: each running or paused drain with its progress."""
    active = drains.listing(limit=0)  # the running and paused ones alone
    running = drains.progresses(active)
    return {
        "running": running,
        "poll_ms": POLL_MS,
        "span": stats.span,
        "unlimited": drains.UNLIMITED,  # the rate of a ramp that is off
    }


def _past() -> dict[str, Any]:
    """Return the latest drains that ended, with their final counts and duration."""
    ended = [d for d in drains.listing(limit=PAST_SHOWN) if d.state not in drains.ACTIVE]
    past = drains.progresses(ended)
    return {"past": past, "past_poll_ms": PAST_POLL_MS, "span": stats.span}


def _held() -> dict[int | None, int]:
    """Count the held mail no drain owns, by the relay it waits for (None: no relay)."""
    rows = db.session.execute(
        select(Message.waiting_for_relay_id, func.count())
        .where(drains.held_filter())
        .group_by(Message.waiting_for_relay_id)
    )
    return {relay_id: int(count) for relay_id, count in rows}


def _release_form(form: ReleaseForm | None = None) -> tuple[ReleaseForm, int]:
    """Return the release form with a choice per relay (and how many each holds), and how
    much held mail no drain owns."""
    held = _held()
    total = sum(held.values())
    form = form or ReleaseForm()
    form.relay.choices = [SelectChoice(ALL, f"All held mail ({total})")] + [
        SelectChoice(str(relay.id), f"Held for {relay.name} ({held.get(relay.id, 0)})")
        for relay in relays.ordered()
    ]
    return form, total


def _page(form: ReleaseForm | None = None) -> str:
    release_form, held_total = _release_form(form)
    context = {**_running(), **_past()}
    return render_template(
        "drains/index.html", release_form=release_form, held_total=held_total, **context
    )


def _done(text: str, category: str = "success") -> Response:
    """Answer a drain action: the fresh live part and a flash for htmx, else flash and back
    to the page."""
    if htmx:
        return flash_trigger(fragment("drains/_running.html", **_running()), text, category)
    flash(text, category)
    response = redirect(url_for(".index"))
    response.vary.add("HX-Request")
    return response


@bp.get("/")
def index() -> str:
    """Show the drains: running and paused ones live, the release form, past ones."""
    return _page()


@bp.get("/running")
def running() -> Response:
    """Return the running and paused drains alone (polled)."""
    return fragment("drains/_running.html", **_running())


@bp.get("/past")
def past() -> Response:
    """Return the past drains alone (polled, slower: a drain that ends shows there)."""
    return fragment("drains/_past.html", **_past())


@bp.post("/<int:drain_id>/pause")
def pause(drain_id: int) -> Response:
    """Stop releasing; the ramp's clock stops too."""
    drain = _drain(drain_id)
    try:
        drains.pause(drain, _by())
    except drains.DrainError as exc:
        return _done(f"Not paused: {exc}.", "error")
    return _done(
        f"Paused drain {drain.id}: nothing more is released until it is resumed.", "warning"
    )


@bp.post("/<int:drain_id>/resume")
def resume(drain_id: int) -> Response:
    """Release again, from where the ramp stood."""
    drain = _drain(drain_id)
    try:
        drains.resume(drain, _by())
    except drains.DrainError as exc:
        return _done(f"Not resumed: {exc}.", "error")
    return _done(f"Resumed drain {drain.id}: its ramp goes on from where it stood.")


@bp.post("/<int:drain_id>/cancel")
def cancel(drain_id: int) -> Response:
    """Stop the drain for good; what it had not released stays held."""
    drain = _drain(drain_id)
    try:
        held = drains.cancel(drain, _by())
    except drains.DrainError as exc:
        return _done(f"Not cancelled: {exc}.", "error")
    stay = f"{held} {'message stays' if held == 1 else 'messages stay'} held"
    more = "; release them again below when ready" if held else ""
    return _done(f"Cancelled drain {drain.id}: {stay}{more}.", "warning")


@bp.post("/release")
def release() -> Response | str:
    """Release held mail (all of it, or one relay's) through a new drain at the ramp's pace."""
    form, _ = _release_form(ReleaseForm())
    if not form.validate_on_submit():
        return _page(form)
    relay_id = form.relay_id()
    relay = db.session.get(Relay, relay_id) if relay_id is not None else None
    if relay_id is not None and relay is None:  # deleted since the form was drawn
        form.relay.errors = [*form.relay.errors, "That relay no longer exists."]
        return _page(form)
    drain = drains.start(
        drains.held_filter(relay_id),
        ramp=drains.ramp_for(settings_of(current_app), relay),
        by=_by(),
        reason="held mail released by hand",
        relay=relay,
    )
    whose = f" for {relay.name}" if relay else ""
    if drain is None:
        db.session.rollback()  # the empty drain was never kept: leave nothing behind
        flash(f"No held mail{whose} to release.", "info")
        return redirect(url_for(".index"))
    count = f"{drain.backlog} held {'message' if drain.backlog == 1 else 'messages'}{whose}"
    text = (
        f"Releasing {count} through drain {drain.id}, highest priority first, "
        "at a pace that ramps up."
    )
    why = maintenance_reason(relay) if relay is not None else None
    if relay is not None and why:
        text += f" {relay.name} is still in maintenance ({why}): its mail may be held again."
    flash(text, "warning" if why else "success")
    return redirect(url_for(".index"))
