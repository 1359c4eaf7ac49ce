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

    Slow start: until a message has gone through in this pass, and again after a
    server-level failure, one message at a time uses the relay. So a relay that
    answers 421 meets one message per breaker step, not a whole batch at once, and a
    relay that accepts connections but never greets holds one message for the
    connect timeout. Others wait at most `patience` seconds for that first attempt,
    then try the next relay; a caller with no next relay to try waits the attempt out
    instead, since deferring it would only delay it more. After a failed connect the
    relay is down for the pass.
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
        self.down: str | None = None
        self._changed = asyncio.Condition()
        self._closing: set[asyncio.Task[None]] = set()

    async def acquire(
        self,
        admit: Callable[[], str | None] | None = None,
        last_resort: Callable[[], bool] | None = None,
    ) -> RelaySession:
        """Return a ready session; raise TransportError if this caller's connect failed.

        `admit` is asked again once a slot is free (the circuit may have opened while
        this caller waited); a reason it returns is raised as RelayUnavailable.
        `last_resort` is asked once the first attempt has outlasted the patience: True
        (no other relay could take this message) means wait for that attempt to end;
        if it ends without proving the relay, this caller gives up too, so a relay that
        swallows messages or throttles meets them one at a time only within patience.
        """
        async with self._changed:
            waited_since = time.monotonic()
            waiting_out: int | None = None  # self._ended when this caller began to wait
            while True:
                if self.down:
                    raise RelayUnavailable(self.down)
                if waiting_out is not None and waiting_out != self._ended and not self._proven:
                    self._changed.notify()  # pass the wake-up on to the next waiter
                    raise RelayUnavailable(
                        "not answering well: its first attempt of the pass ended without a "
                        "delivery"
                    )
                if self._in_use < (self.size if self._proven else 1):
                    refusal = admit() if admit else None
                    if refusal:
                        self._changed.notify()  # pass the wake-up on to the next waiter
                        raise RelayUnavailable(refusal)
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
                if last_resort is not None and last_resort():
                    waiting_out = self._ended  # the attempt ends by its own timeouts
                    continue
                pending = time.monotonic() - self._stalled_since
                raise RelayUnavailable(
                    f"not answering: its first attempt has been pending for {pending:.1f} s"
                )
        try:
            return await self._opener(self.endpoint, self.timeouts)
        except TransportError as exc:
            async with self._changed:
                self._in_use -= 1
                self._ended += 1
                self.down = f"{exc.kind.replace('_', ' ')} at {exc.stage}: {exc.detail}"
                self._changed.notify_all()
            raise
        except BaseException:
            async with self._changed:
                self._in_use -= 1
                self._ended += 1
                self._changed.notify_all()
            raise

    async def release(self, session: RelaySession, *, healthy: bool | None = None) -> None:
        """Take a session back; `healthy`: the relay delivered (True) or failed (False)."""
        spent = session.sent >= self.endpoint.max_per_connection
        async with self._changed:
            self._in_use -= 1
            self._ended += 1
            self._stalled_since = None
            if healthy is True:
                self._proven = True
            elif healthy is False:
                self._proven = False
            if session.broken or spent or self.down:
                task = asyncio.ensure_future(session.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                self._idle.append(session)
            # One slot came free; after a change of pace, everyone re-checks.
            if healthy is None:
                self._changed.notify()
            else:
                self._changed.notify_all()

    async def close(self) -> None:
        """Close every idle session and wait for closes in progress."""
        async with self._changed:
            idle, self._idle = self._idle, []
        await asyncio.gather(*(s.close() for s in idle), *self._closing, return_exceptions=True)
