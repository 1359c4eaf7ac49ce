"""Run every benchmark and rewrite docs/benchmarks.md with their results (`make bench`).

Each benchmark runs as its own process (bench/drain.py, bench/api.py, bench/failover.py)
and writes JSON to bench/out/; this script then renders the Markdown from that JSON. A
benchmark that fails (or outlives its time limit) is reported, and the others still run.

    .venv/bin/python bench/run_all.py [--quick] [--only drain,api,failover] [--no-docs]
                                      [--commit REV]

--commit measures a commit's app/ (exported with `git archive` to a temp directory)
instead of the working tree, e.g. while app/ is being edited.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import api
import drain
import failover
import held_drain
import webhooks
from _common import OUT_DIR, ROOT, machine, source, wait_for_quiet

DOC = ROOT / "docs" / "benchmarks.md"
# Measured piece by piece by hand (variant builds, interleaved runs): kept as written.
PIECES = ROOT / "bench" / "pieces.md"
BENCHES: dict[str, tuple[Any, list[str], list[str], float]] = {
    # name: (module, full arguments, --quick arguments, time limit in seconds)
    "drain": (
        drain,
        ["--messages", "4000", "--runs", "5", "--profile"],
        ["--messages", "400", "--runs", "1", "--profile"],
        1800,
    ),
    "api": (api, ["--seconds", "10", "--runs", "5"], ["--seconds", "3", "--runs", "1"], 900),
    "failover": (failover, ["--runs", "3"], ["--runs", "1"], 900),
    "held_drain": (
        held_drain,
        ["--messages", "100000", "--runs", "3"],
        ["--messages", "2000", "--runs", "1", "--ramp-messages", "2500"],
        2400,
    ),
    "webhooks": (
        webhooks,
        ["--seconds", "10", "--runs", "3"],
        ["--seconds", "3", "--runs", "1"],
        900,
    ),
}
# Paths `--commit` exports; those missing from a commit are skipped.
EXPORTED = ("app", "migrations", "tests", "wsgi.py", "templates", "static")


def export(rev: str, target: Path) -> str:
    """Export `rev`'s app, migrations, tests, templates, static and wsgi.py to `target`;
    return its short hash."""
    short = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", short],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    paths = [p for p in EXPORTED if p in listed]
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", short, *paths],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / ".bench-commit").write_text(short + "\n")
    return short


def run(name: str, quick: bool, env: dict[str, str]) -> dict[str, Any] | str:
    """Run one benchmark in its own process; return its result, or why it failed."""
    module, full, short, limit = BENCHES[name]
    out = OUT_DIR / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(ROOT / "bench" / f"{module.__name__}.py"),
        *(short if quick else full),
        "--json",
        str(out),
    ]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return f"did not finish within {limit:.0f} s"
    print(f"== {name}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    if done.returncode != 0 or not out.exists():
        return f"exited with status {done.returncode}"
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def summary_rows(results: dict[str, dict[str, Any] | str]) -> list[str]:
    """Return the summary table: one or two rows per benchmark, failures included."""
    try:
        return _summary_rows(results)
    except (KeyError, TypeError, ZeroDivisionError) as exc:  # e.g. an older JSON shape
        return [f"(no summary: a result could not be read: {exc!r})"]


def _summary_rows(results: dict[str, dict[str, Any] | str]) -> list[str]:
    rows = ["| benchmark | measure | result | target | |", "| --- | --- | ---: | ---: | --- |"]

    def ok(flag: bool) -> str:
        return "pass" if flag else "**FAIL**"

    d = results.get("drain")
    if isinstance(d, dict):
        rows.append(
            "| drain | `relayboard drain` / bare aiosmtplib, msg/s (median of per-run ratios) | "
            f"{d['ratio']:.2f} "
            f"({d['relayboard_rate']:.0f} / {d['baseline_rate']:.0f}) | "
            f"≥ {d['target_ratio']:.2f} | {ok(d['pass'])} |"
        )
    a = results.get("api")
    if isinstance(a, dict):
        rows.append(
            "| api | `relayboard serve` / bare Flask + SQLite, req/s (median of per-run "
            f"ratios) | {a['ratio']:.2f} ({a['relayboard_rate']:.0f} / "
            f"{a['baseline_rate']:.0f}) | ≥ {a['target_ratio']:.2f} | {ok(a['pass_ratio'])} |"
        )
        rows.append(
            f"| api | Relayboard p99 latency at {a['connections']} clients (baseline "
            f"{a['baseline_p99_ms']:.1f} ms) | {a['relayboard_p99_ms']:.1f} ms | "
            f"< {a['target_p99_ms']:.0f} ms or ≤ baseline | {ok(a['pass_p99'])} |"
        )
    f = results.get("failover")
    if isinstance(f, dict):
        r, h = f["refusing"], f["hanging"]
        rows.append(
            f"| failover (a) | added delay per message, max (median "
            f"{r['added_ms_median']:.1f} ms) | {r['added_ms_max']:.1f} ms | "
            f"< {r['target_ms']:.0f} ms | "
            f"{ok(r['pass'])} |"
        )
        rows.append(
            f"| failover (b) | messages that waited for a connect timeout | "
            f"{h['timeout_waits_worst']} | ≤ {h['target_timeout_waits']} | "
            f"{ok(h['pass'])} |"
        )
        rows.append(
            f"| failover (b) | time to deliver {h['messages']} past a hanging relay | "
            f"{h['seconds']:.1f} s | (Postfix: {h['postfix_quoted']}, quoted) | |"
        )
    hd = results.get("held_drain")
    if isinstance(hd, dict):
        rows.append(
            f"| held drain | {hd['messages']} held messages released with the ramp off / plain "
            f"`relayboard drain`, msg/s | {hd['ratio']:.2f} ({hd['held_rate']:.0f} / "
            f"{hd['plain_rate']:.0f}) | ≥ {held_drain.TARGET_RATIO:.2f} | "
            f"{ok(hd['ratio'] >= held_drain.TARGET_RATIO)} |"
        )
        rows.append(
            "| held drain | ramp on: worst step, measured rate against the ramp's | "
            f"{hd['ramp_worst']:.0%} | within {held_drain.RAMP_TOLERANCE:.0%} | "
            f"{ok(hd['ramp_worst'] <= held_drain.RAMP_TOLERANCE)} |"
        )
    w = results.get("webhooks")
    if isinstance(w, dict):
        rows.append(
            f"| webhooks | p99 at 16 senders, worst run (baseline {w['bare_p99_ms']:.1f} ms; "
            f"{w['rate']:.0f} req/s, {w['ratio']:.2f} of the baseline) | "
            f"{w['worst_p99_ms']:.1f} ms | < {webhooks.TARGET_P99_MS:.0f} ms | "
            f"{ok(w['worst_p99_ms'] < webhooks.TARGET_P99_MS)} |"
        )
    for name, value in results.items():
        if isinstance(value, str):
            rows.append(f"| {name} | did not run: {value} | | | **FAIL** |")
    return rows


def render(results: dict[str, dict[str, Any] | str], busy: float, quick: bool) -> str:
    first = next((r for r in results.values() if isinstance(r, dict)), None)
    info = first["machine"] if first else machine()
    src = first["source"] if first else source()
    date = first["date"] if first else time.strftime("%Y-%m-%d")
    changed = src.get("uncommitted_app_changes") or []
    worst = max(
        (
            b
            for r in results.values()
            if isinstance(r, dict)
            for b in r.get("cpu_busy_before_runs", [])
        ),
        default=busy,
    )
    code = f"commit {src.get('commit', '?')}"
    commits = {
        name: r.get("source", {}).get("commit", "?")
        for name, r in results.items()
        if isinstance(r, dict)
    }
    if len(set(commits.values())) > 1:  # a subset was run again on a later commit
        code = ", ".join(f"{name} at commit {commit}" for name, commit in commits.items())
    if changed:
        code += " plus uncommitted changes to " + ", ".join(f"`{c}`" for c in changed)
    parts = [
        "# Benchmarks",
        "",
        "Relayboard against a bare baseline doing the same job, measured in the same run, so "
        "the ratio matters more than the absolute numbers. Every number is a median of several "
        "runs; everything talks to 127.0.0.1 only. The drain and API benchmarks run Relayboard "
        "as a user does (`relayboard drain`, `relayboard serve`, default settings) and the "
        "baselines as whole processes too; the SMTP sinks run in processes of their own "
        "(`bench/sink.py` for the drain, aiosmtpd from `tests/smtp_servers.py` for failover).",
        "",
        f"- Date: {date}" + (" (**quick run**: fewer, shorter runs)" if quick else ""),
        f"- Machine: {info['cpus']} CPUs ({info['cpu_model'] or 'unknown model'}), "
        f"Python {info['python']}, {info['platform']}",
        f"- Code measured: {code}",
        f"- CPUs busy with other work: {busy:.0%} just before the run, at most {worst:.0%} "
        "just before a timed repetition (each waits up to 30 s for the CPUs to go quiet; the "
        "machine is shared, and noise from other processes lowers both sides of a ratio, but "
        "not always equally)",
        "- Run everything and rewrite this file: `make bench` (= `.venv/bin/python "
        "bench/run_all.py`; `--quick` for a smoke run). One benchmark: `.venv/bin/python "
        "bench/drain.py`, `bench/api.py` or `bench/failover.py` (each prints its table; raw "
        "results go to `bench/out/*.json`). `bench/api.py` needs `wrk` "
        "(`apt-get install -y wrk`).",
        "",
        "## Summary",
        "",
        *summary_rows(results),
    ]
    for name, value in results.items():
        if isinstance(value, dict):
            try:
                parts += ["", BENCHES[name][0].render(value)]
            except (KeyError, TypeError, ZeroDivisionError) as exc:  # e.g. an older JSON shape
                parts += [
                    "",
                    f"## {name}",
                    "",
                    f"Could not render its result ({exc!r}): re-run it.",
                ]
    if PIECES.exists():
        parts += ["", PIECES.read_text().strip()]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (smoke test)")
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs")
    parser.add_argument("--commit", help="measure this commit's app/ instead of the work tree")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="relayboard-bench-src-") as src:
        if args.commit:
            print(f"measuring commit {export(args.commit, Path(src))}", flush=True)
            env["RELAYBOARD_BENCH_APP_ROOT"] = src
        busy = wait_for_quiet(limit=60)
        results = {name: run(name, args.quick, env) for name in names}
    # A subset rewrites the file with the others' last results (bench/out/), in order.
    for name in BENCHES:
        kept = OUT_DIR / f"{name}.json"
        if name not in results and kept.exists() and not args.no_docs:
            results[name] = json.loads(kept.read_text())
    results = {name: results[name] for name in BENCHES if name in results}
    text = render(results, busy, args.quick)
    if not args.no_docs:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    else:
        print(text)
    if any(isinstance(v, str) for v in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
