"""Drains: the backlog after a maintenance goes out highest priority first, at a ramp."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.db import db
from app.domain.ramp import Ramp
from app.models import Drain, Event, Message, Relay, utcnow
from app.services import drains, maintenance, pause
from app.services.delivery import DeliveryEngine
from app.services.drains import DrainError


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def statuses() -> dict[str, int]:
    db.session.expire_all()
    found: dict[str, int] = {}
    for row in db.session.scalars(select(Message)):
        found[row.status] = found.get(row.status, 0) + 1
    return found


# -- the ramp, as a table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "rate", "allowance"),
    [
        (0, 5, 0),
        (1, 5, 5),
        (29.9, 5, 149),
        (30, 10, 150),
        (45, 10, 300),
        (60, 20, 450),
        (90, 40, 1050),
    ],
)
def test_the_default_ramp(elapsed: float, rate: float, allowance: int) -> None:
    ramp = Ramp()
    assert ramp.rate(elapsed) == rate
    assert ramp.allowance(elapsed) == allowance


def test_a_ramp_stops_at_its_maximum_and_stays_flat() -> None:
    ramp = Ramp(initial=5, factor=2, step=30, maximum=12)
    assert [ramp.rate(t) for t in (0, 30, 60, 600)] == [5, 10, 12, 12]
    assert ramp.allowance(90) == 150 + 300 + 360
    assert ramp.allowance(3600) == 150 + 300 + 12 * (3600 - 60)


def test_a_ramp_says_how_long_the_rest_takes() -> None:
    ramp = Ramp(initial=5, factor=2, step=30)
    assert ramp.seconds_for(150, 0) == pytest.approx(30, abs=0.01)
    assert ramp.seconds_for(300, 0) == pytest.approx(45, abs=0.01)
    assert ramp.seconds_for(0, 10) == 0


@pytest.mark.parametrize("values", [{"initial": 0}, {"factor": 0.5}, {"step": 0}, {"maximum": 0}])
def test_a_ramp_refuses_nonsense(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="ramp"):
        Ramp(**values)


# -- pacing, with a controllable clock ----------------------------------------------------


@pytest.fixture
def held(app: Any, smtp_server: Any, add_relay: Any, send: Any) -> list[int]:
    """Six messages held for `primary` (two of each priority), its maintenance just ended."""
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    ids = [send(priority=p)["id"] for p in ("low", "normal", "high") * 2]
    DeliveryEngine(db.engine, app.config["RELAYBOARD"]).run_pass()
    assert statuses() == {"held": 6}
    return ids


def test_a_drain_releases_what_its_ramp_allows_highest_priority_first(
    app: Any, held: list[int]
) -> None:
    settings = replace(app.config["RELAYBOARD"], drain_initial_rate=2, drain_step=10)
    t0 = utcnow()
    released = maintenance.end(relay("primary"), "cli", now=t0, settings=settings)
    assert released is not None and released.drain_id is not None
    drain = drains.get(released.drain_id)
    assert (drain.backlog, drain.initial_rate, drain.step_seconds) == (6, 2, 10)
    assert drains.pace(t0) == 0
    assert drains.pace(t0 + timedelta(seconds=1)) == 2
    assert drains.pace(t0 + timedelta(seconds=1)) == 0, "the allowance is not spent twice"
    queued = db.session.scalars(select(Message).where(Message.status == "queued")).all()
    assert sorted(m.priority for m in queued) == [0, 0], "high priority first"
    assert drains.pace(t0 + timedelta(seconds=2)) == 2
    assert drains.pace(t0 + timedelta(seconds=30)) == 2
    assert statuses() == {"queued": 6}


def test_pause_stops_the_clock_resume_goes_on_cancel_keeps_the_rest_held(
    app: Any, held: list[int]
) -> None:
    settings = replace(app.config["RELAYBOARD"], drain_initial_rate=1, drain_step=100)
    t0 = utcnow()
    drain = drains.get(maintenance.end(relay("primary"), "cli", now=t0, settings=settings).drain_id)  # type: ignore[union-attr, arg-type]
    assert drains.pace(t0 + timedelta(seconds=2)) == 2
    drains.pause(drain, "operator ops@example.com", t0 + timedelta(seconds=2))
    assert drains.pace(t0 + timedelta(seconds=60)) == 0, "paused: nothing released"
    with pytest.raises(DrainError, match="not running"):
        drains.pause(drain, "ops", t0 + timedelta(seconds=60))
    drains.resume(drain, "operator ops@example.com", t0 + timedelta(seconds=60))
    assert drains.pace(t0 + timedelta(seconds=61)) == 1, "the ramp goes on from 2 s, not 61"
    assert drains.cancel(drain, "ops", t0 + timedelta(seconds=62)) == 3
    assert drains.pace(t0 + timedelta(seconds=600)) == 0
    assert statuses() == {"queued": 3, "held": 3}
    kinds = [e.type for e in db.session.scalars(select(Event).order_by(Event.id))]
    assert kinds[-3:] == ["drain_paused", "drain_resumed", "drain_cancelled"]
    assert "drain_started" in kinds and "maintenance_end" in kinds
    # What a cancel left held can be released again, by hand.
    again = drains.start(
        drains.held_filter(relay("primary").id),
        ramp=Ramp(initial=100),
        by="operator ops@example.com",
        reason="released by hand",
    )
    assert again is not None and again.backlog == 3


def test_a_drain_finishes_once_everything_was_attempted_and_says_how_long(
    app: Any, held: list[int], smtp_server: Any, engine: DeliveryEngine
) -> None:
    t0 = utcnow() - timedelta(minutes=10)
    released = maintenance.end(relay("primary"), "cli", now=t0)
    drain = drains.get(released.drain_id)  # type: ignore[union-attr, arg-type]
    assert drains.pace() == 6
    progress = drains.progress(drain)
    assert (progress.backlog, progress.released, progress.remaining) == (6, 6, 6)
    assert engine.run_pass().sent == 6
    drains.pace()
    db.session.refresh(drain)
    assert drain.state == "done" and drain.ended_at is not None
    progress = drains.progress(drain)
    assert (progress.sent, progress.failed, progress.remaining, progress.percent) == (6, 0, 0, 100)
    (finished,) = db.session.scalars(select(Event).where(Event.type == "drain_finished"))
    assert "6 sent" in finished.detail


def test_nothing_to_release_starts_no_drain(app: Any, smtp_server: Any, add_relay: Any) -> None:
    add_relay("primary", smtp_server)
    maintenance.start(relay("primary"), "cli")
    released = maintenance.end(relay("primary"), "cli")
    assert released is not None and released.drain_id is None
    assert db.session.scalars(select(Drain)).all() == []


# -- the global pause -----------------------------------------------------------------------


def test_the_global_pause_stops_claiming_and_rewrites_nothing(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    with pytest.raises(pause.PauseError, match="say why"):
        pause.pause("operator ops@example.com", "  ")
    assert pause.pause("operator ops@example.com", "ESP incident")
    assert not pause.pause("cli", "again")
    send()
    assert engine.run_pass().claimed == 0
    assert statuses() == {"queued": 1}
    assert pause.resume("cli") and not pause.resume("cli")
    assert engine.run_pass().sent == 1


# -- a held backlog released at test scale, against a real server --------------------------


def test_a_held_backlog_goes_out_in_priority_order_never_above_the_ramp(
    app: Any, smtp_server: Any, add_relay: Any, send: Any
) -> None:
    settings = replace(
        app.config["RELAYBOARD"], drain_initial_rate=20, drain_growth=2, drain_step=1
    )
    engine = DeliveryEngine(db.engine, settings)
    add_relay("primary", smtp_server, maintenance_policy="hold", max_rate=80)
    maintenance.start(relay("primary"), "cli")
    priorities = {}
    for index in range(200):
        name = ("high", "normal", "low")[index % 3]
        priorities[send(priority=name)["message_id"]] = name
    engine.run_pass()
    assert statuses() == {"held": 200}
    assert smtp_server.received == []

    released = maintenance.end(relay("primary"), "cli", settings=settings)
    assert released is not None and released.held == 200
    drain = drains.get(released.drain_id)  # type: ignore[arg-type]
    started = time.monotonic()
    stop = threading.Event()
    while drains.waiting() or any(
        s in statuses() for s in ("queued", "sending")
    ):  # what the worker's jobs do, every 50 ms here
        drains.pace()
        engine.run_pass(stop=stop)
        assert time.monotonic() - started < 30, "the drain took too long"
        time.sleep(0.05)
    got = smtp_server.wait_for(200)
    assert sorted(m.message_id for m in got) == sorted(priorities), "none lost, none twice"
    assert statuses() == {"sent": 200}

    # Priority: no lower-priority message starts before every higher one has, allowing
    # for the sessions already busy.
    order = [("high", "normal", "low").index(priorities[m.message_id]) for m in got]
    sessions = settings.sessions_per_relay
    for rank in (0, 1):
        last_higher = max(i for i, r in enumerate(order) if r <= rank)
        first_lower = min(i for i, r in enumerate(order) if r > rank)
        assert first_lower >= last_higher - sessions, (rank, order)

    # Never above the ramp: in any one-second window, at most its rate plus the sessions.
    ramp = drains.ramp_of(drain)
    times = [m.at - started for m in got]
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 1.0)
        allowed = ramp.rate(start + 1.0) + sessions
        assert in_window <= allowed, (start, in_window, allowed)
    drains.pace()
    db.session.refresh(drain)
    assert drain.state == "done"


def test_at_the_workers_cadence_sends_are_spaced_at_the_ramps_rate(
    app: Any, smtp_server: Any, add_relay: Any, send: Any
) -> None:
    """Releases every second and a pass every two, as the worker runs them: a gap in
    releasing is not saved up into a burst (at most the ramp's burst, 4 messages at this
    rate), and the pass keeps going while the drain holds mail: in any second, at most the
    ramp's rate plus the relay's sessions (8)."""
    settings = replace(
        app.config["RELAYBOARD"], drain_initial_rate=10, drain_growth=1, drain_step=60
    )
    engine = DeliveryEngine(db.engine, settings)
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    for _ in range(40):
        send()
    engine.run_pass()
    released = maintenance.end(relay("primary"), "cli", settings=settings)
    assert released is not None and released.held == 40
    started = time.monotonic()
    tick = 0
    while len(smtp_server.received) < 40:
        drains.pace()  # the worker's maintenance job: every second
        if tick % 2 == 1:
            engine.run_pass()  # the worker's pass: every RELAYBOARD_DRAIN_INTERVAL (2 s)
        tick += 1
        assert time.monotonic() - started < 15, "the drain took too long"
        time.sleep(max(0.0, started + tick - time.monotonic()))
    times = [m.at for m in smtp_server.wait_for(40)]
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 1.0)
        assert in_window <= 10 + 8, (in_window, "sends in one second at a ramp of 10/s")


def test_with_the_ramp_off_a_drain_releases_its_whole_backlog_at_once(
    app: Any, held: list[int]
) -> None:
    settings = replace(app.config["RELAYBOARD"], drain_ramp=False)
    t0 = utcnow()
    released = maintenance.end(relay("primary"), "cli", now=t0, settings=settings)
    assert released is not None
    assert drains.pace(t0 + timedelta(milliseconds=1)) == 6
    queued = db.session.scalars(
        select(Message).where(Message.status == "queued").order_by(Message.id)
    ).all()
    assert len(queued) == 6


def test_the_ramp_setting_reads_on_and_off() -> None:
    from app.config import Settings, SettingsError

    base = {"RELAYBOARD_SECRET_KEY": "k" * 32, "RELAYBOARD_INSTANCE_PATH": "/tmp/rb-ramp"}
    assert Settings.from_env({**base, "RELAYBOARD_DRAIN_RAMP": "off"}).drain_ramp is False
    assert Settings.from_env(base).drain_ramp is True
    with pytest.raises(SettingsError, match="RELAYBOARD_DRAIN_RAMP"):
        Settings.from_env({**base, "RELAYBOARD_DRAIN_RAMP": "sometimes"})
    with pytest.raises(SettingsError, match="RELAYBOARD_DRAIN_GROWTH"):
        Settings.from_env({**base, "RELAYBOARD_DRAIN_GROWTH": "0.5"})


def test_each_step_of_the_ramp_is_logged_and_an_event(app: Any, held: list[int]) -> None:
    settings = replace(app.config["RELAYBOARD"], drain_initial_rate=1, drain_step=10)
    t0 = utcnow()
    maintenance.end(relay("primary"), "cli", now=t0, settings=settings)
    drains.pace(t0 + timedelta(seconds=5))
    drains.pace(t0 + timedelta(seconds=11))
    drains.pace(t0 + timedelta(seconds=12))
    steps = db.session.scalars(select(Event).where(Event.type == "drain_rate")).all()
    assert [e.data["rate"] for e in steps if e.data and not e.data.get("ended")] == [2.0]
    assert "the ramp is at 2 msg/s (was 1)" in steps[0].detail


def test_a_ramp_without_a_ceiling_ends_where_sending_stops_keeping_up(
    app: Any, smtp_server: Any, add_relay: Any, send: Any
) -> None:
    """No pass runs here, so nothing released is sent: once more than a second's worth
    waits, the ramp stops growing at the rate it had reached."""
    settings = replace(app.config["RELAYBOARD"], drain_initial_rate=2, drain_step=1)
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    for _ in range(60):
        send()
    DeliveryEngine(db.engine, settings).run_pass()
    t0 = utcnow()
    drain = drains.get(
        maintenance.end(relay("primary"), "cli", now=t0, settings=settings).drain_id  # type: ignore[union-attr, arg-type]
    )
    for tick in range(1, 100):  # as a pass polls: every 50 ms
        drains.pace(t0 + timedelta(seconds=tick * 0.05))
    db.session.refresh(drain)
    assert drain.max_rate is not None and drain.max_rate < 2 * 2**5
    (ended,) = [
        e
        for e in db.session.scalars(select(Event).where(Event.type == "drain_rate"))
        if e.data and e.data.get("ended")
    ]
    assert "the ramp ended at" in ended.detail and "more than sending achieves" in ended.detail


def test_the_progress_of_many_drains_is_counted_in_one_query(app: Any, held: list[int]) -> None:
    from sqlalchemy import event

    maintenance.end(relay("primary"), "cli")
    maintenance.start(relay("primary"), "cli")
    listed = drains.listing()
    listed = listed + listed  # the same drain twice is still one query
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        shown = drains.progresses(listed)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert [p.backlog for _, p in shown] == [6, 6]
    assert len([s for s in statements if "GROUP BY" in s.upper()]) == 1
