"""Pure policies: reply classification, circuit breaker, retry backoff, routing order."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import breaker
from app.domain.breaker import BreakerPolicy, Circuit, CircuitState
from app.domain.replies import Action, Scope, classify_connection_error, classify_reply
from app.domain.retry import RetryPolicy
from app.domain.routing import RelayChoice, failover_order, load_balance_order

T0 = datetime(2026, 11, 22, 12, 0, 0)


@pytest.mark.parametrize(
    ("code", "text", "stage", "action", "scope"),
    [
        (250, "2.0.0 OK queued", "data", Action.DELIVERED, Scope.MESSAGE),
        (421, "Service isn't available, try again later", "mail", Action.FAILOVER, Scope.SERVER),
        (421, "4.3.2 maintenance", "connect", Action.FAILOVER, Scope.SERVER),
        (451, "4.3.0 Mail server temporarily rejected", "data", Action.FAILOVER, Scope.SERVER),
        (452, "4.4.5 Insufficient system storage", "rcpt", Action.FAILOVER, Scope.SERVER),
        (450, "4.7.0 Rate limit exceeded", "mail", Action.THROTTLED, Scope.SERVER),
        (451, "Too many messages, slow down", "rcpt", Action.THROTTLED, Scope.SERVER),
        (451, "Requested action aborted: local error", "data", Action.RETRY, Scope.MESSAGE),
        (450, "4.2.1 Mailbox busy", "rcpt", Action.RETRY, Scope.MESSAGE),
        (535, "5.7.8 Authentication credentials invalid", "auth", Action.AUTH_FAILED, Scope.SERVER),
        (530, "5.7.0 Authentication required", "mail", Action.FAILOVER, Scope.SERVER),
        (550, "5.7.1 Client host blocked using Spamhaus", "mail", Action.FAILOVER, Scope.SERVER),
        (554, "Transaction failed", "data", Action.FAILOVER, Scope.SERVER),
        (550, "5.1.1 No such user", "rcpt", Action.REJECT, Scope.RECIPIENT),
        (553, "5.1.3 Bad recipient address syntax", "rcpt", Action.REJECT, Scope.RECIPIENT),
        (552, "5.3.4 Message too big", "data", Action.REJECT, Scope.MESSAGE),
        (554, "5.6.0 Content rejected", "data", Action.REJECT, Scope.MESSAGE),
        (550, "Mailbox unavailable", "rcpt", Action.REJECT, Scope.RECIPIENT),
        (502, "5.5.1 EHLO not understood", "ehlo", Action.FAILOVER, Scope.SERVER),
    ],
)
def test_replies_are_classified_as_the_design_table_says(
    code: int, text: str, stage: str, action: Action, scope: Scope
) -> None:
    verdict = classify_reply(code, text, stage=stage)
    assert (verdict.action, verdict.scope) == (action, scope)
    assert str(code) in verdict.reason


@pytest.mark.parametrize(
    ("action", "breaker_failure", "fails_over"),
    [
        (Action.FAILOVER, True, True),
        (Action.AUTH_FAILED, True, True),
        (Action.THROTTLED, False, True),
        (Action.RETRY, False, False),
        (Action.REJECT, False, False),
        (Action.UNKNOWN, False, False),
    ],
)
def test_verdict_flags(action: Action, breaker_failure: bool, fails_over: bool) -> None:
    verdict = next(
        v
        for v in (
            classify_reply(421, "x", stage="mail"),
            classify_reply(535, "5.7.8 no", stage="auth"),
            classify_reply(450, "4.7.0 rate", stage="mail"),
            classify_reply(451, "later", stage="data"),
            classify_reply(550, "5.1.1 no", stage="rcpt"),
            classify_connection_error("lost_after_data", "reset"),
        )
        if v.action == action
    )
    assert verdict.breaker_failure is breaker_failure
    assert verdict.fails_over is fails_over


@pytest.mark.parametrize("kind", ["refused", "timeout", "reset", "tls"])
def test_connection_errors_fail_over(kind: str) -> None:
    verdict = classify_connection_error(kind, "detail")
    assert verdict.action == Action.FAILOVER and verdict.breaker_failure


POLICY = BreakerPolicy(failure_threshold=3, open_seconds=1800, success_threshold=2)


def test_the_circuit_opens_after_the_threshold() -> None:
    circuit = Circuit()
    transitions = []
    for i in range(3):
        circuit, t = breaker.record_failure(POLICY, circuit, T0, f"refused {i}")
        transitions.append(t)
    assert transitions[:2] == [None, None]
    assert transitions[2] is not None and transitions[2].after == CircuitState.OPEN
    assert circuit.open_until == T0 + timedelta(minutes=30)
    assert not breaker.allows(circuit, T0 + timedelta(minutes=29))
    assert breaker.allows(circuit, T0 + timedelta(minutes=30))


def test_a_success_resets_the_count() -> None:
    circuit, _ = breaker.record_failure(POLICY, Circuit(), T0, "x")
    circuit, _ = breaker.record_failure(POLICY, circuit, T0, "x")
    circuit, _ = breaker.record_success(POLICY, circuit, T0)
    circuit, t = breaker.record_failure(POLICY, circuit, T0, "x")
    assert circuit.state == CircuitState.CLOSED and circuit.failures == 1 and t is None


def test_half_open_closes_after_enough_successes_and_reopens_on_failure() -> None:
    opened, _ = breaker.force(POLICY, Circuit(), T0, CircuitState.OPEN, "by hand")
    later = T0 + timedelta(minutes=31)
    half, t = breaker.tick(opened, later)
    assert half.state == CircuitState.HALF_OPEN and t is not None
    once, t = breaker.record_success(POLICY, half, later)
    assert once.state == CircuitState.HALF_OPEN and t is None  # needs 2
    closed, t = breaker.record_success(POLICY, once, later)
    assert closed.state == CircuitState.CLOSED and t is not None
    reopened, t = breaker.record_failure(POLICY, half, later, "still down")
    assert reopened.state == CircuitState.OPEN and reopened.open_until == later + timedelta(
        minutes=30
    )


def test_auth_failure_opens_at_once_and_a_probe_only_half_opens() -> None:
    opened, t = breaker.record_failure(POLICY, Circuit(), T0, "535", force_open=True)
    assert opened.state == CircuitState.OPEN and t is not None
    probed, t = breaker.record_probe_success(opened, T0)
    assert probed.state == CircuitState.HALF_OPEN
    again, t = breaker.record_probe_success(probed, T0)
    assert again.state == CircuitState.HALF_OPEN and t is None


@given(st.lists(st.booleans(), max_size=40))
def test_the_breaker_never_closes_from_open_without_a_trial(outcomes: list[bool]) -> None:
    circuit, now = Circuit(), T0
    for ok in outcomes:
        before = circuit.state
        if ok:
            circuit, _ = breaker.record_success(POLICY, circuit, now)
        else:
            circuit, _ = breaker.record_failure(POLICY, circuit, now, "x")
        assert not (before == CircuitState.OPEN and circuit.state == CircuitState.CLOSED)
        assert circuit.failures < POLICY.failure_threshold


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 30, 60), (2, 60, 120), (3, 120, 240), (7, 1800, 3600), (30, 1800, 3600)],
)
def test_backoff_is_exponential_with_jitter_and_capped(
    attempt: int, low: float, high: float
) -> None:
    policy = RetryPolicy(base_seconds=60, max_seconds=3600)
    rng = random.Random(7)
    delays = [policy.delay(attempt, rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # jittered


RELAYS = [
    RelayChoice(1, "ses", priority=30, weight=1),
    RelayChoice(2, "sendgrid", priority=10, weight=6),
    RelayChoice(3, "mailgun", priority=20, weight=3),
    RelayChoice(4, "off", priority=5, enabled=False),
]


def test_failover_order_is_by_priority_without_disabled() -> None:
    assert [r.name for r in failover_order(RELAYS)] == ["sendgrid", "mailgun", "ses"]


def test_load_balance_follows_weights_and_keeps_fallbacks() -> None:
    rng = random.Random(1)
    firsts = [load_balance_order(RELAYS, rng)[0].name for _ in range(3000)]
    share = firsts.count("sendgrid") / len(firsts)
    assert 0.55 < share < 0.65
    unhealthy = [*RELAYS[:2], RelayChoice(3, "mailgun", 20, 3, healthy=False)]
    order = [r.name for r in load_balance_order(unhealthy, rng)]
    assert order[-1] == "mailgun" and sorted(order) == ["mailgun", "sendgrid", "ses"]
