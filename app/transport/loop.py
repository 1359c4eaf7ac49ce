"""The event loop the transport's coroutines run on: uvloop unless asked otherwise.

Delivery is a few thousand small socket writes and reads a second, plus a thread
handing claims and outcomes to and from the database; uvloop does that event-loop work
in C (the pass's loop spends about a tenth less CPU per message in bench/drain.py).
`RELAYBOARD_EVENT_LOOP=asyncio` uses the standard library's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

LOOPS = ("uvloop", "asyncio")  # the first is the default (RELAYBOARD_EVENT_LOOP)


def run(coroutine: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """Run a coroutine to completion on a new loop of the kind asked for, then close it."""
    if loop not in LOOPS:
        coroutine.close()
        raise ValueError(f"unknown event loop {loop!r}; choose one of {', '.join(LOOPS)}")
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)
