"""Events area: the failover log, circuit transitions, health results, filters, CSV export."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db import db
from app.models import Event, HealthCheck, Relay, utcnow
from app.services.delivery import DeliveryEngine

HTMX = {"HX-Request": "true"}
ON_BOTH_DATABASES = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)


def rows(html: str) -> list[str]:
    """The body rows of the log table, tags stripped, cells joined by ' | '."""
    body = html[html.index("<tbody>") : html.index("</tbody>")] if "<tbody>" in html else ""
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        out.append(" | ".join(" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in cells))
    return out


def relay_id(name: str) -> int:
    pk = db.session.scalar(select(Relay.id).where(Relay.name == name))
    assert pk is not None
    return pk


@pytest.fixture
def failover(
    refusing_server: Any, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> int:
    """A real failover: the primary refuses connections, the backup delivers."""
    add_relay("primary", refusing_server, priority=1, breaker_threshold=1)
    add_relay("backup", smtp_server, priority=2)
    pk: int = send()["id"]
    assert engine.run_pass().failovers == 1
    smtp_server.wait_for(1)
    return pk


def add_check(relay: str, ok: bool, ms: float, error: str | None = None, **values: Any) -> None:
    db.session.add(
        HealthCheck(relay_id=relay_id(relay), ok=ok, response_ms=ms, error=error, **values)
    )
    db.session.commit()


def test_the_failover_log_shows_from_to_reason_and_outcome(
    browser_client: FlaskClient, failover: int
) -> None:
    html = browser_client.get("/events/?group=failovers").get_data(as_text=True)
    head = re.findall(r'<th scope="col">([^<]+)</th>', html)
    assert head == ["Time", "From relay", "To relay", "Reason", "Outcome", "Message"]
    (row,) = rows(html)
    _time, source, target, reason, outcome, message = row.split(" | ")
    assert (source, target, outcome, message) == ("primary", "backup", "sent", f"#{failover}")
    assert "refused" in reason
    assert 'data-label="From relay"' in html and 'data-label="Outcome"' in html
    assert '<span class="badge state-sent">sent</span>' in html
    assert f'href="/messages/{failover}"' in html


@ON_BOTH_DATABASES
def test_circuit_transitions_and_health_results(browser_client: FlaskClient, failover: int) -> None:
    add_check("backup", True, 42.4)
    add_check("primary", False, 1000.0, "connection refused (ECONNREFUSED)")
    circuits = browser_client.get("/events/?group=circuits").get_data(as_text=True)
    (row,) = rows(circuits)
    _time, relay, transition, reason = row.split(" | ")
    assert relay == "primary" and transition == "closed → open" and "refused" in reason
    health = rows(browser_client.get("/events/?group=health").get_data(as_text=True))
    assert [r.split(" | ")[1:] for r in health] == [
        ["primary", "failed", "1000 ms", "connection refused (ECONNREFUSED)"],
        ["backup", "ok", "42 ms", ""],
    ]
    everything = rows(browser_client.get("/events/?group=all").get_data(as_text=True))
    kinds = [r.split(" | ")[1] for r in everything]
    assert kinds[:2] == ["health", "health"]  # newest first
    assert {"failover", "circuit open", "sent"} <= set(kinds)
    messages = rows(browser_client.get("/events/?group=messages").get_data(as_text=True))
    assert [r.split(" | ")[1] for r in messages] == ["sent"]  # queued is on the message row


@ON_BOTH_DATABASES
def test_filters_by_relay_and_time(browser_client: FlaskClient, failover: int) -> None:
    add_check("backup", True, 10.0)
    primary, backup = relay_id("primary"), relay_id("backup")
    # A failover belongs to both relays: the one it left and the one it went to.
    for pk in (primary, backup):
        assert (
            len(rows(browser_client.get(f"/events/?group=failovers&relay={pk}").data.decode())) == 1
        )
    on_backup = rows(
        browser_client.get(f"/events/?group=all&relay={backup}").get_data(as_text=True)
    )
    assert {r.split(" | ")[1] for r in on_backup} == {"health", "failover", "sent"}
    on_primary = rows(
        browser_client.get(f"/events/?group=all&relay={primary}").get_data(as_text=True)
    )
    assert {r.split(" | ")[1] for r in on_primary} == {"failover", "circuit open"}
    # Move everything but the health check a day back.
    for event in db.session.scalars(select(Event)):
        event.at -= timedelta(days=1)
    db.session.commit()
    cut = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    recent = rows(browser_client.get(f"/events/?group=all&since={cut}").get_data(as_text=True))
    assert [r.split(" | ")[1] for r in recent] == ["health"]
    old = rows(browser_client.get(f"/events/?group=all&until={cut}").get_data(as_text=True))
    assert "health" not in {r.split(" | ")[1] for r in old} and len(old) == 3


def test_bad_filters_are_shown_beside_the_field(browser_client: FlaskClient, failover: int) -> None:
    html = browser_client.get("/events/?group=bogus&relay=999&since=soon").get_data(as_text=True)
    assert re.search(r'id="f-group-error" class="field-error">Not a valid choice', html)
    assert re.search(r'id="f-relay-error" class="field-error">Not a valid choice', html)
    assert re.search(r'id="f-since-error" class="field-error">Not a valid datetime value', html)
    assert "Fix the filter" in html and rows(html) == []
    missing = browser_client.get("/events/?before=e99999").get_data(as_text=True)
    assert "no longer exists" in missing
    assert browser_client.get("/events/export.csv?since=soon").status_code == 400


@ON_BOTH_DATABASES
def test_the_log_pages_without_losing_rows(
    browser_client: FlaskClient, failover: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.web.events import routes

    at = utcnow()
    for ms in range(3):  # checks at the very instant of an event: ties broken, none lost
        add_check("backup", True, float(ms), at=at)
    db.session.execute(update(Event).values(at=at))
    db.session.commit()
    everything = rows(browser_client.get("/events/?group=all").get_data(as_text=True))
    monkeypatch.setattr(routes, "PAGE_SIZE", 2)
    seen: list[str] = []
    url = "/events/?group=all"
    while url:
        html = browser_client.get(url).get_data(as_text=True)
        seen += rows(html)
        older = re.search(r'href="(/events/\?before=[eh]\d+[^"]*)"', html)
        url = older.group(1).replace("&amp;", "&") if older else ""
    assert seen == everything and len(seen) == 6


def test_the_log_partial_polls_and_varies(browser_client: FlaskClient, failover: int) -> None:
    page = browser_client.get("/events/?group=failovers")
    assert "HX-Request" in page.headers["Vary"] and "<html" in page.get_data(as_text=True)
    part = browser_client.get("/events/?group=failovers", headers=HTMX)
    html = part.get_data(as_text=True)
    assert "HX-Request" in part.headers["Vary"] and "<html" not in html
    assert html.lstrip().startswith('<section id="log"')
    assert 'hx-get="/events/?group=failovers" hx-trigger="poll" data-poll="5000"' in html
    assert len(rows(html)) == 1
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.get_data(as_text=True))
    assert " style=" not in page.get_data(as_text=True)


def test_an_empty_log_says_what_it_will_hold(browser_client: FlaskClient) -> None:
    html = browser_client.get("/events/?group=failovers").get_data(as_text=True)
    assert "No failovers" in html and "from, to, reason and outcome" in html


@ON_BOTH_DATABASES
def test_csv_export_matches_the_filter(browser_client: FlaskClient, failover: int) -> None:
    add_check("backup", True, 12.0)
    response = browser_client.get("/events/export.csv?group=failovers")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    assert response.is_streamed
    table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    (row,) = table
    assert (row["type"], row["from"], row["to"], row["outcome"]) == (
        "failover",
        "primary",
        "backup",
        "sent",
    )
    assert "refused" in row["reason"] and row["message"] == str(failover)
    everything = list(csv.DictReader(io.StringIO(browser_client.get("/events/export.csv").text)))
    shown = rows(browser_client.get("/events/").get_data(as_text=True))
    assert [r["type"] for r in everything] == [r.split(" | ")[1].replace(" ", "_") for r in shown]
    assert everything[0]["type"] == "health" and everything[0]["response_ms"] == "12"


def test_csv_export_defuses_formulas(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay('=HYPERLINK("http://evil")', refusing_server, priority=1)
    add_relay("@backup", smtp_server, priority=2)
    send()
    engine.run_pass()
    smtp_server.wait_for(1)
    add_check("@backup", False, 5.0, "-1 +2 error")
    text = browser_client.get("/events/export.csv").get_data(as_text=True)
    table = list(csv.DictReader(io.StringIO(text)))
    (failover,) = [r for r in table if r["type"] == "failover"]
    assert failover["from"] == '\'=HYPERLINK("http://evil")' and failover["to"] == "'@backup"
    (check,) = [r for r in table if r["type"] == "health"]
    assert check["relay"] == "'@backup" and check["reason"] == "'-1 +2 error"
    for record in table:
        for value in record.values():
            assert not value.startswith(("=", "+", "-", "@"))
