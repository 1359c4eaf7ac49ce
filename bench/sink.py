"""A fast SMTP sink for the drain benchmark: a raw asyncio responder in its own process.

It answers just enough SMTP for a client that does not pipeline (220 greeting; EHLO
with 8BITMIME and SIZE; HELO, MAIL, RCPT, RSET, NOOP with 250; DATA with 354, then
250 after the line "."; QUIT with 221), counts messages and connections, notes the
wall-clock time (time.time(), comparable across processes) of the first and the last
message received, and keeps every message's Message-ID so that the parent can check
exactly-once delivery. It listens on 127.0.0.1, on an ephemeral port.

The parent drives it over the child's stdin/stdout, one JSON line each way:
`{"port": N}` first, then the answers to "reset", "stats", "ids" and "stop".

    python bench/sink.py            # as a child of Sink() below
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

LOOPBACK = "127.0.0.1"
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.I | re.M)
_END = b"\r\n.\r\n"
_EHLO = b"250-sink\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"


class Tally:
    """What the sink received since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.connections = 0
        self.first: float | None = None
        self.last: float | None = None
        self.ids: list[str] = []
        self.times: list[float] = []
        self.cpu0 = time.process_time()

    def stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "distinct": len(set(self.ids)),
            "bytes": self.bytes,
            "connections": self.connections,
            "first": self.first,
            "last": self.last,
            "cpu_seconds": time.process_time() - self.cpu0,
        }


class SinkProtocol(asyncio.Protocol):
    """One SMTP session: line commands, or the body of a DATA until CRLF.CRLF."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = bytearray()
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.tally.connections += 1
        self.transport.write(b"220 sink ESMTP ready\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        start = len(buffer)
        buffer += data
        while buffer:
            if self.in_data:
                # The body ends at CRLF.CRLF, or at "." right after the 354 (empty body).
                if buffer.startswith(b".\r\n"):
                    end, body = 0, b""
                else:
                    end = buffer.find(_END, max(0, start - 4))
                    if end < 0:
                        return
                    body = bytes(buffer[: end + 2])
                    end += 2
                del buffer[: end + 3]
                start = 0
                self.in_data = False
                self._message(body)
                continue
            eol = buffer.find(b"\r\n")
            if eol < 0:
                return
            line = bytes(buffer[:eol])
            del buffer[: eol + 2]
            start = 0
            if not self._command(line):
                return

    def _message(self, body: bytes) -> None:
        tally = self.tally
        now = time.time()
        if tally.first is None:
            tally.first = now
        tally.last = now
        tally.times.append(now)
        tally.messages += 1
        tally.bytes += len(body)
        head = body.split(b"\r\n\r\n", 1)[0]
        found = _MESSAGE_ID.search(head)
        tally.ids.append(found.group(1).decode("ascii", "replace").strip() if found else "")
        assert self.transport is not None
        self.transport.write(b"250 OK queued\r\n")

    def _command(self, line: bytes) -> bool:
        """Answer one command line; return False once the connection is closing."""
        assert self.transport is not None
        verb = line[:4].upper()
        if verb == b"DATA":
            self.in_data = True
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"EHLO":
            self.transport.write(_EHLO)
        elif verb == b"QUIT":
            self.transport.write(b"221 Bye\r\n")
            self.transport.close()
            self.buffer.clear()
            return False
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
            self.transport.write(b"250 OK\r\n")
        else:
            self.transport.write(b"502 Command not implemented\r\n")
        return True


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    server = await loop.create_server(lambda: SinkProtocol(tally), LOOPBACK, 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    done = asyncio.Event()

    def answer(command: str) -> Any:
        if command == "reset":
            tally.reset()
            return "ok"
        if command == "stats":
            return tally.stats()
        if command == "ids":
            return tally.ids
        if command == "times":
            return tally.times
        done.set()
        return "bye"

    def control() -> None:
        """Read commands on a plain thread; answer them on the loop (no shared-state races)."""
        for line in sys.stdin:
            reply = asyncio.run_coroutine_threadsafe(_call(answer, line.strip()), loop).result()
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if reply == "bye":
                return
        loop.call_soon_threadsafe(done.set)

    print(json.dumps({"port": port, "loop": type(loop).__module__}), flush=True)
    threading.Thread(target=control, name="sink-control", daemon=True).start()
    async with server:
        await done.wait()


async def _call(fn: Any, arg: str) -> Any:
    return fn(arg)


def main() -> None:
    """Serve until told to stop (or stdin closes); uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve())


# --------------------------------------------------------------------------- parent side


class Sink:
    """The sink as a child process; `with Sink() as sink:` starts and stops it."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.loop = ""
        self._proc: subprocess.Popen[str] | None = None

    def _read(self, timeout: float) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the sink did not answer within {timeout} s")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sink exited (status {self._proc.poll()})")
        return json.loads(line)

    def _ask(self, command: str, timeout: float = 30.0) -> Any:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read(timeout)

    def start(self) -> Sink:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read(30)
        self.port, self.loop = int(hello["port"]), str(hello["loop"])
        return self

    def reset(self) -> None:
        """Forget everything received so far (and restart the CPU count)."""
        self._ask("reset")

    def stats(self) -> dict[str, Any]:
        """Messages, distinct Message-IDs, bytes, connections, first/last time, CPU seconds."""
        result: dict[str, Any] = self._ask("stats")
        return result

    def message_ids(self) -> list[str]:
        """Every message's Message-ID, in the order received."""
        result: list[str] = self._ask("ids", timeout=60)
        return result

    def times(self) -> list[float]:
        """When each message was received (time.time()), in order."""
        result: list[float] = self._ask("times", timeout=60)
        return result

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write("stop\n")
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
