"""Releasing a held backlog after a maintenance, measured as a user runs it.

- The backlog: MESSAGES queued messages (bench/drain.py's queue: posted to /api/send,
  one relay added with `relayboard servers add` defaults), then held for that relay as a
  maintenance with policy `hold` leaves them (set in the database, not timed).
- Ramp off: `relayboard maintenance end sink` with RELAYBOARD_DRAIN_RAMP=off, then
  `relayboard drain --quiet`, against a plain `relayboard drain --quiet` of the same
  queue without any hold (the bare baseline of this benchmark), each on a fresh copy,
  alternating. Throughput is read at the sink (bench/sink.py), first to last message.
- Ramp on: a smaller backlog released with a ramp at bench scale (RELAYBOARD_DRAIN_*),
  the sink's receive times compared with the ramp's rate in each of its steps, counted
  from the drain's start.

    .venv/bin/python bench/held_drain.py [--messages 100000] [--runs 3] [--ramp-messages 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import drain
from _common import (
    cli_env,
    median,
    relayboard_command,
    run_measured,
    tempdir,
    verdict,
    wait_for_quiet,
    write_result,
)
from sink import Sink

TARGET_RATIO = 0.80
RAMP_TOLERANCE = 0.10
RAMP = {"initial": 100.0, "growth": 2.0, "step": 5.0}
RUN_TIMEOUT = 900.0


def hold(db: Path) -> None:
    """Put the relay in maintenance with policy hold, its whole queue held for it."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (relay_id,) = conn.execute("SELECT id FROM relays WHERE name = 'sink'").fetchone()
        conn.execute(
            "UPDATE relays SET maintenance_since = ?, maintenance_by = 'bench', "
            "maintenance_policy = 'hold' WHERE id = ?",
            (now, relay_id),
        )
        conn.execute(
            "UPDATE messages SET status = 'held', next_attempt_at = NULL, waiting_for_relay_id = ?",
            (relay_id,),
        )
        conn.commit()


def _run(command: list[str], env: dict[str, str], run_dir: Path, name: str) -> None:
    measured = run_measured(
        command,
        env=env,
        cwd=run_dir,
        timeout=RUN_TIMEOUT,
        stdout=run_dir / f"{name}.out",
        stderr=run_dir / f"{name}.log",
    )
    if measured.returncode != 0:
        log = (run_dir / f"{name}.log").read_text(errors="replace")
        raise RuntimeError(f"{' '.join(command[-3:])} exited {measured.returncode}:\n{log[-3000:]}")


def released_drain(src: Path, run_dir: Path, sink: Sink, **settings: str) -> Path:
    """Hold a copy of `src`, end the maintenance, run `relayboard drain`; return the db."""
    run_dir.mkdir()
    db = run_dir / "relayboard.db"
    shutil.copyfile(src, db)
    hold(db)
    env = cli_env(db, run_dir / "instance", **settings)
    sink.reset()
    _run([*relayboard_command(), "maintenance", "end", "sink"], env, run_dir, "end")
    _run([*relayboard_command(), "drain", "--quiet"], env, run_dir, "drain")
    return db


def _drain_start(db: Path) -> float:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (started,) = conn.execute("SELECT started_at FROM drains ORDER BY id LIMIT 1").fetchone()
    return datetime.fromisoformat(started).replace(tzinfo=UTC).timestamp()


def ramp_check(times: list[float], start: float) -> list[dict[str, float]]:
    """Per full step of the ramp: the rate the sink saw against the ramp's.

    Steps count from the drain's start. A step that began before the first message
    arrived (the command starting up) and the last, partial step (the backlog ran out)
    are left out; the delay to the first message is reported on its own.
    """
    steps = []
    index = 0
    while True:
        lo = start + index * RAMP["step"]
        hi = lo + RAMP["step"]
        if hi > times[-1]:
            break
        if lo >= times[0]:
            got = sum(1 for t in times if lo <= t < hi) / RAMP["step"]
            want = RAMP["initial"] * RAMP["growth"] ** index
            steps.append({"step": index, "ramp": want, "measured": got, "off": got / want - 1})
        index += 1
    return steps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ramp-messages", type=int, default=5000)
    parser.add_argument("--json", help="where to write the result (default bench/out/)")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempdir("relayboard-held-") as tmp, Sink() as sink:
        work = Path(tmp)
        (work / "queue").mkdir()
        (work / "ramp-queue").mkdir()
        queue = drain.prepare(work / "queue", sink.port, args.messages)
        print(f"queue ready: {queue.count} messages", flush=True)
        for i in range(args.runs):
            busy = wait_for_quiet()
            _, plain_db = drain.drain_once(queue.full, work / f"plain-{i}", sink)
            plain = drain._at_sink(sink, queue.expected)
            plain["all_sent"] = drain._statuses(plain_db) == {"sent": queue.count}
            shutil.rmtree(work / f"plain-{i}", ignore_errors=True)
            held_db = released_drain(
                queue.full, work / f"held-{i}", sink, RELAYBOARD_DRAIN_RAMP="off"
            )
            held = drain._at_sink(sink, queue.expected)
            held["all_sent"] = drain._statuses(held_db) == {"sent": queue.count}
            shutil.rmtree(work / f"held-{i}", ignore_errors=True)
            ratio = held["rate"] / plain["rate"] if plain["rate"] else 0.0
            runs.append({"plain": plain, "held": held, "ratio": ratio, "busy": busy})
            print(
                f"run {i + 1}/{args.runs}: plain {plain['rate']:.0f} msg/s, released "
                f"{held['rate']:.0f} msg/s (ratio {ratio:.2f}; exact "
                f"{plain['exact']}/{held['exact']})",
                flush=True,
            )
        small = drain.prepare(work / "ramp-queue", sink.port, args.ramp_messages)
        ramp_db = released_drain(
            small.full,
            work / "ramp",
            sink,
            RELAYBOARD_DRAIN_INITIAL_RATE=str(RAMP["initial"]),
            RELAYBOARD_DRAIN_GROWTH=str(RAMP["growth"]),
            RELAYBOARD_DRAIN_STEP=str(RAMP["step"]),
        )
        times = sorted(sink.times())
        started = _drain_start(ramp_db)
        steps = ramp_check(times, started)
        first_after = times[0] - started
        ramp_exact = drain._at_sink(sink, small.expected)["exact"]
    result = {
        "messages": args.messages,
        "runs": runs,
        "ratio": median([r["ratio"] for r in runs]),
        "plain_rate": median([r["plain"]["rate"] for r in runs]),
        "held_rate": median([r["held"]["rate"] for r in runs]),
        "exact": all(r["plain"]["exact"] and r["held"]["exact"] for r in runs),
        "all_sent": all(r["plain"]["all_sent"] and r["held"]["all_sent"] for r in runs),
        "ramp": {
            **RAMP,
            "messages": args.ramp_messages,
            "steps": steps,
            "exact": ramp_exact,
            "first_after": first_after,
        },
        "ramp_worst": max((abs(s["off"]) for s in steps), default=0.0),
    }
    write_result("held_drain", result, args.json)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    ramp = r["ramp"]
    lines = [
        "## Releasing a held backlog (`bench/held_drain.py`)",
        "",
        f"{r['messages']} queued messages (the drain benchmark's queue: posted to `/api/send`, "
        "one relay added with `relayboard servers add` defaults), held for that relay as a "
        "maintenance with policy `hold` leaves them. Released: `relayboard maintenance end "
        "sink` with `RELAYBOARD_DRAIN_RAMP=off`, then `relayboard drain --quiet`. Baseline: a "
        "plain `relayboard drain --quiet` of the same queue, never held. Each on a fresh copy, "
        f"alternating; throughput at the sink, first to last message; median of {len(r['runs'])} "
        "runs.",
        "",
        "| | msg/s (median) | all sent, exact Message-IDs |",
        "| --- | ---: | --- |",
        f"| plain `relayboard drain` | {r['plain_rate']:.0f} | {'yes' if r['exact'] else 'no'} |",
        f"| held backlog released, ramp off | {r['held_rate']:.0f} | "
        f"{'yes' if r['exact'] and r['all_sent'] else 'no'} |",
        "",
        "| metric | result | target | |",
        "| --- | ---: | ---: | --- |",
        f"| released / plain, median of per-run ratios | {r['ratio']:.2f} | ≥ {TARGET_RATIO:.2f} "
        f"| {verdict(r['ratio'] >= TARGET_RATIO)} |",
        f"| ramp on: worst step, measured rate against the ramp's | {r['ramp_worst']:.0%} | "
        f"within {RAMP_TOLERANCE:.0%} | {verdict(r['ramp_worst'] <= RAMP_TOLERANCE)} |",
        "",
        "Per run (msg/s, plain → released, ratio): "
        + ", ".join(
            f"{x['plain']['rate']:.0f} → {x['held']['rate']:.0f} ({x['ratio']:.2f})"
            for x in r["runs"]
        )
        + ".",
        "",
        f"Ramp on: {ramp['messages']} held messages released at {ramp['initial']:g} msg/s, "
        f"×{ramp['growth']:g} every {ramp['step']:g} s (`RELAYBOARD_DRAIN_*`), by `relayboard "
        f"drain`, started right after the end; the first message reached the sink "
        f"{ramp['first_after']:.1f} s after the drain started (the command starting up). Each "
        "full step's messages at the sink, steps counted from the drain's start, from the "
        "first step that began after the first message:",
        "",
        "| step | ramp msg/s | measured msg/s | off by |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {s['step']} | {s['ramp']:.0f} | {s['measured']:.1f} | {s['off']:+.0%} |"
            for s in ramp["steps"]
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
