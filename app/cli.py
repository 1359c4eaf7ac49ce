"""The `relayboard` command: Flask's CLI group plus servers, maintenance, api-keys, serve,
worker, drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import func, select

from app import create_app
from app.config import Settings, SettingsError, settings_of
from app.crypto import SecretUnreadable
from app.db import db
from app.models import DEFERRED, QUEUED, MaintenanceWindow, Message, Relay, utcnow
from app.services import api_keys, drains, maintenance, pause, relays, suppressions
from app.services.delivery import DeliveryEngine, PassReport
from app.transport.smtp import SECURITY_MODES, Timeouts, probe


def _app(*_args: Any) -> Flask:
    return create_app()


@click.group(cls=FlaskGroup, create_app=_app, add_version_option=False)
def cli() -> None:
    """Relayboard: an outbound email gateway with failover and an operations dashboard."""


# -- servers ----------------------------------------------------------------------------


@cli.group()
def servers() -> None:
    """Add, list, enable, disable, remove and test SMTP relays."""


@servers.command("add")
@click.option("--name", required=True)
@click.option("--host", required=True)
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@click.option(
    "--security", type=click.Choice(SECURITY_MODES), default="starttls", show_default=True
)
@click.option("--username")
@click.option("--password", help="Stored encrypted; prefer --password-stdin in scripts.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--priority", type=int, help="Lower goes first; default: after the last relay.")
@click.option("--weight", type=click.IntRange(0), default=1, show_default=True)
@click.option(
    "--provider", type=click.Choice(relays.PROVIDERS), default="generic", show_default=True
)
@click.option("--max-per-connection", type=click.IntRange(1), default=100, show_default=True)
@click.option(
    "--max-rate", type=click.FloatRange(min=0, min_open=True), help="Messages per second at most."
)
@click.option(
    "--unknown-retries",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Times a message whose reply was lost after the final dot is sent again.",
)
@click.option("--no-tls-verify", is_flag=True, help="Do not verify the relay's certificate.")
@click.option(
    "--maintenance-policy",
    type=click.Choice(relays.MAINTENANCE_POLICIES),
    help="While it is in maintenance, its first-choice mail waits (hold) or takes the next "
    "usable relay (reroute). Default: reroute.",
)
@click.option(
    "--webhook-secret",
    help="The ESP's webhook signing secret; stored encrypted. Prefer --webhook-secret-stdin.",
)
@click.option(
    "--webhook-secret-stdin", is_flag=True, help="Read the webhook secret from standard input."
)
@click.option("--disabled", is_flag=True)
@with_appcontext
def servers_add(
    password_stdin: bool,
    webhook_secret_stdin: bool,
    disabled: bool,
    no_tls_verify: bool,
    **values: Any,
) -> None:
    """Add a relay."""
    _read_secrets(values, password_stdin, webhook_secret_stdin)
    box = settings_of(current_app).secret_box
    try:
        relay = relays.create(box, enabled=not disabled, tls_verify=not no_tls_verify, **values)
    except relays.RelayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added relay {relay.name} ({relay.host}:{relay.port}, priority {relay.priority})")


def _read_secrets(values: dict[str, Any], password_stdin: bool, webhook_secret_stdin: bool) -> None:
    """Take the password or the webhook secret from standard input when asked to.

    Standard input holds one secret: asking for both, or for a secret given as an option
    too, is refused. An empty webhook secret is refused (a blank one would be ignored).
    """
    if password_stdin and webhook_secret_stdin:
        raise click.ClickException(
            "--password-stdin and --webhook-secret-stdin cannot be used together: standard "
            "input holds one secret; give the other with its option or in a second command"
        )
    if password_stdin:
        if values.get("password") is not None:
            raise click.ClickException("give --password or --password-stdin, not both")
        values["password"] = sys.stdin.readline().rstrip("\r\n")
    if webhook_secret_stdin:
        if values.get("webhook_secret") is not None:
            raise click.ClickException("give --webhook-secret or --webhook-secret-stdin, not both")
        values["webhook_secret"] = sys.stdin.readline().rstrip("\r\n")
        if not values["webhook_secret"]:
            raise click.ClickException("no webhook secret on standard input")
    if values.get("webhook_secret") == "":
        raise click.ClickException(
            "--webhook-secret is empty: give 8 to 256 characters without spaces or line breaks"
        )


# What `servers edit` can change, in the order its report names them: option, column.
_EDITABLE = (
    ("name", "name"),
    ("host", "host"),
    ("port", "port"),
    ("security", "security"),
    ("tls-verify", "tls_verify"),
    ("username", "username"),
    ("priority", "priority"),
    ("weight", "weight"),
    ("provider", "provider"),
    ("max-per-connection", "max_per_connection"),
    ("max-rate", "max_rate"),
    ("unknown-retries", "unknown_retries"),
    ("maintenance-policy", "maintenance_policy"),
)


@servers.command("edit")
@click.argument("name")
@click.option("--name", "new_name", help="Rename the relay.")
@click.option("--host")
@click.option("--port", type=int)
@click.option("--security", type=click.Choice(SECURITY_MODES))
@click.option("--username", help="An empty username drops the username and the password.")
@click.option("--password", help="Stored encrypted; prefer --password-stdin in scripts.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--priority", type=int, help="Lower goes first.")
@click.option("--weight", type=int)
@click.option("--provider", type=click.Choice(relays.PROVIDERS))
@click.option("--max-per-connection", type=int)
@click.option("--max-rate", type=float, help="Messages per second at most.")
@click.option(
    "--unknown-retries",
    type=int,
    help="Times a message whose reply was lost after the final dot is sent again.",
)
@click.option(
    "--tls-verify/--no-tls-verify", default=None, help="Verify the relay's certificate or not."
)
@click.option(
    "--maintenance-policy",
    type=click.Choice(relays.MAINTENANCE_POLICIES),
    help="While it is in maintenance, its first-choice mail waits (hold) or takes the next "
    "usable relay (reroute).",
)
@click.option(
    "--webhook-secret",
    help="The ESP's webhook signing secret; stored encrypted. Prefer --webhook-secret-stdin.",
)
@click.option(
    "--webhook-secret-stdin", is_flag=True, help="Read the webhook secret from standard input."
)
@with_appcontext
def servers_edit(
    name: str,
    new_name: str | None,
    password_stdin: bool,
    webhook_secret_stdin: bool,
    **options: Any,
) -> None:
    """Change a relay: only the options given change; it is checked as the dashboard's form is.

    Passwords and webhook secrets are never shown, not even in the report of what changed.
    """
    relay = _named(name)
    options["name"] = new_name
    _read_secrets(options, password_stdin, webhook_secret_stdin)
    if options.get("password") == "":
        raise click.ClickException(
            "--password is empty: to drop the password, give an empty --username"
        )
    if options.get("max_rate") is not None and options["max_rate"] <= 0:
        raise click.ClickException("max rate must be more than 0 messages per second")
    values = {key: value for key, value in options.items() if value is not None}
    if "username" in values and not values["username"]:
        values["username"] = None  # as the dashboard stores a blank username
    if not values:
        raise click.ClickException(
            "nothing to change: give at least one option (see `relayboard servers edit --help`)"
        )
    had_password = relay.password_encrypted is not None
    before = {column: getattr(relay, column) for _, column in _EDITABLE if column in values}
    try:
        relays.update(relay, settings_of(current_app).secret_box, **values)
    except relays.RelayError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    changed = [
        option
        for option, column in _EDITABLE
        if column in before and before[column] != getattr(relay, column)
    ]
    if "password" in values or (had_password and relay.password_encrypted is None):
        changed.append("password")
    if "webhook_secret" in values:
        changed.append("webhook-secret")
    if not changed:
        click.echo(f"{name}: unchanged")
        return
    renamed = f"; now named {relay.name}" if relay.name != name else ""
    click.echo(f"{name}: updated ({', '.join(changed)}){renamed}")


def _relay_row(relay: Any) -> dict[str, Any]:
    return {
        "unusable": relays.unusable(relay, settings_of(current_app).secret_box),
        "name": relay.name,
        "host": relay.host,
        "port": relay.port,
        "security": relay.security,
        "username": relay.username,
        "has_password": relay.password_encrypted is not None,
        "priority": relay.priority,
        "weight": relay.weight,
        "provider": relay.provider,
        "enabled": relay.enabled,
        "circuit": relay.circuit_state,
        "circuit_open_until": relay.circuit_open_until.isoformat() + "Z"
        if relay.circuit_open_until
        else None,
        "last_error": relay.last_error,
    }


@servers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def servers_list(as_json: bool) -> None:
    """List relays in priority order (passwords are never shown)."""
    rows = [_relay_row(r) for r in relays.ordered()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no relays yet: add one with `relayboard servers add`")
        return
    click.echo(f"{'PRI':>4}  {'NAME':<20} {'HOST:PORT':<32} {'SECURITY':<9} {'ENABLED':<8} CIRCUIT")
    for r in rows:
        click.echo(
            f"{r['priority']:>4}  {r['name']:<20} {r['host'] + ':' + str(r['port']):<32} "
            f"{r['security']:<9} {'yes' if r['enabled'] else 'no':<8} {r['circuit']}"
        )
        if r["unusable"]:
            click.echo(f"      unusable: {r['unusable']}")


def _named(name: str) -> Any:
    try:
        return relays.get(name)
    except relays.RelayError as exc:
        raise click.ClickException(str(exc)) from None


@servers.command("enable")
@click.argument("name")
@with_appcontext
def servers_enable(name: str) -> None:
    """Enable a relay."""
    relays.update(_named(name), enabled=True)
    click.echo(f"enabled {name}")


@servers.command("disable")
@click.argument("name")
@with_appcontext
def servers_disable(name: str) -> None:
    """Disable a relay: it is skipped in the failover chain."""
    relays.update(_named(name), enabled=False)
    click.echo(f"disabled {name}")


@servers.command("remove")
@click.argument("name")
@with_appcontext
def servers_remove(name: str) -> None:
    """Remove a relay."""
    relays.remove(_named(name))
    click.echo(f"removed {name}")


@servers.command("test")
@click.argument("name")
@with_appcontext
def servers_test(name: str) -> None:
    """Probe a relay: connect, EHLO, STARTTLS, AUTH, NOOP, with timings."""
    relay = _named(name)
    settings = settings_of(current_app)
    try:
        endpoint = relays.endpoint(relay, settings.secret_box)
    except SecretUnreadable:
        raise click.ClickException(
            f"{name}: unusable: {relays.unusable(relay, settings.secret_box)}"
        ) from None
    timeouts = Timeouts(
        settings.connect_timeout, settings.command_timeout, settings.attempt_deadline
    )
    result = asyncio.run(probe(endpoint, timeouts, ca_file=settings.ca_file))
    for step in result.steps:
        mark = "ok  " if step.ok else "FAIL"
        click.echo(f"{mark} {step.name:<9} {step.ms:>9.1f} ms  {step.detail}")
    if not result.ok:
        raise click.ClickException(f"{name}: {result.error}")
    click.echo(f"{name}: ok in {result.total_ms:.1f} ms")


# -- maintenance ------------------------------------------------------------------------


@cli.group("maintenance")
def maintenance_group() -> None:
    """Put relays in maintenance and take them out; plan and cancel maintenance windows."""


def _maintenance_failed(exc: maintenance.MaintenanceError, what: str) -> click.ClickException:
    return click.ClickException(f"{what}: {exc}")


@maintenance_group.command("start")
@click.argument("name")
@click.option("--note", help="Why: kept with the relay and its event.")
@with_appcontext
def maintenance_start(name: str, note: str | None) -> None:
    """Put a relay in maintenance now: no message is tried on it until it ends."""
    relay = _named(name)
    try:
        started = maintenance.start(relay, by="cli", note=note)
    except maintenance.MaintenanceError as exc:
        raise _maintenance_failed(exc, name) from None
    if started:
        click.echo(f"{name}: maintenance started")
    else:
        click.echo(f"{name}: already in maintenance ({relays.maintenance_reason(relay)})")


@maintenance_group.command("end")
@click.argument("name")
@click.option("--note", help="Kept with the relay's event.")
@with_appcontext
def maintenance_end(name: str, note: str | None) -> None:
    """Take a relay out of maintenance and release the mail held or deferred for it."""
    relay = _named(name)
    try:
        released = maintenance.end(relay, "cli", note, settings=settings_of(current_app))
    except maintenance.MaintenanceError as exc:
        raise _maintenance_failed(exc, name) from None
    if released is None:
        click.echo(f"{name}: not in maintenance")
        return
    click.echo(
        f"{name}: maintenance ended; {released.held} held and {released.deferred} deferred "
        "message(s) released"
        + (
            f" through drain {released.drain_id} (see `relayboard drains list`)"
            if released.drain_id
            else ""
        )
    )


# -- drains and the global pause --------------------------------------------------------


@cli.group("drains")
def drains_group() -> None:
    """Watch and steer the paced release of held mail."""


def _drain_row(drain: Any, progress: drains.Progress) -> dict[str, Any]:
    return {
        "id": drain.id,
        "relay": drain.relay.name if drain.relay else None,
        "state": drain.state,
        "backlog": progress.backlog,
        "released": progress.released,
        "sent": progress.sent,
        "failed": progress.failed,
        "remaining": progress.remaining,
        "percent": progress.percent,
        "rate": round(progress.rate, 2),
        "eta_seconds": None if progress.eta_seconds is None else round(progress.eta_seconds),
        "started_at": drain.started_at.isoformat() + "Z",
        "ended_at": drain.ended_at.isoformat() + "Z" if drain.ended_at else None,
        "duration_seconds": round(progress.duration_seconds),
        "reason": drain.reason,
        "by": drain.created_by,
    }


@drains_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@with_appcontext
def drains_list(as_json: bool) -> None:
    """Show running and paused drains, then the latest past ones, with their progress."""
    rows = [_drain_row(d, p) for d, p in drains.progresses(drains.listing())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no drains")
        return
    for r in rows:
        eta = f", ETA {r['eta_seconds']} s" if r["eta_seconds"] is not None else ""
        rate = f", {r['rate']} msg/s" if r["state"] == drains.RUNNING else ""
        click.echo(
            f"#{r['id']} {r['relay'] or '(bulk release)'} {r['state']}: {r['percent']}% of "
            f"{r['backlog']} (released {r['released']}, sent {r['sent']}, failed {r['failed']}, "
            f"remaining {r['remaining']}){rate}{eta}; {r['duration_seconds']} s since "
            f"{r['started_at']}"
        )


def _drain_command(action: str) -> Any:
    def run(drain_id: int) -> None:
        try:
            drain = drains.get(drain_id)
            result = getattr(drains, action)(drain, "cli")
        except drains.DrainError as exc:
            raise click.ClickException(str(exc)) from None
        extra = f"; {result} message(s) stay held" if action == "cancel" else ""
        click.echo(f"drain {drain_id}: {drain.state}{extra}")

    run.__doc__ = {
        "pause": "Stop releasing (the ramp's clock stops too).",
        "resume": "Release again from where the ramp stood.",
        "cancel": "Stop for good; what was not released stays held.",
    }[action]
    return run


for _action in ("pause", "resume", "cancel"):
    drains_group.command(_action)(
        click.argument("drain_id", type=int)(with_appcontext(_drain_command(_action)))
    )


@drains_group.command("release")
@click.option("--relay", "relay_name", help="Only the mail held for this relay.")
@with_appcontext
def drains_release(relay_name: str | None) -> None:
    """Release held mail (all, or one relay's) through a new drain at the ramp's pace."""
    relay = _named(relay_name) if relay_name else None
    drain = drains.start(
        drains.held_filter(relay.id if relay else None),
        ramp=drains.ramp_for(settings_of(current_app), relay),
        by="cli",
        reason="held mail released by hand",
        relay=relay,
    )
    if drain is None:
        click.echo("no held mail to release")
        return
    click.echo(f"drain {drain.id}: releasing {drain.backlog} held message(s)")


@cli.group("suppressions")
def suppressions_group() -> None:
    """Addresses no longer sent to, after a hard bounce."""


@suppressions_group.command("list")
@click.option("--search", help="Part of the address.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@with_appcontext
def suppressions_list(search: str | None, as_json: bool) -> None:
    """Show suppressed addresses, newest first."""
    rows = [
        {
            "address": s.address,
            "reason": s.reason,
            "source": s.source,
            "since": s.created_at.isoformat() + "Z",
        }
        for s in suppressions.listing(search)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no suppressed addresses" + (f" matching {search!r}" if search else ""))
    for r in [] if as_json else rows:
        click.echo(f"{r['address']}  since {r['since']}  {r['reason']} ({r['source']})")


@suppressions_group.command("remove")
@click.argument("address")
@with_appcontext
def suppressions_remove(address: str) -> None:
    """Lift an address's suppression: mail to it is sent again."""
    if not suppressions.lift(address, "cli"):
        raise click.ClickException(f"{address} is not suppressed")
    click.echo(f"{address.strip().lower()}: suppression lifted")


@cli.command("pause")
@click.option("--note", required=True, help="Why: shown to everyone while delivery is paused.")
@with_appcontext
def pause_command(note: str) -> None:
    """Pause all delivery (no pass claims mail) until `relayboard resume`."""
    try:
        changed = pause.pause("cli", note)
    except pause.PauseError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("delivery paused" if changed else "delivery was already paused")


@cli.command("resume")
@with_appcontext
def resume_command() -> None:
    """Resume delivery after `relayboard pause`."""
    click.echo("delivery resumed" if pause.resume("cli") else "delivery was not paused")


_ISO_EXAMPLES = "for example 2025-06-01T22:00Z or 2025-06-01T22:00+02:00 (no offset: UTC)"


def _utc(option: str, text: str) -> datetime:
    """Read an ISO 8601 time as naive UTC: an offset is converted, no offset means UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.ClickException(
            f"{option}: {text!r} is not an ISO 8601 time; {_ISO_EXAMPLES}"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@maintenance_group.command("plan")
@click.argument("name")
@click.option("--start", "start_text", required=True, help=f"ISO 8601; {_ISO_EXAMPLES}.")
@click.option("--end", "end_text", required=True, help="ISO 8601, as --start.")
@click.option("--note", help="Why: kept with the window and its events.")
@with_appcontext
def maintenance_plan(name: str, start_text: str, end_text: str, note: str | None) -> None:
    """Plan a maintenance window: the relay enters and leaves maintenance by itself."""
    relay = _named(name)
    starts_at, ends_at = _utc("--start", start_text), _utc("--end", end_text)
    try:
        window = maintenance.plan(relay, starts_at, ends_at, by="cli", note=note)
    except maintenance.MaintenanceError as exc:
        raise _maintenance_failed(exc, name) from None
    click.echo(
        f"{name}: window {window.id} planned from {window.starts_at:%Y-%m-%d %H:%M:%S} "
        f"to {window.ends_at:%Y-%m-%d %H:%M:%S} UTC"
    )


@maintenance_group.command("cancel")
@click.argument("window_id", type=int)
@with_appcontext
def maintenance_cancel(window_id: int) -> None:
    """Cancel a planned window; a window under way ends now, and its relay's maintenance too."""
    window = db.session.get(MaintenanceWindow, window_id)
    if window is None:
        raise click.ClickException(
            f"no maintenance window {window_id} (see `relayboard maintenance list`)"
        )
    was_active = window.state == maintenance.ACTIVE
    name = window.relay.name
    try:
        maintenance.cancel_plan(window, by="cli")
    except maintenance.MaintenanceError as exc:
        raise _maintenance_failed(exc, name) from None
    if was_active:
        click.echo(f"{name}: window {window_id} was under way: ended, and its maintenance with it")
    else:
        click.echo(f"{name}: window {window_id} cancelled")


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat() + "Z" if moment else None


@maintenance_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def maintenance_list(as_json: bool) -> None:
    """List the relays in maintenance and the planned or running windows (times in UTC)."""
    held = maintenance.held_counts()
    current: list[Relay] = [r for r in relays.ordered() if maintenance.in_maintenance(r)]
    in_maintenance = [
        {
            "name": r.name,
            "since": _stamp(r.maintenance_since),
            "by": r.maintenance_by,
            "reason": r.maintenance_reason,
            "policy": r.maintenance_policy,
            "held": held.get(r.id, 0),
        }
        for r in current
    ]
    planned = maintenance.windows()
    windows = [
        {
            "id": w.id,
            "relay": w.relay.name,
            "starts_at": _stamp(w.starts_at),
            "ends_at": _stamp(w.ends_at),
            "state": w.state,
            "note": w.note,
            "by": w.created_by,
        }
        for w in planned
    ]
    if as_json:
        click.echo(json.dumps({"in_maintenance": in_maintenance, "windows": windows}, indent=2))
        return
    if not current:
        click.echo("no relay is in maintenance")
    else:
        click.echo(f"{'NAME':<20} {'SINCE (UTC)':<17} {'BY':<16} {'POLICY':<8} {'HELD':>5}  REASON")
        for r in current:
            since = f"{r.maintenance_since:%Y-%m-%d %H:%M}" if r.maintenance_since else ""
            click.echo(
                f"{r.name:<20} {since:<17} {r.maintenance_by or '?':<16} "
                f"{r.maintenance_policy:<8} {held.get(r.id, 0):>5}  {r.maintenance_reason or ''}"
            )
    click.echo()
    if not planned:
        click.echo("no maintenance windows: plan one with `relayboard maintenance plan`")
        return
    click.echo(
        f"{'ID':>4}  {'RELAY':<20} {'STARTS (UTC)':<17} {'ENDS (UTC)':<17} {'STATE':<8} NOTE"
    )
    for w in planned:
        click.echo(
            f"{w.id:>4}  {w.relay.name:<20} {w.starts_at:%Y-%m-%d %H:%M}  "
            f"{w.ends_at:%Y-%m-%d %H:%M}  {w.state:<8} {w.note}"
        )


# -- api keys ---------------------------------------------------------------------------


@cli.group("api-keys")
def api_keys_group() -> None:
    """Create, list and revoke API keys."""


@api_keys_group.command("create")
@click.option("--name", required=True)
@click.option(
    "--scope",
    type=click.Choice(api_keys.SCOPES),
    default=api_keys.SEND,
    show_default=True,
    help="send: reads only its own messages; read-all: reads every message.",
)
@with_appcontext
def api_keys_create(name: str, scope: str) -> None:
    """Create a key and print it once, alone on the last line."""
    try:
        row, key = api_keys.create(name, scope)
    except api_keys.ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created API key {row.name} ({row.scope}); it is shown this once:", err=False)
    click.echo(key)


@api_keys_group.command("scope")
@click.argument("name")
@click.argument("scope", type=click.Choice(api_keys.SCOPES))
@with_appcontext
def api_keys_scope(name: str, scope: str) -> None:
    """Change what a key may read: send (its own messages) or read-all."""
    try:
        row = api_keys.set_scope(name, scope)
    except api_keys.ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{row.name} is now {row.scope}")


@api_keys_group.command("list")
@with_appcontext
def api_keys_list() -> None:
    """List keys (name, prefix, created, last used, revoked)."""
    rows = api_keys.listing()
    if not rows:
        click.echo("no API keys yet: create one with `relayboard api-keys create --name NAME`")
        return
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
        click.echo(
            f"{row.name:<24} {row.prefix}…  {row.scope:<8}  created "
            f"{row.created_at:%Y-%m-%d %H:%M}  last used {used}  {state}"
        )


@api_keys_group.command("revoke")
@click.argument("name")
@with_appcontext
def api_keys_revoke(name: str) -> None:
    """Revoke a key; requests with it fail from now on."""
    try:
        api_keys.revoke(name)
    except api_keys.ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {name}")


# -- operators --------------------------------------------------------------------------


@cli.group("operators")
def operators_group() -> None:
    """Create dashboard operators."""


@operators_group.command("create")
@click.option("--email", required=True)
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted for when not given.",
)
@with_appcontext
def operators_create(email: str, password: str) -> None:
    """Create an operator who can sign in to the dashboard."""
    from app.services import operators

    try:
        operator = operators.create(email, password)
    except operators.OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created operator {operator.email}")


# -- secrets ----------------------------------------------------------------------------


@cli.group("secrets")
def secrets_group() -> None:
    """Re-encrypt stored secrets after a change of RELAYBOARD_SECRET_KEY."""


@secrets_group.command("rotate")
@with_appcontext
def secrets_rotate() -> None:
    """Re-encrypt every stored secret under RELAYBOARD_SECRET_KEY; report how many.

    Secrets encrypted under a key listed in RELAYBOARD_OLD_SECRET_KEYS are re-encrypted;
    afterwards those old keys can be dropped. A secret no key can read is named and
    left as it is (exit status 1): enter it again where it is set.
    """
    from app.services import secrets

    report = secrets.rotate(settings_of(current_app).secret_box)
    click.echo(
        f"re-encrypted {report.rotated} secret(s); {report.current} already under the "
        f"current key; {len(report.unreadable)} unreadable"
    )
    for where in report.unreadable:
        click.echo(f"unreadable: {where}", err=True)
    if report.unreadable:
        sys.exit(1)


# -- running ----------------------------------------------------------------------------


@cli.command("serve")
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Threads per worker: requests of one worker that arrive together share one commit.",
)
@click.option(
    "--access-log", is_flag=True, help="Log every HTTP request to standard output (gunicorn's)."
)
def serve(bind: str, workers: int, threads: int, access_log: bool) -> None:
    """Run gunicorn with the app; each worker runs the scheduler unless RELAYBOARD_SCHEDULER=0.

    SIGTERM or Ctrl-C stops cleanly (RELAYBOARD_STOP_GRACE); a second one at once.
    """
    from app.server import run_gunicorn

    settings = Settings.from_env()
    run_gunicorn(
        bind=bind,
        workers=workers,
        threads=threads,
        stop_grace=settings.stop_grace,
        access_log=access_log,
    )


@cli.command("worker")
@with_appcontext
def worker() -> None:
    """Run the scheduler alone (no web) until SIGTERM or Ctrl-C, then stop cleanly."""
    from app.jobs import run_worker

    run_worker(current_app._get_current_object())  # type: ignore[attr-defined]


@cli.command("drain")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@with_appcontext
def drain(quiet: bool) -> None:
    """Deliver everything due now in the foreground, with a progress bar; exit when none is left.

    SIGTERM or Ctrl-C stops cleanly: no new claims, messages in flight get
    RELAYBOARD_STOP_GRACE seconds, unattempted ones go back to the queue. A second
    signal exits at once.
    """
    settings = settings_of(current_app)
    due = (
        db.session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.status.in_((QUEUED, DEFERRED)), Message.next_attempt_at <= utcnow())
        )
        or 0
    )
    db.session.close()
    engine = DeliveryEngine(db.engine, settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # leases lapse; the reaper queues those messages again
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    waiting = drains.waiting()  # held by running drains: the pass waits for their ramps
    with click.progressbar(
        length=max(due + waiting, 1), label="delivering", show_pos=True, hidden=quiet
    ) as bar:
        done = 0

        def progress(report: PassReport) -> None:
            nonlocal done
            bar.update(report.finished - done)
            done = report.finished

        report = engine.run_pass(stop=stop, progress=progress)
    click.echo(
        f"claimed {report.claimed}: sent {report.sent}, deferred {report.deferred}, "
        f"failed {report.failed}, failovers {report.failovers}"
        + (f", released {report.released} (stopped)" if report.stopped else "")
        + f" in {report.seconds:.2f} s"
    )


def main() -> None:
    """Entry point of the `relayboard` console script."""
    try:
        Settings.from_env()
    except SettingsError as exc:
        click.echo(f"relayboard: bad setting: {exc}", err=True)
        sys.exit(2)
    cli.main(prog_name="relayboard")
