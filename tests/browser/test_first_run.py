"""First run in a real browser: setup creates the operator, then sign out and in."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

EMAIL, PASSWORD = "first@example.com", "a long passphrase here"


def test_first_run_setup_then_login(page: Any) -> None:
    page.goto("/")
    assert page.url.endswith("/setup")
    expect(page.get_by_role("heading", name="Welcome to Relayboard")).to_be_visible()
    page.get_by_label("Your email").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Repeat the password").fill("short")
    page.get_by_role("button", name="Create operator and sign in").click()
    expect(page.get_by_text("At least 12 characters.")).to_be_visible()
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Create operator and sign in").click()
    expect(page.get_by_text(f"Welcome, {EMAIL}")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("Signed out.")).to_be_visible()
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill("wrong password!!")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("do not match")).to_be_visible()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Overview")).to_have_attribute("aria-current", "page")
