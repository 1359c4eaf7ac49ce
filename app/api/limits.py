"""Rate limits of the JSON API, per API key, with the `limits` library.

Flask-Limiter (used for the sign-in form) resolves its decorators on every request;
on the API's hot path a direct check costs a few microseconds instead. Storage is the
same: memory by default, Redis (RELAYBOARD_RATELIMIT_STORAGE) to share between processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

# Guessing keys: at most this many refused keys a minute from one address.
AUTH_FAILURES = "30 per minute"


@dataclass(frozen=True)
class Refusal:
    """Why a request is over a limit, and when to come back."""

    limit: str
    retry_after: int


class ApiLimits:
    """Per-key request limits and a per-address limit on refused keys."""

    def __init__(self, spec: str, storage_uri: str) -> None:
        self.per_key: list[RateLimitItem] = [] if spec == "off" else parse_many(spec)
        self.auth_failures = parse(AUTH_FAILURES)
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

    def reset(self) -> None:
        """Forget every count (tests)."""
        self.strategy.storage.reset()
