"""Delivery under failure: edge cases against real aiosmtpd servers and real SQLite.

The first group reproduces defects a review found (each failed before its fix): a failed
outcome write, a lost pool wake-up, the deadline after the final dot, unrenewed leases, a
full mailbox taken for throttling, an operator's circuit overwritten, a crash resending,
recipient order deciding the breaker, a missing SMTPUTF8. The rest pin down edge cases
that behave as DESIGN.md says.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app.db import db
from app.domain.mime import BuiltMessage
from app.models import Attempt, Message, Relay, utcnow
from app.services import queue
from app.services.delivery import DeliveryEngine, PassReport
from app.services.delivery.engine import Pass
from app.services.delivery.message import MessageDelivery

# -- helpers -----------------------------------------------------------------------------


def message(pk: int) -> Message:
    db.session.expire_all()
    row = db.session.get(Message, pk)
    assert row is not None
    return row


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def make_due() -> None:
    db.session.execute(
        update(Message).where(Message.next_attempt_at.is_not(None)).values(next_attempt_at=utcnow())
    )
    db.session.commit()


def assert_nothing_lost() -> None:
    """No message is left in `sending`, and every waiting message has a time to retry."""
    db.session.expire_all()
    for row in db.session.scalars(select(Message)):
        assert row.status != "sending", (row.id, row.status)
        if row.status in ("queued", "deferred"):
            assert row.next_attempt_at is not None, (row.id, row.status)


def open_circuit(name: str, reason: str) -> Any:
    """The statement that opens a relay's circuit for ten minutes, as an operator would."""
    now = utcnow()
    return (
        update(Relay)
        .where(Relay.name == name)
        .values(
            circuit_state="open",
            circuit_open_until=now + timedelta(minutes=10),
            circuit_reason=reason,
            circuit_changed_at=now,
        )
    )


def engine_with(app: Any, **changes: Any) -> DeliveryEngine:
    return DeliveryEngine(db.engine, replace(app.config["RELAYBOARD"], **changes))


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[Pass]:
    """Every pass the test runs, with the loop it ran on (for tests that reach inside one)."""
    seen: list[Pass] = []
    run = Pass.run

    async def spy(self: Pass) -> PassReport:
        self.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
        seen.append(self)
        return await run(self)

    monkeypatch.setattr(Pass, "run", spy)
    return seen


class Drain:
    """A pass running in a thread, which a test can wait for, stop, or unstick."""

    def __init__(self, engine: DeliveryEngine, passes: list[Pass]) -> None:
        self.engine = engine
        self.passes = passes
        self.stop = threading.Event()
        self.report: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.report = self.engine.run_pass(stop=self.stop)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def ended(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def abort(self) -> None:
        """Set the stop flag; wake any sender stuck in a pool; wait for the thread."""
        self.stop.set()
        if not self.ended(0.5) and self.passes:

            async def wake(pool: Any) -> None:
                async with pool._changed:
                    pool.down = "test cleanup"
                    pool._changed.notify_all()

            running = self.passes[-1]
            for state in running.relays.values():
                asyncio.run_coroutine_threadsafe(wake(state.pool), running.loop)  # type: ignore[attr-defined]
        self.ended(10)


def utf8_message(recipient: str) -> BuiltMessage:
    mid = f"<{time.time_ns()}@example.com>"
    head = f"From: shop@example.com\r\nTo: {recipient}\r\nMessage-ID: {mid}\r\n"
    data = (head + "Subject: hi\r\n\r\nhi\r\n").encode()
    return BuiltMessage("shop@example.com", [recipient], mid, "hi", "shop@example.com", [], data)


# -- bugs --------------------------------------------------------------------------------


def test_a_failed_outcome_write_does_not_hang_the_drain_or_lose_outcomes(
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    app: Any,
    passes: list[Pass],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_relay("primary", smtp_server)
    smtp_server.delay("data", 0.2)
    ids = [send()["id"] for _ in range(4)]
    engine = engine_with(app, sessions_per_relay=1)
    write = Pass.write
    calls = 0

    def flaky(self: Pass, outcomes: Any, released: Any, changes: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # one transient "database is locked"
            raise OperationalError("UPDATE messages", {}, Exception("database is locked"))
        write(self, outcomes, released, changes)

    monkeypatch.setattr(Pass, "write", flaky)
    drain = Drain(engine, passes)
    try:
        ended = drain.ended(3)
    finally:
        drain.abort()
    assert ended, "the drain never returned"
    assert drain.error is None
    assert {message(pk).status for pk in ids} == {"sent"}
    assert len(smtp_server.received) == 4


def test_a_circuit_opened_mid_pass_does_not_strand_waiters_in_the_pool(
    smtp_server_factory: Any,
    add_relay: Any,
    send: Any,
    app: Any,
    passes: list[Pass],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, second, third = smtp_server_factory(), smtp_server_factory(), smtp_server_factory()
    primary.delay("rcpt", 0.5)
    primary.reject_recipient("ghost@example.org")
    add_relay("primary", primary, priority=1)
    add_relay("second", second, priority=2)
    add_relay("third", third, priority=3)
    ids = [send(to=["alice@example.org"])["id"]]
    ids += [send(to=["ghost@example.org"])["id"] for _ in range(3)]
    # Three senders, one session: one message in flight, two waiting in the pool.
    engine = engine_with(app, sessions_per_relay=1, connect_patience=5.0)
    claim = Pass.claim_batch
    database = db.engine
    forced = False

    def claim_and_force_open(self: Pass, limit: int) -> Any:
        # Another instance (or an operator) opens the circuit once the first delivery is
        # recorded, while the second message is in its RCPT and two more wait for a session.
        nonlocal forced
        if not forced:
            with database.begin() as conn:
                seen = conn.execute(
                    select(Relay.last_success_at).where(Relay.name == "primary")
                ).scalar()
                if seen is not None:
                    conn.execute(open_circuit("primary", "opened elsewhere"))
                    forced = True
        return claim(self, limit)

    monkeypatch.setattr(Pass, "claim_batch", claim_and_force_open)
    drain = Drain(engine, passes)
    try:
        ended = drain.ended(3)
    finally:
        drain.abort()
    assert forced
    assert ended, "a sender waits forever in RelayPool.acquire"
    assert_nothing_lost()


def test_the_attempt_deadline_after_the_final_dot_is_an_unknown_outcome(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    # Each command answers within the command timeout; the attempt as a whole does not.
    primary.delay("mail", 0.8)
    primary.delay("rcpt", 0.8)
    primary.hang_after_data()
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    queued = send()
    engine_with(app, command_timeout=1.0, attempt_deadline=2.0).run_pass()
    assert [m.message_id for m in primary.hung] == [queued["message_id"]]  # the relay has it
    row = message(queued["id"])
    assert backup.received == [], "sent a second copy through the backup"
    assert row.status == "deferred" and "outcome unknown" in (row.last_error or "")
    assert relay("primary").circuit_failures == 0


def test_a_pass_longer_than_the_lease_does_not_duplicate_mail(
    smtp_server: Any, add_relay: Any, send: Any, app: Any, passes: list[Pass]
) -> None:
    add_relay("primary", smtp_server, max_rate=4.0)  # an operator-paced relay: 4 msg/s
    for _ in range(8):
        send()
    slow = engine_with(app, sessions_per_relay=1, lease_seconds=1)
    drain = Drain(slow, passes)
    try:
        time.sleep(1.3)  # the lease of everything claimed at the start has expired
        engine_with(app, sessions_per_relay=1).run_pass()  # a second worker's pass
        ended = drain.ended(10)
    finally:
        drain.abort()
    assert ended and drain.error is None
    copies = Counter(r.message_id for r in smtp_server.received)
    assert len(copies) == 8
    assert max(copies.values()) == 1, copies


def test_a_full_mailbox_is_a_retry_not_a_relay_throttle(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    # Gmail's wording for a full mailbox.
    primary.reject_recipient(
        "full@example.org", 452, "4.2.2 The email account that you tried to reach is over quota"
    )
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    full = send(to=["full@example.org"])["id"]
    other = send(to=["alice@example.org"])["id"]
    # A patience no busy machine runs out of: while the primary's first attempt is under
    # way the other message waits for it, and this test is about what the 452 teaches.
    engine_with(app, sessions_per_relay=1, connect_patience=30.0).run_pass()
    assert message(full).status == "deferred"
    assert relay("primary").cooldown_until is None
    assert backup.received == []
    assert message(other).relay_id == relay("primary").id


def test_a_crashed_delivery_keeps_the_recipients_still_owed(
    smtp_server: Any, add_relay: Any, send: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_relay("primary", smtp_server)
    smtp_server.reject_recipient("b@example.org", 450, "4.2.1 Mailbox busy")
    queued = send(to=["a@example.org", "b@example.org"])
    engine_with(app).run_pass()
    assert message(queued["id"]).pending_recipients == ["b@example.org"]

    async def boom(*_args: Any) -> Any:
        raise RuntimeError("a bug in the engine")

    with monkeypatch.context() as patched:
        patched.setattr(MessageDelivery, "_attempt", boom)
        make_due()
        engine_with(app).run_pass()
    assert "internal error" in (message(queued["id"]).last_error or "")
    smtp_server.reset()
    make_due()
    engine_with(app).run_pass()
    delivered = [r for got in smtp_server.received for r in got.rcpt_tos]
    assert sorted(delivered) == ["a@example.org", "b@example.org"], delivered


def test_a_relay_without_smtputf8_fails_over_instead_of_failing_the_message(
    smtp_server_factory: Any, add_relay: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary._controller.SMTP_kwargs["enable_SMTPUTF8"] = False
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    queued = queue.enqueue(utf8_message("jösé@example.org"))
    engine_with(app).run_pass()
    row = message(queued.id)
    assert row.status == "sent", row.last_error
    assert [r.rcpt_tos for r in backup.received] == [["jösé@example.org"]]


def test_the_breaker_counts_a_server_refusal_whatever_the_recipient_order(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.reject_recipient("ghost@example.org", 550, "5.1.1 No such user")
    primary.reject_recipient("busy@example.org", 451, "4.3.0 Temporary system problem")
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    queued = send(to=["ghost@example.org", "busy@example.org"])
    engine_with(app).run_pass()
    assert [r.rcpt_tos for r in backup.received] == [["busy@example.org"]]
    assert message(queued["id"]).status == "sent"
    assert relay("primary").circuit_failures == 1


def test_an_operator_forcing_a_circuit_open_mid_pass_is_not_overwritten(
    smtp_server_factory: Any,
    add_relay: Any,
    send: Any,
    app: Any,
    passes: list[Pass],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.services import relays

    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.fail("mail", 421, "4.3.2 Service not available", times=1)  # one breaker failure
    backup.delay("data", 0.8)  # the message is still failing over when the operator acts
    add_relay("primary", primary, priority=1, breaker_threshold=3)
    add_relay("backup", backup, priority=2)
    queued = send()
    engine = engine_with(app)
    claim = Pass.claim_batch
    forced_while_dirty: list[bool] = []

    def claim_and_force(self: Pass, limit: int) -> Any:
        state = next((s for s in self.relays.values() if s.name == "primary"), None)
        if not forced_while_dirty and state is not None and state.circuit.failures:
            with app.app_context():
                relays.force_circuit(relays.get("primary"), "open", "provider incident", "ops")
            forced_while_dirty.append(state.dirty)
        return claim(self, limit)

    monkeypatch.setattr(Pass, "claim_batch", claim_and_force)
    engine.run_pass()
    assert forced_while_dirty == [True]
    assert message(queued["id"]).status == "sent"
    row = relay("primary")
    assert row.circuit_state == "open", "the operator's forced-open circuit was reverted"


# -- confirmed correct ------------------------------------------------------------------


def test_a_421_at_rcpt_is_one_breaker_failure_not_one_per_recipient(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.fail("rcpt", 421, "4.3.2 Service shutting down")
    add_relay("primary", primary, priority=1, breaker_threshold=3)
    add_relay("backup", backup, priority=2)
    to = [f"r{i}@example.org" for i in range(5)]
    queued = send(to=to)
    engine_with(app).run_pass()
    (got,) = backup.wait_for(1)
    assert sorted(got.rcpt_tos) == to
    assert message(queued["id"]).status == "sent"
    row = relay("primary")
    assert (row.circuit_state, row.circuit_failures) == ("closed", 1)


def test_a_session_is_not_reused_after_a_421_but_is_after_an_rset(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    add_relay("primary", smtp_server, breaker_threshold=5)
    smtp_server.reject_recipient("ghost@example.org")
    ghost = send(to=["ghost@example.org"])["id"]  # 550 5.1.1, then RSET: session kept
    ok = send()["id"]
    engine_with(app, sessions_per_relay=1).run_pass()
    assert (message(ghost).status, message(ok).status) == ("failed", "sent")
    assert smtp_server.connections == 1
    smtp_server.fail("mail", 421, "4.3.2 Going down", times=1)  # 421 closes: a new session
    first, second = send()["id"], send()["id"]
    engine_with(app, sessions_per_relay=1).run_pass()
    assert (message(first).status, message(second).status) == ("deferred", "sent")
    assert smtp_server.connections == 3  # this pass: one session per message
    assert len(smtp_server.received) == 2


def test_recipient_rejections_and_temporary_failures_never_count_against_the_breaker(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    add_relay("primary", smtp_server, breaker_threshold=1)
    smtp_server.reject_recipient("ghost@example.org")
    smtp_server.fail("data", 451, "4.5.0 Local error", times=3)
    ids = [send(to=["ghost@example.org"])["id"] for _ in range(3)]
    ids += [send()["id"] for _ in range(3)]
    engine_with(app, sessions_per_relay=1).run_pass()
    assert [message(pk).status for pk in ids] == ["failed"] * 3 + ["deferred"] * 3
    row = relay("primary")
    assert (row.circuit_state, row.circuit_failures, row.cooldown_until) == ("closed", 0, None)


def test_load_balancing_never_touches_an_open_circuit(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    heavy, light = smtp_server_factory(), smtp_server_factory()
    add_relay("heavy", heavy, priority=1, weight=100)
    add_relay("light", light, priority=2, weight=1)
    db.session.execute(
        update(Relay)
        .where(Relay.name == "heavy")
        .values(circuit_state="open", circuit_open_until=utcnow() + timedelta(minutes=10))
    )
    db.session.commit()
    ids = [send()["id"] for _ in range(10)]
    engine_with(app, routing="load_balance").run_pass()
    assert heavy.connections == 0 and len(light.wait_for(10)) == 10
    assert {message(pk).status for pk in ids} == {"sent"}
    assert relay("heavy").circuit_state == "open"


def test_half_open_allows_exactly_one_trial(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.fail("mail", 421, "4.3.2 Still in maintenance")
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    db.session.execute(
        update(Relay)
        .where(Relay.name == "primary")
        .values(circuit_state="open", circuit_open_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    ids = [send()["id"] for _ in range(8)]
    engine_with(app).run_pass()
    backup.wait_for(8)
    assert primary.connections == 1
    assert {message(pk).status for pk in ids} == {"sent"}
    row = relay("primary")
    assert row.circuit_state == "open"
    assert row.circuit_open_until is not None and row.circuit_open_until > utcnow()


def test_a_pinned_message_never_fails_over(
    refusing_server: Any, smtp_server: Any, add_relay: Any, app: Any
) -> None:
    add_relay("primary", smtp_server, priority=1)
    pinned = add_relay("pinned", refusing_server, priority=2)
    queued = queue.enqueue(utf8_message("me@example.org"), pinned_relay_id=pinned.id)
    engine_with(app).run_pass()
    row = message(queued.id)
    assert row.status == "deferred" and "refused" in (row.last_error or "")
    assert smtp_server.connections == 0
    assert_nothing_lost()


def test_smtputf8_addresses_go_through_a_relay_that_supports_them(
    smtp_server: Any, add_relay: Any, app: Any
) -> None:
    add_relay("primary", smtp_server)
    queued = queue.enqueue(utf8_message("jösé@example.org"))
    engine_with(app).run_pass()
    (got,) = smtp_server.wait_for(1)
    assert got.rcpt_tos == ["jösé@example.org"]
    assert message(queued.id).status == "sent"


def test_stop_mid_pass_leaves_every_claimed_message_accounted_for(
    smtp_server: Any, add_relay: Any, send: Any, app: Any, passes: list[Pass]
) -> None:
    add_relay("primary", smtp_server)
    smtp_server.delay("data", 0.05)
    ids = [send()["id"] for _ in range(20)]
    engine = engine_with(app, sessions_per_relay=1, batch_size=4)
    drain = Drain(engine, passes)
    try:
        smtp_server.wait_for(2)
        drain.stop.set()
        assert drain.ended(10) and drain.error is None
    finally:
        drain.abort()
    statuses = Counter(message(pk).status for pk in ids)
    assert statuses["sent"] == drain.report.sent == len(smtp_server.received)
    assert statuses["sent"] + statuses["queued"] == 20 and statuses["queued"] > 0
    assert_nothing_lost()


def test_a_mixed_pass_leaves_no_session_or_message_behind(
    refusing_server: Any,
    smtp_server_factory: Any,
    add_relay: Any,
    send: Any,
    app: Any,
    passes: list[Pass],
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.reject_recipient("ghost@example.org")
    primary.reject_recipient("busy@example.org", 450, "4.2.1 Mailbox busy")
    add_relay("dead", refusing_server, priority=1)
    add_relay("primary", primary, priority=2, max_per_connection=3)
    add_relay("backup", backup, priority=3)
    for to in (["ghost@example.org"], ["busy@example.org", "a@example.org"], ["b@example.org"]):
        for _ in range(4):
            send(to=to)
    engine = engine_with(app, sessions_per_relay=2)
    report = engine.run_pass()
    assert (report.claimed, report.sent, report.failed, report.deferred) == (12, 4, 4, 4)
    for state in passes[-1].relays.values():
        assert state.pool._in_use == 0 and state.pool._idle == [] and not state.pool._closing
    assert backup.received == []
    assert_nothing_lost()
    # The deferred ones owe only the busy recipient; the other was delivered once.
    db.session.expire_all()
    pending = {tuple(m.pending_recipients or ()) for m in db.session.scalars(select(Message))}
    assert ("busy@example.org",) in pending
    outcomes = Counter(a.outcome for a in db.session.scalars(select(Attempt)))
    assert outcomes["failover"] == 1  # the dead relay: one refused connect, then down


# -- a slow first attempt ------------------------------------------------------------------


def test_a_slow_relay_with_no_backup_is_waited_for_not_deferred(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    # Slower than the connect patience (0.3 s), well within the command timeout (2 s):
    # with nowhere to fail over to, deferring the others would only delay them more.
    smtp_server.delay("mail", 0.6)
    add_relay("primary", smtp_server)
    ids = [send()["id"] for _ in range(6)]
    report = engine_with(app).run_pass()
    assert {message(pk).status for pk in ids} == {"sent"}, report
    assert report.deferred == 0
    assert len(smtp_server.received) == 6


def test_a_slow_primary_fails_over_except_for_messages_pinned_to_it(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.delay("mail", 0.6)
    first = add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    free = [send()["id"] for _ in range(4)]
    pinned = [queue.enqueue(utf8_message("me@example.org"), pinned_relay_id=first.id).id]
    pinned.append(queue.enqueue(utf8_message("me@example.org"), pinned_relay_id=first.id).id)
    report = engine_with(app).run_pass()
    assert {message(pk).status for pk in free + pinned} == {"sent"}, report
    # The first message holds the primary's only slot until it is proven; the other
    # free ones go on to the backup after the patience, the pinned ones wait their turn.
    assert len(backup.received) == 3
    assert {message(pk).relay_id for pk in pinned} == {first.id}
    assert len(primary.received) == 3


def test_a_refused_recipient_proves_a_slow_relay_works(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    smtp_server.delay("mail", 0.6)
    smtp_server.reject_recipient("ghost@example.org")
    add_relay("primary", smtp_server)
    ghost = send(to=["ghost@example.org"])["id"]  # the first attempt of the pass
    ids = [send()["id"] for _ in range(4)]
    report = engine_with(app).run_pass()
    assert message(ghost).status == "failed"
    assert {message(pk).status for pk in ids} == {"sent"}, report


def test_waiting_out_a_relay_that_swallows_messages_costs_one_attempt(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    # It never answers the final dot: the outcome is unknown, so the relay is neither
    # proven nor failed; the others must not go in after the first, one at a time.
    smtp_server.hang_after_data()
    add_relay("primary", smtp_server)
    ids = [send()["id"] for _ in range(4)]
    engine_with(app, attempt_deadline=1.0).run_pass()
    assert len(smtp_server.hung) == 1
    rows = [message(pk) for pk in ids]
    assert {r.status for r in rows} == {"deferred"}
    assert sum("ended without a delivery" in (r.last_error or "") for r in rows) == 3


def test_a_relay_that_throttles_is_not_used_by_messages_waiting_for_it(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    smtp_server.delay("mail", 0.1)
    smtp_server.fail("mail", 451, "4.7.1 Too many messages, slow down", times=1)
    add_relay("primary", smtp_server)
    ids = [send()["id"] for _ in range(4)]
    engine_with(app).run_pass()
    # The first attempt was throttled; the others waited for it (within the patience)
    # and then found the relay cooling down: none of them went in.
    assert smtp_server.received == []
    assert {message(pk).status for pk in ids} == {"deferred"}
    attempts = db.session.scalars(select(Attempt)).all()
    assert len(attempts) == 1


def test_a_slow_primary_is_waited_for_when_the_backup_is_out(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.delay("mail", 0.6)
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    db.session.execute(open_circuit("backup", "opened by hand"))
    db.session.commit()
    ids = [send()["id"] for _ in range(4)]
    report = engine_with(app).run_pass()
    assert {message(pk).status for pk in ids} == {"sent"}, report
    assert len(primary.received) == 4 and backup.connections == 0
