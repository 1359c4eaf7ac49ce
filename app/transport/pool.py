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

    Slow start: until an attempt has proved the relay in this pass, and again after one
    disproved it, one message at a time uses the relay. So a relay that answers 421
    meets one message per breaker step, not a whole batch at once, and a relay that
    accepts connections but never greets holds one message for the connect timeout.
    Others wait at most `patience` seconds for that first attempt, then give up (and
    try the next relay); a caller told to `wait_out` (it has nowhere else to go) waits
    for the attempt to end instead, and gives up too if it ended without proving the
    relay. After a failed connect the relay is down for the rest of the pass.
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
        self._in_use = 0
        self._proven = False
        self._stalled_since: float | None = None
        self._ended = 0  # attempts ended (released, or failed to open): waiters compare
        self._refused: tuple[int, str] = (0, "")  # (how many refusals so far, the last reason)
        self.down: str | None = None
        self._changed = asyncio.Condition()
        self._closing: set[asyncio.Task[None]] = set()

    def refuse_waiters(self, reason: str) -> None:
        """Send everyone waiting for a session away with `reason` (its circuit opened)."""
        self._refused = (self._refused[0] + 1, reason)
        self._wake_all()

    async def acquire(self, *, wait_out: bool = False) -> RelaySession:
        """Return a ready session; raise RelayUnavailable, or TransportError if the connect failed.

        1. Take a free slot (one while the relay is unproven, `size` once proven).
        2. Else wait: for any slot once proven; for the first attempt while not, at most
           `patience`, or until it ends with `wait_out`.
        3. Reuse an idle session, or open one; a failed open marks the relay down.
        """
        async with self._changed:
            waited_since = time.monotonic()
            refusals = self._refused[0]
            waiting_out: int | None = None  # self._ended when this caller began to wait it out
            while True:
                if self.down:
                    raise RelayUnavailable(self.down)
                if self._refused[0] != refusals:
                    raise RelayUnavailable(self._refused[1])
                if waiting_out is not None and waiting_out != self._ended and not self._proven:
                    self._changed.notify()  # pass the wake-up on to the next waiter
                    raise RelayUnavailable(
                        "not answering well: its first attempt of the pass ended without a delivery"
                    )
                if self._in_use < (self.size if self._proven else 1):
                    self._in_use += 1
                    if self._idle:
                        return self._idle.pop()
                    break
                if self._proven or waiting_out is not None:
                    await self._changed.wait()
                    continue
                if self._stalled_since is None:
                    remaining = self.patience - (time.monotonic() - waited_since)
                    try:
                        await asyncio.wait_for(self._changed.wait(), max(remaining, 0))
                    except TimeoutError:
                        # A wake-up that raced the timeout is lost with it: look again.
                        self._stalled_since = waited_since
                    continue
                if wait_out:
                    waiting_out = self._ended  # the attempt ends by its own timeouts
                    continue
                pending = time.monotonic() - self._stalled_since
                raise RelayUnavailable(
                    f"not answering: its first attempt has been pending for {pending:.1f} s"
                )
        try:
            return await self._opener(self.endpoint, self.timeouts)
        except TransportError as exc:
            self.down = f"{exc.kind.replace('_', ' ')} at {exc.stage}: {exc.detail}"
            await self._end_attempt()
            raise
        except BaseException:
            await self._end_attempt()
            raise

    async def release(self, session: RelaySession, *, proved: bool | None = None) -> None:
        """Take a session back; `proved`: the attempt showed the relay works (True) or not."""
        spent = session.sent >= self.endpoint.max_per_connection
        if session.broken or spent or self.down:
            task = asyncio.ensure_future(session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            self._idle.append(session)
        self._stalled_since = None
        if proved is not None:
            self._proven = proved
        # One slot came free; after a change of pace, everyone re-checks.
        await self._end_attempt(everyone=proved is not None)

    async def close(self) -> None:
        """Close every idle session and wait for closes in progress."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(s.close() for s in idle), *self._closing, return_exceptions=True)

    async def _end_attempt(self, *, everyone: bool = True) -> None:
        async with self._changed:
            self._in_use -= 1
            self._ended += 1
            if everyone:
                self._changed.notify_all()
            else:
                self._changed.notify()

    def _wake_all(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.ensure_future(wake())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
