"""Rate limits, checked directly with the `limits` library (Flask-Limiter's engine).

Flask-Limiter's request hook resolved its decorators on every request, a fifth of an API
request's time; a direct check costs microseconds. Storage: memory by default, Redis
(RELAYBOARD_RATELIMIT_STORAGE) to share the counts between processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Flask
from limits import RateLimitItem, parse, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

# Guessing keys: at most this many refused keys a minute from one address.
AUTH_FAILURES = "30 per minute"
# Guessing operators' passwords: at most this many sign-in attempts a minute per address.
SIGN_INS = "10 per minute"


@dataclass(frozen=True)
class Refusal:
    """Why a request is over a limit, and when to come back."""

    limit: str
    retry_after: int


class RateLimits:
    """Per-key API limits, and per-address limits on refused keys and sign-ins."""

    def __init__(self, spec: str, storage_uri: str) -> None:
        self.per_key: list[RateLimitItem] = [] if spec == "off" else parse_many(spec)
        self.auth_failures = parse(AUTH_FAILURES)
        self.sign_ins = parse(SIGN_INS)
        self.strategy = FixedWindowRateLimiter(storage_from_string(storage_uri))

    def _refusal(self, item: RateLimitItem, *identifiers: str) -> Refusal:
        reset, _remaining = self.strategy.get_window_stats(item, *identifiers)
        return Refusal(str(item), max(1, int(reset - time.time()) + 1))

    def hit_key(self, digest: str) -> Refusal | None:
        """Count a request of an API key; say which limit it is over, if any."""
        for item in self.per_key:
            if not self.strategy.hit(item, "key", digest):
                return self._refusal(item, "key", digest)
        return None

    def guessing(self, address: str) -> Refusal | None:
        """Say whether this address has had too many keys refused lately."""
        if not self.strategy.test(self.auth_failures, "auth-fail", address):
            return self._refusal(self.auth_failures, "auth-fail", address)
        return None

    def refused(self, address: str) -> None:
        """Count a refused key from this address."""
        self.strategy.hit(self.auth_failures, "auth-fail", address)

    def hit_sign_in(self, address: str) -> Refusal | None:
        """Count an operator's sign-in attempt from this address; refuse past the limit."""
        if not self.strategy.hit(self.sign_ins, "sign-in", address):
            return self._refusal(self.sign_ins, "sign-in", address)
        return None

    def reset(self) -> None:
        """Forget every count (tests)."""
        self.strategy.storage.reset()


def of(app: Flask) -> RateLimits:
    """Return an app's rate limits (built once per app, from its settings)."""
    limits: RateLimits | None = app.extensions.get("relayboard_rate_limits")
    if limits is None:
        settings = app.config["RELAYBOARD"]
        limits = RateLimits(settings.api_rate_limit, settings.ratelimit_storage)
        app.extensions["relayboard_rate_limits"] = limits
    return limits
