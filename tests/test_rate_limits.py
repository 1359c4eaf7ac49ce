"""Per-key rate limits on the API, and a limit on guessing keys."""

from __future__ import annotations

from typing import Any

import pytest

from app.services import api_keys


class TestRateLimits:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, str]:
        return {"RELAYBOARD_API_RATE_LIMIT": "3 per minute"}

    def test_each_key_is_limited_with_a_clear_429(
        self, client: Any, auth: dict[str, str], app: Any
    ) -> None:
        statuses = [client.get("/api/messages", headers=auth).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        response = client.get("/api/messages", headers=auth)
        assert response.get_json()["error"]["code"] == "rate_limited"
        assert "3 per 1 minute" in response.get_json()["error"]["message"]
        assert response.headers.get("Retry-After")
        # Another key has its own budget.
        _, other = api_keys.create("other-app")
        ok = client.get("/api/messages", headers={"Authorization": f"Bearer {other}"})
        assert ok.status_code == 200


def test_guessing_keys_is_limited_per_address(client: Any) -> None:
    codes = [
        client.get("/api/messages", headers={"Authorization": f"Bearer rb_guess{i}"}).status_code
        for i in range(31)
    ]
    assert codes[:30] == [401] * 30 and codes[30] == 429


def test_a_blocked_address_is_refused_before_any_lookup_but_a_key_just_seen_live_goes_on(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_keys, "LIVE_FOR", 60.0)  # a slow machine must not end the trust
    _, seen = api_keys.create("busy-app")
    _, unseen = api_keys.create("quiet-app")
    assert (
        client.get("/api/messages", headers={"Authorization": f"Bearer {seen}"}).status_code == 200
    )
    for i in range(31):  # someone behind the same address guesses keys
        client.get("/api/messages", headers={"Authorization": f"Bearer rb_guess{i}"})
    # The key this worker found live within the last second costs no lookup: it goes on.
    ok = client.get("/api/messages", headers={"Authorization": f"Bearer {seen}"})
    assert ok.status_code == 200
    # Any other key from the address waits, valid or not: the lookup is what is limited.
    for key in (unseen, "rb_guess99"):
        refused = client.get("/api/messages", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 429, key
        assert "too many refused API keys" in refused.get_json()["error"]["message"]
    # When its trust runs out (here: emptied), the seen key is looked up again and waits.
    api_keys._live.clear()
    again = client.get("/api/messages", headers={"Authorization": f"Bearer {seen}"})
    assert again.status_code == 429


def _redis_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")
def test_two_processes_share_a_keys_limit_through_redis(tmp_path: Any) -> None:
    from app import create_app
    from app.db import db
    from tests.conftest import make_settings

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    overrides = {
        "RELAYBOARD_API_RATE_LIMIT": "3 per minute",
        "RELAYBOARD_RATELIMIT_STORAGE": "redis://127.0.0.1:6379",
    }
    first = create_app({"SETTINGS": make_settings(tmp_path / "a", url, **overrides)})
    second = create_app({"SETTINGS": make_settings(tmp_path / "b", url, **overrides)})
    with first.app_context():
        db.create_all()
        _, key = api_keys.create("shared")  # a fresh key: its own counter in Redis
    auth = {"Authorization": f"Bearer {key}"}
    codes = []
    for app in (first, second, first, second):
        with app.app_context():
            codes.append(app.test_client().get("/api/messages", headers=auth).status_code)
    for app in (first, second):
        with app.app_context():
            db.engine.dispose()
    assert codes == [200, 200, 200, 429]


def test_api_and_health_responses_set_no_session_cookie(client: Any, auth: dict[str, str]) -> None:
    for response in (
        client.get("/api/messages", headers=auth),
        client.post("/api/send", json={"to": []}, headers=auth),
        client.get("/healthz"),
    ):
        assert "Set-Cookie" not in response.headers
        assert "Cookie" not in response.headers.get("Vary", "")
