"""Run the installed `relayboard` script as real processes against a real database file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RELAYBOARD = Path(sys.executable).with_name("relayboard")
SECRET = "cli-test-secret-0123456789abcdef"
DB_NAME = "relayboard.db"


def environment(instance: Path) -> dict[str, str]:
    """The process environment: this one without RELAYBOARD_*, plus a test configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYBOARD_", "FLASK_"))}
    env.update(
        {
            "RELAYBOARD_INSTANCE_PATH": str(instance),
            "RELAYBOARD_DATABASE_URL": f"sqlite:///{instance / DB_NAME}",
            "RELAYBOARD_SECRET_KEY": SECRET,
            "RELAYBOARD_SCHEDULER": "0",
            "RELAYBOARD_LOG_LEVEL": "WARNING",
            "RELAYBOARD_CONNECT_TIMEOUT": "2",
            "RELAYBOARD_COMMAND_TIMEOUT": "2",
            "RELAYBOARD_ATTEMPT_DEADLINE": "4",
            "RELAYBOARD_CONNECT_PATIENCE": "0.3",
        }
    )
    return env


def relayboard(
    env: dict[str, str], *args: str, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the console script to its end and return what it did."""
    return subprocess.run(
        [str(RELAYBOARD), *args],
        env={**env, **extra},
        cwd=env["RELAYBOARD_INSTANCE_PATH"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start(env: dict[str, str], *args: str, **extra: str) -> subprocess.Popen[str]:
    """Start the console script in the background (stdout discarded, stderr kept)."""
    return subprocess.Popen(
        [str(RELAYBOARD), *args],
        env={**env, **extra},
        cwd=env["RELAYBOARD_INSTANCE_PATH"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until_serving(port: int, seconds: float = 30) -> None:
    """Wait until GET /healthz answers ok on the port."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                assert json.load(r)["status"] == "ok"
            return
        except OSError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
