"""A pool of reused sessions per relay for one delivery pass, with a guarded first connect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from app.transport.smtp import Endpoint, RelaySession, Timeouts, TransportError

Opener = Callable[[Endpoint, Timeouts], Awaitable[RelaySession]]


class RelayUnavailable(Exception):
    """The relay cannot take a message right now; try the next one (not a breaker failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RelayPool:
    """Hand out sessions to one relay, up to `size` at once, reusing them across messages.

    Until a session has opened in this pass, only one connect runs at a time: a relay
    that accepts connections but never greets then holds one message for the connect
    timeout, not every message. Others wait at most `patience` seconds for it before
    trying the next relay. After a failed connect the relay is down for the pass.
    """

    def __init__(
        self, endpoint: Endpoint, timeouts: Timeouts, size: int, patience: float, opener: Opener
    ) -> None:
        self.endpoint = endpoint
        self.timeouts = timeouts
        self.size = max(1, size)
        self.patience = patience
        self._opener = opener
        self._idle: list[RelaySession] = []
        self._live = 0  # sessions open or opening
        self._opening = 0
        self._proven = False
        self._stalled_since: float | None = None
        self.down: str | None = None
        self._changed = asyncio.Condition()
        self._closing: set[asyncio.Task[None]] = set()

    async def acquire(self) -> RelaySession:
        """Return a ready session; raise TransportError if this caller's connect failed."""
        async with self._changed:
            waited_since = time.monotonic()
            while True:
                if self.down:
                    raise RelayUnavailable(self.down)
                if self._idle:
                    return self._idle.pop()
                if self._live < self.size and (self._proven or self._opening == 0):
                    self._live += 1
                    self._opening += 1
                    break
                if self._proven:
                    await self._changed.wait()
                    continue
                if self._stalled_since is not None:
                    pending = time.monotonic() - self._stalled_since
                    raise RelayUnavailable(f"not answering (connection pending for {pending:.1f} s)")
                remaining = self.patience - (time.monotonic() - waited_since)
                try:
                    await asyncio.wait_for(self._changed.wait(), max(remaining, 0))
                except TimeoutError:
                    self._stalled_since = waited_since
                    # wait_for re-acquires the condition's lock before raising.
        try:
            session = await self._opener(self.endpoint, self.timeouts)
        except TransportError as exc:
            async with self._changed:
                self._live -= 1
                self._opening -= 1
                self.down = f"{exc.kind.replace('_', ' ')} at {exc.stage}: {exc.detail}"
                self._changed.notify_all()
            raise
        except BaseException:
            async with self._changed:
                self._live -= 1
                self._opening -= 1
                self._changed.notify_all()
            raise
        async with self._changed:
            self._opening -= 1
            self._proven = True
            self._stalled_since = None
            self.down = None
            self._changed.notify_all()
        return session

    async def release(self, session: RelaySession) -> None:
        """Take a session back: keep it for the next message, or recycle it when spent or broken."""
        spent = session.sent >= self.endpoint.max_per_connection
        async with self._changed:
            if session.broken or spent or self.down:
                self._live -= 1
                task = asyncio.ensure_future(session.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                self._idle.append(session)
            self._changed.notify()

    async def close(self) -> None:
        """Close every idle session and wait for closes in progress."""
        async with self._changed:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        await asyncio.gather(*(s.close() for s in idle), *self._closing, return_exceptions=True)
