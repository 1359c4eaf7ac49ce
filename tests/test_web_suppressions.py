"""Suppressions area: the list of addresses no longer sent to, search, lift."""

from __future__ import annotations

import html as html_lib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db import db
from app.models import Event, Suppression, utcnow
from app.services import suppressions
from tests.conftest import OPERATOR_EMAIL

HTMX = {"HX-Request": "true"}
ON_BOTH_DATABASES = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
BOUNCE = "550 5.1.1 <alice@example.org>: user unknown"


def rows(html: str) -> list[str]:
    """The body rows of the table, tags stripped, cells joined by ' | '."""
    body = html[html.index("<tbody>") : html.index("</tbody>")] if "<tbody>" in html else ""
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        text = " | ".join(" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in cells)
        out.append(html_lib.unescape(text))
    return out


def addresses(html: str) -> list[str]:
    return [row.split(" | ")[0] for row in rows(html)]


def page(client: FlaskClient, path: str = "/suppressions/", **kwargs: Any) -> str:
    response = client.get(path, **kwargs)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def suppressed() -> list[str]:
    return list(db.session.scalars(select(Suppression.address)))


def suppress(address: str, at: datetime | None = None, **values: Any) -> None:
    values.setdefault("reason", BOUNCE)
    values.setdefault("source", "mailersend webhook")
    assert suppressions.suppress(address, now=at, **values)


# -- the list ---------------------------------------------------------------------------


def test_the_list_shows_a_suppressed_address_with_its_reason(
    browser_client: FlaskClient, send: Callable[..., dict[str, Any]]
) -> None:
    pk = send()["id"]
    since = datetime(2026, 3, 4, 5, 6, 7)
    suppress("Alice@Example.org", since, message_id=pk)
    suppress("bob@example.net", since + timedelta(hours=1), reason="no such user", source="smtp")

    html = page(browser_client)
    assert rows(html) == [
        "bob@example.net | 2026-03-04 06:06 | no such user | smtp |  | Lift",
        f"alice@example.org | 2026-03-04 05:06 | {BOUNCE} | mailersend webhook | #{pk} | Lift",
    ]
    assert f'<a href="/messages/{pk}">#{pk}</a>' in html
    assert 'datetime="2026-03-04T05:06:07Z"' in html
    assert "Since (UTC)" in html
    assert '<a href="/suppressions/" aria-current="page">Suppressions</a>' in html
    assert '<input type="hidden" name="address" value="alice@example.org">' in html


def test_the_list_is_empty_until_an_address_is_suppressed(browser_client: FlaskClient) -> None:
    html = page(browser_client)
    assert "No suppressed addresses" in html and "<tbody>" not in html
    assert "No suppressed addresses matching 'nobody'" in page(
        browser_client, "/suppressions/?q=nobody"
    )


@ON_BOTH_DATABASES
def test_a_search_matches_part_of_the_address(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    suppress("bob@example.net")
    suppress("carol@shop.example.org")

    assert addresses(page(browser_client, "/suppressions/?q=example.org")) == [
        "carol@shop.example.org",
        "alice@example.org",
    ]
    assert addresses(page(browser_client, "/suppressions/?q=+BOB+")) == ["bob@example.net"]
    # htmx asks for the list alone, the search field's error slot beside it
    fragment = page(browser_client, "/suppressions/?q=alice", headers=HTMX)
    assert fragment.lstrip().startswith('<section id="suppressions">')
    assert "<html" not in fragment and 'id="f-q-error"' in fragment
    assert addresses(fragment) == ["alice@example.org"]
    # the search stays in the box
    assert 'value="alice"' in page(browser_client, "/suppressions/?q=alice")


@ON_BOTH_DATABASES
def test_percent_and_underscore_in_a_search_are_literal(browser_client: FlaskClient) -> None:
    suppress("100%sure@example.org")
    suppress("1000sure@example.org")
    suppress("first_last@example.org")
    suppress("firstxlast@example.org")

    assert addresses(page(browser_client, "/suppressions/?q=100%25")) == ["100%sure@example.org"]
    assert addresses(page(browser_client, "/suppressions/?q=%25")) == ["100%sure@example.org"]
    assert addresses(page(browser_client, "/suppressions/?q=t_l")) == ["first_last@example.org"]
    assert "No suppressed addresses matching '%'" not in page(
        browser_client, "/suppressions/?q=%25"
    )
    assert "No suppressed addresses matching '%x'" in page(browser_client, "/suppressions/?q=%25x")


def test_an_over_long_search_shows_an_error(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    html = page(browser_client, "/suppressions/?q=" + "a" * 321)
    assert "At most 320 characters." in html
    assert 'aria-invalid="true"' in html
    assert "Fix the search" in html and rows(html) == []
    fragment = page(browser_client, "/suppressions/?q=" + "a" * 321, headers=HTMX)
    assert '<small id="f-q-error" class="field-error" hx-swap-oob="true">At most 320' in fragment
    # 320 characters is a search like any other
    html = page(browser_client, "/suppressions/?q=" + "a" * 320)
    assert "At most 320 characters." not in html
    assert "No suppressed addresses matching" in html


# -- lift -------------------------------------------------------------------------------


def test_lifting_removes_the_address_and_flashes(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    suppress("bob@example.net")

    response = browser_client.post("/suppressions/lift", data={"address": "alice@example.org"})
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/suppressions/")
    assert suppressed() == ["bob@example.net"]
    html = page(browser_client)
    assert "alice@example.org: suppression lifted" in html
    assert addresses(html) == ["bob@example.net"]

    event = db.session.scalars(select(Event).where(Event.type == "suppression_lifted")).one()
    assert event.data == {"address": "alice@example.org", "by": f"operator {OPERATOR_EMAIL}"}


def test_lifting_twice_says_it_is_not_suppressed(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    first = browser_client.post(
        "/suppressions/lift", data={"address": "alice@example.org"}, follow_redirects=True
    )
    assert "alice@example.org: suppression lifted" in first.get_data(as_text=True)
    again = browser_client.post(
        "/suppressions/lift", data={"address": "alice@example.org"}, follow_redirects=True
    )
    html = again.get_data(as_text=True)
    assert "alice@example.org is not suppressed" in html
    assert "suppression lifted" not in html
    lifted = db.session.scalars(select(Event).where(Event.type == "suppression_lifted")).all()
    assert len(lifted) == 1


def test_lifting_with_htmx_returns_the_list_and_a_flash(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    suppress("bob@example.net")
    suppress("carol@example.org")

    response = browser_client.post(
        "/suppressions/lift?q=example.org", data={"address": "alice@example.org"}, headers=HTMX
    )
    assert response.status_code == 200
    flash = json.loads(response.headers["HX-Trigger"])["flash"]
    assert flash == {"text": "alice@example.org: suppression lifted", "category": "success"}
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="suppressions">')
    assert addresses(html) == ["carol@example.org"]  # the search the page showed
    assert 'action="/suppressions/lift?q=example.org"' in html

    again = browser_client.post(
        "/suppressions/lift", data={"address": "alice@example.org"}, headers=HTMX
    )
    flash = json.loads(again.headers["HX-Trigger"])["flash"]
    assert flash["text"] == "alice@example.org is not suppressed"


def test_lifting_keeps_the_search_and_reads_any_case(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    response = browser_client.post(
        "/suppressions/lift?q=alice", data={"address": " Alice@Example.ORG "}
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/suppressions/?q=alice")
    assert suppressed() == []


def test_lifting_without_an_address_lifts_nothing(browser_client: FlaskClient) -> None:
    suppress("alice@example.org")
    response = browser_client.post("/suppressions/lift", data={}, follow_redirects=True)
    assert "Nothing lifted" in response.get_data(as_text=True)
    assert suppressed() == ["alice@example.org"]


# -- security ---------------------------------------------------------------------------


def test_lifting_needs_a_csrf_token(app: Flask, operator: Any) -> None:
    client = app.test_client()  # CSRF checks on, unlike browser_client
    with client.session_transaction() as session:
        session["_user_id"] = str(operator.id)
        session["_fresh"] = True
    suppress("alice@example.org")
    for headers in ({}, HTMX):
        response = client.post(
            "/suppressions/lift", data={"address": "alice@example.org"}, headers=headers
        )
        assert response.status_code == 400
    assert suppressed() == ["alice@example.org"]

    html = page(client)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token
    ok = client.post(
        "/suppressions/lift", data={"csrf_token": token.group(1), "address": "alice@example.org"}
    )
    assert ok.status_code == 302
    assert suppressed() == []


def test_an_anonymous_client_is_sent_to_sign_in(client: FlaskClient, operator: Any) -> None:
    suppress("alice@example.org")
    response = client.get("/suppressions/?q=alice")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    htmx = client.get("/suppressions/", headers=HTMX)
    assert htmx.status_code == 401 and "/login" in htmx.headers["HX-Redirect"]
    lift = client.post("/suppressions/lift", data={"address": "alice@example.org"})
    assert lift.status_code in (302, 400)
    assert suppressed() == ["alice@example.org"]


def test_the_page_carries_no_inline_script_or_style(browser_client: FlaskClient) -> None:
    suppress("alice@example.org", utcnow())
    for path in ["/suppressions/", "/suppressions/?q=nobody", "/suppressions/?q=" + "a" * 400]:
        html = page(browser_client, path)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "hx-on" not in html, path
