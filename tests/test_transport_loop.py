"""The event loop the transport runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from app.transport import loop as event_loop


async def _loop_class() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_uvloop_by_default_and_the_standard_loop_when_asked() -> None:
    assert issubclass(event_loop.run(_loop_class()), uvloop.Loop)
    standard = event_loop.run(_loop_class(), "asyncio")
    assert not issubclass(standard, uvloop.Loop)
    assert issubclass(standard, asyncio.AbstractEventLoop)


def test_each_run_gets_a_fresh_loop_and_closes_it() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def keep() -> None:
        loops.append(asyncio.get_running_loop())

    event_loop.run(keep())
    event_loop.run(keep())
    assert loops[0] is not loops[1]
    assert all(loop.is_closed() for loop in loops)


def test_an_unknown_loop_is_refused_without_leaving_the_coroutine_unawaited() -> None:
    with pytest.raises(ValueError, match="unknown event loop 'trio'; choose one of uvloop"):
        event_loop.run(_loop_class(), "trio")  # an unawaited coroutine would warn (= fail)
