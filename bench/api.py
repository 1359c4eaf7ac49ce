"""POST /api/send throughput and latency: `relayboard serve` against a bare durable Flask route.

- Baseline (bench/bare_app.py): one Flask route that parses the JSON and commits it as one
  row to SQLite (WAL, synchronous=FULL), a transaction per request, answering 202 with
  the row id; run as such a route usually is: `gunicorn -w 2 -k sync` (no access log).
- Relayboard: `relayboard serve --bind 127.0.0.1:PORT` with its own defaults (workers,
  threads, no access log; its log, a line per accepted message, to a file here), on a
  temp SQLite database after
  `relayboard db upgrade`, with a key from `relayboard api-keys create --name bench`;
  RELAYBOARD_API_RATE_LIMIT far above the load (checked, never refusing);
  RELAYBOARD_SCHEDULER off unless --scheduler on.
Load: `wrk -t2 -c16 --latency`, 2 s of warm-up then SECONDS measured, posting the same
~1 KB JSON with an Authorization header. Runs alternate baseline and Relayboard, each
server started afresh on a fresh database. After each run the rows stored are checked
against the 2xx answers wrk counted.

    .venv/bin/python bench/api.py [--seconds 10] [--runs 5] [--scheduler off|on]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    ROOT,
    checkpoint,
    cli_env,
    count_rows,
    free_port,
    group_cpu_seconds,
    kill_group,
    median,
    relayboard,
    relayboard_command,
    relayboard_setup,
    tempdir,
    verdict,
    wait_for_quiet,
    write_result,
)

CONNECTIONS = 16
WRK_THREADS = 2
WARMUP_SECONDS = 2.0
BARE_WORKERS = 2
TARGET_RATIO = 1.0
TARGET_P99_MS = 25.0
RATE_LIMIT = "100000000 per minute"  # checked on every request, never reached

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


class Service:
    """A server command in its own process group, its stdout and stderr to files."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], cwd: Path, port: int
    ) -> None:
        self.name, self.command, self.env, self.cwd, self.port = name, command, env, cwd, port
        self.stdout = cwd / f"{name}.out"
        self.stderr = cwd / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            self._wait_listening(60.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.stderr.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{log}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=1)
                conn.connect()
                conn.close()
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not listen on {LOOPBACK}:{self.port}")

    def cpu_seconds(self) -> float:
        """CPU time so far of the server's processes (master and workers)."""
        assert self.proc is not None
        return group_cpu_seconds(self.proc.pid)

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            kill_group(self.proc, grace=30)


def bare_service(run_dir: Path, workers: int) -> tuple[Service, Path]:
    """The baseline's gunicorn on a fresh database; return it and the database."""
    db = run_dir / "bare.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, created_at TEXT, data BLOB)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOARD_")}
    env["BENCH_BARE_DB"] = str(db)
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        *("-w", str(workers), "-k", "sync", "-b", f"{LOOPBACK}:{port}"),
        *("--chdir", str(ROOT / "bench"), "bare_app:app"),
    ]
    return Service("bare", command, env, run_dir, port), db


def relayboard_service(run_dir: Path, template: Path, scheduler: bool) -> tuple[Service, Path]:
    """`relayboard serve` with its defaults on a copy of the template database."""
    db = run_dir / "relayboard.db"
    shutil.copyfile(template, db)
    port = free_port()
    env = cli_env(
        db,
        run_dir / "instance",
        RELAYBOARD_API_RATE_LIMIT=RATE_LIMIT,
        RELAYBOARD_SCHEDULER="1" if scheduler else "0",
    )
    command = [*relayboard_command(), "serve", "--bind", f"{LOOPBACK}:{port}"]
    return Service("relayboard", command, env, run_dir, port), db


def serve_defaults(workdir: Path) -> dict[str, str]:
    """The defaults `relayboard serve --help` shows (workers, threads, ...), for the record."""
    text = relayboard("serve", "--help", env=cli_env(workdir / "x.db", workdir), cwd=workdir)
    found: dict[str, str] = {}
    for chunk in re.split(r"\n\s+(?=--)", text.stdout):
        option = re.match(r"--([\w-]+)", chunk)
        default = re.search(r"\[default:\s*([^\]]+)\]", chunk)
        if option and default:
            found[option.group(1)] = default.group(1).split(";")[0].strip()
    return found


def booted(service: Service) -> dict[str, Any]:
    """What gunicorn said it started: the worker class and how many workers booted."""
    log = service.stderr.read_text(errors="replace") + service.stdout.read_text(errors="replace")
    worker = re.search(r"Using worker: (\S+)", log)
    return {
        "worker_class": worker.group(1) if worker else None,
        "workers_booted": len(re.findall(r"Booting worker with pid", log)),
    }


def post_once(port: int, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("POST", "/api/send", json.dumps(BODY), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


# --------------------------------------------------------------------------- load


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk_script(workdir: Path, headers: dict[str, str]) -> Path:
    script = workdir / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{json.dumps(BODY)}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(port: int, script: Path, seconds: float, path: str = "/api/send") -> dict[str, Any]:
    """Run wrk against a POST route; return its rate, counts and latency percentiles."""
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        f"http://{LOOPBACK}:{port}{path}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    latency = {
        q: _ms(v, u)
        for q, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    timeouts = re.search(r"timeout (\d+)", errors.group(1)) if errors else None
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (rate and total and latency):
        raise RuntimeError(f"could not parse wrk's output:\n{out}")
    return {
        "rate": float(rate.group(1)),
        "requests": int(total.group(1)),
        "p50_ms": latency["50"],
        "p90_ms": latency["90"],
        "p99_ms": latency["99"],
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
        "timeouts": int(timeouts.group(1)) if timeouts else 0,
    }


def measure(
    service: Service, db: Path, script: Path, headers: dict[str, str], seconds: float
) -> dict[str, Any]:
    """Start the server, check one answer, warm up, measure; then check the rows stored."""
    with service:
        status, answer = post_once(service.port, headers)
        if status != 202 or not isinstance(answer, dict) or "id" not in answer:
            raise RuntimeError(f"{service.name}: first POST answered {status} {answer!r}")
        run_wrk(service.port, script, WARMUP_SECONDS)
        time.sleep(0.5)  # let the warm-up's last requests finish
        before = count_rows(db, "messages")
        cpu0 = service.cpu_seconds()
        result = run_wrk(service.port, script, seconds)
        result["server_cpu_us_per_req"] = (
            (service.cpu_seconds() - cpu0) / max(result["requests"], 1) * 1e6
        )
    result.update(booted(service))
    # Stopped gracefully, so every request the server took in is committed by now. wrk
    # counts the answers it read before its time ran out; up to one request per
    # connection (and any it gave up on) may still have been stored after that.
    ok = result["requests"] - result["non_2xx"]
    stored = count_rows(db, "messages") - before
    result["stored"] = stored
    result["stored_minus_2xx"] = stored - ok
    result["stored_ok"] = 0 <= stored - ok <= CONNECTIONS + result["timeouts"]
    return result


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--workers",
        type=int,
        default=BARE_WORKERS,
        help=f"the baseline's gunicorn workers (default {BARE_WORKERS}); Relayboard uses "
        "whatever `relayboard serve` defaults to",
    )
    parser.add_argument(
        "--scheduler",
        choices=("off", "on"),
        default="off",
        help="RELAYBOARD_SCHEDULER of `relayboard serve` (default off)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait at most for idle CPUs before each run (default 30)",
    )
    parser.add_argument("--json", help="result file (default bench/out/api.json)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("bench/api.py needs wrk: apt-get install -y wrk")
    seconds = max(1.0, min(args.seconds, 60.0))
    runs = max(1, min(args.runs, 10))
    workers = max(1, min(args.workers, 32))
    scheduler = args.scheduler == "on"

    baseline: list[dict[str, Any]] = []
    relayboard_runs: list[dict[str, Any]] = []
    busy_before: list[float] = []
    with tempdir("api") as tmp:
        workdir = Path(tmp)
        setup = workdir / "setup"
        setup.mkdir()
        template = setup / "relayboard.db"
        key = relayboard_setup(cli_env(template, setup / "instance"), setup)
        checkpoint(template)
        defaults = serve_defaults(setup)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        script = wrk_script(workdir, headers)
        for i in range(runs):
            busy_before.append(wait_for_quiet(limit=args.quiet_wait))
            run_dir = workdir / f"run-{i}"
            run_dir.mkdir()
            baseline.append(measure(*bare_service(run_dir, workers), script, headers, seconds))
            service, db = relayboard_service(run_dir, template, scheduler)
            relayboard_runs.append(measure(service, db, script, headers, seconds))
            b, r = baseline[-1], relayboard_runs[-1]
            print(
                f"run {i + 1}/{runs}: bare {b['rate']:.0f} req/s (p99 {b['p99_ms']:.1f} ms), "
                f"relayboard {r['rate']:.0f} req/s (p99 {r['p99_ms']:.1f} ms), ratio "
                f"{r['rate'] / b['rate']:.2f}; non-2xx {b['non_2xx']}/{r['non_2xx']}; stored "
                f"minus 2xx {b['stored_minus_2xx']}/{r['stored_minus_2xx']}; server CPU "
                f"µs/req {b['server_cpu_us_per_req']:.0f}/{r['server_cpu_us_per_req']:.0f}",
                flush=True,
            )
            shutil.rmtree(run_dir, ignore_errors=True)

    ratios = [x["rate"] / b["rate"] for x, b in zip(relayboard_runs, baseline, strict=True)]
    base_rate = median(r["rate"] for r in baseline)
    rb_rate = median(r["rate"] for r in relayboard_runs)
    rb_p99 = median(r["p99_ms"] for r in relayboard_runs)
    p99_not_above = all(
        x["p99_ms"] <= b["p99_ms"] for x, b in zip(relayboard_runs, baseline, strict=True)
    )
    result = {
        "seconds": seconds,
        "warmup_seconds": WARMUP_SECONDS,
        "runs": runs,
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "baseline_command": f"gunicorn -w {workers} -k sync -b 127.0.0.1:PORT bare_app:app",
        "relayboard_command": "relayboard serve --bind 127.0.0.1:PORT",
        "serve_defaults": defaults,
        "relayboard_worker_class": relayboard_runs[0]["worker_class"],
        "relayboard_workers_booted": relayboard_runs[0]["workers_booted"],
        "baseline_workers": workers,
        "scheduler": args.scheduler,
        "rate_limit": RATE_LIMIT,
        "baseline_rate": base_rate,
        "relayboard_rate": rb_rate,
        "ratios": ratios,
        # The ratio is taken within each run (the two back to back), then the median.
        "ratio": median(ratios),
        "ratio_of_medians": rb_rate / base_rate if base_rate else 0.0,
        **{
            f"{side}_{key}": median(r[key] for r in rows)
            for side, rows in (("baseline", baseline), ("relayboard", relayboard_runs))
            for key in ("p50_ms", "p90_ms", "p99_ms", "server_cpu_us_per_req")
        },
        "errors": sum(r["non_2xx"] + r["timeouts"] for r in baseline + relayboard_runs),
        "all_stored_ok": all(r["stored_ok"] for r in baseline + relayboard_runs),
        "target_ratio": TARGET_RATIO,
        "target_p99_ms": TARGET_P99_MS,
        "pass_ratio": median(ratios) >= TARGET_RATIO,
        "p99_not_above_baseline_in_every_run": p99_not_above,
        "pass_p99": rb_p99 < TARGET_P99_MS or p99_not_above,
        "cpu_busy_before_runs": busy_before,
        "baseline_runs": baseline,
        "relayboard_runs": relayboard_runs,
    }
    write_result("api", result, args.json)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    """Return the Markdown section for docs/benchmarks.md."""
    defaults = ", ".join(f"--{k} {v}" for k, v in r["serve_defaults"].items() if k != "bind")
    return "\n".join(
        [
            "## POST /api/send (`bench/api.py`)",
            "",
            f"Baseline: `{r['baseline_command']}` (gunicorn's defaults otherwise: no access "
            "log) serving `bench/bare_app.py`, one Flask route that parses the JSON "
            "(`request.get_json()`) and commits it as one row to SQLite (WAL, "
            "`synchronous=FULL`), one transaction per request, answering 202 with the row "
            f"id. Relayboard: `{r['relayboard_command']}` with its defaults ({defaults or '?'}; "
            f"{r['relayboard_workers_booted']} {r['relayboard_worker_class'] or '?'} workers "
            "booted; no access log, its log of one line per accepted message to a file) on a "
            "temp SQLite database after `relayboard db "
            "upgrade`, with a key from `relayboard api-keys create`, "
            f"`RELAYBOARD_API_RATE_LIMIT='{r['rate_limit']}'` (checked, never refusing), "
            f"scheduler {r['scheduler']}. Load: wrk, {r['wrk_threads']} threads, "
            f"{r['connections']} connections, {r['warmup_seconds']:g} s of warm-up then "
            f"{r['seconds']:g} s measured, posting the same ~1 KB JSON message (from, to, "
            "subject, text, html) with `Authorization: Bearer …`; each server started afresh "
            f"on a fresh database for each run; median of {r['runs']} runs, alternating the "
            "two. Server CPU is its processes' user + system time during the measured "
            "seconds (from /proc).",
            "",
            "| | req/s (median) | p50 | p90 | p99 | server CPU µs/req |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {label} | {r[f'{side}_rate']:.0f} | {r[f'{side}_p50_ms']:.1f} ms | "
                f"{r[f'{side}_p90_ms']:.1f} ms | {r[f'{side}_p99_ms']:.1f} ms | "
                f"{r[f'{side}_server_cpu_us_per_req']:.0f} |"
                for label, side in (
                    ("bare Flask + SQLite", "baseline"),
                    ("`relayboard serve`", "relayboard"),
                )
            ),
            "",
            "| metric | result | target | |",
            "| --- | ---: | ---: | --- |",
            f"| Relayboard / baseline, req/s, median of per-run ratios | {r['ratio']:.2f} | "
            f"≥ {r['target_ratio']:.2f} | {verdict(r['pass_ratio'])} |",
            f"| (ratio of the medians, for reference) | {r['ratio_of_medians']:.2f} | | |",
            f"| Relayboard p99 latency | {r['relayboard_p99_ms']:.1f} ms | "
            f"< {r['target_p99_ms']:.0f} ms, or ≤ the baseline's in every run"
            f"{' (it was)' if r['p99_not_above_baseline_in_every_run'] else ''} | "
            f"{verdict(r['pass_p99'])} |",
            f"| non-2xx answers and timeouts (all runs) | {r['errors']} | 0 | "
            f"{verdict(r['errors'] == 0)} |",
            f"| rows stored match the 2xx answers (within the requests in flight) | "
            f"{'yes' if r['all_stored_ok'] else 'no'} | yes | {verdict(r['all_stored_ok'])} |",
            "",
            "Per run (req/s, baseline → Relayboard, ratio; p99 baseline / Relayboard): "
            + ", ".join(
                f"{b['rate']:.0f} → {x['rate']:.0f} ({x['rate'] / b['rate']:.2f}; "
                f"{b['p99_ms']:.1f} / {x['p99_ms']:.1f} ms)"
                for b, x in zip(r["baseline_runs"], r["relayboard_runs"], strict=True)
            )
            + ".",
        ]
    )


if __name__ == "__main__":
    main()
