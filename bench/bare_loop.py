"""The drain benchmark's baseline: a bare aiosmtplib loop, run as its own process.

It reads every queued message (envelope_from, recipients, data: the very bytes
Relayboard will send) from a Relayboard SQLite database with plain sqlite3, then sends
them on the standard asyncio event loop over CONNECTIONS aiosmtplib connections kept
open for the whole run (never recycled): `smtp.sendmail(envelope_from, recipients, data)`.
It prints one JSON line: {"loaded": N, "sent": N}. With no message it connects to nothing.

    python bench/bare_loop.py --db PATH --port PORT [--connections 8] [--deadline 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import time

import aiosmtplib

HOST = "127.0.0.1"


def load(db: str) -> list[tuple[str, list[str], bytes]]:
    """Return (envelope_from, recipients, data) of every message, in queue order."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT envelope_from, recipients, data FROM messages ORDER BY id"
        ).fetchall()
    return [(sender, json.loads(recipients), bytes(data)) for sender, recipients, data in rows]


async def send_all(
    messages: list[tuple[str, list[str], bytes]], port: int, connections: int, deadline: float
) -> int:
    """Send every message over `connections` long-lived connections; return how many went."""
    items = iter(messages)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname=HOST, port=port, timeout=60, start_tls=False)
        await smtp.connect()
        try:
            for sender, recipients, data in items:  # the shared iterator bounds the count
                await smtp.sendmail(sender, recipients, data)
                sent += 1
                if time.monotonic() > deadline:
                    break
        finally:
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds at most")
    args = parser.parse_args()
    messages = load(args.db)
    sent = 0
    if messages:
        deadline = time.monotonic() + args.deadline
        sent = asyncio.run(send_all(messages, args.port, args.connections, deadline))
    print(json.dumps({"loaded": len(messages), "sent": sent}), flush=True)


if __name__ == "__main__":
    main()
