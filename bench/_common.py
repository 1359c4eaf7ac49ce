"""Shared pieces of the benchmarks: Relayboard's command line, child processes, stats, output.

Everything here talks to 127.0.0.1 only. drain.py and api.py use Relayboard as a black
box (its `relayboard` command, its HTTP API, the Flask test client); failover.py still
drives app internals through make_app, build, drain_bounded and ServerProcess (the
aiosmtpd servers of tests/smtp_servers.py, in a child process: this file with --serve).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import select
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# RELAYBOARD_BENCH_APP_ROOT: measure another checkout's app/ (e.g. `git archive HEAD` in /tmp).
APP_ROOT = Path(os.environ.get("RELAYBOARD_BENCH_APP_ROOT") or ROOT).resolve()
for _path in (ROOT, APP_ROOT):  # APP_ROOT first, whatever PYTHONPATH said
    if str(_path) in sys.path:
        sys.path.remove(str(_path))
    sys.path.insert(0, str(_path))
if APP_ROOT != ROOT:
    # The editable install's finder would serve app.* modules missing from the export
    # out of the work tree, mixing two versions of app/ in one process.
    sys.meta_path[:] = [
        f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
    ]

LOOPBACK = "127.0.0.1"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
OUT_DIR = ROOT / "bench" / "out"


# --------------------------------------------------------------------------- settings


def relayboard_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """Return Relayboard's settings for an in-process app (failover.py): temp SQLite, quiet."""
    env = {
        "RELAYBOARD_DATABASE_URL": f"sqlite:///{workdir / 'relayboard.db'}",
        "RELAYBOARD_INSTANCE_PATH": str(workdir / "instance"),
        "RELAYBOARD_SECRET_KEY": SECRET_KEY,
        "RELAYBOARD_SCHEDULER": "0",
        "RELAYBOARD_SESSIONS_PER_RELAY": "8",
        "RELAYBOARD_LOG_LEVEL": "WARNING",
    }
    env.update(overrides)
    return env


# --------------------------------------------------------------------------- the command line


def cli_env(db_path: Path, instance: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a `relayboard` child: this one's, minus every other
    RELAYBOARD_* variable, plus the database, the instance folder, the secret key and
    `extra`. Measuring an exported commit (run_all.py --commit) puts it first on PYTHONPATH.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOARD_")}
    env.pop("PYTHONPATH", None)
    if APP_ROOT != ROOT:
        env["PYTHONPATH"] = str(APP_ROOT)
    env.update(
        RELAYBOARD_DATABASE_URL=f"sqlite:///{db_path}",
        RELAYBOARD_INSTANCE_PATH=str(instance),
        RELAYBOARD_SECRET_KEY=SECRET_KEY,
        **extra,
    )
    return env


def relayboard_command() -> list[str]:
    """Return the `relayboard` console script of this venv (it imports app from
    PYTHONPATH first, so with cli_env it runs an exported commit's app/ too)."""
    script = Path(sys.executable).with_name("relayboard")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]


def relayboard(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run `relayboard ARGS` to completion; raise with its output when it fails."""
    done = subprocess.run(
        [*relayboard_command(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"relayboard {' '.join(args)} exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done


def relayboard_setup(env: dict[str, str], cwd: Path) -> str:
    """`relayboard db upgrade` and `relayboard api-keys create --name bench`; return the key."""
    relayboard("db", "upgrade", env=env, cwd=cwd)
    out = relayboard("api-keys", "create", "--name", "bench", env=env, cwd=cwd).stdout
    return out.strip().splitlines()[-1].strip()


def checkpoint(db_path: Path) -> None:
    """Fold SQLite's WAL into the database file, so that copying the file copies everything."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def count_rows(db_path: Path, table: str) -> int:
    """Return the number of rows in `table` (read with plain sqlite3)."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- child processes


@dataclass
class Measured:
    """A finished child process: exit status, wall time and CPU time (its own and its
    waited-for children's, from wait4)."""

    returncode: int
    wall: float
    user: float
    system: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


def run_measured(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    stdout: Path,
    stderr: Path,
) -> Measured:
    """Run a child to completion in its own process group, its output to files; kill the
    group if it outlives `timeout` (or if we are interrupted)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    wall = time.perf_counter() - started
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    return Measured(proc.returncode, wall, usage.ru_utime, usage.ru_stime)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command[:3]} did not finish within {timeout:.0f} s")
                time.sleep(0.005)
        finally:
            if proc.returncode is None:
                kill_group(proc)


def kill_group(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM a child's process group, then SIGKILL it if it has not exited after `grace`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def group_cpu_seconds(pgid: int) -> float:
    """Return the CPU time (user + system) of the live processes in process group `pgid`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def make_app(workdir: Path, **overrides: str) -> Any:
    """Create a Relayboard app on a fresh SQLite database in `workdir` (tables created)."""
    from app import create_app
    from app.config import Settings

    try:
        db = importlib.import_module("app.extensions").db
    except AttributeError:  # app/'s restructuring moves it to app.db
        db = importlib.import_module("app.db").db

    settings = Settings.from_env(relayboard_env(workdir, **overrides))
    app = create_app({"SETTINGS": settings})
    with app.app_context():
        db.create_all()
    return app


def drain_bounded(engine: Any, seconds: float) -> Any:
    """Run a delivery pass, asking it to stop after `seconds`; return its PassReport."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    try:
        return engine.run_pass(stop=stop)
    finally:
        timer.cancel()


def cpu_busy(seconds: float = 1.0) -> float:
    """Return the fraction of all CPUs busy over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else 0.0


def wait_for_quiet(limit: float = 60.0, threshold: float = 0.15) -> float:
    """Wait (at most `limit` s) until the CPUs are mostly idle; return the busy fraction."""
    deadline = time.monotonic() + limit
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    return busy


def tempdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """Return a temporary directory under /tmp that removes itself."""
    return tempfile.TemporaryDirectory(prefix=f"relayboard-bench-{prefix}-", dir="/tmp")


def message_texts(index: int) -> tuple[str, str, str]:
    """Return message `index`'s subject, text and HTML: built, a message is about 2 KB."""
    text = (
        f"Hello Alice,\n\nThank you for your order #{index:06d}. We are getting it ready and "
        "will let you know as soon as it ships.\n\nTrack it at "
        f"https://shop.example.com/orders/{index}\n\nItems:\n"
        "  1 x Blue mug ............ 12.00 EUR\n  2 x Tea towel .......... 9.00 EUR\n\n"
        "Questions? Just reply to this message.\n\n-- \nThe Example Shop team\n"
    )
    html = (
        "<html><body><p>Hello Alice,</p>"
        f"<p>Thank you for your order <b>#{index:06d}</b>. We are getting it ready and will "
        "let you know as soon as it ships.</p>"
        f'<p><a href="https://shop.example.com/orders/{index}">Track your order</a></p>'
        "<table><tr><td>1 x Blue mug</td><td>12.00 EUR</td></tr>"
        "<tr><td>2 x Tea towel</td><td>9.00 EUR</td></tr></table>"
        "<p>Questions? Just reply to this message.</p><p>The Example Shop team</p>"
        "</body></html>"
    )
    return f"Your order #{index:06d} is confirmed", text, html


def message_body(index: int, *, to: str = "rcpt@example.org") -> dict[str, Any]:
    """Return message `index` as the JSON body of `POST /api/send`."""
    subject, text, html = message_texts(index)
    return {
        "from": "Example Shop <shop@example.com>",
        "to": [f"Alice Example <{to}>"],
        "subject": subject,
        "text": text,
        "html": html,
    }


def message_spec(index: int, *, to: str = "rcpt@example.org") -> Any:
    """Return message `index` as app.domain.mime's MessageSpec (failover.py builds it)."""
    from app.domain.mime import Mailbox, MessageSpec

    subject, text, html = message_texts(index)
    return MessageSpec(
        sender=Mailbox("shop@example.com", "Example Shop"),
        to=[Mailbox(to, "Alice Example")],
        cc=[],
        bcc=[],
        reply_to=None,
        subject=subject,
        text=text,
        html=html,
        attachments=[],
        headers={},
        received=[],
    )


def build(index: int) -> Any:
    """Build message `index` (a BuiltMessage, unique Message-ID)."""
    from app.domain.mime import build_message

    return build_message(message_spec(index), max_bytes=10 * 1024 * 1024)


# --------------------------------------------------------------------------- servers


def _serve(kind: str) -> None:
    """Child process: run one test server; answer JSON-line commands on stdin/stdout."""
    from tests.smtp_servers import HangingServer, ScriptedSMTPServer

    server: Any = ScriptedSMTPServer() if kind == "smtp" else HangingServer()
    server.start()

    def reply(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    reply({"port": server.port})
    try:
        for line in sys.stdin:
            command = line.strip()
            received = list(getattr(server, "received", []))
            if command == "stats":
                reply(
                    {
                        "received": len(received),
                        "distinct": len({r.message_id for r in received}),
                        "connections": server.connections,
                    }
                )
            elif command == "ids":
                reply([r.message_id for r in received])
            elif command == "reset":
                if kind == "smtp":
                    server.received.clear()
                server.connections = 0
                reply("ok")
            elif command == "cpu":
                reply(time.process_time())
            else:
                break
    finally:
        server.stop()


class ServerProcess:
    """A ScriptedSMTPServer ("smtp") or HangingServer ("hanging") in its own process."""

    def __init__(self, kind: str = "smtp") -> None:
        if kind not in ("smtp", "hanging"):
            raise ValueError(kind)
        self.kind = kind
        self.host = LOOPBACK
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    def _read(self, timeout: float) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.kind} server did not answer within {timeout} s")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} server exited (status {self._proc.poll()})")
        return json.loads(line)

    def _ask(self, command: str, timeout: float = 30.0) -> Any:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read(timeout)

    def start(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", self.kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.port = int(self._read(60)["port"])
        return self

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self._ask("stats")
        return result

    def message_ids(self) -> list[str]:
        result: list[str] = self._ask("ids")
        return result

    def cpu_seconds(self) -> float:
        return float(self._ask("cpu"))

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write("stop\n")
                proc.stdin.close()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- stats, output


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def source() -> dict[str, Any]:
    """Say which code was measured: the commit, and app/ files changed since it."""
    info: dict[str, Any] = {"app_root": str(APP_ROOT)}
    marker = APP_ROOT / ".bench-commit"
    if APP_ROOT != ROOT and marker.exists():  # an export made by run_all.py --commit
        info["commit"] = marker.read_text().strip()
        return info
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "app"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return info
    info["commit"] = head
    if APP_ROOT == ROOT:
        info["uncommitted_app_changes"] = sorted(line[3:] for line in dirty if line.strip())
    return info


def machine() -> dict[str, Any]:
    """Describe the machine the numbers come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_result(name: str, result: dict[str, Any], path: str | None = None) -> Path:
    """Write a benchmark's result as JSON (default bench/out/NAME.json) and return the path."""
    target = Path(path) if path else OUT_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "source": source(),
        **result,
    }
    target.write_text(json.dumps(result, indent=2, default=str))
    return target


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(sys.argv[2])
