"""The relays area: the live table, add and edit, test, order, enable, delete, circuits,
maintenance (now, and planned windows)."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from markupsafe import Markup
from werkzeug.wrappers import Response

from app.config import settings_of
from app.db import db
from app.domain import mime
from app.models import PRIORITIES, MaintenanceWindow, Relay
from app.services import health, maintenance, queue, relays
from app.web.relays.forms import (
    CircuitForm,
    EndMaintenanceForm,
    PlanMaintenanceForm,
    RelayForm,
    SendTestForm,
    StartMaintenanceForm,
)
from app.web.render import flash_trigger, fragment, htmx, page_or_fragment

bp = Blueprint("relays", __name__, url_prefix="/relays")


def _relay(relay_id: int) -> Relay:
    relay = relays.get_by_id(relay_id)
    if relay is None:
        abort(404)
    return relay


def _held_for(shown: list[Relay]) -> dict[int, int]:
    """Count the mail held for each relay, shown beside its maintenance badge.

    The polled table shows the count with the badge, so it asks for none while no relay
    is in maintenance (the relay's own page always shows it).
    """
    if not any(relay.maintenance_since is not None for relay in shown):
        return {}
    return maintenance.held_counts()


def _table() -> dict[str, Any]:
    """Return what the table shows: relays in order, last hour's numbers, last checks."""
    shown = relays.ordered()
    return {
        "relays": shown,
        "stats": relays.stats_last_hour(),
        "health": relays.last_health(),
        "held": _held_for(shown),
        "maintenance_of": relays.maintenance_reason,
    }


def _done(text: str, category: str = "success") -> Response:
    """Answer a table action: new rows and a flash for htmx, else flash and back to the page."""
    if htmx:
        return flash_trigger(fragment("relays/_rows.html", **_table()), text, category)
    flash(text, category)
    response = redirect(url_for(".index"))
    response.vary.add("HX-Request")
    return response


# -- the table --------------------------------------------------------------------------


@bp.get("/")
def index() -> Response:
    """Show the relays in priority order, with live circuits."""
    return page_or_fragment("relays/index.html", "relays/_rows.html", **_table())


@bp.get("/rows")
def rows() -> Response:
    """Return the table body alone (polled)."""
    return fragment("relays/_rows.html", **_table())


@bp.post("/reorder")
def reorder() -> Response:
    """Save the order the operator dropped the rows in."""
    try:
        ids = [int(part) for part in request.form.get("order", "").split(",") if part.strip()]
        relays.reorder(ids)
    except ValueError as exc:  # RelayError is one
        text = str(exc) if isinstance(exc, relays.RelayError) else "the order is not a list of ids"
        return _done(f"Order not saved: {text}.", "error")
    return _done("New order saved.")


@bp.post("/<int:relay_id>/move")
def move(relay_id: int) -> Response:
    """Move a relay one place up or down."""
    relay = _relay(relay_id)
    direction = request.args.get("direction") or request.form.get("direction", "")
    if direction not in ("up", "down"):
        abort(400, "direction must be up or down")
    if not relays.move(relay, direction):
        edge = "first" if direction == "up" else "last"
        return _done(f"{relay.name} is already {edge}.", "info")
    return _done(f"Moved {relay.name} {direction}.")


@bp.post("/<int:relay_id>/toggle")
def toggle(relay_id: int) -> Response:
    """Enable a disabled relay, or disable an enabled one."""
    relay = _relay(relay_id)
    relays.update(relay, enabled=not relay.enabled)
    if relay.enabled:
        return _done(f"Enabled {relay.name}.")
    return _done(f"Disabled {relay.name}: no mail goes through it.", "warning")


@bp.route("/<int:relay_id>/delete", methods=["GET", "POST"])
def delete(relay_id: int) -> Response | str:
    """Delete a relay; without htmx the GET asks for confirmation first."""
    relay = _relay(relay_id)
    if request.method == "GET":
        return render_template("relays/delete.html", relay=relay)
    name = relay.name
    relays.remove(relay)
    return _done(f"Deleted {name}.")


# -- add and edit -----------------------------------------------------------------------


@bp.route("/new", methods=["GET", "POST"])
def new() -> Response | str:
    """Add a relay."""
    form = RelayForm()
    if form.validate_on_submit():
        try:
            relay = relays.create(settings_of(current_app).secret_box, **form.values())
        except relays.RelayError as exc:
            form.add_service_error(exc)
        else:
            flash(f"Added {relay.name}. Test its connection next.", "success")
            return redirect(url_for(".detail", relay_id=relay.id))
    return render_template("relays/form.html", form=form, relay=None)


@bp.route("/<int:relay_id>/edit", methods=["GET", "POST"])
def edit(relay_id: int) -> Response | str:
    """Change a relay; a blank password keeps the stored one."""
    relay = _relay(relay_id)
    form = RelayForm(obj=relay)
    form.has_password = relay.password_encrypted is not None
    if form.validate_on_submit():
        values = form.values()
        if values["priority"] is None:
            del values["priority"]  # blank keeps its place
        try:
            relays.update(relay, settings_of(current_app).secret_box, **values)
        except relays.RelayError as exc:
            form.add_service_error(exc)
        else:
            flash(f"Saved {relay.name}.", "success")
            return redirect(url_for(".detail", relay_id=relay.id))
    return render_template("relays/form.html", form=form, relay=relay)


# -- one relay --------------------------------------------------------------------------


def _maintenance(relay: Relay) -> dict[str, Any]:
    """Return what the relay page's live maintenance panel shows."""
    return {
        "relay": relay,
        "held_here": maintenance.held_counts().get(relay.id, 0),
        "windows": [w for w in maintenance.windows() if w.relay_id == relay.id],
        "maintenance_of": relays.maintenance_reason,
    }


def _detail(
    relay: Relay,
    send_form: SendTestForm | None = None,
    circuit_form: CircuitForm | None = None,
    maintenance_form: StartMaintenanceForm | EndMaintenanceForm | None = None,
    plan_form: PlanMaintenanceForm | None = None,
) -> str:
    if circuit_form is None:
        circuit_form = CircuitForm()
        circuit_form.state.data = "closed" if relay.circuit_state == "open" else "open"
    if maintenance_form is None:
        in_maintenance = relay.maintenance_since is not None
        maintenance_form = (EndMaintenanceForm if in_maintenance else StartMaintenanceForm)(
            prefix="maintenance"
        )
    return render_template(
        "relays/detail.html",
        checks=health.history(relay, 20),
        expected=health.expected_steps(relay),
        send_form=send_form or SendTestForm(),
        circuit_form=circuit_form,
        maintenance_form=maintenance_form,
        ends_maintenance=isinstance(maintenance_form, EndMaintenanceForm),
        plan_form=plan_form or PlanMaintenanceForm(prefix="plan"),
        **_maintenance(relay),
    )


@bp.get("/<int:relay_id>/")
def detail(relay_id: int) -> str:
    """Show one relay: its circuit, health history, and its test and circuit forms."""
    return _detail(_relay(relay_id))


@bp.post("/<int:relay_id>/test")
def test(relay_id: int) -> Response:
    """Probe the relay now (the one SMTP conversation a request may hold) and show each step."""
    relay = _relay(relay_id)
    before = relay.circuit_state
    settings = settings_of(current_app)
    check = health.probe_relay(relay, settings, health.OPERATOR, by=current_user.email)
    response = page_or_fragment(
        "relays/test.html",
        "relays/_probe.html",
        relay=relay,
        check=check,
        expected=health.expected_steps(relay),
    )
    if not htmx:
        return response
    if check.ok:
        text = f"{relay.name}: connection ok in {check.response_ms:.0f} ms."
        if before != relay.circuit_state:
            text += " Its circuit is half-open: the next message is its trial."
        return flash_trigger(response, text)
    return flash_trigger(response, f"{relay.name}: connection failed: {check.error}", "error")


@bp.post("/<int:relay_id>/send-test")
def send_test(relay_id: int) -> Response | str:
    """Queue a test message that only this relay may carry."""
    relay = _relay(relay_id)
    form = SendTestForm()
    if not form.validate_on_submit():
        return _detail(relay, send_form=form)
    settings = settings_of(current_app)
    sender = current_user.email
    spec = mime.MessageSpec(
        sender=mime.Mailbox(sender, "Relayboard"),
        to=[mime.Mailbox(form.recipient.data or "")],
        cc=[],
        bcc=[],
        reply_to=None,
        subject=f"Relayboard test through {relay.name}",
        text=(
            f"This is a test message from Relayboard, sent by {sender}.\n\n"
            f"It may travel only through the relay {relay.name} "
            f"({relay.host}:{relay.port}, {relay.security}).\n"
            "If it arrived, that relay delivers.\n"
        ),
        html=None,
        attachments=[],
        headers={},
        received=[],
    )
    try:
        built = mime.build_message(
            spec,
            message_id_domain=settings.message_id_domain,
            max_bytes=settings.max_message_bytes,
        )
    except mime.InvalidMessage as exc:
        form.recipient.errors = [*form.recipient.errors, str(exc)]
        return _detail(relay, send_form=form)
    queued = queue.enqueue(
        built, pinned_relay_id=relay.id, priority=PRIORITIES["high"], tags=["relayboard-test"]
    )
    link = f"{url_for('messages.index')}{queued.id}"
    note = ""
    if relay.circuit_state == "open":
        note = " The relay's circuit is open: the message waits for it."
    flash(
        Markup('Queued test message <a href="{}">#{}</a> to {} through {}.{}').format(
            link, queued.id, form.recipient.data, relay.name, note
        ),
        "success" if not note else "warning",
    )
    return redirect(url_for(".detail", relay_id=relay.id))


@bp.post("/<int:relay_id>/circuit")
def circuit(relay_id: int) -> Response | str:
    """Force the relay's circuit open or closed, with a note."""
    relay = _relay(relay_id)
    form = CircuitForm()
    if not form.validate_on_submit():
        return _detail(relay, circuit_form=form)
    try:
        relays.force_circuit(relay, form.state.data or "", form.note.data or "", current_user.email)
    except relays.RelayError as exc:
        field = form.note if exc.field == "note" else form.state
        field.errors = [*field.errors, str(exc)]
        return _detail(relay, circuit_form=form)
    category = "warning" if relay.circuit_state == "open" else "success"
    flash(f"Circuit of {relay.name} forced {relay.circuit_state}.", category)
    return redirect(url_for(".detail", relay_id=relay.id))


# -- maintenance ------------------------------------------------------------------------


def _by() -> str:
    """Name the signed-in operator as maintenance records name who did it."""
    return f"operator {current_user.email}"[:128]


def _back_to(relay: Relay) -> Response:
    return redirect(url_for(".detail", relay_id=relay.id))


@bp.get("/<int:relay_id>/maintenance")
def maintenance_panel(relay_id: int) -> Response:
    """Return the relay page's maintenance panel alone (polled)."""
    return fragment("relays/_maintenance.html", **_maintenance(_relay(relay_id)))


@bp.post("/<int:relay_id>/maintenance/start")
def start_maintenance(relay_id: int) -> Response | str:
    """Put the relay in maintenance now, with a note."""
    relay = _relay(relay_id)
    form = StartMaintenanceForm(prefix="maintenance")
    if not form.validate_on_submit():
        return _detail(relay, maintenance_form=form)
    try:
        started = maintenance.start(relay, _by(), form.note.data)
    except maintenance.MaintenanceError as exc:
        form.note.errors = [*form.note.errors, f"{str(exc)[:1].upper()}{str(exc)[1:]}."]
        return _detail(relay, maintenance_form=form)
    if not started:
        flash(
            f"{relay.name} is already in maintenance, {relays.maintenance_reason(relay)}.", "info"
        )
    elif relay.maintenance_policy == "hold":
        flash(
            f"{relay.name} is in maintenance: nothing is sent through it, "
            "and the mail that would go through it first is held until it ends.",
            "warning",
        )
    else:
        flash(
            f"{relay.name} is in maintenance: nothing is sent through it; "
            "its mail goes through the next relay.",
            "warning",
        )
    return _back_to(relay)


@bp.post("/<int:relay_id>/maintenance/end")
def end_maintenance(relay_id: int) -> Response | str:
    """Take the relay out of maintenance, with a note, and release the mail waiting for it."""
    relay = _relay(relay_id)
    form = EndMaintenanceForm(prefix="maintenance")
    if not form.validate_on_submit():
        return _detail(relay, maintenance_form=form)
    try:
        released = maintenance.end(relay, _by(), form.note.data, settings=settings_of(current_app))
    except maintenance.MaintenanceError as exc:
        form.note.errors = [*form.note.errors, f"{str(exc)[:1].upper()}{str(exc)[1:]}."]
        return _detail(relay, maintenance_form=form)
    if released is None:
        flash(f"{relay.name} was not in maintenance.", "info")
    elif released.total:
        flash(
            f"Maintenance of {relay.name} ended: {released.held} held and "
            f"{released.deferred} deferred {'message' if released.total == 1 else 'messages'} "
            f"go out through drain {released.drain_id}, highest priority first, at a pace "
            "that ramps up.",
            "success",
        )
    else:
        flash(f"Maintenance of {relay.name} ended: no mail was waiting for it.", "success")
    return _back_to(relay)


@bp.post("/<int:relay_id>/maintenance/plan")
def plan_maintenance(relay_id: int) -> Response | str:
    """Plan a maintenance window (UTC times) that starts and ends by itself."""
    relay = _relay(relay_id)
    form = PlanMaintenanceForm(prefix="plan")
    if not form.validate_on_submit():
        return _detail(relay, plan_form=form)
    assert form.starts_at.data is not None and form.ends_at.data is not None  # validated
    try:
        window = maintenance.plan(
            relay, form.starts_at.data, form.ends_at.data, _by(), form.note.data
        )
    except maintenance.MaintenanceError as exc:
        form.add_service_error(exc)
        return _detail(relay, plan_form=form)
    flash(
        f"Maintenance of {relay.name} planned from {window.starts_at:%Y-%m-%d %H:%M} "
        f"to {window.ends_at:%Y-%m-%d %H:%M} UTC.",
        "success",
    )
    return _back_to(relay)


@bp.post("/<int:relay_id>/maintenance/windows/<int:window_id>/cancel")
def cancel_window(relay_id: int, window_id: int) -> Response:
    """Cancel a planned window; cancelling one under way ends the maintenance it started."""
    relay = _relay(relay_id)
    window = db.session.get(MaintenanceWindow, window_id)
    if window is None or window.relay_id != relay.id:
        abort(404)
    was = window.state
    try:
        maintenance.cancel_plan(window, _by(), settings=settings_of(current_app))
    except maintenance.MaintenanceError as exc:
        flash(f"Not cancelled: {exc}.", "error")
        return _back_to(relay)
    span = f"{window.starts_at:%Y-%m-%d %H:%M} to {window.ends_at:%Y-%m-%d %H:%M} UTC"
    if was == maintenance.ACTIVE:
        flash(
            f"Cancelled the window under way ({span}): {relay.name} is out of maintenance "
            "and the mail waiting for it is released.",
            "success",
        )
    else:
        flash(f"Cancelled the maintenance of {relay.name} planned for {span}.", "success")
    return _back_to(relay)
