"""POST /api/send throughput and latency: Relayboard against a bare Flask app, same gunicorn.

Both run as `gunicorn -w 4 -k sync -b 127.0.0.1:PORT APP` (no access log), one after the
other, loaded by `wrk -t2 -c16 -d10s --latency` with a Lua script that posts the same
~1 KB JSON message (from, to, subject, text, html) with an Authorization header. Without
wrk, a small Python load generator (http.client, 16 threads) stands in. Relayboard runs
its wsgi on a temp SQLite database after `relayboard db upgrade`, RELAYBOARD_SCHEDULER=0,
with a key from `relayboard api-keys create --name bench`.

    .venv/bin/python bench/api.py [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    APP_ROOT,
    LOOPBACK,
    ROOT,
    median,
    percentile,
    relayboard_env,
    tempdir,
    verdict,
    wait_for_quiet,
    write_result,
)

SERVE_WORKERS = 2  # `relayboard serve` and `make run` start two sync workers by default
CONNECTIONS = 16
WRK_THREADS = 2
TARGET_RATIO = 0.50
TARGET_P99_MS = 25.0
GUNICORN = [str(Path(sys.executable).with_name("gunicorn")), "-k", "sync"]

BODY = {
    "from": "Example Shop <shop@example.com>",
    "to": ["Alice Example <alice@example.org>"],
    "subject": "Your order #004217 is confirmed",
    "text": (
        "Hello Alice,\n\nThank you for your order #004217. We are getting it ready and will "
        "let you know as soon as it ships.\n\nTrack it at https://shop.example.com/orders/4217"
        "\n\nItems:\n  1 x Blue mug ............ 12.00 EUR\n  2 x Tea towel .......... 9.00 EUR"
        "\n\nQuestions? Just reply to this message.\n\n-- \nThe Example Shop team\n"
    ),
    "html": (
        "<html><body><p>Hello Alice,</p><p>Thank you for your order <b>#004217</b>. We are "
        "getting it ready and will let you know as soon as it ships.</p>"
        '<p><a href="https://shop.example.com/orders/4217">Track your order</a></p>'
        "<table><tr><td>1 x Blue mug</td><td>12.00 EUR</td></tr><tr><td>2 x Tea towel</td>"
        "<td>9.00 EUR</td></tr></table><p>Questions? Just reply to this message.</p>"
        "<p>The Example Shop team</p></body></html>"
    ),
}


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class Gunicorn:
    """A gunicorn master and its workers, in their own process group."""

    def __init__(self, chdir: Path, app: str, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.command = [
            *GUNICORN,
            "-w",
            str(workers),
            "-b",
            f"{LOOPBACK}:{self.port}",
            "--chdir",
            str(chdir),
            app,
        ]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gunicorn:
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"gunicorn exited: {err[-2000:]}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError("gunicorn did not start listening")
        time.sleep(1.0)  # let every worker boot and import the app
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def post_once(port: int, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("POST", "/api/send", json.dumps(BODY), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def relayboard_setup(workdir: Path) -> tuple[dict[str, str], str]:
    """Migrate a fresh database and create an API key; return the env and the key."""
    # The per-key rate limit (6000/min by default) would answer most of the load with 429.
    env = {**os.environ, **relayboard_env(workdir, RELAYBOARD_API_RATE_LIMIT="off")}
    cli = [sys.executable, "-c", "from app.cli import main; main()"]
    subprocess.run(
        [*cli, "db", "upgrade"], env=env, cwd=APP_ROOT, check=True, capture_output=True, timeout=120
    )
    out = subprocess.run(
        [*cli, "api-keys", "create", "--name", "bench"],
        env=env,
        cwd=APP_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return env, out.stdout.strip().splitlines()[-1].strip()


# --------------------------------------------------------------------------- load


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(port: int, headers: dict[str, str], seconds: float, workdir: Path) -> dict[str, Any]:
    script = workdir / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{json.dumps(BODY)}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(script),
        f"http://{LOOPBACK}:{port}/api/send",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    latency = {
        q: _ms(v, u)
        for q, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (rate and total and latency):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    return {
        "tool": "wrk",
        "rate": float(rate.group(1)),
        "requests": int(total.group(1)),
        "p50_ms": latency["50"],
        "p90_ms": latency["90"],
        "p99_ms": latency["99"],
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def run_python_load(port: int, headers: dict[str, str], seconds: float) -> dict[str, Any]:
    """Fallback without wrk: 16 threads posting in a loop with http.client."""
    body = json.dumps(BODY)
    deadline = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(CONNECTIONS)]
    bad = [0] * CONNECTIONS

    def client(i: int) -> None:
        while time.monotonic() < deadline and len(latencies[i]) < 1_000_000:
            started = time.perf_counter()
            conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
            try:
                conn.request("POST", "/api/send", body, headers)
                response = conn.getresponse()
                response.read()
                if not 200 <= response.status < 300:
                    bad[i] += 1
            except OSError:
                bad[i] += 1
            finally:
                conn.close()
            latencies[i].append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.perf_counter() - started
    flat = [x for row in latencies for x in row]
    return {
        "tool": "python http.client (wrk not installed)",
        "rate": len(flat) / elapsed,
        "requests": len(flat),
        "p50_ms": percentile(flat, 50),
        "p90_ms": percentile(flat, 90),
        "p99_ms": percentile(flat, 99),
        "non_2xx": sum(bad),
        "socket_errors": "",
    }


def load(port: int, headers: dict[str, str], seconds: float, workdir: Path) -> dict[str, Any]:
    if shutil.which("wrk"):
        return run_wrk(port, headers, seconds, workdir)
    return run_python_load(port, headers, seconds)


def count_messages(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=30) as conn:
        count: int = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return count


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=SERVE_WORKERS,
        help=f"gunicorn workers for both apps (default {SERVE_WORKERS}, as `relayboard serve`)",
    )
    parser.add_argument("--json", help="result file (default bench/out/api.json)")
    args = parser.parse_args(argv)
    seconds = max(1.0, min(args.seconds, 60.0))
    runs = max(1, min(args.runs, 10))

    baseline: list[dict[str, Any]] = []
    relayboard: list[dict[str, Any]] = []
    busy_before: list[float] = []
    with tempdir("api") as tmp:
        workdir = Path(tmp)
        env, key = relayboard_setup(workdir)
        db_path = workdir / "relayboard.db"
        rb_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        bare_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOARD_")}
        workers = max(1, min(args.workers, 32))
        bare = Gunicorn(ROOT / "bench", "bare_app:app", bare_env, workers)
        rb = Gunicorn(APP_ROOT, "wsgi:app", env, workers)
        for i in range(runs):
            busy_before.append(wait_for_quiet(limit=30))
            with bare:
                status, answer = post_once(bare.port, rb_headers)
                assert status == 202 and answer == {"id": 1}, (status, answer)
                load(bare.port, rb_headers, min(2.0, seconds), workdir)  # warm-up
                baseline.append(load(bare.port, rb_headers, seconds, workdir))
            with rb:
                status, answer = post_once(rb.port, rb_headers)
                assert status == 202 and answer.get("status") == "queued", (status, answer)
                load(rb.port, rb_headers, min(2.0, seconds), workdir)  # warm-up
                before = count_messages(db_path)
                relayboard.append(load(rb.port, rb_headers, seconds, workdir))
                stored = count_messages(db_path) - before
            relayboard[-1]["stored"] = stored
            b, r = baseline[-1], relayboard[-1]
            print(
                f"run {i + 1}/{runs}: bare {b['rate']:.0f} req/s, relayboard {r['rate']:.0f} "
                f"req/s (p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"non-2xx {r['non_2xx']}, stored {stored}/{r['requests']})",
                flush=True,
            )

    base_rate = median(r["rate"] for r in baseline)
    rb_rate = median(r["rate"] for r in relayboard)
    p99 = median(r["p99_ms"] for r in relayboard)
    # The ratio is taken within each run (the two apps back to back), then the median.
    ratio = median(x["rate"] / b["rate"] for x, b in zip(relayboard, baseline, strict=True))
    result = {
        "seconds": seconds,
        "runs": runs,
        "workers": workers,
        "connections": CONNECTIONS,
        "tool": relayboard[0]["tool"],
        "gunicorn": f"gunicorn -w {workers} -k sync -b 127.0.0.1:PORT",
        "baseline_rate": base_rate,
        "relayboard_rate": rb_rate,
        "ratio": ratio,
        "ratio_of_medians": rb_rate / base_rate,
        "relayboard_p50_ms": median(r["p50_ms"] for r in relayboard),
        "relayboard_p90_ms": median(r["p90_ms"] for r in relayboard),
        "relayboard_p99_ms": p99,
        "baseline_p50_ms": median(r["p50_ms"] for r in baseline),
        "baseline_p99_ms": median(r["p99_ms"] for r in baseline),
        "errors": sum(r["non_2xx"] for r in baseline + relayboard),
        "target_ratio": TARGET_RATIO,
        "target_p99_ms": TARGET_P99_MS,
        "pass_ratio": ratio >= TARGET_RATIO,
        "pass_p99": p99 < TARGET_P99_MS,
        "cpu_busy_before_runs": busy_before,
        "baseline_runs": baseline,
        "relayboard_runs": relayboard,
    }
    write_result("api", result, args.json)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    """Return the Markdown section for docs/benchmarks.md."""
    return "\n".join(
        [
            f"## POST /api/send, {r['workers']} workers (`bench/api.py --workers {r['workers']}`)",
            "",
            f"Both apps under `{r['gunicorn']} APP` (sync workers, gunicorn's defaults "
            f"otherwise: no access log), one at a time; load by {r['tool']} with "
            f"{r['connections']} connections for {r['seconds']:g} s per run after a 2 s warm-up, "
            f"posting a ~1 KB JSON message (from, to, subject, text, html) with "
            f"`Authorization: Bearer …`; median of {r['runs']} runs. Baseline: a bare Flask app "
            "(`bench/bare_app.py`) whose one route calls `request.get_json()` and answers "
            '202 `{"id": 1}`. Relayboard: `wsgi:app` on a temp SQLite database after '
            "`relayboard db upgrade`, `RELAYBOARD_SCHEDULER=0`, `RELAYBOARD_LOG_LEVEL=WARNING`, "
            "`RELAYBOARD_API_RATE_LIMIT=off` (the per-key limit is not checked; the "
            "per-address limit on refused keys is, before each lookup of the key: about once a "
            "second per worker), "
            "with a key from `relayboard api-keys create`; every 202 is a message stored durably "
            "(validated, MIME-built, one row inserted and committed).",
            "",
            "| | req/s (median) | p50 | p90 | p99 |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| bare Flask | {r['baseline_rate']:.0f} | {r['baseline_p50_ms']:.1f} ms | | "
            f"{r['baseline_p99_ms']:.1f} ms |",
            f"| Relayboard | {r['relayboard_rate']:.0f} | {r['relayboard_p50_ms']:.1f} ms | "
            f"{r['relayboard_p90_ms']:.1f} ms | {r['relayboard_p99_ms']:.1f} ms |",
            "",
            "| metric | result | target | |",
            "| --- | ---: | ---: | --- |",
            f"| Relayboard / bare Flask, req/s, median of per-run ratios | {r['ratio']:.2f} | "
            f"≥ {r['target_ratio']:.2f} | {verdict(r['pass_ratio'])} |",
            f"| Relayboard p99 latency | {r['relayboard_p99_ms']:.1f} ms | "
            f"< {r['target_p99_ms']:.0f} ms | {verdict(r['pass_p99'])} |",
            f"| non-2xx responses (all runs) | {r['errors']} | 0 | {verdict(r['errors'] == 0)} |",
            "",
            "Per run (req/s, bare → Relayboard): "
            + ", ".join(
                f"{b['rate']:.0f} → {x['rate']:.0f}"
                for b, x in zip(r["baseline_runs"], r["relayboard_runs"], strict=True)
            )
            + ".",
            "",
            "Where the time goes, per request. In one process (callgrind, instructions per "
            "request) the bare route costs about 0.5 M instructions and Relayboard about 1.25 M "
            "(2.0 M when this work began); a gunicorn sync worker adds about 0.5 M to either "
            "(accept, parse, write, close). The cuts so far, in order of effect: the MIME "
            "builder's line-length check was a regex that retried from every position "
            "(quadratic; a one-line HTML body cost 120 k instructions); the key lookup and the "
            "insert run on a raw DBAPI cursor with statements compiled once (app/prepared.py) "
            "over a connection each process keeps; enqueue writes one row (the message is its "
            "own record of having been queued); the 202's Location skips Werkzeug's IRI "
            "conversion (90 k); a key found live is trusted for a second per process and then "
            "skips the refused-keys counter; WAL checkpoints run every 200 writes outside the "
            "write lock; Flask's per-hook coroutine check is skipped.",
            "",
            "The durable write is what keeps the ratio under 0.5. Measured in the workers under "
            "this load (CPU time from /proc, 2 workers, Intel Xeon), a Relayboard request cost "
            "about 700 µs of worker CPU and a bare one about 350 µs. A measurement build that "
            "skipped only the insert and its commit (not shipped) cost about 460 µs and ran at "
            "about 0.75 of the bare app. The write's own CPU is about 130 µs per request (one "
            "INSERT … RETURNING of a ~1.6 KB row with its two indexes, the WAL frames of the "
            "commit, the write lock, a passive checkpoint every 200 writes), though it runs only "
            "about 0.2 M instructions; and the rest of the request runs about 100 µs slower when "
            "it writes: the same instructions, no page faults, so the CPU caches that SQLite "
            "and the kernel's page copies displace. The same insert and commit in a tight loop "
            "cost about 45 µs. Group commit (threads sharing one transaction) needs a threaded "
            "worker; a trial with gthread workers gained nothing (the worker CPU per request "
            "stayed the same): a request's Python work is several times its commit, so few "
            "requests wait on a commit together. A writer process committing for all workers "
            "over a Unix socket (a measurement build) left the workers' CPU per request where "
            "it was, about 700 µs, the round trip costing what the write had, and added its "
            "own 115 µs a row; Python's garbage collector takes about 20 µs a request. "
            "The ratio also moves with the machine: this code measured 0.39 (2 workers; "
            "0.31-0.52 per run) on an Intel Xeon machine whose bare app served 4,900 req/s, "
            "and 0.45-0.48 in two runs (0.38-0.50 per run) on an AMD EPYC one whose bare "
            "app served 6,200 req/s. Four workers on two cores measure about the same as "
            "two. The body posted is the same every time, so the email-validator cache (4096 "
            "addresses) always hits; new recipients cost about 60 µs each more.",
        ]
    )


if __name__ == "__main__":
    main()
