"""Failover cost: what a dead or hanging primary relay adds before mail reaches the backup.

(a) The primary refuses connections (RefusingServer: a closed port on 127.0.0.1), the
    backup is an aiosmtpd sink in a separate process. 500 messages are drained once,
    and again with the primary removed (the control). Per message, the added delay is
    the time from the start of its delivery to the start of its attempt on the backup,
    measured by wrapping MessageDelivery.run/_attempt for the run (no app change).
(b) The primary accepts and never greets (HangingServer, in a separate process),
    RELAYBOARD_CONNECT_TIMEOUT=5. 100 messages are drained once: total time, connections
    the hanging server got, and messages that waited for a timeout (the primary's attempt
    rows lasting at least the connect timeout).

    .venv/bin/python bench/failover.py [--runs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import (
    ServerProcess,
    build,
    drain_bounded,
    make_app,
    median,
    percentile,
    tempdir,
    verdict,
    write_result,
)

REFUSING_MESSAGES = 500
HANGING_MESSAGES = 100
CONNECT_TIMEOUT = 5.0
TARGET_ADDED_MS = 50.0
TARGET_TIMEOUT_WAITS = 3  # the default breaker threshold
POSTFIX_QUOTED = "15 min"
RUN_DEADLINE = 120.0


class _Marks:
    """Notes when each message's delivery starts and when it enters each relay.

    It wraps MessageDelivery.run and MessageDelivery._attempt for the length of a
    scenario (the app is unchanged).
    """

    def __init__(self) -> None:
        self.marks: dict[int, dict[str, float]] = {}

    def __enter__(self) -> _Marks:
        from app.services.delivery.message import MessageDelivery

        self.cls = MessageDelivery
        self.run, self.attempt = MessageDelivery.run, MessageDelivery._attempt
        marks = self.marks
        run, attempt = self.run, self.attempt

        async def timed_run(delivery: Any) -> Any:
            marks.setdefault(delivery.message.id, {})["start"] = time.perf_counter()
            return await run(delivery)

        async def timed_attempt(delivery: Any, relay: Any, *args: Any) -> Any:
            key = f"enter:{relay.name}"
            marks[delivery.message.id].setdefault(key, time.perf_counter())
            return await attempt(delivery, relay, *args)

        MessageDelivery.run = timed_run  # type: ignore[method-assign]
        MessageDelivery._attempt = timed_attempt  # type: ignore[method-assign]
        return self

    def __exit__(self, *_exc: object) -> None:
        self.cls.run = self.run  # type: ignore[method-assign]
        self.cls._attempt = self.attempt  # type: ignore[method-assign]


def _passes_until_open(engine: Any, start: int, limit: int = 6) -> dict[str, Any]:
    """Keep draining 10 new messages a pass until the primary's circuit opens (at most `limit`)."""
    from sqlalchemy import func, select

    from app.db import db
    from app.models import Attempt, Relay
    from app.services import queue

    for extra in range(1, limit + 1):
        db.session.expire_all()
        state = db.session.scalar(select(Relay.circuit_state).where(Relay.name == "primary"))
        if state == "open":
            break
        for i in range(10):
            queue.enqueue(build(start + extra * 100 + i))
        drain_bounded(engine, RUN_DEADLINE)
    else:
        extra = limit + 1
    attempts = db.session.scalar(
        select(func.count()).select_from(Attempt).where(Attempt.relay_name == "primary")
    )
    return {"passes": extra, "primary_attempts": attempts, "state": state}


def scenario(
    primary: Any | None, sink: ServerProcess, count: int, follow_up: bool = False, **overrides: str
) -> dict[str, Any]:
    """Drain `count` messages through [primary,] backup once; return what happened."""
    from sqlalchemy import func, select

    from app.config import settings_of
    from app.db import db
    from app.models import Attempt, Event, Relay
    from app.services import queue, relays
    from app.services.delivery import DeliveryEngine

    with tempdir("failover") as tmp:
        app = make_app(Path(tmp), **overrides)
        with app.app_context():
            box = settings_of(app).secret_box
            if primary is not None:
                relays.create(
                    box,
                    name="primary",
                    host=primary.host,
                    port=primary.port,
                    security="none",
                    priority=10,
                )
            relays.create(
                box,
                name="backup",
                host=sink.host,
                port=sink.port,
                security="none",
                priority=20,
                max_per_connection=100_000,
            )
            expected = {queue.enqueue(build(i)).message_id for i in range(count)}
            engine = DeliveryEngine(db.engine, settings_of(app))
            sink.reset()
            if isinstance(primary, ServerProcess):
                primary.reset()
            with _Marks() as timed:
                started = time.perf_counter()
                report = drain_bounded(engine, RUN_DEADLINE)
                seconds = time.perf_counter() - started
            primary_durations = list(
                db.session.scalars(
                    select(Attempt.duration_ms).where(Attempt.relay_name == "primary")
                )
            )
            primary_outcomes = dict(
                db.session.execute(
                    select(Attempt.outcome, func.count())
                    .where(Attempt.relay_name == "primary")
                    .group_by(Attempt.outcome)
                ).all()
            )
            failovers = db.session.scalar(
                select(func.count()).select_from(Event).where(Event.type == "failover")
            )
            circuit = None
            if primary is not None:
                row = db.session.scalar(select(Relay).where(Relay.name == "primary"))
                circuit = f"{row.circuit_state} ({row.circuit_failures} failure(s) counted)"
            ids = sink.message_ids()  # before any follow-up pass sends more
            until_open = _passes_until_open(engine, count) if follow_up else None
            db.session.remove()
            db.engine.dispose()
    added = [
        (m["enter:backup"] - m["start"]) * 1000 for m in timed.marks.values() if "enter:backup" in m
    ]
    result = {
        "messages": count,
        "sent": report.sent,
        "deferred": report.deferred,
        "failed": report.failed,
        "seconds": seconds,
        "sink_received": len(ids),
        "exact": len(ids) == len(expected) and set(ids) == expected,
        "reached_backup": len(added),
        "added_ms_median": median(added) if added else float("nan"),
        "added_ms_p99": percentile(added, 99),
        "added_ms_max": max(added) if added else float("nan"),
        "primary_attempts": len(primary_durations),
        "primary_attempt_outcomes": primary_outcomes,
        "primary_attempt_max_ms": max(primary_durations, default=0.0),
        "failover_events": failovers,
        "primary_circuit_after": circuit,
        "until_open": until_open,
        "messages_tried_primary": sum(1 for m in timed.marks.values() if "enter:primary" in m),
    }
    if isinstance(primary, ServerProcess):
        result["primary_connections"] = primary.stats()["connections"]
        result["timeout_waits"] = sum(
            1 for d in primary_durations if d >= CONNECT_TIMEOUT * 1000 * 0.99
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="result file (default bench/out/failover.json)")
    args = parser.parse_args(argv)
    runs = max(1, min(args.runs, 10))
    from tests.smtp_servers import RefusingServer

    refusing: list[dict[str, Any]] = []
    control: list[dict[str, Any]] = []
    hanging: list[dict[str, Any]] = []
    with ServerProcess("smtp") as sink:
        scenario(None, sink, 50)  # warm-up
        for i in range(runs):
            control.append(scenario(None, sink, REFUSING_MESSAGES))
            refusing.append(scenario(RefusingServer(), sink, REFUSING_MESSAGES, follow_up=True))
            print(
                f"refusing run {i + 1}/{runs}: {refusing[-1]['seconds']:.2f} s "
                f"(control {control[-1]['seconds']:.2f} s), added median "
                f"{refusing[-1]['added_ms_median']:.2f} ms max {refusing[-1]['added_ms_max']:.1f}"
                f" ms, primary attempts {refusing[-1]['primary_attempts']}",
                flush=True,
            )
        with ServerProcess("hanging") as hang:
            for i in range(runs):
                hanging.append(
                    scenario(
                        hang,
                        sink,
                        HANGING_MESSAGES,
                        RELAYBOARD_CONNECT_TIMEOUT=f"{CONNECT_TIMEOUT:g}",
                    )
                )
                h = hanging[-1]
                print(
                    f"hanging run {i + 1}/{runs}: {h['sent']} sent in {h['seconds']:.2f} s, "
                    f"{h['primary_connections']} connection(s) to the hanging relay, "
                    f"{h['timeout_waits']} timeout wait(s)",
                    flush=True,
                )

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return median(r[key] for r in rows)

    result = {
        "runs": runs,
        "refusing": {
            "messages": REFUSING_MESSAGES,
            "added_ms_median": med(refusing, "added_ms_median"),
            "added_ms_max": med(refusing, "added_ms_max"),
            "added_ms_max_worst": max(r["added_ms_max"] for r in refusing),
            "control_added_ms_median": med(control, "added_ms_median"),
            "control_added_ms_max": med(control, "added_ms_max"),
            "seconds": med(refusing, "seconds"),
            "control_seconds": med(control, "seconds"),
            "primary_attempts": med(refusing, "primary_attempts"),
            "messages_tried_primary": med(refusing, "messages_tried_primary"),
            "all_sent": all(
                r["sent"] == REFUSING_MESSAGES and r["exact"] for r in refusing + control
            ),
            "circuit_after": [r["primary_circuit_after"] for r in refusing],
            "until_open": [r["until_open"] for r in refusing],
            "target_ms": TARGET_ADDED_MS,
            "pass": med(refusing, "added_ms_max") < TARGET_ADDED_MS,
            "runs_detail": refusing,
            "control_detail": control,
        },
        "hanging": {
            "messages": HANGING_MESSAGES,
            "connect_timeout": CONNECT_TIMEOUT,
            "seconds": med(hanging, "seconds"),
            "primary_connections": med(hanging, "primary_connections"),
            "timeout_waits": med(hanging, "timeout_waits"),
            "timeout_waits_worst": max(r["timeout_waits"] for r in hanging),
            "added_ms_median": med(hanging, "added_ms_median"),
            "added_ms_max": med(hanging, "added_ms_max"),
            "all_sent": all(r["sent"] == HANGING_MESSAGES and r["exact"] for r in hanging),
            "circuit_after": [r["primary_circuit_after"] for r in hanging],
            "target_timeout_waits": TARGET_TIMEOUT_WAITS,
            "pass": max(r["timeout_waits"] for r in hanging) <= TARGET_TIMEOUT_WAITS
            and all(r["sent"] == HANGING_MESSAGES for r in hanging),
            "postfix_quoted": POSTFIX_QUOTED,
            "runs_detail": hanging,
        },
    }
    write_result("failover", result, args.json)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    """Return the Markdown section for docs/benchmarks.md."""
    a, h = r["refusing"], r["hanging"]
    return "\n".join(
        [
            "## Failover (`bench/failover.py`)",
            "",
            f"Median of {r['runs']} runs. Relays: `primary` (priority 10) and `backup` "
            "(priority 20, an aiosmtpd sink on 127.0.0.1 in a separate process). The added delay "
            "of a message is the time from the start of its delivery to the start of its attempt "
            "on the backup (the benchmark wraps `MessageDelivery.run` and `_attempt` to note "
            "both; the app is unchanged); the "
            "control run has no primary at all.",
            "",
            f"### (a) Primary refuses connections, {a['messages']} messages, one drain",
            "",
            "| metric | primary refusing | control (no primary) | target | |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| added delay per message, median | {a['added_ms_median']:.2f} ms | "
            f"{a['control_added_ms_median']:.2f} ms | | |",
            f"| added delay per message, max | {a['added_ms_max']:.1f} ms | "
            f"{a['control_added_ms_max']:.1f} ms | < {a['target_ms']:.0f} ms "
            f"| {verdict(a['pass'])} |",
            f"| drain time | {a['seconds']:.2f} s | {a['control_seconds']:.2f} s | | |",
            "| messages that attempted the primary (attempt rows) | "
            f"{a['primary_attempts']:.0f} | – | | |",
            f"| all delivered once, exact Message-IDs | {'yes' if a['all_sent'] else 'NO'} | | | |",
            "",
            f"Primary's circuit after the drain: {', '.join(sorted(set(a['circuit_after'])))}. "
            "The pool marks a relay down for the rest of the pass after one failed connect, so "
            "the other messages skip it without an attempt (a failover event each). "
            + _until_open(a["until_open"]),
            "",
            f"### (b) Primary accepts and never greets, {h['messages']} messages, "
            f"connect timeout {h['connect_timeout']:g} s, one drain",
            "",
            "| metric | result | target | |",
            "| --- | ---: | ---: | --- |",
            f"| time to deliver all {h['messages']} | {h['seconds']:.2f} s | | |",
            f"| connections the hanging relay received | {h['primary_connections']:.0f} | | |",
            f"| messages that waited for a timeout (worst run) | {h['timeout_waits_worst']} | "
            f"≤ {h['target_timeout_waits']} | {verdict(h['pass'])} |",
            f"| added delay per message, median / max | {h['added_ms_median']:.1f} / "
            f"{h['added_ms_max']:.0f} ms | | |",
            f"| all delivered once, exact Message-IDs | {'yes' if h['all_sent'] else 'NO'} | | |",
            f"| Postfix, for comparison (quoted, not measured here) | {h['postfix_quoted']} for "
            f"{h['messages']} messages past such a relay | | |",
            "",
            f"Primary's circuit after the drain: {', '.join(sorted(set(h['circuit_after'])))}.",
        ]
    )


def _until_open(rows: list[dict[str, Any] | None]) -> str:
    rows = [r for r in rows if r]
    if not rows:
        return ""
    r = rows[len(rows) // 2]
    if r["state"] != "open":
        return (
            f"Draining 10 more messages a pass, the circuit was still {r['state']} after "
            f"{r['passes']} passes."
        )
    return (
        f"Draining 10 more messages a pass, the circuit opened after pass {r['passes']} "
        f"(counting the first), when {r['primary_attempts']} message(s) in all had "
        "attempted the primary."
    )


if __name__ == "__main__":
    main()
