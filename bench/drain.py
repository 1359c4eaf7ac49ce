"""Drain throughput: Relayboard's DeliveryEngine.drain() against a bare aiosmtplib loop.

Both send the same kind of prebuilt ~2 KB messages to one aiosmtpd sink on 127.0.0.1,
which runs in a separate process. The baseline is 8 asyncio tasks, each with one
reused aiosmtplib connection; Relayboard drains a temp SQLite queue over one relay
with 8 sessions. Enqueueing is not timed. Each repetition runs both, back to back,
and checks that the sink received exactly the expected distinct Message-IDs.

    .venv/bin/python bench/drain.py [--messages 5000] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import re
import time
from pathlib import Path
from typing import Any

from _common import (
    ServerProcess,
    build,
    drain_bounded,
    make_app,
    median,
    tempdir,
    verdict,
    wait_for_quiet,
    write_result,
)

CONNECTIONS = 8
LOOPS = ("uvloop", "asyncio")  # both sides run on the same event loop: Relayboard's default first
TARGET_RATIO = 0.70
RUN_DEADLINE = 180.0  # seconds: no single timed loop runs longer than this


# --------------------------------------------------------------------------- baseline


async def _baseline(host: str, port: int, messages: list[Any], deadline: float) -> int:
    import aiosmtplib

    items = iter(messages)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        await smtp.connect()
        try:
            for built in items:  # the shared iterator bounds the count
                if time.monotonic() > deadline:
                    break
                await smtp.sendmail(built.envelope_from, built.recipients, built.data)
                sent += 1
        finally:
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return sent


def run_baseline(sink: ServerProcess, count: int, loop: str = LOOPS[0]) -> dict[str, Any]:
    """Send `count` prebuilt messages over 8 reused connections on `loop`; return msg/s."""
    from app.transport import loop as event_loop

    messages = [build(i) for i in range(count)]
    expected = {m.message_id for m in messages}
    sink.reset()
    cpu0 = time.process_time()
    started = time.perf_counter()
    sent = event_loop.run(
        _baseline(sink.host, sink.port, messages, time.monotonic() + RUN_DEADLINE), loop
    )
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    check = _check_sink(sink, expected)
    return {
        "sent": sent,
        "seconds": seconds,
        "rate": sent / seconds,
        "cpu_us_per_msg": cpu / max(sent, 1) * 1e6,
        **check,
    }


# --------------------------------------------------------------------------- relayboard


def _profiled_engine_class() -> Any:
    """A DeliveryEngine whose database steps (on the DB thread) run under their own profiler."""
    from app.services.delivery import DeliveryEngine

    class ProfiledEngine(DeliveryEngine):
        db_profiler: cProfile.Profile

    def wrap(name: str) -> Any:
        def step(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.db_profiler.enable()  # cProfile hooks only the thread that enables it
            try:
                return getattr(super(ProfiledEngine, self), name)(*args, **kwargs)
            finally:
                self.db_profiler.disable()

        return step

    # Only the outermost steps: _record calls _save_relays inside its transaction.
    for name in ("_reap", "_load_relays", "_claim", "_record"):
        if hasattr(DeliveryEngine, name):
            setattr(ProfiledEngine, name, wrap(name))
    return ProfiledEngine


def run_relayboard(
    sink: ServerProcess, count: int, profile: bool = False, loop: str = LOOPS[0]
) -> dict[str, Any]:
    """Enqueue `count` messages (untimed), then time one DeliveryEngine.drain()."""
    from app import settings_of
    from app.extensions import db
    from app.services import queue, relays
    from app.services.delivery import DeliveryEngine

    with tempdir("drain") as tmp:
        app = make_app(Path(tmp), RELAYBOARD_EVENT_LOOP=loop)
        with app.app_context():
            relays.create(
                name="sink",
                host=sink.host,
                port=sink.port,
                security="none",
                max_per_connection=100_000,
            )
            expected = {queue.enqueue(build(i)).message_id for i in range(count)}
            engine_class = _profiled_engine_class() if profile else DeliveryEngine
            engine = engine_class(db.engine, settings_of(app))
            profiler = cProfile.Profile() if profile else None
            if profile:
                engine.db_profiler = cProfile.Profile()
            sink.reset()
            cpu0, loop0 = time.process_time(), time.thread_time()
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            report = drain_bounded(engine, RUN_DEADLINE)  # the event loop runs on this thread
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - started
            cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
            db.session.remove()
            db.engine.dispose()
    check = _check_sink(sink, expected)
    sent = max(report.sent, 1)
    result = {
        "sent": report.sent,
        "claimed": report.claimed,
        "deferred": report.deferred,
        "failed": report.failed,
        "seconds": seconds,
        "rate": report.sent / seconds,
        "cpu_us_per_msg": cpu / sent * 1e6,
        "loop_cpu_us_per_msg": loop_cpu / sent * 1e6,
        "db_cpu_us_per_msg": (cpu - loop_cpu) / sent * 1e6,
        **check,
    }
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        out.write("=== event loop thread\n")
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        db_stats = pstats.Stats(engine.db_profiler, stream=out)
        out.write("=== database thread\n")
        db_stats.sort_stats("tottime").print_stats(25)
        db_stats.sort_stats("cumulative").print_stats(30)
        result["profile"] = out.getvalue()
        result["hot"] = _hot_spots(stats, report.sent)
        result["db_hot"] = _hot_spots(db_stats, report.sent)
    return result


def _label(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name
    if "/app/" in path:
        path = "app/" + path.split("/app/", 1)[1]
    else:
        path = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", path)
    return f"{path}:{line}({name})"


def _hot_spots(stats: pstats.Stats, sent: int) -> dict[str, list[dict[str, Any]]]:
    """Return the top functions by own time, and Relayboard's own functions by total time."""
    rows = [
        {
            "function": _label(func),
            "calls": nc,
            "own_s": tt,
            "total_s": ct,
            "calls_per_msg": nc / max(sent, 1),
            "app": "/app/" in func[0],
        }
        for func, (_cc, nc, tt, ct, _callers) in stats.stats.items()
    ]
    own = sorted(rows, key=lambda r: r["own_s"], reverse=True)[:12]
    app = sorted((r for r in rows if r["app"]), key=lambda r: r["total_s"], reverse=True)[:12]
    return {"own": own, "app": app}


def _check_sink(sink: ServerProcess, expected: set[str]) -> dict[str, Any]:
    ids = sink.message_ids()
    stats = sink.stats()
    return {
        "sink_received": len(ids),
        "sink_distinct": len(set(ids)),
        "sink_connections": stats["connections"],
        "exact": len(ids) == len(expected) and set(ids) == expected,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one extra Relayboard drain and print the hot spots",
    )
    parser.add_argument(
        "--loop", choices=LOOPS, default=LOOPS[0], help="event loop of both sides (default uvloop)"
    )
    parser.add_argument("--json", help="where to write the result (default bench/out/drain.json)")
    args = parser.parse_args(argv)
    count = max(1, min(args.messages, 100_000))
    runs = max(1, min(args.runs, 20))

    baseline: list[dict[str, Any]] = []
    relayboard: list[dict[str, Any]] = []
    busy_before: list[float] = []
    with ServerProcess("smtp") as sink:
        run_baseline(sink, min(count, 500), args.loop)  # warm up both (imports, sockets)
        run_relayboard(sink, min(count, 200), loop=args.loop)
        for i in range(runs):
            busy_before.append(wait_for_quiet(limit=30))
            baseline.append(run_baseline(sink, count, args.loop))
            relayboard.append(run_relayboard(sink, count, loop=args.loop))
            print(
                f"run {i + 1}/{runs}: baseline {baseline[-1]['rate']:.0f} msg/s, "
                f"relayboard {relayboard[-1]['rate']:.0f} msg/s "
                f"(exact: {baseline[-1]['exact']}/{relayboard[-1]['exact']})",
                flush=True,
            )
        profiled = (
            run_relayboard(sink, count, profile=True, loop=args.loop) if args.profile else None
        )
        sink_cpu = sink.cpu_seconds()

    base_rate = median(r["rate"] for r in baseline)
    rb_rate = median(r["rate"] for r in relayboard)
    ratios = [r["rate"] / b["rate"] for r, b in zip(relayboard, baseline, strict=True)]
    result = {
        "messages": count,
        "runs": runs,
        "connections": CONNECTIONS,
        "event_loop": args.loop,
        "baseline_rate": base_rate,
        "relayboard_rate": rb_rate,
        # Each run pairs the baseline and Relayboard back to back: the ratio is taken
        # within a run, then the median of those, so drift between runs cancels out.
        "ratio": median(ratios),
        "ratio_of_medians": rb_rate / base_rate,
        "target_ratio": TARGET_RATIO,
        "pass": median(ratios) >= TARGET_RATIO,
        "baseline_cpu_us_per_msg": median(r["cpu_us_per_msg"] for r in baseline),
        "relayboard_cpu_us_per_msg": median(r["cpu_us_per_msg"] for r in relayboard),
        "relayboard_loop_cpu_us_per_msg": median(r["loop_cpu_us_per_msg"] for r in relayboard),
        "relayboard_db_cpu_us_per_msg": median(r["db_cpu_us_per_msg"] for r in relayboard),
        "all_exact": all(r["exact"] for r in baseline + relayboard),
        "sink_cpu_seconds_total": sink_cpu,
        "cpu_busy_before_runs": busy_before,
        "baseline_runs": baseline,
        "relayboard_runs": relayboard,
    }
    if profiled:
        result["profile"] = {
            "rate": profiled["rate"],
            "seconds": profiled["seconds"],
            "hot": profiled["hot"],
            "db_hot": profiled["db_hot"],
        }
    path = write_result("drain", result, args.json)
    print(render(result))
    if profiled:
        print(profiled["profile"])
        Path(path).with_suffix(".profile.txt").write_text(profiled["profile"])
    return result


def render(r: dict[str, Any]) -> str:
    """Return the Markdown section for docs/benchmarks.md."""
    return "\n".join(
        [
            "## Drain throughput (`bench/drain.py`)",
            "",
            f"{r['messages']} messages of ~2 KB (text + html) to one aiosmtpd sink on 127.0.0.1 "
            f"in a separate process; {r['connections']} reused connections on both sides; "
            f"median of {r['runs']} runs, each running the baseline and then Relayboard. "
            f"Both sides run on the same event loop: {r.get('event_loop', 'asyncio')} "
            "(Relayboard's default is uvloop; `--loop asyncio` runs both on the standard "
            "library's). "
            "Baseline: 8 asyncio tasks, each one `aiosmtplib.SMTP` connection calling `sendmail` "
            "with prebuilt messages. Relayboard: temp SQLite queue filled with `queue.enqueue` "
            "(not timed), one relay (security none, max_per_connection 100000), "
            "`RELAYBOARD_SESSIONS_PER_RELAY=8`, timing "
            "`DeliveryEngine(db.engine, settings).drain()`. Client CPU is the measured "
            "process's CPU time per message (the sink's is not included).",
            "",
            "| | msg/s (median) | client CPU µs/msg | sink got exactly the expected Message-IDs |",
            "| --- | ---: | ---: | --- |",
            f"| bare aiosmtplib, 8 connections | {r['baseline_rate']:.0f} | "
            f"{r['baseline_cpu_us_per_msg']:.0f} | "
            f"{'yes' if all(x['exact'] for x in r['baseline_runs']) else 'NO'} |",
            f"| Relayboard drain | {r['relayboard_rate']:.0f} | "
            f"{r['relayboard_cpu_us_per_msg']:.0f} (event loop "
            f"{r.get('relayboard_loop_cpu_us_per_msg', float('nan')):.0f}, database thread "
            f"{r.get('relayboard_db_cpu_us_per_msg', float('nan')):.0f}) | "
            f"{'yes' if all(x['exact'] for x in r['relayboard_runs']) else 'NO'} |",
            "",
            "| metric | result | target | |",
            "| --- | ---: | ---: | --- |",
            f"| Relayboard / baseline, median of per-run ratios | {r['ratio']:.2f} | "
            f"≥ {r['target_ratio']:.2f} | {verdict(r['pass'])} |",
            f"| (ratio of the medians, for reference) | {r.get('ratio_of_medians', 0):.2f} | | |",
            "",
            "Per run (msg/s, baseline → Relayboard): "
            + ", ".join(
                f"{b['rate']:.0f} → {x['rate']:.0f}"
                for b, x in zip(r["baseline_runs"], r["relayboard_runs"], strict=True)
            )
            + ".",
            *_render_profile(r),
        ]
    )


def _render_profile(r: dict[str, Any]) -> list[str]:
    profile = r.get("profile")
    if not profile:
        return []
    lines = [
        "",
        f"cProfile of one more Relayboard drain ({profile['rate']:.0f} msg/s under the "
        "profiler). Event loop thread: Relayboard's functions by total time, then the top "
        "functions by own time. Database thread (claims and records, profiled separately): "
        "the top functions by own time.",
        "",
        "| thread | function | calls (incl. coroutine resumes) per message | total s | own s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    sections = [("loop", profile["hot"]["app"][:8]), ("loop", profile["hot"]["own"][:8])]
    if profile.get("db_hot"):
        sections.append(("database", profile["db_hot"]["own"][:8]))
    for thread, rows in sections:
        for row in rows:
            lines.append(
                f"| {thread} | `{row['function']}` | {row['calls_per_msg']:.2f} | "
                f"{row['total_s']:.2f} | {row['own_s']:.2f} |"
            )
    return lines


if __name__ == "__main__":
    main()
