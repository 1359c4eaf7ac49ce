"""Operators: first-run setup, sign-in, access rules, CSRF, security headers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.db import db
from app.models import Operator
from tests.conftest import OPERATOR_EMAIL, OPERATOR_PASSWORD

PAGES = ["/", "/relays/", "/drains/", "/messages/", "/events/", "/suppressions/", "/settings/"]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'"X-CSRFToken": "([^"]+)"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def test_a_fresh_install_leads_to_setup_and_creates_the_first_operator(
    client: FlaskClient,
) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/setup")
    page = client.get("/setup").get_data(as_text=True)
    assert "No operator exists yet" in page and "default password" in page
    token = csrf_of(page)
    short = client.post(
        "/setup",
        data={
            "csrf_token": token,
            "email": "me@example.com",
            "password": "short",
            "confirm": "short",
        },
    )
    assert "At least 12 characters." in short.get_data(as_text=True)
    done = client.post(
        "/setup",
        data={
            "csrf_token": token,
            "email": "Me@Example.com",
            "password": "a long passphrase",
            "confirm": "a long passphrase",
        },
    )
    assert done.status_code == 302
    assert db.session.query(Operator).one().email == "me@example.com"
    assert client.get("/").status_code == 200  # signed in
    assert client.get("/setup").status_code == 404  # closed once an operator exists


@pytest.mark.parametrize("path", PAGES)
def test_every_page_needs_a_signed_in_operator(
    client: FlaskClient, operator: Any, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    htmx = client.get(path, headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and "/login" in htmx.headers["HX-Redirect"]


@pytest.mark.parametrize("path", ["/login", "/healthz"])
def test_public_pages_are_open(client: FlaskClient, operator: Any, path: str) -> None:
    assert client.get(path).status_code == 200


def test_sign_in_and_out(client: FlaskClient, operator: Any) -> None:
    token = csrf_of(client.get("/login").get_data(as_text=True))
    bad = client.post(
        "/login", data={"csrf_token": token, "email": OPERATOR_EMAIL, "password": "wrong password!"}
    )
    assert "do not match" in bad.get_data(as_text=True)
    good = client.post(
        "/login?next=/relays/",
        data={"csrf_token": token, "email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD},
    )
    assert good.status_code == 302 and good.headers["Location"] == "/relays/"
    page = client.get("/").get_data(as_text=True)
    out = client.post("/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 302
    assert client.get("/").status_code == 302


def test_next_never_leads_off_site(client: FlaskClient, operator: Any) -> None:
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login?next=//evil.example.com/",
        data={"csrf_token": token, "email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD},
    )
    assert response.headers["Location"] == "/"


def test_forms_without_a_csrf_token_are_refused(client: FlaskClient, operator: Any) -> None:
    response = client.post("/login", data={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD})
    assert response.status_code == 400 and b"CSRF" in response.data


def test_sign_in_attempts_are_rate_limited(client: FlaskClient, operator: Any) -> None:
    token = csrf_of(client.get("/login").get_data(as_text=True))
    codes = [
        client.post(
            "/login",
            data={"csrf_token": token, "email": OPERATOR_EMAIL, "password": f"guess {i} xxxxxxx"},
        ).status_code
        for i in range(11)
    ]
    assert codes[:10] == [200] * 10 and codes[10] == 429


def test_pages_carry_a_csp_without_inline_scripts(browser_client: FlaskClient) -> None:
    response = browser_client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script on the page"
    assert " style=" not in html and "hx-on" not in html


def test_the_session_cookie_is_lax_and_http_only(
    client: FlaskClient, operator: Any, app: Flask
) -> None:
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"csrf_token": token, "email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD}
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_the_cli_creates_operators(app: Flask) -> None:
    from app.cli import cli

    runner = app.test_cli_runner()
    result = runner.invoke(
        cli, ["operators", "create", "--email", "cli@example.com", "--password", "another long one"]
    )
    assert result.exit_code == 0, result.output
    weak = runner.invoke(
        cli, ["operators", "create", "--email", "x@example.com", "--password", "short"]
    )
    assert weak.exit_code != 0 and "at least 12" in weak.output
