"""The clock's coarse timers (`Clock.coarse`, testbed.lab.clock.TimerWheel): never early, late
by at most one bucket of wall time, cancel and re-arm, on a manual clock and a real one."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time

import pytest

from testbed.lab.clock import (FINE_RESOLUTION_WALL_S, WHEEL_RESOLUTION_WALL_S, Clock,
                               ManualClock)


class WallManualClock(ManualClock):
    """A manual clock with a wall time (the real clock's `floor_wall`), so its coarse timers
    have buckets of a width, while time still moves only when the test says so."""

    __slots__ = ()
    floor_wall = Clock.floor_wall


# ---------------------------------------------------------------------- manual clocks

async def test_on_a_manual_clock_coarse_timers_fire_exactly_at_their_time():
    clock = ManualClock(start=100.0, scale=2000)
    fired = []
    clock.coarse.call_at(130.0, lambda: fired.append(("b", clock.now())))
    clock.coarse.call_later(10.0, lambda: fired.append(("a", clock.now())))
    await clock.advance_to(129.999)
    assert fired == [("a", 110.0)]
    await clock.advance_to(130.0)
    assert fired == [("a", 110.0), ("b", 130.0)]
    assert clock.coarse.pending() == 0 and clock.timers() == 0


async def test_timers_of_one_bucket_share_one_clock_timer_and_fire_at_its_end():
    clock = WallManualClock(scale=1000)          # buckets of 4 protocol s
    width = WHEEL_RESOLUTION_WALL_S * 1000
    assert clock.coarse.width == width
    fired = []
    for when in (8.5, 9.0, 11.9, 12.0):         # all in the bucket (8, 12]
        clock.coarse.call_at(when, lambda w=when: fired.append((w, clock.now())))
    clock.coarse.call_at(12.5, lambda: fired.append((12.5, clock.now())))   # (12, 16]
    assert clock.coarse.pending() == 5 and clock.timers() == 2
    await clock.advance_to(11.99)
    assert fired == []                           # 8.5 is due, its bucket is not
    await clock.advance_to(12.0)
    assert fired == [(8.5, 12.0), (9.0, 12.0), (11.9, 12.0), (12.0, 12.0)]
    await clock.advance_to(20.0)
    assert fired[-1] == (12.5, 16.0)


async def test_never_early_and_at_most_one_bucket_late():
    clock = WallManualClock(scale=3)            # buckets of 0.012 protocol s
    width = clock.coarse.width
    rng = random.Random(12)
    # random deadlines, and deadlines one float above a bucket's end, where the bucket's
    # end computed as a product can round to just below them (38 of these at this width)
    whens = [rng.uniform(0, 300 * width) for _ in range(300)]
    whens += [math.nextafter(i * width, math.inf) for i in range(1, 300)]
    lateness = []
    for when in whens:
        clock.coarse.call_at(when, lambda w=when: lateness.append(clock.now() - w))
    await clock.advance_to(300 * width)
    assert len(lateness) == len(whens)
    assert min(lateness) >= 0.0
    assert max(lateness) <= width * (1 + 1e-9)    # (a float's rounding over)


async def test_cancel_skips_a_timer_and_the_last_one_takes_its_bucket_away():
    clock = WallManualClock(scale=1000)
    fired = []
    a = clock.coarse.call_at(9.0, fired.append, "a")
    b = clock.coarse.call_at(10.0, fired.append, "b")
    c = clock.coarse.call_at(11.0, fired.append, "c")
    b.cancel()
    assert clock.coarse.pending() == 2 and clock.timers() == 1
    await clock.advance_to(12.0)
    assert fired == ["a", "c"]
    d = clock.coarse.call_at(13.0, fired.append, "d")
    d.cancel()
    d.cancel()                                   # twice: still counted once
    assert clock.coarse.pending() == 0 and clock.timers() == 0   # nothing wakes the loop
    await clock.advance_to(20.0)
    assert fired == ["a", "c"] and a.cancelled is False and c.cancelled is False


async def test_a_timer_cancelled_by_an_earlier_one_of_its_bucket_does_not_run():
    clock = WallManualClock(scale=1000)
    fired = []
    later = None

    def first():
        fired.append("first")
        later.cancel()

    clock.coarse.call_at(9.0, first)
    later = clock.coarse.call_at(10.0, fired.append, "later")
    await clock.advance_to(12.0)
    assert fired == ["first"] and clock.coarse.pending() == 0


async def test_a_timer_set_again_from_its_callback_fires_again():
    """Re-arming from the callback, as the NAT and the long link do: for a later bucket, and
    for the very bucket that is firing (a deadline already reached fires at once)."""
    clock = WallManualClock(scale=1000)
    seen = []

    def tick(n: int) -> None:
        seen.append((n, clock.now()))
        if n == 0:
            clock.coarse.call_later(10.0, tick, 1)      # (20, 24]: fires at 24
        elif n == 1:
            clock.coarse.call_at(clock.now() - 1.0, tick, 2)   # in the bucket firing now
    clock.coarse.call_at(10.0, tick, 0)                 # (8, 12]: fires at 12
    await clock.advance_to(100.0)
    assert seen == [(0, 12.0), (1, 24.0), (2, 24.0)]


async def test_a_failing_callback_does_not_lose_the_rest_of_its_bucket():
    clock = WallManualClock(scale=1000)
    fired = []

    def fail() -> None:
        raise RuntimeError("a callback's bug")

    clock.coarse.call_at(9.0, fail)
    clock.coarse.call_at(10.0, fired.append, "after it")
    with pytest.raises(RuntimeError, match="a callback's bug"):
        await clock.advance_to(12.0)       # as an exact timer's error would
    assert fired == ["after it"]


# ---------------------------------------------------------------------- real clocks

async def _lateness_wall(scale: float, n: int = 200, wheel: str = "coarse") -> list[float]:
    """Wall seconds each of `n` timers of the clock's `wheel`, spread over 0.2 s of wall
    time, fired after its deadline (negative: early)."""
    clock = Clock(scale=scale)
    rng = random.Random(7)
    late: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def fired(when: float) -> None:
        late.append(clock.to_wall(clock.now() - when))
        if len(late) == n:
            done.set_result(None)

    start = clock.now()
    for _ in range(n):
        when = start + clock.to_protocol(rng.uniform(0.01, 0.2))
        getattr(clock, wheel).call_at(when, fired, when)
    await asyncio.wait_for(done, 5.0)
    return late


async def test_on_a_real_clock_late_by_milliseconds_of_wall_time_at_any_scale():
    # the bound is wall time: 4 ms at k = 1 as at k = 2000 (8 protocol s there), plus what
    # the event loop itself is late on a loaded machine
    for scale in (1.0, 2000.0):
        late = await _lateness_wall(scale)
        assert min(late) >= 0.0, scale
        assert max(late) <= WHEEL_RESOLUTION_WALL_S + 0.1, (scale, max(late))
        assert Clock(scale=scale).coarse.width == WHEEL_RESOLUTION_WALL_S * scale


async def test_the_fine_wheel_slices_a_millisecond_and_is_never_early():
    # the phones' heartbeat timers: a slice of 1 ms of wall time, 2 protocol s at k = 2000
    late = await _lateness_wall(2000.0, wheel="fine")
    assert min(late) >= 0.0
    assert max(late) <= FINE_RESOLUTION_WALL_S + 0.1, max(late)
    assert Clock(scale=2000.0).fine.width == FINE_RESOLUTION_WALL_S * 2000.0
    assert ManualClock(scale=2000.0).fine.width == 0      # exact on a manual clock


def test_a_clock_taken_to_another_event_loop_still_fires_its_coarse_timers():
    """A timer set for a bucket that a finished loop's timer opened (and that loop will
    never run) fires on the new loop."""
    clock = Clock(scale=1000)
    when = clock.now() + 100.0                           # 0.1 s of wall time from now

    async def set_and_leave() -> None:
        clock.coarse.call_at(when, lambda: None)

    async def set_and_wait() -> float:
        fired = asyncio.get_running_loop().create_future()
        clock.coarse.call_at(when, lambda: fired.set_result(clock.now()))
        return await asyncio.wait_for(fired, 5.0)

    asyncio.run(set_and_leave())
    assert asyncio.run(set_and_wait()) >= when


# ------------------------------------------------- deadlines after what came in time

class _Stall(asyncio.Protocol):
    """At its first read: `then()`, and the loop blocked for `stall_s`."""

    def __init__(self, then, stall_s: float) -> None:
        self.then = then
        self.stall_s = stall_s

    def data_received(self, data: bytes) -> None:
        if self.then is not None:
            self.then()
            self.then = None
            time.sleep(self.stall_s)


class _Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes) -> None:
        self.data += data


async def _read_by_a_deadline_after_a_stall(wheel: str) -> bytes:
    """A deadline on the clock's `wheel` 20 ms of wall time away; a read on one socket sends
    bytes to another socket of the loop, in time, and blocks the loop for 60 ms (a stall, as
    a busy read makes): what that other socket's protocol had read when the deadline's
    callback ran."""
    loop = asyncio.get_running_loop()
    clock = Clock(scale=1000)
    (busy, busy_peer), (mine, peer) = socket.socketpair(), socket.socketpair()
    busy_t, _ = await loop.create_connection(
        lambda: _Stall(lambda: peer.send(b"in time"), 0.060), sock=busy)
    transport, reader = await loop.create_connection(_Reader, sock=mine)
    try:
        seen = loop.create_future()
        getattr(clock, wheel).call_later(20.0, lambda: seen.set_result(bytes(reader.data)))
        busy_peer.send(b"go")
        return await asyncio.wait_for(seen, 5)
    finally:
        busy_t.close()
        transport.close()
        busy_peer.close()
        peer.close()


def test_a_coarse_deadline_is_decided_after_what_came_in_time_is_read():
    # uvloop (libuv) runs its due timers before it polls the sockets: a phone's NOOP
    # deadline that fired first took a live link for dead; asyncio's own loop reads what
    # one poll found before its due timers, and keeps that order with the wheel
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(_read_by_a_deadline_after_a_stall("coarse")) == b"in time"
    assert asyncio.run(_read_by_a_deadline_after_a_stall("coarse")) == b"in time"


def test_a_fine_timer_does_not_wait_for_the_sockets():
    # a heartbeat goes when due: it decides nothing about what came in (and shows that the
    # stall above does put the deadline before the read on uvloop)
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(_read_by_a_deadline_after_a_stall("fine")) == b""
