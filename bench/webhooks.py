"""Webhook intake: POST /hooks/mailersend from 16 concurrent senders, as a user runs it.

- Relayboard: `relayboard serve` with its defaults (the scheduler on, so stored events
  are acted on by the same processes while the load runs), one relay added with
  `relayboard servers add --provider mailersend --webhook-secret S`.
- Baseline (bench/bare_app.py): a bare Flask route under `gunicorn -w 2 -k sync` that
  checks the HMAC-SHA256 signature of the raw body with one secret and commits the body
  as one row to SQLite (WAL, synchronous=FULL).
- Load: wrk, 16 connections, each request a distinct signed `activity.delivered` event
  (read from a file of pre-signed bodies), 2 s of warm-up then SECONDS measured.
Runs alternate baseline and Relayboard on fresh databases; medians of RUNS.

    .venv/bin/python bench/webhooks.py [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import api
from _common import (
    cli_env,
    median,
    relayboard,
    relayboard_setup,
    tempdir,
    verdict,
    wait_for_quiet,
    write_result,
)

SECRET = "whsec-bench-0123456789abcdef"
PATH = "/hooks/mailersend"
TARGET_P99_MS = 50.0
SCHEDULER = os.environ.get("BENCH_SCHEDULER", "1") == "1"
EVENTS = 120_000  # distinct signed events; wrk's two threads take halves


def signed_events(path: Path, count: int) -> None:
    """Write `count` lines of "signature<TAB>body": distinct activity events."""
    with path.open("w") as out:
        for i in range(count):
            body = json.dumps(
                {
                    "type": "activity.delivered",
                    "created_at": "2025-08-05 22:27:14",
                    "data": {
                        "id": f"ev{i:08d}",
                        "type": "delivered",
                        "email": f"rcpt{i % 1000}@example.org",
                        "email_id": f"esp{i:08d}",
                        "message_id": f"msg{i:08d}",
                        "tags": ["bench"],
                    },
                },
                separators=(",", ":"),
            )
            signature = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
            out.write(f"{signature}\t{body}\n")


def wrk_script(workdir: Path, events: Path) -> Path:
    """A wrk script that sends each thread its own half of the signed events, in turn."""
    script = workdir / "hooks.lua"
    script.write_text(
        f"""
local threads = 0
function setup(thread)
  thread:set("part", threads)
  threads = threads + 1
end
function init(args)
  sigs, bodies = {{}}, {{}}
  local n = 0
  for line in io.lines("{events}") do
    n = n + 1
    if n % 2 == part then
      local sig, body = line:match("^(%x+)\\t(.*)$")
      table.insert(sigs, sig)
      table.insert(bodies, body)
    end
  end
  i = 0
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "{PATH}",
    {{["Content-Type"] = "application/json", ["Signature"] = sigs[i]}}, bodies[i])
end
"""
    )
    return script


def _rows(db: Path, table: str) -> int:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _acted(db: Path) -> int:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM webhook_events WHERE processed_at IS NOT NULL"
            ).fetchone()[0]
        )


def template(workdir: Path) -> Path:
    """A migrated database with one MailerSend relay holding the signing secret."""
    db = workdir / "template.db"
    env = cli_env(db, workdir / "instance")
    relayboard_setup(env, workdir)
    relayboard(
        *("servers", "add", "--name", "ms", "--host", "127.0.0.1", "--port", "2525"),
        *("--security", "none", "--provider", "mailersend", "--webhook-secret", SECRET),
        env=env,
        cwd=workdir,
    )
    return db


def one(service: api.Service, script: Path, seconds: float, table: str, db: Path) -> dict[str, Any]:
    with service:
        api.run_wrk(service.port, script, api.WARMUP_SECONDS, PATH)
        time.sleep(0.5)
        before = _rows(db, table)
        result = api.run_wrk(service.port, script, seconds, PATH)
        result["stored"] = _rows(db, table) - before
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="where to write the result (default bench/out/)")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempdir("relayboard-hooks-") as tmp:
        work = Path(tmp)
        events = work / "events.tsv"
        signed_events(events, EVENTS)
        script = wrk_script(work, events)
        base = template(work)
        for i in range(args.runs):
            busy = wait_for_quiet()
            bare_dir = work / f"bare-{i}"
            bare_dir.mkdir()
            os.environ["BENCH_BARE_SECRET"] = SECRET
            bare, bare_db = api.bare_service(bare_dir, api.BARE_WORKERS)
            bare_result = one(bare, script, args.seconds, "messages", bare_db)
            rb_dir = work / f"rb-{i}"
            rb_dir.mkdir()
            service, rb_db = api.relayboard_service(rb_dir, base, scheduler=SCHEDULER)
            rb_result = one(service, script, args.seconds, "webhook_events", rb_db)
            rb_result["acted"] = _acted(rb_db)
            runs.append({"bare": bare_result, "relayboard": rb_result, "busy": busy})
            print(
                f"run {i + 1}/{args.runs}: bare {bare_result['rate']:.0f} req/s (p99 "
                f"{bare_result['p99_ms']:.1f} ms), relayboard {rb_result['rate']:.0f} req/s "
                f"(p99 {rb_result['p99_ms']:.1f} ms); non-2xx {bare_result['non_2xx']}/"
                f"{rb_result['non_2xx']}; acted on {rb_result['acted']} of "
                f"{rb_result['stored']} stored",
                flush=True,
            )
    result = {
        "seconds": args.seconds,
        "runs": runs,
        "bare_rate": median([r["bare"]["rate"] for r in runs]),
        "rate": median([r["relayboard"]["rate"] for r in runs]),
        "bare_p99_ms": median([r["bare"]["p99_ms"] for r in runs]),
        "p99_ms": median([r["relayboard"]["p99_ms"] for r in runs]),
        "worst_p99_ms": max(r["relayboard"]["p99_ms"] for r in runs),
        "ratio": median([r["relayboard"]["rate"] / r["bare"]["rate"] for r in runs]),
        "non_2xx": sum(r["relayboard"]["non_2xx"] for r in runs),
    }
    write_result("webhooks", result, args.json)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## Webhook intake (`bench/webhooks.py`)",
            "",
            "`POST /hooks/mailersend` from wrk, 16 connections, each request a distinct signed "
            "`activity.delivered` event. Relayboard: `relayboard serve` with its defaults, the "
            "scheduler on (stored events are acted on by the same processes during the load), "
            "one relay added with `relayboard servers add --provider mailersend "
            "--webhook-secret S`. Baseline: a bare Flask route (`bench/bare_app.py`, gunicorn "
            "2 sync workers) that checks the signature with one secret and commits the body "
            f"as one row with `synchronous=FULL`. {r['seconds']:g} s measured after 2 s of "
            f"warm-up; median of {len(r['runs'])} runs, alternating.",
            "",
            "| | req/s (median) | p99 (median) |",
            "| --- | ---: | ---: |",
            f"| bare Flask route | {r['bare_rate']:.0f} | {r['bare_p99_ms']:.1f} ms |",
            f"| `relayboard serve` | {r['rate']:.0f} | {r['p99_ms']:.1f} ms |",
            "",
            "| metric | result | target | |",
            "| --- | ---: | ---: | --- |",
            f"| p99 at 16 senders, worst run | {r['worst_p99_ms']:.1f} ms | < {TARGET_P99_MS:g} ms "
            f"| {verdict(r['worst_p99_ms'] < TARGET_P99_MS)} |",
            f"| Relayboard / baseline, req/s, median of per-run ratios | {r['ratio']:.2f} | | |",
            f"| non-2xx answers (all runs) | {r['non_2xx']} | 0 | {verdict(r['non_2xx'] == 0)} |",
            "",
            "Per run (req/s and p99, baseline → Relayboard; events acted on by the scheduler "
            "during the run / stored): "
            + ", ".join(
                f"{x['bare']['rate']:.0f} ({x['bare']['p99_ms']:.1f} ms) → "
                f"{x['relayboard']['rate']:.0f} ({x['relayboard']['p99_ms']:.1f} ms; "
                f"{x['relayboard']['acted']}/{x['relayboard']['stored']})"
                for x in r["runs"]
            )
            + ".",
        ]
    )


if __name__ == "__main__":
    main()
