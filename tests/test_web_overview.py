"""The overview: honest state, queue figures, relay tiles, failovers and the chart, live."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select, update

from app.crypto import SecretBox
from app.db import db
from app.models import Attempt, Event, HealthCheck, Message, Relay, utcnow
from app.services import stats
from app.services.delivery import DeliveryEngine
from app.services.stats import RelayCircuit
from tests.conftest import SECRET

BOX = SecretBox([SECRET])

BOTH_DATABASES = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)

PARTIALS = {
    "/partials/state": ("overview-state", "2000"),
    "/partials/queue": ("overview-queue", "2000"),
    "/partials/relays": ("overview-relays", "2000"),
    "/partials/failovers": ("overview-failovers", "2000"),
    "/partials/chart": ("overview-chart", "10000"),
}


def page(client: FlaskClient, path: str = "/", **headers: str) -> str:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def add_message(status: str = "queued", age: timedelta = timedelta(0), **values: Any) -> Message:
    created = utcnow() - age
    row = Message(
        message_id=f"<{uuid.uuid4().hex}@test>",
        envelope_from="shop@example.com",
        recipients=["alice@example.org"],
        data=b"Subject: hi\r\n\r\nhi\r\n",
        size=20,
        status=status,
        next_attempt_at=created if status in ("queued", "deferred") else None,
        created_at=created,
        updated_at=created,
        **values,
    )
    db.session.add(row)
    db.session.commit()
    return row


def add_attempts(message: Message, at: datetime, *outcomes: str) -> None:
    db.session.add_all(
        Attempt(message_id=message.id, relay_name="primary", at=at, outcome=outcome)
        for outcome in outcomes
    )
    db.session.commit()


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """The SQL statements run while the test body runs."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        seen.append(sql)

    event.listen(db.engine, "before_cursor_execute", note)
    yield seen
    event.remove(db.engine, "before_cursor_execute", note)


# -- overall state, from real deliveries ------------------------------------------------


def test_it_is_operational_while_mail_flows(
    browser_client: FlaskClient,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", smtp_server)
    send()
    engine.run_pass()
    smtp_server.wait_for(1)
    assert stats.overall_state(BOX) == ("operational", [])
    html = page(browser_client)
    assert 'class="badge state-operational"' in html and "Mail is flowing" in html
    assert "No API key yet" not in html


@BOTH_DATABASES
def test_an_open_circuit_is_degraded_and_its_tile_says_until_when_and_why(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1, breaker_threshold=1)
    add_relay("backup", smtp_server, priority=2)
    send()
    report = engine.run_pass()
    assert report.sent == 1 and report.failovers == 1
    primary = relay("primary")
    assert primary.circuit_state == "open" and primary.circuit_open_until is not None
    until = primary.circuit_open_until.strftime("%H:%M")

    state, reasons = stats.overall_state(BOX)
    assert state == "degraded"
    assert reasons == [f"primary: circuit open until {until} UTC — {primary.circuit_reason}"]

    tiles = page(browser_client, "/partials/relays")
    assert f"open until {until} — {primary.circuit_reason}" in tiles
    assert "refused" in (primary.circuit_reason or "")
    assert 'class="tile state-open"' in tiles and 'class="tile state-closed"' in tiles
    assert "Last error:" in tiles and primary.last_error and primary.last_error in tiles

    banner = page(browser_client, "/partials/state")
    assert "state-degraded" in banner and "primary: circuit open until" in banner


def test_recent_failovers_show_a_real_failover(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("backup", smtp_server, priority=2)
    queued = send()
    engine.run_pass()
    (failover,) = stats.recent_failovers()
    assert (failover.source, failover.target, failover.outcome) == ("primary", "backup", "sent")
    assert failover.message_id == queued["id"] and "refused" in failover.reason
    table = page(browser_client, "/partials/failovers")
    row = re.search(r"<tbody>(.*)</tbody>", table, re.S)
    assert row is not None
    cells = re.findall(r'<td data-label="(\w+)"[^>]*>(.*?)</td>', row.group(1), re.S)
    values = {label: re.sub(r"<[^>]+>", "", text).strip() for label, text in cells}
    assert values["From"] == "primary" and values["To"] == "backup"
    assert values["Outcome"] == "sent" and failover.reason in values["Reason"]


def test_mail_deferred_after_recent_failures_is_degraded(
    refusing_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", refusing_server, breaker_threshold=5)
    send()
    engine.run_pass()
    assert relay("primary").circuit_state == "closed"  # still usable: not an outage
    state, reasons = stats.overall_state(BOX)
    assert state == "degraded"
    assert reasons == ["1 message(s) deferred after delivery failures in the last 10 minutes"]


def test_an_old_deferred_message_is_degraded_even_without_recent_failures(
    browser_client: FlaskClient,
    refusing_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, breaker_threshold=5)
    queued = send()
    engine.run_pass()
    # Twelve minutes later, with the failures themselves out of the window.
    past = utcnow() - timedelta(minutes=12)
    db.session.execute(update(Message).where(Message.id == queued["id"]).values(created_at=past))
    db.session.execute(update(Event).values(at=past))
    db.session.commit()
    state, reasons = stats.overall_state(BOX)
    assert state == "degraded"
    assert reasons == ["mail is delayed: the oldest waiting message is 12 min old"]
    figures = page(browser_client, "/partials/queue")
    assert re.search(r'class="oldest late">\s*<div class="stat">12 min</div>', figures)


def test_every_relay_open_with_mail_waiting_is_an_outage(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server_factory: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    other = smtp_server_factory()
    other.fail("connect", 421, "4.3.2 Service not available, maintenance")
    add_relay("primary", refusing_server, priority=1, breaker_threshold=1)
    add_relay("backup", other, priority=2, breaker_threshold=1)
    add_relay("spare", refusing_server, priority=3, enabled=False)
    send()
    engine.run_pass()
    assert {relay("primary").circuit_state, relay("backup").circuit_state} == {"open"}
    state, reasons = stats.overall_state(BOX)
    assert state == "outage"
    assert reasons[0] == (
        "every enabled relay's circuit is open: nothing can be delivered (1 message(s) waiting)"
    )
    assert [r.split(":")[0] for r in reasons[1:3]] == ["primary", "backup"]
    html = page(browser_client)
    assert 'class="badge state-outage"' in html and "Mail is not being delivered." in html


def test_an_open_circuit_past_its_timeout_counts_as_half_open(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any
) -> None:
    primary = add_relay("primary", smtp_server)
    primary.circuit_state = "open"
    primary.circuit_open_until = utcnow() - timedelta(minutes=1)
    primary.circuit_reason = "421 4.3.2 maintenance"
    db.session.commit()
    assert stats.overall_state(BOX) == (
        "degraded",
        ["primary: circuit half-open, the next send is a trial"],
    )
    tiles = page(browser_client, "/partials/relays")
    assert "state-half_open" in tiles and "the open timeout has passed" in tiles


def test_a_fresh_install_is_an_outage_that_says_what_to_do(browser_client: FlaskClient) -> None:
    assert stats.overall_state(BOX) == (
        "outage",
        ["no relay is configured: nothing can be delivered (new mail will wait)"],
    )
    html = page(browser_client)
    assert 'href="/relays/new"' in html and "No relays yet" in html
    assert "No API key yet" in html and 'href="/settings/"' in html
    assert "No failovers yet" in html and "No delivery attempts in the last hour" in html


def circuit(name: str, state: str = "closed", enabled: bool = True) -> RelayCircuit:
    return RelayCircuit(name, enabled, state)


UP = [circuit("a"), circuit("b")]
IDLE = {"queued": 0, "deferred": 0}


@pytest.mark.parametrize(
    ("relays", "depth", "oldest", "recent_failures", "expected"),
    [
        (UP, IDLE, None, False, "operational"),
        (UP, {"queued": 40, "deferred": 0}, 299.0, False, "operational"),
        (UP, {"queued": 1, "deferred": 0}, 301.0, False, "degraded"),
        (UP, {"queued": 0, "deferred": 2}, 10.0, True, "degraded"),
        (UP, {"queued": 0, "deferred": 2}, 10.0, False, "operational"),
        (UP, IDLE, None, True, "operational"),  # failures, but nothing left waiting
        ([circuit("a", "open"), circuit("b")], IDLE, None, False, "degraded"),
        ([circuit("a", "half_open")], IDLE, None, False, "degraded"),
        ([circuit("a", "open", enabled=False), circuit("b")], IDLE, None, False, "operational"),
        ([circuit("a", "open"), circuit("b", "open")], IDLE, None, False, "outage"),
        ([circuit("a", "open"), circuit("b", enabled=False)], {"queued": 3}, 5.0, False, "outage"),
        ([circuit("a", enabled=False)], IDLE, None, False, "outage"),
        ([], {"queued": 1, "deferred": 0}, 1.0, False, "outage"),
    ],
)
def test_the_state_rules(
    relays: list[RelayCircuit],
    depth: dict[str, int],
    oldest: float | None,
    recent_failures: bool,
    expected: str,
) -> None:
    state, reasons = stats.assess(relays, depth, oldest, recent_failures)
    assert state == expected
    assert bool(reasons) == (state != "operational")


# -- figures, from known rows -------------------------------------------------------------


@BOTH_DATABASES
def test_queue_depth_counts_active_statuses_and_the_oldest_waiting_age(
    browser_client: FlaskClient,
) -> None:
    add_message("queued", timedelta(minutes=7))
    add_message("queued")
    add_message("deferred", timedelta(minutes=3))
    add_message("sending")
    add_message("held", timedelta(hours=2))  # held for maintenance: waiting, but not delayed
    for _ in range(3):
        add_message("sent", timedelta(hours=1))
    add_message("failed", timedelta(days=1))
    assert stats.queue_depth() == {"queued": 2, "sending": 1, "deferred": 1, "held": 1}
    age = stats.oldest_queued_age()
    assert age is not None and 7 * 60 <= age < 7 * 60 + 30
    figures = page(browser_client, "/partials/queue")
    numbers = re.findall(r'class="queue-(\w+)">\s*<div class="stat">(\d+)</div>', figures)
    assert dict(numbers) == {"queued": "2", "sending": "1", "deferred": "1", "held": "1"}
    assert ">7 min</div>" in figures


def test_nothing_waiting_has_no_age(app: Any) -> None:
    add_message("sent")
    add_message("held", timedelta(hours=1))
    assert stats.oldest_queued_age() is None
    assert stats.queue_depth() == {"queued": 0, "sending": 0, "deferred": 0, "held": 1}


@BOTH_DATABASES
def test_series_and_sends_per_minute_count_attempt_outcomes(app: Any) -> None:
    now = utcnow().replace(second=30, microsecond=0)
    message = add_message("sent")
    add_attempts(message, now - timedelta(seconds=10), "sent", "sent", "sent", "partial")
    add_attempts(message, now - timedelta(seconds=20), "failover")
    add_attempts(message, now - timedelta(minutes=2), "deferred", "deferred", "rejected")
    add_attempts(message, now - timedelta(minutes=2), "logged")  # test mode: neither
    add_attempts(message, now - timedelta(minutes=7), "sent")
    add_attempts(message, now - timedelta(minutes=61), "sent", "sent", "unknown")
    minutes = stats.series(60, now=now)
    assert len(minutes) == 60
    assert minutes[-1].start == now.replace(second=0)
    assert minutes[0].start == now.replace(second=0) - timedelta(minutes=59)
    assert (minutes[-1].sent, minutes[-1].failed) == (4, 1)
    assert (minutes[-3].sent, minutes[-3].failed) == (0, 3)
    assert (minutes[-8].sent, minutes[-8].failed) == (1, 0)
    assert sum(m.sent for m in minutes) == 5 and sum(m.failed for m in minutes) == 4
    assert stats.sends_per_minute(timedelta(minutes=5), now=now) == pytest.approx(4 / 5)
    assert stats.sends_per_minute(timedelta(minutes=10), now=now) == pytest.approx(5 / 10)


@BOTH_DATABASES
def test_relay_tiles_carry_the_newest_health_check_in_two_queries(
    smtp_server: Any, add_relay: Any, statements: list[str]
) -> None:
    checked = add_relay("checked", smtp_server, priority=2)
    add_relay("unchecked", smtp_server, priority=1)
    now = utcnow()
    db.session.add_all(
        [
            HealthCheck(
                relay_id=checked.id,
                at=now - timedelta(minutes=10),
                ok=False,
                response_ms=3000.0,
                error="timed out",
            ),
            HealthCheck(
                relay_id=checked.id, at=now - timedelta(minutes=1), ok=True, response_ms=42.4
            ),
        ]
    )
    db.session.commit()
    db.session.expire_all()
    statements.clear()
    tiles = stats.relay_tiles()
    assert len(statements) == 2
    assert [t.relay.name for t in tiles] == ["unchecked", "checked"]
    assert tiles[0].health is None
    assert tiles[1].health is not None and tiles[1].health.ok
    assert tiles[1].health.response_ms == pytest.approx(42.4)


def test_tiles_show_health_and_the_last_error(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any
) -> None:
    primary = add_relay("primary", smtp_server)
    primary.last_error = "535 5.7.8 authentication failed"
    primary.last_error_at = utcnow() - timedelta(minutes=3)
    db.session.add(HealthCheck(relay_id=primary.id, ok=True, response_ms=42.4))
    db.session.commit()
    tiles = page(browser_client, "/partials/relays")
    assert "42 ms" in tiles and 'class="badge state-ok">ok</span>' in tiles
    assert "535 5.7.8 authentication failed" in tiles and "3 min ago" in tiles


def test_the_widgets_run_a_fixed_number_of_queries(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any, statements: list[str]
) -> None:
    for name in ("a", "b", "c", "d"):
        relay_row = add_relay(name, smtp_server)
        db.session.add(HealthCheck(relay_id=relay_row.id, ok=True, response_ms=5.0))
        failed = add_message("deferred")
        add_attempts(failed, utcnow(), "failover", "deferred")
    db.session.commit()
    counts = {}
    for path in PARTIALS:
        statements.clear()
        page(browser_client, path)
        counts[path] = len([s for s in statements if "operators" not in s])
    assert counts == {
        "/partials/state": 5,  # the pause, relays, depth, oldest, a recent failure
        "/partials/queue": 2,
        "/partials/relays": 2,
        "/partials/failovers": 1,
        "/partials/chart": 2,  # the per-minute series, the 5-minute rate
    }


# -- the live page --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(PARTIALS))
def test_each_partial_is_served_alone_and_polls_itself(
    browser_client: FlaskClient, path: str
) -> None:
    element_id, interval = PARTIALS[path]
    response = browser_client.get(path, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "HX-Request" in response.headers["Vary"]
    html = response.get_data(as_text=True).strip()
    assert "<html" not in html and "<nav" not in html
    opening = re.match(r"<section ([^>]*)>", html)
    assert opening is not None, html[:200]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', opening.group(1)))
    assert attributes["id"] == element_id
    assert attributes["hx-get"] == path and attributes["hx-trigger"] == "poll"
    assert attributes["hx-swap"] == "outerHTML" and attributes["data-poll"] == interval
    assert html.count(f'id="{element_id}"') == 1


def test_the_page_includes_every_partial_and_htmx_gets_them_without_the_layout(
    browser_client: FlaskClient,
) -> None:
    full = browser_client.get("/")
    html = full.get_data(as_text=True)
    assert "HX-Request" in full.headers["Vary"] and "<nav" in html
    for path, (element_id, _) in PARTIALS.items():
        assert f'id="{element_id}"' in html and f'hx-get="{path}"' in html
    live = browser_client.get("/", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<nav" not in live and all(f'id="{e}"' in live for e, _ in PARTIALS.values())


@BOTH_DATABASES
def test_the_chart_draws_bars_for_sends_and_failures(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1, breaker_threshold=1)
    add_relay("backup", smtp_server, priority=2)
    for _ in range(3):
        send()
    engine.run_pass()
    smtp_server.wait_for(3)
    html = page(browser_client, "/partials/chart")
    assert '<svg class="chart"' in html
    sent_bars = re.findall(r'<rect class="bar" [^>]*height="([\d.]+)"', html)
    fail_bars = re.findall(r'<rect class="bar fail" [^>]*height="([\d.]+)"', html)
    assert sent_bars and fail_bars  # one minute's bar, two if the drain crossed a minute
    assert all(float(height) > 0 for height in sent_bars + fail_bars)
    # Each bar's tooltip: one failover opened primary's circuit; backup delivered all three.
    minutes = re.findall(r"UTC: (\d+) sent, (\d+) failed", html)
    assert (sum(int(s) for s, _ in minutes), sum(int(f) for _, f in minutes)) == (3, 1)
    assert ">0.6</div>" in html  # 3 sends over the last 5 minutes
    assert " style=" not in html and "<script" not in html


def test_the_overview_keeps_to_the_csp(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1, breaker_threshold=1)
    add_relay("backup", smtp_server, priority=2)
    send()
    engine.run_pass()
    html = page(browser_client)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html and "hx-on" not in html
