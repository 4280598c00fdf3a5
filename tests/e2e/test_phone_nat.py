"""Phones behind a 300 s carrier NAT: the report's heartbeat argument, end to end."""

from __future__ import annotations

import asyncio

import pytest


from mocks.stats import read_stats
from testbed.client.phone import Phone
from testbed.lab.clock import Clock

from ..conftest import start_lab

K = 1000.0   # protocol seconds per wall second


async def _phones(lab, policies, **kw):
    clock = Clock(lab.manifest.time_scale)
    phones = []
    for i, policy in enumerate(policies):
        u = lab.manifest.users[i]
        p = Phone(lab.manifest, u["username"], u["password"], policy=policy, clock=clock, **kw)
        await p.start()
        phones.append(p)
    return clock, phones


async def _run_for(clock, phones, protocol_s):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in phones]
    await asyncio.sleep(clock.to_wall(protocol_s))
    stop.set()
    await asyncio.gather(*tasks)


async def test_fixed_270_survives_fixed_1680_dies_mars_settles(tmp_path):
    lab = await start_lab(tmp_path, users=4, time_scale=K, nat_timeout_s=300)
    try:
        clock, (short, long_, mars) = await _phones(lab, ["fixed:270", "fixed:1680", "mars"])
        sender = Phone(lab.manifest, lab.manifest.users[3]["username"],
                       lab.manifest.users[3]["password"], clock=clock, policy="fixed:270")
        await sender.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop)) for p in (short, long_, mars, sender)]
        # messages at a few moments, while 1680's link is surely black-holed for some
        sent = []
        for at in (700, 2000, 4000, 5500):
            await asyncio.sleep(clock.to_wall(at) - clock.now() / K)
            for p in (short, long_, mars):
                r = await sender.send_text(p.username, f"at {at}", door="short")
                sent.append((p, r.new_msg_id))
        await asyncio.sleep(clock.to_wall(7000) - clock.now() / K)
        stop.set()
        await asyncio.gather(*tasks)
        m270, m1680, mm = short.metrics, long_.metrics, mars.metrics
        assert m270.silent_deaths == 0 and m270.reconnects == 0
        assert m270.heartbeats_answered >= 20
        # 1680 s of quiet behind a 300 s NAT: every heartbeat finds a dead link
        assert m1680.heartbeats_sent >= 3
        assert m1680.silent_deaths == m1680.heartbeats_sent
        assert m1680.reconnects == m1680.silent_deaths
        # mars: probes 210, 270, fails at 330, settles at 250 < 300
        assert mars.policy.current < 300 and not mars.policy.probing
        assert mm.silent_deaths >= 1
        assert max(mm.intervals[-3:]) < 300
        # every message arrives, once
        for p, msg_id in sent:
            assert msg_id in p.metrics.received, f"{p.username} missed {msg_id}"
        for p in (short, long_, mars):
            assert p.metrics.duplicates == 0
            contents = [m.content for m in p.session.sync_state.messages if m.content.startswith("at ")]
            assert sorted(contents) == sorted(set(contents)) and len(contents) == 4
        assert lab.nat.stats.mappings_expired >= m1680.silent_deaths
        for p in (short, long_, mars, sender):
            await p.stop()
    finally:
        await lab.stop()


async def test_message_to_a_blackholed_link_is_delivered_once(tmp_path):
    lab = await start_lab(tmp_path, users=2, time_scale=K, nat_timeout_s=300)
    try:
        clock, (bob,) = await _phones(lab, ["fixed:1680"])
        alice_u = lab.manifest.users[1]
        alice = Phone(lab.manifest, alice_u["username"], alice_u["password"], clock=clock)
        await alice.start()
        stop = asyncio.Event()
        task = asyncio.create_task(bob.run(stop))
        await asyncio.sleep(clock.to_wall(400))        # bob's mapping is gone by now
        assert lab.nat.stats.mappings_expired >= 1
        r = await alice.send_text(bob.username, "into the black hole", door="short")
        await asyncio.sleep(clock.to_wall(100))
        assert r.new_msg_id not in bob.metrics.received    # the NOTIFY went nowhere
        await asyncio.sleep(clock.to_wall(1400))           # heartbeat at 1680, dies, reconnects
        stop.set()
        await task
        assert bob.metrics.silent_deaths == 1 and bob.metrics.reconnects == 1
        assert r.new_msg_id in bob.metrics.received and bob.metrics.duplicates == 0
        got = [m for m in bob.session.sync_state.messages if m.content == "into the black hole"]
        assert len(got) == 1
        await alice.stop()
        await bob.stop()
    finally:
        await lab.stop()


async def test_reconnect_after_server_closes_and_resend_is_idempotent(lab):
    clock = Clock(lab.manifest.time_scale)
    a, b = (Phone(lab.manifest, u["username"], u["password"], clock=clock)
            for u in lab.manifest.users[:2])
    await a.start()
    await b.start()
    stop = asyncio.Event()
    task = asyncio.create_task(b.run(stop))
    # the server drops every long link (as after a restart): b notices the FIN and reconnects
    for link in list(lab.long.links):
        link.close()
    await asyncio.sleep(0.3)
    assert b.metrics.links_closed >= 1 and b.metrics.reconnects >= 1
    # a's link is gone too: send_text reconnects and retries with the same client_msg_id
    r = await a.send_text(b.username, "after the restart")
    await asyncio.sleep(0.2)
    stop.set()
    await task
    assert r.new_msg_id in b.metrics.received
    assert (await read_stats(lab.store)).messages_stored == 1
    await a.stop()
    await b.stop()


@pytest.mark.lab(users=2, time_scale=100.0)
async def test_a_failed_sync_after_notify_is_retried(lab):
    """A server fault on the newsync a NOTIFY triggered: the phone tries again shortly, so
    the message still arrives, once, without waiting for a heartbeat."""
    from testbed.wire import ServiceError

    clock = Clock(lab.manifest.time_scale)
    a, b = (Phone(lab.manifest, u["username"], u["password"], clock=clock)
            for u in lab.manifest.users[:2])
    await a.start()
    await b.start()
    real = lab.service.newsync
    failures = []

    async def flaky(req, ctx):
        if not failures:
            failures.append("long" if ctx.origin is not None else "short")
            raise ServiceError(-1, "injected fault")
        return await real(req, ctx)

    lab.service.newsync = flaky
    r = await a.send_text(b.username, "despite the fault", door="short")
    deadline = asyncio.get_running_loop().time() + 5
    while r.new_msg_id not in b.metrics.received:
        assert asyncio.get_running_loop().time() < deadline, "the owed sync was not retried"
        await asyncio.sleep(0.02)
    assert failures == ["long"] and b.metrics.duplicates == 0
    await a.stop()
    await b.stop()
