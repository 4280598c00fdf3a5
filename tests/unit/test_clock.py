"""The lab clock's timers (testbed.lab.clock): the scaled clock and the tests' manual clock."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from testbed.lab.clock import Clock, ManualClock, wake


# ---------------------------------------------------------------------- manual clock

async def test_manual_timers_fire_in_order_each_at_its_own_time():
    clock = ManualClock(start=100.0)
    fired = []
    clock.call_at(130.0, lambda: fired.append(("b", clock.now())))
    clock.call_later(10.0, lambda: fired.append(("a", clock.now())))
    t = clock.call_at(120.0, lambda: fired.append(("cancelled", clock.now())))
    clock.call_at(500.0, lambda: fired.append(("late", clock.now())))
    t.cancel()
    assert clock.next_timer() == 110.0 and clock.timers() == 3
    await clock.advance(29.0)
    assert fired == [("a", 110.0)] and clock.now() == 129.0
    await clock.advance_to(130.0)
    assert fired == [("a", 110.0), ("b", 130.0)]
    assert clock.next_timer() == 500.0
    with pytest.raises(ValueError):
        await clock.advance_to(10.0)


async def test_a_stall_fires_the_timers_due_in_it_late_in_their_order():
    clock = ManualClock(start=100.0)
    fired = []
    clock.call_at(130.0, lambda: fired.append(("b", clock.now())))
    clock.call_at(110.0, lambda: fired.append(("a", clock.now())))
    clock.call_at(200.0, lambda: fired.append(("after", clock.now())))
    await clock.stall_to(150.0)
    assert fired == [("a", 150.0), ("b", 150.0)] and clock.now() == 150.0
    await clock.advance_to(200.0)
    assert fired[-1] == ("after", 200.0)
    with pytest.raises(ValueError):
        await clock.stall_to(10.0)


async def test_wake_resolves_a_waiter_once_from_a_timer_or_another_futures_end():
    """One waiter for whichever comes first: the timer and the other future both wake it,
    the second without an InvalidStateError."""
    clock = ManualClock()
    loop = asyncio.get_running_loop()
    waiter, other = loop.create_future(), loop.create_future()
    clock.call_at(10.0, wake, waiter)
    other.add_done_callback(functools.partial(wake, waiter))
    other.set_result("ignored")
    await asyncio.sleep(0)
    assert waiter.done() and waiter.result() is None
    await clock.advance(10.0)    # the timer finds it done
    assert waiter.result() is None


async def test_manual_time_stands_still_without_advance():
    clock = ManualClock()
    fired = []
    clock.call_later(1.0, fired.append, 1)
    await asyncio.sleep(0.05)          # real time passes; protocol time does not
    assert clock.now() == 0.0 and fired == []


async def test_a_woken_task_sets_its_next_timer_before_time_passes_it():
    clock = ManualClock()
    woke = []

    async def ticker():
        while True:
            await clock.sleep(10.0)
            woke.append(clock.now())

    task = asyncio.create_task(ticker())
    await clock.advance(35.0)
    assert woke == [10.0, 20.0, 30.0]
    task.cancel()


async def test_manual_timeout_and_wait_for():
    clock = ManualClock()
    never = asyncio.get_running_loop().create_future()

    async def waiter():
        async with clock.timeout(20.0):
            await never

    task = asyncio.create_task(waiter())
    await clock.advance(19.9)
    assert not task.done()
    await clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await task
    assert never.cancelled()

    done = asyncio.get_running_loop().create_future()
    done.set_result(7)
    assert await clock.wait_for(done, 5.0) == 7
    past = asyncio.create_task(clock.wait_for(asyncio.sleep(3600), 0.0))
    with pytest.raises(TimeoutError):   # a deadline already reached needs no advance
        await asyncio.wait_for(past, 5)


async def test_a_timer_due_already_fires_at_once():
    clock = ManualClock(start=50.0)
    fired = asyncio.Event()
    clock.call_at(40.0, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    await clock.sleep_until(10.0)      # in the past: returns at once


async def test_floor_wall():
    assert Clock(scale=1000).floor_wall(20.0, 0.05) == 50.0
    assert Clock(scale=10).floor_wall(20.0, 0.05) == 20.0
    assert ManualClock(scale=1000).floor_wall(20.0, 0.05) == 20.0


# ---------------------------------------------------------------------- scaled clock

async def test_scaled_timer_never_fires_before_its_protocol_time():
    clock = Clock(scale=1000.0)
    when = clock.now() + 50.0          # 50 ms of wall time
    seen = []
    done = asyncio.Event()

    def fire():
        seen.append(clock.now())
        done.set()

    clock.call_at(when, fire)
    await asyncio.wait_for(done.wait(), 5)
    assert seen[0] >= when


async def test_scaled_sleep_timeout_and_cancel():
    clock = Clock(scale=100.0)
    t0 = time.monotonic()
    await clock.sleep(5.0)             # 50 ms
    assert time.monotonic() - t0 >= 0.045
    with pytest.raises(TimeoutError):
        await clock.wait_for(asyncio.sleep(10), 2.0)
    fired = []
    clock.call_later(1.0, fired.append, 1).cancel()
    await asyncio.sleep(0.05)
    assert fired == []
