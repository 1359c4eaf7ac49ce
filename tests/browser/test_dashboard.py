"""The operator dashboard in a real browser: relays, live overview, messages, API keys."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveServer
from tests.browser.helpers import (
    add_relay,
    assert_same_window,
    change_relay,
    enqueue,
    message_status,
    relay_names,
    run_pass,
    set_marker,
    sign_in,
)

# Every live panel polls every 2 s: a change shows within a few polls.
LIVE = 8_000


def _row(page: Page, name: str) -> Any:
    """The relays table row of the relay with that name."""
    return page.locator("#relay-rows tr").filter(has=page.get_by_role("link", name=name))


def _nav(page: Page, name: str) -> None:
    """Follow a link of the top navigation."""
    page.get_by_role("banner").get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("banner").get_by_role("link", name=name)).to_have_attribute(
        "aria-current", "page"
    )


def _add_relay_through_form(page: Page, name: str, server: Any) -> None:
    page.goto("/relays/")
    page.get_by_role("button", name="Add relay", exact=True).click()
    expect(page.get_by_role("heading", name="Add a relay")).to_be_visible()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Host", exact=True).fill(server.host)
    page.get_by_label("Port", exact=True).fill(str(server.port))
    page.get_by_label("Security", exact=True).select_option("none")
    page.get_by_role("button", name="Save relay").click()
    expect(page.get_by_text(f"Added {name}. Test its connection next.")).to_be_visible()


def test_add_relay_and_test_its_connection(
    page: Page, live: LiveServer, smtp_server: Any, refusing_server: Any
) -> None:
    sign_in(page, live)
    _add_relay_through_form(page, "local-ok", smtp_server)
    _nav(page, "Relays")
    row = _row(page, "local-ok")
    expect(row).to_contain_text(f"{smtp_server.host}:{smtp_server.port}")
    expect(row.get_by_role("cell", name="none", exact=True)).to_be_visible()
    expect(row.get_by_role("cell", name="enabled", exact=True)).to_be_visible()
    expect(row.get_by_role("cell", name="never", exact=True)).to_be_visible()  # last check

    url = set_marker(page)
    row.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#probe-result")
    expect(result).to_contain_text("connection ok")
    steps = result.get_by_role("listitem")
    expect(steps.filter(has_text="Connect")).to_have_text(re.compile(r"Connect\s+[\d.]+ ms"))
    expect(steps.filter(has_text="EHLO")).to_have_text(re.compile(r"EHLO\s+[\d.]+ ms"))
    expect(page.get_by_role("status").filter(has_text="local-ok: connection ok in")).to_be_visible()
    # The table's "last check" column follows on its next poll.
    expect(row.get_by_role("cell", name=re.compile(r"^ok \d+ ms"))).to_be_visible(timeout=LIVE)
    assert_same_window(page, url)

    _add_relay_through_form(page, "local-refusing", refusing_server)
    _nav(page, "Relays")
    row = _row(page, "local-refusing")
    expect(row).to_contain_text(f"{refusing_server.host}:{refusing_server.port}")
    url = set_marker(page)
    row.get_by_role("button", name="Test", exact=True).click()
    expect(result).to_contain_text("connection failed")
    expect(result.get_by_role("listitem").filter(has_text="Connect")).to_contain_text("refused")
    expect(result.get_by_role("listitem").filter(has_text="EHLO")).to_contain_text("not reached")
    expect(page.locator("#flashes")).to_contain_text(
        "local-refusing: connection failed: connection refused"
    )
    assert_same_window(page, url)


def test_disable_and_enable_a_relay(page: Page, live: LiveServer, smtp_server: Any) -> None:
    add_relay(live, "toggled", smtp_server)
    sign_in(page, live)
    _nav(page, "Relays")
    row = _row(page, "toggled")
    enabled = row.get_by_role("cell", name="enabled", exact=True)
    disabled = row.get_by_role("cell", name="disabled", exact=True)
    expect(enabled).to_be_visible()

    url = set_marker(page)
    row.get_by_role("button", name="Disable toggled").click()
    expect(disabled).to_be_visible()
    expect(enabled).to_have_count(0)
    expect(page.locator("#flashes")).to_contain_text("Disabled toggled: no mail goes through it.")
    assert_same_window(page, url)
    page.reload()
    expect(disabled).to_be_visible()
    expect(row.get_by_role("button", name="Enable toggled")).to_be_visible()

    row.get_by_role("button", name="Enable toggled").click()
    expect(enabled).to_be_visible()
    expect(page.locator("#flashes")).to_contain_text("Enabled toggled.")
    page.reload()
    expect(enabled).to_be_visible()
    expect(row.get_by_role("button", name="Disable toggled")).to_be_visible()


def _names_in_table(page: Page) -> Any:
    return page.locator("#relay-rows tr td[data-label=Name] a")


def _relays_page_with_three(page: Page, live: LiveServer, smtp_server: Any) -> Any:
    """Add alpha, bravo and charlie, open the Relays page; return the names in the table."""
    for name in ("alpha", "bravo", "charlie"):
        add_relay(live, name, smtp_server)
    sign_in(page, live)
    _nav(page, "Relays")
    names = _names_in_table(page)
    expect(names).to_have_text(["alpha", "bravo", "charlie"])
    return names


def _after_a_table_poll(page: Page) -> None:
    """Return just after the table's 2-second poll answered: the next is ~2 s away.

    A poll that lands during a drag breaks it (see test_slow_drag_survives_the_table_poll),
    so the quick drag starts right after one.
    """
    with page.expect_response("**/relays/rows"):
        pass


def _settled(page: Page) -> None:
    """Wait until htmx has settled the last swap (new rows are live only then: before,
    an Enter on a new button is a plain form post, which still works, with a reload)."""
    page.wait_for_function(
        "() => !document.querySelector('.htmx-settling, .htmx-swapping, .htmx-request')"
    )


def test_reorder_relays_by_drag_and_by_buttons(
    page: Page, live: LiveServer, smtp_server: Any
) -> None:
    names = _relays_page_with_three(page, live, smtp_server)

    # Drag charlie's handle onto the top of alpha's row: charlie goes first.
    url = set_marker(page)
    _after_a_table_poll(page)
    handle = _row(page, "charlie").locator(".drag-handle")
    handle.drag_to(_row(page, "alpha"), target_position={"x": 20, "y": 5})
    expect(page.locator("#flashes")).to_contain_text("New order saved.")
    expect(names).to_have_text(["charlie", "alpha", "bravo"])
    assert_same_window(page, url)
    assert relay_names(live) == ["charlie", "alpha", "bravo"]
    page.reload()
    expect(names).to_have_text(["charlie", "alpha", "bravo"])

    # Without a mouse: focus bravo's up arrow and press Enter twice. The table is swapped
    # after each move (and by its poll), and the focus stays on the same arrow.
    up = page.get_by_role("button", name="Move bravo up")
    up.focus()
    page.keyboard.press("Enter")
    expect(names).to_have_text(["charlie", "bravo", "alpha"])
    expect(page.locator("#flashes")).to_contain_text("Moved bravo up.")
    expect(up).to_be_focused()
    _settled(page)
    page.keyboard.press("Enter")
    expect(names).to_have_text(["bravo", "charlie", "alpha"])
    expect(up).to_be_focused()
    _settled(page)
    page.keyboard.press("Enter")
    expect(page.locator("#flashes")).to_contain_text("bravo is already first.")
    page.get_by_role("button", name="Move charlie down").click()
    expect(names).to_have_text(["bravo", "alpha", "charlie"])
    page.reload()
    expect(names).to_have_text(["bravo", "alpha", "charlie"])
    assert relay_names(live) == ["bravo", "alpha", "charlie"]


def test_slow_drag_survives_the_table_poll(page: Page, live: LiveServer, smtp_server: Any) -> None:
    names = _relays_page_with_three(page, live, smtp_server)

    # An operator picks charlie up, hesitates over the table for 3 s (longer than one poll
    # period, so a poll falls inside), then drops it on top of alpha.
    handle = _row(page, "charlie").locator(".drag-handle").bounding_box()
    target = _row(page, "alpha").bounding_box()
    assert handle is not None and target is not None
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(handle["x"] + 10, handle["y"] - 10, steps=5)
    page.wait_for_timeout(3_000)
    page.mouse.move(target["x"] + 20, target["y"] + 5, steps=30)
    # Rest on the drop point a moment, as a hand does: SortableJS ignores the moves made
    # while the rows it just shifted are still animating (120 ms).
    page.wait_for_timeout(250)
    page.mouse.move(target["x"] + 20, target["y"] + 6)
    page.mouse.up()
    expect(names).to_have_text(["charlie", "alpha", "bravo"])
    page.reload()
    expect(names).to_have_text(["charlie", "alpha", "bravo"])


def test_overview_shows_a_circuit_opening_live(
    page: Page, live: LiveServer, smtp_server: Any, refusing_server: Any
) -> None:
    add_relay(live, "primary", refusing_server, breaker_threshold=2)
    add_relay(live, "backup", smtp_server)
    sign_in(page, live)
    url = set_marker(page)
    primary = page.locator("#overview-relays article").filter(
        has=page.get_by_role("heading", name="primary")
    )
    failovers = page.locator("#overview-failovers")
    expect(primary).to_contain_text("closed")
    expect(failovers).to_contain_text("No failovers yet.")

    for subject in ("first", "second", "third"):
        enqueue(live, subject)
        run_pass(live)
    assert smtp_server.wait_for(3)

    note = primary.locator(".circuit-note")
    expect(note).to_have_text(re.compile(r"open until \d\d:\d\d — .*refused"), timeout=LIVE)
    expect(primary.locator(".badge")).to_have_text(["open"])
    row = failovers.get_by_role("row").filter(has_text="primary")
    expect(row.first).to_contain_text("backup", timeout=LIVE)
    expect(row.first).to_contain_text("sent")
    expect(page.locator("#overview-queue .queue-queued .stat")).to_have_text("0")
    assert_same_window(page, url)


def test_retry_a_deferred_message(
    page: Page, live: LiveServer, smtp_server: Any, refusing_server: Any
) -> None:
    relay_id = add_relay(live, "only", refusing_server)
    message = enqueue(live, "Please retry me")
    run_pass(live)
    assert message_status(live, message) == "deferred"

    sign_in(page, live)
    page.goto(f"/messages/{message}")
    header = page.locator("#message-header")
    expect(page.get_by_role("heading", name="Please retry me")).to_be_visible()
    expect(header.locator(".badge")).to_have_text("deferred")
    expect(header).to_contain_text("refused")

    change_relay(live, relay_id, port=smtp_server.port)
    page.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("status")).to_have_text(f"Message {message} retried.")
    expect(header.locator(".badge")).to_have_text("queued")
    expect(page.get_by_role("button", name="Retry now")).to_have_count(0)

    url = set_marker(page)
    run_pass(live)
    assert message_status(live, message) == "sent"
    expect(header.locator(".badge")).to_have_text("sent", timeout=LIVE)
    expect(page.get_by_role("button", name="Cancel message")).to_have_count(0)
    timeline = page.locator("#timeline")
    expect(timeline.locator(".ev-attempt")).to_have_count(2)
    expect(timeline.locator(".ev-attempt").last).to_contain_text("via only")
    assert_same_window(page, url)
    assert len(smtp_server.received) == 1


def test_api_key_is_shown_once(page: Page, live: LiveServer) -> None:
    sign_in(page, live)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    _nav(page, "Settings")
    expect(page.get_by_text("No API keys yet")).to_be_visible()
    page.get_by_label("Name").fill("shop-web")
    page.get_by_role("button", name="Create API key").click()

    expect(page.get_by_text("Your new API key")).to_be_visible()
    key_box = page.get_by_role("textbox", name="New API key")
    key = key_box.input_value()
    assert len(key) >= 20
    copy = page.get_by_role("button", name="Copy")
    copy.click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.get_by_role("row").filter(has_text="shop-web")
    expect(row).to_contain_text("live")

    # Reloading re-sends the form (the key is shown in the POST's answer alone): the key
    # is not shown again, and no second key is made.
    page.reload()
    expect(page.get_by_text("Your new API key")).to_have_count(0)
    expect(key_box).to_have_count(0)
    assert key not in page.content()
    _nav(page, "Settings")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("live")
    expect(page.get_by_text("Your new API key")).to_have_count(0)
    assert key not in page.content()


def test_error_flash_of_a_fragment_is_an_alert(
    page: Page, live: LiveServer, refusing_server: Any
) -> None:
    add_relay(live, "down", refusing_server)
    sign_in(page, live)
    _nav(page, "Relays")
    _row(page, "down").get_by_role("button", name="Test", exact=True).click()
    expect(page.locator("#probe-result")).to_contain_text("connection failed")
    expect(page.get_by_role("alert")).to_have_text("down: connection failed: connection refused")
