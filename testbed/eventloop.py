"""The event loop a program runs on: asyncio's own or uvloop (the `fast` extra).

One picker for every place that offers the choice: `testbed lab up --uvloop`, the heartbeat
study's `--loop` (its phone processes too) and the benchmarks in `bench/`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from testbed.wire.choices import Choice


class Loop(Choice, what="event loop"):
    """`auto` is uvloop where it is installed, asyncio elsewhere."""

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


#: the loops themselves (what `auto` resolves to)
LOOPS = (Loop.ASYNCIO, Loop.UVLOOP)


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def available_loops() -> list[Loop]:
    """The loops installed here, asyncio first."""
    return list(LOOPS) if have_uvloop() else [Loop.ASYNCIO]


def pick(choice: Loop | str = Loop.AUTO) -> Loop:
    """asyncio or uvloop for a choice; uvloop asked for by name but not installed, or a name
    that is no loop, is a ValueError that says so."""
    choice = Loop(choice)
    if choice is Loop.AUTO:
        return Loop.UVLOOP if have_uvloop() else Loop.ASYNCIO
    if choice is Loop.UVLOOP and not have_uvloop():
        raise ValueError("uvloop is not installed (pip install 'wechat-testbed[fast]')")
    return choice


def from_flag(uvloop: bool, say: Callable[[str], None]) -> Loop:
    """The loop for a command's `--uvloop` flag: uvloop if asked for and installed; asked for
    but missing, asyncio, after `say`ing so (the command goes on)."""
    if uvloop and have_uvloop():
        return Loop.UVLOOP
    if uvloop:
        say("uvloop not installed; using asyncio")
    return Loop.ASYNCIO


def run(main: Awaitable[Any], loop: Loop | str = Loop.AUTO) -> Any:
    """`asyncio.run(main)` on the loop picked for `loop`."""
    try:
        kind = pick(loop)
    except ValueError:
        if asyncio.iscoroutine(main):
            main.close()          # never to run: no "was never awaited" warning
        raise
    if kind is Loop.ASYNCIO:
        return asyncio.run(main)
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
