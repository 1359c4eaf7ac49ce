"""Clean stops: SIGTERM or SIGINT to `relayboard worker`, `drain` or `serve` mid-pass.

Every test runs the installed script as a real process against a real SQLite file and a
real aiosmtpd server that answers slowly (or not at all) on cue. What must hold after a
stop: the process exits 0 within the grace period, nothing is left in `sending`, and
every message is delivered exactly once once the rest is drained.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app import create_app
from app.config import Settings
from app.db import db
from app.domain.mime import Mailbox, MessageSpec, build_message
from app.models import Attempt, Message
from app.services import queue, relays
from tests.processes import DB_NAME, environment, free_port, relayboard, start, wait_until_serving

GRACE = 5.0
MESSAGES = 300


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    instance = tmp_path_factory.mktemp("migrated")
    result = relayboard(environment(instance), "db", "upgrade")
    assert result.returncode == 0, result.stderr
    return instance


@pytest.fixture
def env(tmp_path: Path, migrated: Path) -> dict[str, str]:
    instance = tmp_path / "instance"
    instance.mkdir()
    for path in migrated.glob(f"{DB_NAME}*"):
        shutil.copy(path, instance / path.name)
    return {
        **environment(instance),
        "RELAYBOARD_STOP_GRACE": str(GRACE),
        "RELAYBOARD_DRAIN_INTERVAL": "0.2",
        "RELAYBOARD_LOG_LEVEL": "INFO",  # the processes say they are stopping
    }


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Flask]:
    quiet = {**env, "RELAYBOARD_LOG_LEVEL": "WARNING"}
    application = create_app({"SETTINGS": Settings.from_env(quiet), "TESTING": True})
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


def fill(app: Flask, server: Any, count: int) -> list[int]:
    """Add a relay to `server` and queue `count` messages for it; return their ids."""
    box = app.config["RELAYBOARD"].secret_box
    relays.create(box, name="slow", host=server.host, port=server.port, security="none")
    spec = MessageSpec(
        Mailbox("shop@example.com"), [Mailbox("alice@example.org")], [], [], None,
        "Your order", "Thanks!", None, [], {}, [],
    )  # fmt: skip
    return [queue.enqueue(build_message(spec, max_bytes=100_000)).id for _ in range(count)]


def statuses() -> Counter[str]:
    db.session.rollback()
    return Counter(db.session.scalars(select(Message.status)))


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[float, str]:
    """Signal the process; return how long it took to exit, and what it wrote to stderr."""
    signalled = time.monotonic()
    process.send_signal(sig)
    _, errors = process.communicate(timeout=GRACE + 30)
    return time.monotonic() - signalled, errors


def assert_delivered_once(server: Any, count: int) -> None:
    copies = Counter(got.message_id for got in server.received)
    assert len(copies) == count, f"{count - len(copies)} message(s) never arrived"
    assert max(copies.values()) == 1, [mid for mid, n in copies.items() if n > 1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_pass_stops_the_worker_cleanly(
    env: dict[str, str], app: Flask, smtp_server: Any, sig: int
) -> None:
    smtp_server.delay("data", 0.1)  # 8 sessions: about 80 messages a second
    fill(app, smtp_server, MESSAGES)
    worker = start(env, "worker")
    try:
        smtp_server.wait_for(40, timeout=30)
    finally:
        took, errors = stop(worker, sig)
    assert worker.returncode == 0, errors
    assert took < GRACE, f"the worker took {took:.1f} s to stop"
    assert "Traceback" not in errors and "stopping" in errors
    after = statuses()
    assert after["sending"] == 0, after
    assert after["sent"] == len(smtp_server.received) and after["queued"] > 0, after
    # What the stop sent back is queued unattempted: its claim counted no attempt.
    db.session.rollback()
    assert (
        db.session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.attempt_count > 0, Message.status == "queued")
        )
        == 0
    )
    finished = relayboard(env, "drain")
    assert finished.returncode == 0, finished.stderr
    assert statuses() == Counter({"sent": MESSAGES})
    assert_delivered_once(smtp_server, MESSAGES)


def test_a_signal_mid_pass_stops_serve_cleanly(
    env: dict[str, str], app: Flask, smtp_server: Any
) -> None:
    smtp_server.delay("data", 0.1)
    fill(app, smtp_server, MESSAGES)
    port = free_port()
    served = start(
        env, *("serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"), RELAYBOARD_SCHEDULER="1"
    )
    try:
        wait_until_serving(port)
        smtp_server.wait_for(40, timeout=30)
    finally:
        took, errors = stop(served)
    assert served.returncode == 0, errors
    assert took < GRACE + 2, f"serve took {took:.1f} s to stop"  # gunicorn polls once a second
    assert "Traceback" not in errors
    after = statuses()
    assert after["sending"] == 0, after
    assert after["sent"] == len(smtp_server.received), after
    finished = relayboard(env, "drain")
    assert finished.returncode == 0, finished.stderr
    assert statuses() == Counter({"sent": MESSAGES})
    assert_delivered_once(smtp_server, MESSAGES)


def test_a_send_still_in_data_when_the_grace_period_ends_is_an_unknown_outcome(
    env: dict[str, str], app: Flask, smtp_server: Any
) -> None:
    smtp_server.delay("data", 0.2)
    ids = fill(app, smtp_server, 40)
    draining = start(
        env,
        "drain",
        "--quiet",
        RELAYBOARD_STOP_GRACE="1",
        RELAYBOARD_ATTEMPT_DEADLINE="60",
        RELAYBOARD_COMMAND_TIMEOUT="60",
    )
    smtp_server.wait_for(1, timeout=20)  # the relay has proved itself: 8 sessions at once
    smtp_server.hang_after_data()  # from now on: read each message, never answer the dot
    deadline = time.monotonic() + 20
    while len(smtp_server.hung) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    took, errors = stop(draining)
    assert draining.returncode == 0, errors
    assert 1 <= took < 1 + 3, f"the drain took {took:.1f} s to stop"
    after = statuses()
    sent, hung = len(smtp_server.received), len(smtp_server.hung)
    assert hung == 8
    assert after == Counter({"sent": sent, "deferred": hung, "queued": 40 - sent - hung}), after
    db.session.rollback()
    unknown = db.session.scalars(select(Attempt).where(Attempt.outcome == "unknown")).all()
    assert len(unknown) == hung and {a.stage for a in unknown} == {"data"}
    counted = Counter(
        db.session.scalars(select(Message.unknown_outcomes).where(Message.id.in_(ids)))
    )
    assert counted == Counter({0: 40 - hung, 1: hung})


def test_a_second_signal_exits_at_once(env: dict[str, str], app: Flask, smtp_server: Any) -> None:
    smtp_server.hang_after_data()
    fill(app, smtp_server, 3)
    draining = start(
        env,
        "drain",
        "--quiet",
        RELAYBOARD_STOP_GRACE="30",
        RELAYBOARD_ATTEMPT_DEADLINE="60",
        RELAYBOARD_COMMAND_TIMEOUT="60",
    )
    deadline = time.monotonic() + 20
    while not smtp_server.hung and time.monotonic() < deadline:
        time.sleep(0.05)
    draining.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    took, _ = stop(draining, signal.SIGINT)
    assert took < 2, f"the second signal took {took:.1f} s to end the drain"
    assert draining.returncode == 128 + signal.SIGINT
    # As after a crash: the messages stay leased until the reaper returns them.
    assert statuses()["sending"] == 3
