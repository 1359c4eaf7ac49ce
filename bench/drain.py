"""Drain throughput, measured as a user runs it: `relayboard drain` against a bare aiosmtplib loop.

Both sides are whole processes sending the same queued messages to one sink
(bench/sink.py: a raw asyncio SMTP responder in its own process on 127.0.0.1).
Throughput is read at the sink: messages / (last received - first received).

- The queue: MESSAGES messages of ~2 KB (text + html) posted to `/api/send` with the
  Flask test client of `create_app()` into a temp SQLite database (after `relayboard db
  upgrade`, `relayboard api-keys create` and `relayboard servers add --name sink ...
  --security none`, all else default); not timed. Each run drains a fresh copy.
- Relayboard: `relayboard drain --quiet` with only RELAYBOARD_INSTANCE_PATH,
  RELAYBOARD_DATABASE_URL and RELAYBOARD_SECRET_KEY set (default settings: INFO logs,
  one line per attempt, to a file), timed from outside.
- Baseline: bench/bare_loop.py, 8 aiosmtplib connections kept open for the whole run on
  the standard asyncio loop, sending each queued message's own envelope and bytes,
  read from the same database with sqlite3.
Each run does the baseline, then Relayboard, and checks that the sink received exactly
the queued Message-IDs, each once. CPU per message is each child's user + system time
(wait4), gross and net of a run on an empty queue (start-up, measured once).

    .venv/bin/python bench/drain.py [--messages 4000] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    APP_ROOT,
    ROOT,
    Measured,
    checkpoint,
    cli_env,
    median,
    message_body,
    relayboard,
    relayboard_command,
    relayboard_setup,
    run_measured,
    tempdir,
    verdict,
    wait_for_quiet,
    write_result,
)
from sink import Sink

BENCH = ROOT / "bench"
CONNECTIONS = 8
TARGET_RATIO = 0.70
RUN_TIMEOUT = 300.0  # seconds: no child runs longer than this
STARTUP_RUNS = 3  # empty-queue runs whose median CPU is the start-up cost


@dataclass
class Queue:
    """The prepared databases: migrated with the sink relay, empty and full."""

    empty: Path
    full: Path
    count: int
    expected: set[str]
    message_bytes: float


def normalize(message_id: str) -> str:
    return message_id.strip().strip("<>")


# --------------------------------------------------------------------------- the queue


def _fill_child(count: int, key: str) -> None:
    """Child process: post `count` messages with the Flask test client of create_app() (the
    database is the one RELAYBOARD_DATABASE_URL names)."""
    import app
    from app import create_app

    client = create_app().test_client()
    headers = {"Authorization": f"Bearer {key}"}
    for index in range(count):
        answer = client.post("/api/send", json=message_body(index), headers=headers)
        if answer.status_code != 202:
            sys.exit(f"POST /api/send answered {answer.status_code}: {answer.get_data()[:500]!r}")
    print(json.dumps({"posted": count, "app": app.__file__}), flush=True)


def prepare(workdir: Path, sink_port: int, count: int) -> Queue:
    """Build the empty and the full queue databases (not timed)."""
    setup = workdir / "setup"
    setup.mkdir()
    db = setup / "relayboard.db"
    env = cli_env(db, setup / "instance")
    key = relayboard_setup(env, setup)
    relayboard(
        *("servers", "add", "--name", "sink", "--host", "127.0.0.1"),
        *("--port", str(sink_port), "--security", "none"),
        env=env,
        cwd=setup,
    )
    checkpoint(db)
    empty = workdir / "empty.db"
    shutil.copyfile(db, empty)

    fill_env = {**env, "RELAYBOARD_SCHEDULER": "0", "RELAYBOARD_API_RATE_LIMIT": "off"}
    if APP_ROOT != ROOT:  # _common puts APP_ROOT ahead of the work tree on sys.path
        fill_env["RELAYBOARD_BENCH_APP_ROOT"] = str(APP_ROOT)
    command = [sys.executable, str(BENCH / "drain.py"), "--fill-child", str(count), key]
    measured = run_measured(
        command,
        env=fill_env,
        cwd=setup,
        timeout=max(120.0, count * 0.05),
        stdout=setup / "fill.out",
        stderr=setup / "fill.log",
    )
    if measured.returncode != 0:
        raise RuntimeError("filling the queue failed:\n" + (setup / "fill.log").read_text()[-3000:])
    loaded = Path(json.loads((setup / "fill.out").read_text().splitlines()[-1])["app"])
    if APP_ROOT not in loaded.parents:
        raise RuntimeError(f"the fill imported {loaded}, not the app under {APP_ROOT}")
    checkpoint(db)
    full = workdir / "full.db"
    shutil.copyfile(db, full)
    with contextlib.closing(sqlite3.connect(full)) as conn:
        rows = conn.execute("SELECT message_id, status, length(data) FROM messages").fetchall()
    if len(rows) != count or {status for _, status, _ in rows} != {"queued"}:
        raise RuntimeError(f"expected {count} queued messages, found {len(rows)}")
    return Queue(
        empty=empty,
        full=full,
        count=count,
        expected={normalize(mid) for mid, _, _ in rows},
        message_bytes=sum(size for _, _, size in rows) / count,
    )


# --------------------------------------------------------------------------- one side


def _copy(src: Path, run_dir: Path) -> Path:
    run_dir.mkdir()
    db = run_dir / "relayboard.db"
    shutil.copyfile(src, db)
    return db


def _statuses(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM messages GROUP BY status").fetchall()
    return dict(rows)


def _at_sink(sink: Sink, expected: set[str] | None) -> dict[str, Any]:
    """Read the sink's tally: rate between first and last message, exactly-once check."""
    stats = sink.stats()
    ids = [normalize(i) for i in sink.message_ids()] if expected is not None else []
    n = stats["messages"]
    span = (stats["last"] - stats["first"]) if n > 1 else 0.0
    result: dict[str, Any] = {
        "received": n,
        "rate": n / span if span > 0 else 0.0,
        "span_seconds": span,
        "first": stats["first"],
        "connections": stats["connections"],
        "sink_cpu_us_per_msg": stats["cpu_seconds"] / max(n, 1) * 1e6,
        # The share of one core the sink used while messages arrived: near 1, it would be
        # the bottleneck.
        "sink_core_share": stats["cpu_seconds"] / span if span > 0 else 0.0,
    }
    if expected is not None:
        result["distinct"] = len(set(ids))
        result["exact"] = len(ids) == len(expected) and set(ids) == expected
    return result


def _cpu(measured: Measured, startup: float, count: int) -> dict[str, float]:
    return {
        "wall_seconds": measured.wall,
        "cpu_seconds": measured.cpu,
        "cpu_us_per_msg": measured.cpu / count * 1e6,
        "net_cpu_us_per_msg": (measured.cpu - startup) / count * 1e6,
    }


def drain_once(src: Path, run_dir: Path, sink: Sink) -> tuple[Measured, Path]:
    """Run `relayboard drain --quiet` on a copy of `src`; return its measure and database."""
    db = _copy(src, run_dir)
    sink.reset()
    measured = run_measured(
        [*relayboard_command(), "drain", "--quiet"],
        env=cli_env(db, run_dir / "instance"),
        cwd=run_dir,
        timeout=RUN_TIMEOUT,
        stdout=run_dir / "drain.out",
        stderr=run_dir / "drain.log",
    )
    if measured.returncode != 0:
        log = (run_dir / "drain.log").read_text(errors="replace")
        raise RuntimeError(f"relayboard drain exited {measured.returncode}:\n{log[-3000:]}")
    return measured, db


def run_relayboard(queue: Queue, run_dir: Path, sink: Sink, startup: float) -> dict[str, Any]:
    """One `relayboard drain` of the full queue, read at the sink."""
    measured, db = drain_once(queue.full, run_dir, sink)
    at_sink = _at_sink(sink, queue.expected)
    statuses = _statuses(db)
    log = (run_dir / "drain.log").read_text(errors="replace").splitlines()
    result = {
        **at_sink,
        **_cpu(measured, startup, queue.count),
        "statuses": statuses,
        "all_sent": statuses == {"sent": queue.count},
        "summary": (run_dir / "drain.out").read_text(errors="replace").strip(),
        "log_lines": len(log),
        "log_sample": log[:2],
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def baseline_once(src: Path, run_dir: Path, sink: Sink) -> Measured:
    """Run bench/bare_loop.py over the messages of `src`."""
    run_dir.mkdir()
    sink.reset()
    measured = run_measured(
        [
            sys.executable,
            str(BENCH / "bare_loop.py"),
            *("--db", str(src), "--port", str(sink.port)),
            *("--connections", str(CONNECTIONS), "--deadline", str(RUN_TIMEOUT - 30)),
        ],
        env=cli_env(src, run_dir / "instance"),  # RELAYBOARD_* is not read; kept alike
        cwd=run_dir,
        timeout=RUN_TIMEOUT,
        stdout=run_dir / "bare.out",
        stderr=run_dir / "bare.log",
    )
    if measured.returncode != 0:
        log = (run_dir / "bare.log").read_text(errors="replace")
        raise RuntimeError(f"bare_loop.py exited {measured.returncode}:\n{log[-3000:]}")
    return measured


def run_baseline(queue: Queue, run_dir: Path, sink: Sink, startup: float) -> dict[str, Any]:
    """One bare aiosmtplib run over the full queue's messages, read at the sink."""
    measured = baseline_once(queue.full, run_dir, sink)
    result = {**_at_sink(sink, queue.expected), **_cpu(measured, startup, queue.count)}
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def startup_costs(queue: Queue, workdir: Path, sink: Sink) -> dict[str, Any]:
    """CPU seconds of each side on an empty queue: one warm-up, then the median of a few."""
    costs: dict[str, list[float]] = {"relayboard": [], "baseline": []}
    for i in range(STARTUP_RUNS + 1):
        rb, _ = drain_once(queue.empty, workdir / f"empty-rb-{i}", sink)
        bare = baseline_once(queue.empty, workdir / f"empty-bare-{i}", sink)
        if i:
            costs["relayboard"].append(rb.cpu)
            costs["baseline"].append(bare.cpu)
    return {
        "relayboard_cpu_seconds": median(costs["relayboard"]),
        "baseline_cpu_seconds": median(costs["baseline"]),
        "relayboard_runs": costs["relayboard"],
        "baseline_runs": costs["baseline"],
    }


# --------------------------------------------------------------------------- --profile


def _thread_cpu(src: Path, run_dir: Path, sink: Sink) -> tuple[dict[str, Any], Measured]:
    """`relayboard drain --quiet` under bench/thread_cpu.py; return its report and measure."""
    db = _copy(src, run_dir)
    report = run_dir / "threads.json"
    sink.reset()
    measured = run_measured(
        [sys.executable, str(BENCH / "thread_cpu.py"), str(report), "drain", "--quiet"],
        env=cli_env(db, run_dir / "instance"),
        cwd=run_dir,
        timeout=RUN_TIMEOUT,
        stdout=run_dir / "drain.out",
        stderr=run_dir / "drain.log",
    )
    if measured.returncode != 0 or not report.exists():
        log = (run_dir / "drain.log").read_text(errors="replace")
        raise RuntimeError(f"the profiled drain exited {measured.returncode}:\n{log[-3000:]}")
    return json.loads(report.read_text()), measured


def _split(report: dict[str, Any], process_cpu: float) -> dict[str, dict[str, float]]:
    """Return CPU seconds and log records by where they go: main thread, other threads (by
    name, numbers dropped), logging handlers, building log records, threads Python did not
    start, the interpreter's teardown after the exit hooks; and the whole process."""
    parts: dict[str, dict[str, float]] = {}

    def add(key: str, cpu: float, threads: float = 0.0, records: float = 0.0) -> None:
        row = parts.setdefault(key, {"cpu": 0.0, "threads": 0.0, "records": 0.0})
        row["cpu"] += cpu
        row["threads"] += threads
        row["records"] += records

    total = 0.0
    for t in report["threads"]:
        handlers = t["logging_handlers_cpu"]
        calls = max(t["logging_calls_cpu"], handlers)
        total += t["cpu"]
        name = (
            "main thread (event loop)"
            if t["main"]
            else "thread " + (re.sub(r"[-_]?\d+$", "", t["name"]) or "?")
        )
        add(name, t["cpu"] - calls, threads=1)
        add("logging: handlers", handlers, records=t["log_records"])
        add("logging: building records", calls - handlers)
    at_exit = report["process_cpu_at_exit"]
    add("threads not started by Python", report["native_threads_cpu"])
    add(
        "not in a thread's count (e.g. threads that ended unseen)",
        at_exit - total - report["native_threads_cpu"],
    )
    add("teardown after the exit hooks", process_cpu - at_exit)
    add("whole process (wait4)", process_cpu)
    return parts


def profile(queue: Queue, workdir: Path, sink: Sink) -> dict[str, Any]:
    """Split one more drain's CPU per message by thread and logging, net of the median of
    a few runs on an empty queue."""
    startups = []
    for i in range(STARTUP_RUNS):
        empty_report, empty = _thread_cpu(queue.empty, workdir / f"profile-empty-{i}", sink)
        startups.append(_split(empty_report, empty.cpu))
    full_report, full = _thread_cpu(queue.full, workdir / "profile-full", sink)
    at_sink = _at_sink(sink, queue.expected)
    split = _split(full_report, full.cpu)
    n = queue.count
    rows = []
    for key, row in split.items():
        startup = median(s[key]["cpu"] if key in s else 0.0 for s in startups)
        rows.append(
            {
                "where": key,
                "threads": int(row["threads"]),
                "us_per_msg": row["cpu"] / n * 1e6,
                "net_us_per_msg": (row["cpu"] - startup) / n * 1e6,
                "records_per_msg": row["records"] / n,
            }
        )
    return {
        "rate": at_sink["rate"],
        "exact": at_sink.get("exact"),
        "wall_seconds": full.wall,
        "rows": rows,
        "threads": full_report["threads"],
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--profile", action="store_true", help="split one more drain's CPU by thread and logging"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait at most for idle CPUs before each run (default 30)",
    )
    parser.add_argument("--json", help="where to write the result (default bench/out/drain.json)")
    args = parser.parse_args(argv)
    count = max(1, min(args.messages, 100_000))
    runs = max(1, min(args.runs, 20))

    baseline: list[dict[str, Any]] = []
    relayboard_runs: list[dict[str, Any]] = []
    busy_before: list[float] = []
    profiled = None
    with Sink() as sink, tempdir("drain") as tmp:
        workdir = Path(tmp)
        queue = prepare(workdir, sink.port, count)
        print(
            f"queue ready: {count} messages of {queue.message_bytes:.0f} bytes; sink on port "
            f"{sink.port} ({sink.loop})",
            flush=True,
        )
        startup = startup_costs(queue, workdir, sink)
        for i in range(runs):
            busy_before.append(wait_for_quiet(limit=args.quiet_wait))
            baseline.append(
                run_baseline(queue, workdir / f"bare-{i}", sink, startup["baseline_cpu_seconds"])
            )
            relayboard_runs.append(
                run_relayboard(queue, workdir / f"rb-{i}", sink, startup["relayboard_cpu_seconds"])
            )
            b, r = baseline[-1], relayboard_runs[-1]
            print(
                f"run {i + 1}/{runs}: baseline {b['rate']:.0f} msg/s, relayboard "
                f"{r['rate']:.0f} msg/s (ratio {r['rate'] / b['rate']:.2f}; exact "
                f"{b['exact']}/{r['exact']}; CPU µs/msg net {b['net_cpu_us_per_msg']:.0f} / "
                f"{r['net_cpu_us_per_msg']:.0f}; sink µs/msg {b['sink_cpu_us_per_msg']:.0f} / "
                f"{r['sink_cpu_us_per_msg']:.0f})",
                flush=True,
            )
        if args.profile:
            profiled = profile(queue, workdir, sink)
        sink_loop = sink.loop

    ratios = [r["rate"] / b["rate"] for r, b in zip(relayboard_runs, baseline, strict=True)]
    base_rate = median(r["rate"] for r in baseline)
    rb_rate = median(r["rate"] for r in relayboard_runs)
    result: dict[str, Any] = {
        "messages": count,
        "message_bytes": queue.message_bytes,
        "runs": runs,
        "connections": CONNECTIONS,
        "sink_loop": sink_loop,
        "relayboard_command": " ".join([*relayboard_command(), "drain", "--quiet"]),
        "baseline_rate": base_rate,
        "relayboard_rate": rb_rate,
        "ratios": ratios,
        # Each run pairs the two back to back: the ratio is taken within a run, then the
        # median of those, so drift between runs cancels out.
        "ratio": median(ratios),
        "ratio_of_medians": rb_rate / base_rate if base_rate else 0.0,
        "target_ratio": TARGET_RATIO,
        "pass": median(ratios) >= TARGET_RATIO,
        "startup": startup,
        **{
            f"{side}_{key}": median(r[key] for r in rows)
            for side, rows in (("baseline", baseline), ("relayboard", relayboard_runs))
            for key in (
                "cpu_us_per_msg",
                "net_cpu_us_per_msg",
                "sink_cpu_us_per_msg",
                "sink_core_share",
                "wall_seconds",
            )
        },
        "all_exact": all(r["exact"] for r in baseline + relayboard_runs),
        "all_sent": all(r["all_sent"] for r in relayboard_runs),
        "cpu_busy_before_runs": busy_before,
        "baseline_runs": baseline,
        "relayboard_runs": relayboard_runs,
    }
    if profiled:
        result["profile"] = profiled
    write_result("drain", result, args.json)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    """Return the Markdown section for docs/benchmarks.md."""
    startup = r["startup"]
    lines = [
        "## Drain throughput (`bench/drain.py`)",
        "",
        f"{r['messages']} queued messages of about {r['message_bytes'] / 1024:.1f} KB "
        "(text + html), delivered to one sink on 127.0.0.1 (`bench/sink.py`, a raw asyncio "
        f"SMTP responder on {r['sink_loop']} in its own process); median of {r['runs']} runs, "
        "each running the baseline and then Relayboard as whole processes, each drain on a "
        "fresh copy of the same queue. Throughput is read at the sink: messages / (last "
        "received − first received). The queue was filled through `POST /api/send` (Flask "
        "test client, not timed) after `relayboard db upgrade` and `relayboard servers add "
        "--name sink --host 127.0.0.1 --port PORT --security none` (every other relay "
        "setting at its default). Relayboard: `relayboard drain --quiet` with only "
        "`RELAYBOARD_INSTANCE_PATH`, `RELAYBOARD_DATABASE_URL` and `RELAYBOARD_SECRET_KEY` "
        "set, so everything else is at its default (INFO logs: one line per attempt, to a "
        f"file). Baseline (`bench/bare_loop.py`): {r['connections']} aiosmtplib connections "
        "kept open for the whole run on the standard asyncio loop, sending each queued "
        "message's own envelope and bytes (read from the same database with sqlite3). "
        "CPU is each process's user + system time (wait4); net is after subtracting a run "
        f"on an empty queue (start-up: Relayboard {startup['relayboard_cpu_seconds']:.2f} s, "
        f"baseline {startup['baseline_cpu_seconds']:.2f} s).",
        "",
        "| | msg/s (median) | CPU µs/msg, net (gross) | wall s | sink CPU µs/msg (share "
        "of a core) | sink got exactly the queued Message-IDs |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, side in (
        (f"bare aiosmtplib, {r['connections']} connections", "baseline"),
        ("`relayboard drain`", "relayboard"),
    ):
        rows = r[f"{side}_runs"]
        lines.append(
            f"| {label} | {r[f'{side}_rate']:.0f} | {r[f'{side}_net_cpu_us_per_msg']:.0f} "
            f"({r[f'{side}_cpu_us_per_msg']:.0f}) | {r[f'{side}_wall_seconds']:.2f} | "
            f"{r[f'{side}_sink_cpu_us_per_msg']:.0f} "
            f"({r.get(f'{side}_sink_core_share', float('nan')):.0%}) | "
            f"{'yes' if all(x['exact'] for x in rows) else '**NO**'} |"
        )
    connections = median(x["connections"] for x in r["relayboard_runs"])
    lines += [
        "",
        "| metric | result | target | |",
        "| --- | ---: | ---: | --- |",
        f"| Relayboard / baseline, msg/s, median of per-run ratios | {r['ratio']:.2f} | "
        f"≥ {r['target_ratio']:.2f} | {verdict(r['pass'])} |",
        f"| (ratio of the medians, for reference) | {r['ratio_of_medians']:.2f} | | |",
        f"| every message `sent` in Relayboard's database after each drain | "
        f"{'yes' if r.get('all_sent') else 'no'} | yes | {verdict(bool(r.get('all_sent')))} |",
        "",
        "Per run (msg/s, baseline → Relayboard, ratio): "
        + ", ".join(
            f"{b['rate']:.0f} → {x['rate']:.0f} ({x['rate'] / b['rate']:.2f})"
            for b, x in zip(r["baseline_runs"], r["relayboard_runs"], strict=True)
        )
        + f". Relayboard opened {connections:.0f} connections to the sink per run (median).",
        *_render_profile(r),
    ]
    return "\n".join(lines)


def _render_profile(r: dict[str, Any]) -> list[str]:
    profile = r.get("profile")
    if not profile:
        return []
    lines = [
        "",
        f"Where a message's CPU goes: one more `relayboard drain` run under "
        f"`bench/thread_cpu.py` ({profile['rate']:.0f} msg/s), which notes each thread's CPU "
        "time and the time spent inside logging (`logging.Handler.handle`: format and write; "
        "`Logger._log` around it: building the record), minus the median of "
        f"{STARTUP_RUNS} such runs on an empty queue. "
        "Thread rows exclude their logging.",
        "",
        "| where | threads | CPU µs/msg, net of start-up | gross | log records/msg |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in profile["rows"]:
        lines.append(
            f"| {row['where']} | {row['threads'] or ''} | {row['net_us_per_msg']:.0f} | "
            f"{row['us_per_msg']:.0f} | "
            f"{row['records_per_msg']:.2f} |".replace("| 0.00 |", "| |")
        )
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill-child"]:
        _fill_child(int(sys.argv[2]), sys.argv[3])
    else:
        main()
