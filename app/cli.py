"""The `relayboard` command: Flask's CLI group plus servers, api-keys, serve, worker, drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
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
from app.models import DEFERRED, QUEUED, Message, utcnow
from app.services import api_keys, relays
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
@click.option("--disabled", is_flag=True)
@with_appcontext
def servers_add(password_stdin: bool, disabled: bool, no_tls_verify: bool, **values: Any) -> None:
    """Add a relay."""
    if password_stdin:
        values["password"] = sys.stdin.readline().rstrip("\r\n")
    box = settings_of(current_app).secret_box
    try:
        relay = relays.create(box, enabled=not disabled, tls_verify=not no_tls_verify, **values)
    except relays.RelayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added relay {relay.name} ({relay.host}:{relay.port}, priority {relay.priority})")


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
    with click.progressbar(
        length=max(due, 1), label="delivering", show_pos=True, hidden=quiet
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
