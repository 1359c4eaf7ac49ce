"""Settings: API keys created and shown once, listed with their last use, revoked."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import crypto
from app.db import db
from app.models import ApiKey, utcnow
from app.services import api_keys


def create(client: FlaskClient, name: str) -> Any:
    return client.post("/settings/api-keys", data={"name": name})


def shown_key(html: str) -> str:
    match = re.search(r'<input id="new-api-key" type="text" value="(rb_[^"]+)" readonly', html)
    assert match, "the new key is not on the page"
    return match.group(1)


def key_row(name: str) -> ApiKey:
    db.session.expire_all()
    row = db.session.scalar(select(ApiKey).where(ApiKey.name == name))
    assert row is not None
    return row


def row_of(html: str, name: str) -> str:
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        if f"<strong>{name}</strong>" in row:
            return str(row)
    raise AssertionError(f"no row for {name}")


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(
    browser_client: FlaskClient,
) -> None:
    response = create(browser_client, "shop-web")
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    key = shown_key(html)
    assert '<button type="button" data-copy="new-api-key">Copy</button>' in html
    assert "it will not be shown again" in html
    assert "API key &#39;shop-web&#39; created" in html  # the flash names it, never the key

    assert (live := api_keys.authenticate(key)) and live.id == key_row("shop-web").id
    stored = key_row("shop-web")
    assert stored.key_hash == crypto.hash_api_key(key) and stored.prefix == key[:10]
    assert key not in json.dumps([str(getattr(stored, c.key)) for c in ApiKey.__table__.c])

    again = browser_client.get("/settings/").get_data(as_text=True)
    assert key not in again and "new-api-key" not in again
    assert f"<code>{key[:10]}…</code>" in row_of(again, "shop-web")
    with browser_client.session_transaction() as session:
        assert key not in json.dumps(dict(session), default=str)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("taken", "An API key named &#39;taken&#39; already exists."),
        ("bad name!", "Name must be 1-64 characters: letters, digits, and _ . @ - (not first)."),
        ("-leading", "Name must be 1-64 characters"),
        ("", "Give the key a name."),
        ("x" * 65, "Field cannot be longer than 64 characters."),
    ],
)
def test_a_bad_name_is_refused_beside_the_field(
    browser_client: FlaskClient, name: str, error: str
) -> None:
    taken, _ = api_keys.create("taken")
    taken.created_at = utcnow() - timedelta(hours=1)
    db.session.commit()
    response = create(browser_client, name)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    message = re.search(r'<small id="name-error" class="field-error">([^<]*)</small>', html)
    assert message is not None and error in message.group(1)
    assert 'aria-invalid="true"' in html and "new-api-key" not in html
    assert "The API key was not created" in html
    assert [k.name for k in api_keys.listing()] == ["taken"]


def test_sending_the_create_form_again_says_the_key_was_shown_once(
    browser_client: FlaskClient,
) -> None:
    first = create(browser_client, "shop-web")
    assert first.status_code == 201
    again = create(browser_client, "shop-web")  # a reload re-posts the form
    assert again.status_code == 302
    page = browser_client.get("/settings/").get_data(as_text=True)
    assert "was just created and shown once" in page and "field-error" not in page
    assert [k.name for k in api_keys.listing()] == ["shop-web"]


def test_revoking_a_key_stops_it_authenticating(browser_client: FlaskClient) -> None:
    keep, keep_key = api_keys.create("keep")
    _, gone_key = api_keys.create("gone")
    response = browser_client.post("/settings/api-keys/gone/revoke", headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.strip().startswith('<div id="api-keys">') and "<nav" not in html
    assert "revoked" in row_of(html, "gone") and "Revoke</button>" not in row_of(html, "gone")
    assert "Revoke</button>" in row_of(html, "keep")
    flash = json.loads(response.headers["HX-Trigger"])["flash"]
    assert flash == {
        "text": "API key 'gone' revoked: it no longer authenticates.",
        "category": "success",
    }
    assert api_keys.authenticate(gone_key) is None
    assert (live := api_keys.authenticate(keep_key)) and live.id == keep.id


def test_revoke_works_without_javascript_and_asks_first_with_it(
    browser_client: FlaskClient,
) -> None:
    _, key = api_keys.create("legacy")
    page = browser_client.get("/settings/").get_data(as_text=True)
    form = re.search(r'<form method="post" action="/settings/api-keys/legacy/revoke"[^>]*>', page)
    assert form is not None
    assert 'hx-post="/settings/api-keys/legacy/revoke"' in form.group(0)
    assert "hx-confirm=\"Revoke the API key 'legacy'?" in form.group(0)
    response = browser_client.post("/settings/api-keys/legacy/revoke")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/"
    after = browser_client.get("/settings/").get_data(as_text=True)
    assert "API key &#39;legacy&#39; revoked" in after
    assert api_keys.authenticate(key) is None


def test_revoking_an_unknown_key_says_so(browser_client: FlaskClient) -> None:
    response = browser_client.post(
        "/settings/api-keys/nobody/revoke", headers={"HX-Request": "true"}
    )
    flash = json.loads(response.headers["HX-Trigger"])["flash"]
    assert flash == {"text": "No API key named 'nobody'.", "category": "error"}


def test_the_list_shows_when_each_key_was_last_used(
    browser_client: FlaskClient, client: FlaskClient
) -> None:
    used, used_key = api_keys.create("used")
    api_keys.create("idle")
    answer = client.post(
        "/api/send",
        json={"from": "shop@example.com", "to": ["a@example.org"], "subject": "hi", "text": "hi"},
        headers={"Authorization": f"Bearer {used_key}"},
    )
    assert answer.status_code == 202
    assert key_row("used").last_used_at is not None
    html = browser_client.get("/settings/").get_data(as_text=True)
    assert re.search(
        r'data-label="Last used"><span title="[^"]+">\d+ s ago</span>', row_of(html, "used")
    )
    assert '<span class="muted">never</span>' in row_of(html, "idle")
    assert "state-enabled" in row_of(html, "used")


def test_an_empty_list_says_what_to_do(browser_client: FlaskClient) -> None:
    html = browser_client.get("/settings/").get_data(as_text=True)
    assert "No API keys yet" in html and 'action="/settings/api-keys"' in html


def test_htmx_gets_the_key_list_alone(browser_client: FlaskClient) -> None:
    api_keys.create("shop")
    response = browser_client.get("/settings/", headers={"HX-Request": "true"})
    assert "HX-Request" in response.headers["Vary"]
    html = response.get_data(as_text=True)
    assert html.strip().startswith('<div id="api-keys">') and "<nav" not in html


def test_settings_forms_need_a_csrf_token(browser_client: FlaskClient, app: Flask) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    api_keys.create("victim")
    assert create(browser_client, "sneaky").status_code == 400
    assert browser_client.post("/settings/api-keys/victim/revoke").status_code == 400
    assert key_row("victim").revoked_at is None
    page = browser_client.get("/settings/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token is not None
    made = browser_client.post(
        "/settings/api-keys", data={"name": "proper", "csrf_token": token.group(1)}
    )
    assert made.status_code == 201
    revoked = browser_client.post(
        "/settings/api-keys/victim/revoke",
        headers={"HX-Request": "true", "X-CSRFToken": token.group(1)},
    )
    assert revoked.status_code == 200 and key_row("victim").revoked_at is not None


def test_the_settings_page_keeps_to_the_csp(browser_client: FlaskClient) -> None:
    api_keys.create("shop")
    html = create(browser_client, "billing").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html and "hx-on" not in html


def test_a_key_is_created_with_the_scope_chosen_and_send_by_default(
    browser_client: FlaskClient,
) -> None:
    page = browser_client.get("/settings/").get_data(as_text=True)
    assert '<input checked id="scope-0" name="scope" type="radio" value="send">' in page
    assert create(browser_client, "shop").status_code == 201
    made = browser_client.post("/settings/api-keys", data={"name": "support", "scope": "read-all"})
    assert made.status_code == 201
    assert (key_row("shop").scope, key_row("support").scope) == ("send", "read-all")
    html = made.get_data(as_text=True)
    assert '<option value="read-all" selected>every message</option>' in row_of(html, "support")
    assert '<option value="send" selected>its own messages</option>' in row_of(html, "shop")


def test_an_operator_changes_what_a_key_may_read(browser_client: FlaskClient) -> None:
    _, key = api_keys.create("shop")
    assert api_keys.authenticate(key).scope == "send"  # type: ignore[union-attr]
    response = browser_client.post(
        "/settings/api-keys/shop/scope", data={"scope": "read-all"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    flash = json.loads(response.headers["HX-Trigger"])["flash"]
    assert flash == {"text": "API key 'shop' now reads every message.", "category": "success"}
    assert key_row("shop").scope == "read-all"
    assert api_keys.authenticate(key).scope == "read-all"  # type: ignore[union-attr]
    refused = browser_client.post(
        "/settings/api-keys/shop/scope", data={"scope": "admin"}, headers={"HX-Request": "true"}
    )
    assert json.loads(refused.headers["HX-Trigger"])["flash"]["category"] == "error"
    assert key_row("shop").scope == "read-all"
