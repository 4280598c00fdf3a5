"""The short link's side of the lab's faults (`testbed.lab.faults`): the Nth response of a
CGI dropped, delayed or truncated. (The long link's frames and every connection's resets and
black holes are faulted in the relay in front of the servers, `mocks.nat`.)"""

from __future__ import annotations

import asyncio

from testbed.lab.clock import Clock
from testbed.lab.faults import Fault, FaultKind

from .one_shot_http import Exchange

DROP_HOLD_S = 120.0        # protocol seconds a dropped response holds its connection...
DROP_HOLD_WALL_S = 10.0    # ...and at least this much wall time (a client's own timeout)


async def _wait(clock: Clock, protocol_s: float, stopping: asyncio.Event) -> bool:
    """Wait `protocol_s` on the lab clock; False if the lab stops first."""
    try:
        async with clock.timeout(protocol_s):
            await stopping.wait()
    except TimeoutError:
        return True
    return False


async def faulted_response(ex: Exchange, fault: Fault, body: bytes, content_type: str,
                           clock: Clock, stopping: asyncio.Event) -> None:
    """Answer a CGI (status 200, `body`) as `fault` says: `drop` holds the connection
    without an answer (`DROP_HOLD_S`), then closes it; `delay` answers that much later;
    `truncate` sends the headers and the body's first bytes, then closes."""
    if fault.kind is FaultKind.DROP:
        await _wait(clock, clock.floor_wall(DROP_HOLD_S, DROP_HOLD_WALL_S), stopping)
        ex.abort()
        return
    if fault.kind is FaultKind.DELAY and not await _wait(clock, fault.delay, stopping):
        ex.abort()
        return
    ex.respond(200, body, content_type,
               cut=fault.offset if fault.kind is FaultKind.TRUNCATE else None)
