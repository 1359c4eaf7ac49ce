"""The relays area: the live table, add and edit, test, order, enable, delete, circuits."""

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
from app.domain import mime
from app.models import PRIORITIES, Relay
from app.services import health, queue, relays
from app.web.relays.forms import CircuitForm, RelayForm, SendTestForm
from app.web.render import flash_trigger, fragment, htmx, page_or_fragment

bp = Blueprint("relays", __name__, url_prefix="/relays")


def _relay(relay_id: int) -> Relay:
    relay = relays.get_by_id(relay_id)
    if relay is None:
        abort(404)
    return relay


def _table() -> dict[str, Any]:
    """Return what the table shows: relays in order, last hour's numbers, last checks."""
    return {
        "relays": relays.ordered(),
        "stats": relays.stats_last_hour(),
        "health": relays.last_health(),
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


def _detail(
    relay: Relay, send_form: SendTestForm | None = None, circuit_form: CircuitForm | None = None
) -> str:
    if circuit_form is None:
        circuit_form = CircuitForm()
        circuit_form.state.data = "closed" if relay.circuit_state == "open" else "open"
    return render_template(
        "relays/detail.html",
        relay=relay,
        checks=health.history(relay, 20),
        expected=health.expected_steps(relay),
        send_form=send_form or SendTestForm(),
        circuit_form=circuit_form,
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
