"""The phone against a real lab: `PhoneMetrics` counts its failures itself (nobody has to read
its log to know), and a stopped phone's heartbeat loop ends."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from testbed.client.phone import Phone
from testbed.client.session import Session

K = 1000.0   # back-off of 2-64 protocol s is 2-64 ms of wall time


async def _until(cond, timeout: float = 10.0) -> None:
    """Wait for a condition (not for a fixed time: the machine may be loaded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def quiet_phone_log():
    """The phone's INFO lines go nowhere: the counts below cannot come from them."""
    logger = logging.getLogger("testbed.client.phone")
    level, logger.level = logger.level, logging.WARNING
    yield
    logger.setLevel(level)


@pytest.mark.lab(users=2, time_scale=K)
async def test_failed_reconnects_are_counted(lab, quiet_phone_log):
    u = lab.manifest.users[0]
    phone = Phone(lab.manifest, u["username"], u["password"], policy="fixed:300")
    await phone.start()
    assert phone.metrics.reconnect_failures == 0
    await lab.long.close()           # the long-link host goes away: every reconnect fails
    stop = asyncio.Event()
    run = asyncio.ensure_future(phone.run(stop))
    try:
        await _until(lambda: phone.metrics.reconnect_failures >= 3)
    finally:
        stop.set()
        await phone.stop()           # ends the back-off loop too
        await asyncio.wait_for(run, 10)
    m = phone.metrics
    assert m.links_closed >= 1 and m.reconnects == 0
    # every failed attempt but the one under way when the phone stopped was counted
    assert m.reconnect_attempts - 1 <= m.reconnect_failures <= m.reconnect_attempts
    assert m.notify_sync_failures == 0


@pytest.mark.lab(users=2, time_scale=K)
async def test_failed_sync_after_notify_is_counted(lab, quiet_phone_log):
    a, b = lab.manifest.users[:2]
    phone = Phone(lab.manifest, a["username"], a["password"], sync_door="short")
    await phone.start()
    sender = Session(lab.manifest, b["username"], b["password"])
    await sender.login()
    await sender.connect_long()
    try:
        await lab.short.close()      # the short link goes away; the long link stays up
        await sender.send_text(a["username"], "are you there", door="long")
        # the NOTIFY arrives over the long link; its newsync (short link) fails
        await _until(lambda: phone.metrics.notify_sync_failures >= 1)
        assert phone.metrics.pushes >= 1
        assert phone.metrics.received == {}
        assert phone.metrics.reconnect_failures == 0
    finally:
        await sender.close()
        await phone.stop()


@pytest.fixture
def alarm():
    """Fail, not hang, if the event loop never yields again: SIGALRM raises in the loop."""
    def ring(*_):
        raise TimeoutError("the event loop did not get back control in time")

    old = signal.signal(signal.SIGALRM, ring)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.lab(users=1, time_scale=K)
async def test_stopping_the_phone_ends_its_heartbeat_loop(lab, alarm):
    """What Ctrl-C of `testbed emulate` does: the scenario stops its phones while their
    loops run; each loop must end (it used to spin, reconnecting a stopped phone)."""
    u = lab.manifest.users[0]
    phone = Phone(lab.manifest, u["username"], u["password"], policy="fixed:300")
    await phone.start()
    run = asyncio.ensure_future(phone.run(asyncio.Event()))   # nobody sets this one
    await asyncio.sleep(0.01)
    alarm(5.0)
    await phone.stop()
    await asyncio.wait_for(run, 2.0)
    assert phone.metrics.reconnects == 0
