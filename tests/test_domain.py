"""Pure policies: reply classification, the attempt judge, breaker, retry backoff, routing."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import breaker, providers, routing, webhooks
from app.domain.breaker import BreakerPolicy, Circuit, CircuitState
from app.domain.judge import Lesson, judge, passed_on
from app.domain.replies import Action, Scope, Verdict, classify_connection_error, classify_reply
from app.domain.retry import RetryPolicy

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


@dataclass(frozen=True)
class View:
    """A relay as routing sees it (app.domain.routing.Routable)."""

    id: int
    name: str
    priority: int
    weight: int = 1
    enabled: bool = True
    unusable: str | None = None
    circuit: Circuit = Circuit()
    cooldown_until: datetime | None = None
    trial_in_flight: bool = False
    down: str | None = None
    maintenance: str | None = None
    maintenance_policy: str = "reroute"


RELAYS = [
    View(1, "ses", priority=30, weight=1),
    View(2, "sendgrid", priority=10, weight=6),
    View(3, "mailgun", priority=20, weight=3),
    View(4, "off", priority=5, enabled=False),
]
OPEN = Circuit(CircuitState.OPEN, open_until=T0 + timedelta(minutes=30), reason="refused")


def test_failover_order_is_by_priority_without_disabled() -> None:
    assert [r.name for r in routing.order(RELAYS)] == ["sendgrid", "mailgun", "ses"]


def test_load_balance_follows_weights_and_keeps_fallbacks() -> None:
    rng = random.Random(1)
    firsts = [routing.order(RELAYS, routing.LOAD_BALANCE, rng)[0].name for _ in range(3000)]
    share = firsts.count("sendgrid") / len(firsts)
    assert 0.55 < share < 0.65
    unhealthy = [*RELAYS[:2], View(3, "mailgun", 20, 3, circuit=OPEN)]
    order = [r.name for r in routing.order(unhealthy, routing.LOAD_BALANCE, rng)]
    assert order[-1] == "mailgun" and sorted(order) == ["mailgun", "sendgrid", "ses"]


def test_a_pinned_message_routes_through_its_relay_alone_enabled_or_not() -> None:
    assert [r.name for r in routing.route(RELAYS, pinned=4)] == ["off"]
    assert routing.skip_reason(RELAYS[3], T0, pinned=True) is None
    assert routing.skip_reason(RELAYS[3], T0) == "disabled"


@pytest.mark.parametrize(
    ("relay", "reason"),
    [
        (View(1, "a", 1), None),
        (View(1, "a", 1, enabled=False), "disabled"),
        (View(1, "a", 1, unusable="its password cannot be decrypted"), "unusable: its password"),
        (View(1, "a", 1, down="refused at connect"), "down for this pass: refused"),
        (View(1, "a", 1, circuit=OPEN), "circuit open until 12:30: refused"),
        (View(1, "a", 1, cooldown_until=T0 + timedelta(seconds=30)), "cooling down"),
        (
            View(1, "a", 1, circuit=Circuit(CircuitState.HALF_OPEN), trial_in_flight=True),
            "circuit half-open: a trial is in flight",
        ),
        (View(1, "a", 1, trial_in_flight=True), None),  # closed: no trial to wait for
        (View(1, "a", 1, circuit=replace(OPEN, open_until=T0)), None),  # its timeout passed
    ],
)
def test_a_relay_is_skipped_with_the_reason(relay: View, reason: str | None) -> None:
    found = routing.skip_reason(relay, T0)
    assert found == reason if reason is None else found is not None and found.startswith(reason)


def test_the_last_resort_is_the_last_relay_a_message_could_still_use() -> None:
    route = [View(1, "a", 1), View(2, "b", 2, circuit=OPEN), View(3, "c", 3, down="refused")]
    assert routing.last_resort(route, 0, T0)  # b and c cannot take it now
    assert not routing.last_resort([View(1, "a", 1), View(2, "b", 2)], 0, T0)
    assert routing.last_resort([View(1, "a", 1)], 0, T0)  # a pinned route: nowhere else


# -- the attempt judge: verdicts per recipient → outcome, the relay's lesson, slow start ---

OK = classify_reply(250, "2.0.0 queued", stage="data")
GONE = classify_reply(550, "5.1.1 No such user", stage="rcpt")
BUSY = classify_reply(450, "4.2.1 Mailbox busy", stage="rcpt")
DOWN = classify_reply(421, "4.3.2 maintenance", stage="rcpt")
SLOW = classify_reply(450, "4.7.1 rate limited", stage="rcpt")
AUTH = classify_reply(535, "5.7.8 bad credentials", stage="auth")
POLICY_REFUSAL = classify_reply(550, "5.7.1 blocklisted", stage="mail")
REFUSED = classify_connection_error("refused", "connection refused")
LOST = classify_connection_error("lost_after_data", "reset")
NO_UTF8 = classify_connection_error("capability", "no SMTPUTF8")


@pytest.mark.parametrize(
    ("verdicts", "overall", "outcome", "lesson", "proved", "places"),
    [
        # every recipient delivered
        ({"a": OK, "b": OK}, OK, "sent", Lesson.SUCCESS, True, "a:d b:d"),
        # one mailbox refused, one delivered: a partial delivery, the relay works
        ({"a": OK, "b": GONE}, OK, "partial", Lesson.SUCCESS, True, "a:d b:x"),
        # every mailbox refused: no failover, and the relay still proved it answers
        ({"a": GONE}, GONE, "rejected", Lesson.NOTHING, True, "a:x"),
        # a busy mailbox: retried later on this relay, which says nothing of the relay
        ({"a": BUSY}, BUSY, "deferred", Lesson.NOTHING, None, "a:r"),
        # a server-level refusal of one recipient counts against the relay, whatever the order
        ({"a": GONE, "b": DOWN}, OK, "failover", Lesson.FAILURE, False, "a:x b:f"),
        ({"a": DOWN, "b": GONE}, OK, "failover", Lesson.FAILURE, False, "a:f b:x"),
        # delivered to one while the relay throttled another: a success, the other fails over
        ({"a": OK, "b": SLOW}, OK, "partial", Lesson.SUCCESS, True, "a:d b:f"),
        # throttled: cool it down, fail over, and it is not proven
        ({"a": SLOW}, SLOW, "failover", Lesson.THROTTLE, False, "a:f"),
        # a throttle beside a server refusal: the refusal speaks for the relay
        ({"a": SLOW, "b": DOWN}, SLOW, "failover", Lesson.FAILURE, False, "a:f b:f"),
        # the session failed as a whole
        ({"a": REFUSED, "b": REFUSED}, REFUSED, "failover", Lesson.FAILURE, False, "a:f b:f"),
        ({"a": AUTH}, AUTH, "failover", Lesson.AUTH_FAILURE, False, "a:f"),
        ({"a": POLICY_REFUSAL}, POLICY_REFUSAL, "failover", Lesson.FAILURE, False, "a:f"),
        # the reply was lost after the final dot: unknown, retried later, no lesson
        ({"a": LOST}, LOST, "unknown", Lesson.NOTHING, None, "a:u"),
        # the relay lacks SMTPUTF8: next relay, not the relay's fault
        ({"a": NO_UTF8}, NO_UTF8, "failover", Lesson.NOTHING, None, "a:f"),
    ],
)
def test_an_attempt_is_judged_as_the_table_says(
    verdicts: dict[str, Verdict],
    overall: Verdict,
    outcome: str,
    lesson: Lesson,
    proved: bool | None,
    places: str,
) -> None:
    judgement = judge(verdicts, overall)
    assert (judgement.outcome, judgement.lesson, judgement.proved) == (outcome, lesson, proved)
    where = {r: "d" for r in judgement.delivered}
    where |= {r: "x" for r in judgement.rejected} | {r: "f" for r in judgement.fail_over}
    where |= {r: "u" if r in judgement.unknown else "r" for r in judgement.retry}
    assert " ".join(f"{r}:{where[r]}" for r in sorted(where)) == places
    if lesson in (Lesson.FAILURE, Lesson.AUTH_FAILURE, Lesson.THROTTLE):
        assert judgement.reason in {v.reason for v in verdicts.values()}


def test_a_relay_that_passes_a_message_on_learns_nothing() -> None:
    judgement = passed_on(["a", "b"], "not answering: its first attempt is pending")
    assert judgement.fail_over == ("a", "b") and judgement.lesson == Lesson.NOTHING
    assert judgement.proved is None


# -- maintenance in routing -------------------------------------------------------------


def test_a_relay_in_maintenance_is_skipped_with_the_reason() -> None:
    relay = View(1, "ms", priority=10, maintenance="since 10:00 UTC, by webhook")
    assert routing.skip_reason(relay, T0) == "in maintenance since 10:00 UTC, by webhook"


@pytest.mark.parametrize(
    ("route", "pinned", "first"),
    [
        ([View(1, "a", 10), View(2, "b", 20)], False, "a"),
        ([View(1, "a", 10, enabled=False), View(2, "b", 20)], False, "b"),
        ([View(1, "a", 10, unusable="no key"), View(2, "b", 20)], False, "b"),
        ([View(1, "a", 10, enabled=False)], True, "a"),  # pinned: enabled or not
        ([View(1, "a", 10, circuit=Circuit(CircuitState.OPEN))], False, "a"),  # circuits aside
        ([View(1, "a", 10, unusable="no key")], False, None),
    ],
)
def test_first_choice(route: list[View], pinned: bool, first: str | None) -> None:
    chosen = routing.first_choice(route, pinned=pinned)
    assert (chosen.name if chosen else None) == first


@pytest.mark.parametrize(
    ("maintenance", "policy", "holds"),
    [(None, "hold", False), ("since 10:00", "hold", True), ("since 10:00", "reroute", False)],
)
def test_holds(maintenance: str | None, policy: str, holds: bool) -> None:
    relay = View(1, "a", 10, maintenance=maintenance, maintenance_policy=policy)
    assert routing.holds(relay) is holds
    assert routing.holds(None) is False


# -- providers --------------------------------------------------------------------------

MAINTENANCE_TEXT = "Service isn't available, try again later"


@pytest.mark.parametrize(
    ("provider", "code", "text", "carried", "meaning"),
    [
        ("mailersend", 421, MAINTENANCE_TEXT, 0, providers.ReplyMeaning.MAINTENANCE),
        ("mailersend", 421, MAINTENANCE_TEXT, 7, providers.ReplyMeaning.MAINTENANCE),
        (
            "mailersend",
            421,
            "4.7.0 Too many messages on this connection",
            5,
            providers.ReplyMeaning.RECYCLE,
        ),
        ("mailersend", 421, "4.7.0 Too many messages on this connection", 2, None),
        ("mailersend", 451, MAINTENANCE_TEXT, 0, None),
        ("generic", 421, MAINTENANCE_TEXT, 0, None),  # no knowledge: DESIGN's table applies
        ("sendgrid", 421, MAINTENANCE_TEXT, 9, None),
    ],
)
def test_what_a_provider_means_by_a_reply(
    provider: str, code: int, text: str, carried: int, meaning: providers.ReplyMeaning | None
) -> None:
    assert providers.reply_meaning(provider, code, text, carried) == meaning


def test_signatures_are_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"type":"maintenance.start"}'
    good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert providers.signature("s3cret", body) == good
    assert providers.signed_by("s3cret", body, good)
    assert providers.signed_by("s3cret", body, good.upper() + "\n")
    assert not providers.signed_by("s3cret", body + b" ", good)
    assert not providers.signed_by("other", body, good)
    assert not providers.signed_by("s3cret", body, "")
    assert not providers.signed_by("s3cret", body, "é" * 64)


# -- webhook bodies ---------------------------------------------------------------------


def test_a_current_maintenance_event_is_keyed_by_its_body() -> None:
    body = (
        b'{"type": "maintenance.start", "created_at": "2025-08-05 22:27:14", '
        b'"data": {"domain_id": "d1"}}'
    )
    event = webhooks.parse(body)
    assert (event.type, event.event_id, event.domain_id) == ("maintenance.start", None, "d1")
    assert event.identity == "sha256:" + hashlib.sha256(body).hexdigest()


def test_a_current_activity_event_is_keyed_by_its_id() -> None:
    body = json.dumps(
        {
            "type": "activity.delivered",
            "created_at": "2025-08-05 22:27:14",
            "data": {
                "id": "ev1",
                "message_id": "m1",
                "email_id": "e1",
                "type": "delivered",
                "email": "alice@example.org",
                "tags": [],
            },
        }
    ).encode()
    event = webhooks.parse(body)
    assert (event.identity, event.email, event.email_id, event.message_id) == (
        "id:ev1",
        "alice@example.org",
        "e1",
        "m1",
    )


def test_a_legacy_activity_event() -> None:
    body = json.dumps(
        {
            "type": "activity.hard_bounced",
            "domain_id": "d1",
            "created_at": "2025-08-05 22:27:14",
            "webhook_id": "w1",
            "url": "https://relay.example.com/hooks/mailersend",
            "data": {
                "object": "activity",
                "id": "ev2",
                "type": "hard_bounced",
                "email": {
                    "id": "e2",
                    "message": {"id": "m2"},
                    "recipient": {"email": "bob@example.org"},
                    "status": "rejected",
                },
            },
        }
    ).encode()
    event = webhooks.parse(body)
    assert (event.identity, event.domain_id, event.email, event.email_id, event.message_id) == (
        "id:ev2",
        "d1",
        "bob@example.org",
        "e2",
        "m2",
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"data": {}}', "no `type`"),
        (b'{"type": 5}', "no `type`"),
        (b"\xff\xfe", "not JSON"),
        (b'{"type": "x", "pad": "' + b"a" * 300_000 + b'"}', "larger than"),
    ],
)
def test_unreadable_bodies_say_why(body: bytes, why: str) -> None:
    with pytest.raises(webhooks.WebhookError, match=why):
        webhooks.parse(body)
