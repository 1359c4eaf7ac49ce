"""Shared pieces of the benchmarks: SMTP servers in a separate process, stats, settings.

Everything here talks to 127.0.0.1 only. The SMTP servers (tests/smtp_servers.py) run
in a child process (this file run with --serve KIND), so their CPU time is not charged
to the process being measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# RELAYBOARD_BENCH_APP_ROOT: measure another checkout's app/ (e.g. `git archive HEAD` in /tmp).
APP_ROOT = Path(os.environ.get("RELAYBOARD_BENCH_APP_ROOT") or ROOT).resolve()
for _path in (ROOT, APP_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

LOOPBACK = "127.0.0.1"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
OUT_DIR = ROOT / "bench" / "out"


# --------------------------------------------------------------------------- settings


def relayboard_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """Return Relayboard's environment for a benchmark: temp SQLite, no scheduler, quiet logs."""
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


def make_app(workdir: Path, **overrides: str) -> Any:
    """Create a Relayboard app on a fresh SQLite database in `workdir` (tables created)."""
    from app import create_app
    from app.config import Settings
    from app.extensions import db

    settings = Settings.from_env(relayboard_env(workdir, **overrides))
    app = create_app({"SETTINGS": settings})
    with app.app_context():
        db.create_all()
    return app


def drain_bounded(engine: Any, seconds: float) -> Any:
    """Run engine.drain(), asking it to stop after `seconds`; return its PassReport."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    try:
        return engine.drain(stop=stop)
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


def message_spec(index: int, *, to: str = "rcpt@example.org") -> Any:
    """Return a realistic text+html message spec; built, it is about 2 KB."""
    from app.domain.mime import Mailbox, MessageSpec

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
    return MessageSpec(
        sender=Mailbox("shop@example.com", "Example Shop"),
        to=[Mailbox(to, "Alice Example")],
        cc=[],
        bcc=[],
        reply_to=None,
        subject=f"Your order #{index:06d} is confirmed",
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
