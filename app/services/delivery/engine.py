"""The delivery engine and its pass: claim due mail, send it over pooled sessions, record.

A pass runs one event loop on the calling thread. Its database work (claims, records,
lease renewals) runs on that same thread, synchronously, between sends: a batch of 200
is claimed or recorded in a few milliseconds while the sessions wait for replies. (A
database thread beside the loop was slower: Python's sqlite3 releases the GIL for each
row it steps through, and each time it waited for the busy loop thread to give it back,
so records and claims crawled and the senders ran dry; docs/benchmarks.md.) Claims run
ahead of sending, into a bounded inbox, so the relays rarely wait for the database.
Its steps:

1. start: return lapsed leases to the queue; read the relays.
2. claim: take a batch of due messages under a lease (repeatedly, while any are due).
3. send: a crew of senders delivers each message through its route (message.py).
4. record: outcomes, attempts, events and the relays' circuits are written in batches,
   and the leases renewed while the pass runs.
5. finish: when nothing is due, or when asked to stop: stop claiming; give messages in
   flight the grace period to end; send back unattempted claims; write every outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app import logs
from app.config import Settings
from app.domain import routing
from app.domain.retry import RetryPolicy
from app.models import DEFERRED, FAILED, LOGGED, QUEUED, SENT, Relay, utcnow
from app.services import circuits, drains, maintenance, pause, queue, suppressions
from app.services.delivery.message import MessageDelivery, Rules
from app.services.delivery.relays import RelayChange, RelayState
from app.services.relays import RelaySnapshot, snapshot
from app.transport.pool import RelayPool
from app.transport.smtp import Endpoint, RelaySession, Timeouts

log = logs.get("delivery")

RECORD_EVERY_SECONDS = 0.05
RECORD_GIVE_UP_AFTER = 8  # failed writes in a row, once sending has ended
STOP_POLL_SECONDS = 0.05


def worker_id() -> str:
    """Return a name for this process's leases: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class PassReport:
    """What one pass did."""

    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    logged: int = 0
    released: int = 0  # claimed but not attempted: back in the queue (a stop)
    failovers: int = 0
    stopped: bool = False  # a stop was asked for before the pass ran out of mail
    seconds: float = 0.0

    @property
    def finished(self) -> int:
        """Count the claimed messages whose outcome is written."""
        return self.sent + self.deferred + self.failed + self.logged + self.released

    def add(self, outcome: queue.Outcome) -> None:
        """Count one finished message."""
        if outcome.status == SENT:
            self.sent += 1
        elif outcome.status == DEFERRED:
            self.deferred += 1
        elif outcome.status == FAILED:
            self.failed += 1
        elif outcome.status == LOGGED:
            self.logged += 1
        elif outcome.status == QUEUED:
            self.released += 1
        self.failovers += sum(1 for e in outcome.events if e.type == "failover")


class DeliveryEngine:
    """Deliver due messages through the relays, a pass at a time."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        owner: str | None = None,
        opener: Callable[[Endpoint, Timeouts], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.database = engine
        self.settings = settings
        self.owner = owner or worker_id()
        self.timeouts = Timeouts(
            connect=settings.connect_timeout,
            command=settings.command_timeout,
            deadline=settings.attempt_deadline,
        )
        self.rules = Rules(
            retry=RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds),
            max_age_seconds=settings.max_age_seconds,
            deadline=settings.attempt_deadline,
            rng=rng or random.Random(),
        )
        self.open_session = opener or self._open_session

    async def _open_session(self, endpoint: Endpoint, timeouts: Timeouts) -> RelaySession:
        return await RelaySession.open(endpoint, timeouts, ca_file=self.settings.ca_file)

    def run_pass(
        self,
        *,
        stop: threading.Event | None = None,
        progress: Callable[[PassReport], None] | None = None,
        max_messages: int | None = None,
    ) -> PassReport:
        """Deliver what is due now (at most `max_messages`) until none is, or `stop` is set."""
        run = Pass(self, stop or threading.Event(), progress, max_messages)
        return asyncio.run(run.run())


@dataclass
class Pass:
    """One run of the delivery engine; its state lives and dies with it."""

    engine: DeliveryEngine
    stop: threading.Event
    progress: Callable[[PassReport], None] | None
    limit: int | None
    report: PassReport = field(default_factory=PassReport)
    relays: dict[int, RelayState] = field(default_factory=dict)
    results: list[queue.Outcome] = field(default_factory=list)  # outcomes not yet written
    unattempted: list[int] = field(default_factory=list)  # claims to send back to the queue
    changes: list[RelayChange] = field(default_factory=list)  # relay changes not yet written
    stopping: bool = False
    sending: bool = True  # False once the senders are done: the recorder may end
    grace_until: float = 0.0  # time.monotonic() by which messages in flight must end
    renewed_until: float = 0.0  # time.monotonic() by which our leases surely hold
    drains_waiting: int = 0  # 1 while running drains still hold mail: the pass waits for it
    _order: list[RelayState] | None = None
    _busy: int = 0

    def __post_init__(self) -> None:
        self.settings = self.engine.settings
        self.lease = self.settings.lease_seconds
        self.inbox: asyncio.Queue[queue.Claimed | None] = asyncio.Queue(self.settings.batch_size)
        self.record_wanted = asyncio.Event()

    # -- the steps ------------------------------------------------------------------

    async def run(self) -> PassReport:
        """Run the pass: start, claim while mail is due, then finish; return the report."""
        started = time.perf_counter()
        self.reap()
        self.relays = self.load_relays()
        self.renewed_until = time.monotonic() + self.lease
        # A fixed crew pulls from a bounded inbox: enough to keep every relay's sessions
        # busy, few enough that waiting on a pool stays cheap.
        enabled = sum(1 for r in self.relays.values() if r.enabled) or 1
        crew = max(1, min(self.settings.sessions_per_relay * enabled, 512))
        senders = [asyncio.create_task(self.sender()) for _ in range(crew)]
        recorder = asyncio.create_task(self.recorder())
        watcher = asyncio.create_task(self.watch_for_stop())
        try:
            while await self.claim(recorder):
                pass
        finally:
            await self.finish(senders, recorder)
            watcher.cancel()
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def claim(self, recorder: asyncio.Task[None]) -> bool:
        """Claim a batch of due messages for the senders; say whether to claim again."""
        if self.stopping or recorder.done():
            return False
        want = self.settings.batch_size
        if self.limit is not None:
            want = min(want, self.limit - self.report.claimed)
            if want <= 0:
                return False
        claimed, fresh = self.claim_batch(want)
        self.adopt(fresh)
        if not claimed:
            idle = self._busy == 0 and self.inbox.empty() and not self.results
            if idle and not self.drains_waiting:
                return False  # nothing due, nothing in flight, no drain to wait for: done
            await asyncio.sleep(RECORD_EVERY_SECONDS)
            return True
        self.report.claimed += len(claimed)
        for message in claimed:
            if self.stopping:
                self.unattempted.append(message.id)
            else:
                await self.inbox.put(message)  # waits while the inbox is full
        if len(claimed) < want:  # all that is due now: let the senders run before looking again
            await asyncio.sleep(RECORD_EVERY_SECONDS)
        return True

    async def sender(self) -> None:
        """Deliver messages from the inbox until told there are no more."""
        while (message := await self.inbox.get()) is not None:
            # A message whose lease may have lapsed (renewals failing) may be another
            # worker's now: leave it to the reaper rather than risk a second copy.
            at_risk = max(message.lease_until, self.renewed_until) - self.lease * 0.1
            if self.stopping or at_risk < time.monotonic():
                if not self.stopping:
                    log.warning("lease at risk; not sending", extra={"mid": message.id})
                self.unattempted.append(message.id)
                continue
            delivery = MessageDelivery(message, self.route(message), self.engine.rules)
            self._busy += 1
            try:
                outcome: queue.Outcome | None = await delivery.run()
            except asyncio.CancelledError:
                outcome = delivery.interrupted()  # the grace period ran out
                raise
            except Exception as exc:  # a bug must not lose the message: defer it, loudly
                log.exception("delivery crashed", extra={"mid": message.id})
                outcome = delivery.crashed(repr(exc))
            finally:
                self._busy -= 1
                if outcome is None:
                    self.unattempted.append(message.id)
                else:
                    self.results.append(outcome)
                if len(self.results) >= self.settings.batch_size:
                    self.record_wanted.set()

    async def recorder(self) -> None:
        """Write outcomes and relay changes as they come; renew leases; end after the senders."""
        failures = 0
        next_renewal = time.monotonic() + self.lease / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.record_wanted.wait(), RECORD_EVERY_SECONDS)
            self.record_wanted.clear()
            try:
                if time.monotonic() >= next_renewal:
                    asked = time.monotonic()
                    self.renew_leases()
                    self.renewed_until, next_renewal = asked + self.lease, asked + self.lease / 3
                if self.results or self.unattempted or self.changes:
                    await self.record()
                    failures = 0
                elif not self.sending:
                    return
            except Exception:
                # What was not written stays to be written by the next try; the messages stay
                # leased (renewals retry too) so nobody else sends them.
                failures += 1
                log.exception(
                    "could not record outcomes; retrying",
                    extra={"outcomes": len(self.results), "failures": failures},
                )
                if not self.sending and failures >= RECORD_GIVE_UP_AFTER:
                    # Their leases will lapse and the reaper will queue them again:
                    # at-least-once, with the same Message-ID.
                    log.error(
                        "giving up on recording outcomes", extra={"outcomes": len(self.results)}
                    )
                    return
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def record(self) -> None:
        """Write what the senders produced so far, in one transaction.

        The relays' changes go with the outcomes that caused them (and at the end of the
        pass), not on their own: a pass writes when its messages end. What fails to be
        written stays to be written by the next try.
        """
        self.take_changes()
        self.write(self.results, self.unattempted, self.changes)
        for outcome in self.results:
            self.report.add(outcome)
        self.report.released += len(self.unattempted)
        self.results, self.unattempted, self.changes = [], [], []
        if self.progress:
            self.progress(self.report)

    async def watch_for_stop(self) -> None:
        """Notice a stop: stop claiming, send unstarted mail back, start the grace period."""
        while not self.stop.is_set():
            await asyncio.sleep(STOP_POLL_SECONDS)
        self.stopping = self.report.stopped = True
        self.grace_until = time.monotonic() + self.settings.stop_grace
        log.info("stopping the pass", extra={"grace_seconds": self.settings.stop_grace})
        while not self.inbox.empty():
            message = self.inbox.get_nowait()
            if message is not None:
                self.unattempted.append(message.id)

    async def finish(self, senders: list[asyncio.Task[None]], recorder: asyncio.Task[None]) -> None:
        """End the pass: let the senders finish (within the grace period if stopping), write all."""
        for _ in senders:
            await self.inbox.put(None)
        pending = set(senders)
        while pending:
            timeout = None
            if self.stopping:
                timeout = max(0.0, self.grace_until - time.monotonic())
                if timeout == 0.0:
                    for task in pending:
                        task.cancel()  # each records its message as unknown, or requeues it
            _, pending = await asyncio.wait(pending, timeout=timeout or STOP_POLL_SECONDS)
        for task in senders:
            if not task.cancelled() and task.exception() is not None:
                log.error("a sender failed", exc_info=task.exception())
        self.sending = False
        self.record_wanted.set()
        await recorder
        await asyncio.gather(*(relay.pool.close() for relay in self.relays.values()))
        changes = self.take_changes()
        if changes:
            with contextlib.suppress(Exception):
                self.write([], [], changes)

    # -- routes and relays (on the loop) ----------------------------------------------

    def route(self, message: queue.Claimed) -> list[RelayState]:
        """Return the relays this message tries, in order."""
        mode = self.settings.routing
        if message.pinned_relay_id is not None or mode != routing.FAILOVER:
            relays = list(self.relays.values())
            return routing.route(relays, message.pinned_relay_id, mode, self.engine.rules.rng)
        if self._order is None:  # the priority order changes only when relays do
            self._order = routing.order(list(self.relays.values()))
        return self._order

    def adopt(self, fresh: dict[int, RelaySnapshot]) -> None:
        """Pick up operators' changes (enable, disable, reorder, forced circuits) mid-pass."""
        now = utcnow()
        for relay_id, snap in fresh.items():
            relay = self.relays.get(relay_id)
            if relay is not None and relay.adopt(snap, now):  # a new relay waits for the next pass
                self._order = None

    def take_changes(self) -> list[RelayChange]:
        """Collect the relays' unsaved changes into the pass's list; return it."""
        now = utcnow()
        for relay in self.relays.values():
            change = relay.take_change(now)
            if change is not None:
                self.changes.append(change)
        return self.changes

    # -- the database -----------------------------------------------------------------

    def reap(self) -> None:
        """Return messages whose lease lapsed (a crashed worker's) to the queue."""
        with self.engine.database.begin() as conn:
            queue.reap_expired_leases(conn)

    def load_relays(self) -> dict[int, RelayState]:
        """Read every relay once, with a session pool each."""
        engine, settings = self.engine, self.settings
        states: dict[int, RelayState] = {}
        for relay_id, snap in self.snapshots().items():
            pool = RelayPool(
                snap.endpoint,
                engine.timeouts,
                settings.sessions_per_relay,
                settings.connect_patience,
                engine.open_session,
            )
            states[relay_id] = RelayState(snap, pool, snap.circuit, snap.cooldown_until)
        return states

    def snapshots(self) -> dict[int, RelaySnapshot]:
        """Read what a pass needs of every relay."""
        box = self.settings.secret_box
        with Session(self.engine.database) as session:
            rows = session.scalars(select(Relay).order_by(Relay.priority, Relay.name)).all()
            return {relay.id: snapshot(relay, box) for relay in rows}

    def claim_batch(self, limit: int) -> tuple[list[queue.Claimed], dict[int, RelaySnapshot]]:
        """Let out what running drains' ramps allow, then claim up to `limit` due messages
        (none while delivery is paused); read the relays again for operators' changes."""
        with self.engine.database.begin() as conn:
            if pause.is_paused(conn):
                self.drains_waiting = 0
                return [], self.snapshots()
            _, self.drains_waiting = drains.release_due(conn, utcnow())
            claimed = queue.claim(conn, self.engine.owner, limit, self.lease)
            suppressions.mark(conn, claimed)
        return claimed, self.snapshots()

    def renew_leases(self) -> None:
        """Extend the leases of the messages this pass holds."""
        with self.engine.database.begin() as conn:
            queue.renew_leases(conn, self.engine.owner, self.lease)

    def write(
        self, outcomes: list[queue.Outcome], released: list[int], changes: list[RelayChange]
    ) -> None:
        """Record outcomes, send back unattempted claims and save relay changes, together."""
        with self.engine.database.begin() as conn:
            queue.finish(conn, self.engine.owner, outcomes)
            queue.release(conn, self.engine.owner, released, "the worker stopped before sending it")
            for change in changes:
                if change.maintenance is not None:
                    maintenance.enter_from_reply(conn, change.relay_id, *change.maintenance)
                results = {"cooldown_until": change.cooldown_until, **change.results}
                written = circuits.save(
                    conn,
                    change.relay_id,
                    change.expected_changed_at,
                    change.circuit,
                    change.events,
                    change.changed_at,
                    **results,
                )
                if not written and change.results:
                    # Someone else changed the circuit: theirs stands, and this pass's
                    # transitions, which no longer happened, are dropped; results are ours.
                    conn.execute(
                        update(Relay).where(Relay.id == change.relay_id).values(**change.results)
                    )
        if log.isEnabledFor(logging.INFO):
            for outcome in outcomes:
                _log_outcome(outcome)


def _log_outcome(outcome: queue.Outcome) -> None:
    """Log one line per attempt, and one for the message's new status."""
    for attempt in outcome.attempts:
        log.info(
            "attempt",
            extra={
                "mid": attempt.message_id,
                "relay": attempt.relay_name,
                "outcome": attempt.outcome,
                "code": attempt.code,
                "enhanced": attempt.enhanced_status,
                "duration_ms": attempt.duration_ms,
            },
        )
    log.info(
        "message " + outcome.status,
        extra={"mid": outcome.message, "status": outcome.status, "reason": outcome.last_error},
    )
