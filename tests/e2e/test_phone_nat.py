"""Phones behind a 300 s carrier NAT: the report's heartbeat argument, end to end.

The lab, its NAT and the phone share a `ManualClock`: the test moves time from one heartbeat
(or message) to the next and waits for what the NAT's rule says must follow: a NOOP sent
after no more than 300 s of silence is answered; one sent after more finds the mapping gone,
goes unanswered for the NOOP timeout, and the phone reconnects and syncs. Timing is exact,
so the intervals are checked to the second, and nothing depends on how loaded the machine is.
"""

from __future__ import annotations

import asyncio

import pytest

from mocks.stats import read_stats
from testbed.client.phone import SYNC_RETRY_S, Phone
from testbed.client.session import Session
from testbed.lab.clock import Clock, ManualClock

from ..conftest import start_lab
from .helpers import wait_for

NAT_S = 300.0
MESSAGES_AT = (700.0, 2100.0, 4000.0, 5500.0)
UNTIL = 7000.0


def last_activity(link) -> float:
    return max(link.last_tx, link.last_rx)


class Drive:
    """One phone (and a sender logged in on the short link) in a lab on a manual clock."""

    def __init__(self, lab, clock: ManualClock, phone: Phone, sender: Session) -> None:
        self.lab, self.clock, self.phone, self.sender = lab, clock, phone, sender
        self.sent: list[tuple[float, int, bool]] = []   # (time, msg id, link alive)
        self.beats: list[bool] = []                     # answered?
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    @classmethod
    async def start(cls, tmp_path, policy: str) -> "Drive":
        clock = ManualClock()
        lab = await start_lab(tmp_path, users=2, nat_timeout_s=NAT_S, clock=clock)
        u, v = lab.manifest.users[:2]
        phone = Phone(lab.manifest, u["username"], u["password"], policy=policy, clock=clock)
        await phone.start()
        sender = Session(lab.manifest, v["username"], v["password"], clock=clock)
        await sender.login()
        drive = cls(lab, clock, phone, sender)
        drive.task = asyncio.create_task(phone.run(drive.stop))
        return drive

    async def close(self) -> None:
        self.stop.set()
        await self.clock.advance(0)
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)
        await self.phone.stop()
        await self.lab.stop()

    async def heartbeat(self) -> bool:
        """Advance to the next heartbeat; wait for its answer or, after more silence than
        the NAT allows, for the NOOP timeout, the reconnect and its sync."""
        p, m = self.phone, self.phone.metrics
        link = p.session.link
        sent, answered, reconnects = m.heartbeats_sent, m.heartbeats_answered, m.reconnects
        due = link.last_tx + p.policy.interval()
        alive = due - last_activity(link) <= NAT_S
        await self.clock.advance_to(due)
        await wait_for(lambda: m.heartbeats_sent == sent + 1)
        if alive:
            await wait_for(lambda: m.heartbeats_answered == answered + 1)
        else:
            await self.clock.advance(p.policy.noop_timeout_s)
            await wait_for(lambda: m.reconnects == reconnects + 1 and not p.busy)
        self.beats.append(alive)
        return alive

    async def message(self, at: float) -> None:
        """Advance to `at` and send the phone a message over the short link: pushed and
        synced at once on a live link; on a dead one it waits for the next reconnect, its
        NOTIFY lost in the black hole (or never sent: after its idle timeout the server
        closed the link, and its FIN went into the hole too)."""
        p, nat = self.phone, self.lab.nat
        await self.clock.advance_to(at)
        silence = at - last_activity(p.session.link)
        holed = nat.stats.bytes_blackholed
        r = await self.sender.send_text(p.username, f"at {at:g}", door="short")
        self.sent.append((at, r.new_msg_id, silence <= NAT_S))
        if silence <= NAT_S:
            await wait_for(lambda: r.new_msg_id in p.metrics.received and not p.busy)
            return
        if silence <= self.lab.long.idle_timeout_s:   # the NOTIFY (20 bytes) was dropped
            await wait_for(lambda: nat.stats.bytes_blackholed >= holed + 20)
        assert r.new_msg_id not in p.metrics.received

    async def run(self, until: float = UNTIL, messages=MESSAGES_AT) -> None:
        pending = sorted(messages)
        while True:
            link = self.phone.session.link
            due = link.last_tx + self.phone.policy.interval()
            if pending and pending[0] < due:
                await self.message(pending.pop(0))
            elif due <= until:
                await self.heartbeat()
            else:
                break
        await self.clock.advance_to(until)

    def assert_every_message_once(self) -> None:
        p = self.phone
        assert len(self.sent) == len(MESSAGES_AT)
        for at, msg_id, _ in self.sent:
            assert msg_id in p.metrics.received, f"the message sent at {at} is missing"
        contents = [m.content for m in p.session.sync_state.messages
                    if m.content.startswith("at ")]
        assert sorted(contents) == sorted(f"at {at:g}" for at in MESSAGES_AT)
        assert p.metrics.duplicates == 0


async def test_fixed_270_stays_online_behind_a_300s_nat(tmp_path):
    d = await Drive.start(tmp_path, "fixed:270")
    try:
        await d.run()
        m = d.phone.metrics
        assert d.beats and all(d.beats)
        assert m.heartbeats_answered == m.heartbeats_sent == len(d.beats) >= 20
        assert m.intervals == pytest.approx([270.0] * len(d.beats))
        assert m.silent_deaths == 0 and m.reconnects == 0
        assert all(alive for _, _, alive in d.sent)     # every message pushed at once
        d.assert_every_message_once()
        assert d.lab.nat.stats.mappings_expired == 0
    finally:
        await d.close()


async def test_an_answered_heartbeat_leaves_no_timer_behind(tmp_path):
    """Each beat sets the phone's wait and its NOOP's deadline; once the NOOP is answered
    neither is left on the clock (a deadline left set woke the loop once more per NOOP, for
    nothing: at 3,000 phones and k = 2000 thousands of wake-ups a second)."""
    d = await Drive.start(tmp_path, "fixed:270")
    try:
        for _ in range(5):
            assert await d.heartbeat()
            answered = d.clock.timers()
            await d.clock.advance(d.phone.policy.noop_timeout_s + 1)   # past its deadline
            assert d.clock.timers() == answered
        assert d.phone.metrics.heartbeats_answered == 5
    finally:
        await d.close()


async def test_a_late_heartbeat_leaves_the_next_on_its_phase(tmp_path):
    """A loop busy for a moment sends the beat due in it late; the next is due an interval
    after the late one was due, not after it went out (phones delayed together would
    otherwise beat together from then on). The NAT sees a shorter gap, never a longer one;
    once the link carries something else, the interval counts from that again."""
    d = await Drive.start(tmp_path, "fixed:270")
    try:
        p, m, clock = d.phone, d.phone.metrics, d.clock
        link = p.session.link
        due = link.last_tx + 270.0
        await clock.stall_to(due + 20.0)          # the beat goes out 20 s late
        await wait_for(lambda: m.heartbeats_answered == 1)
        assert link.last_tx == due + 20.0
        await clock.advance_to(due + 270.0 - 1.0)
        assert m.heartbeats_sent == 1              # not early ...
        await clock.advance_to(due + 270.0)        # ... and back on its phase
        await wait_for(lambda: m.heartbeats_answered == 2)
        assert await d.heartbeat()                 # then a whole interval again
        assert m.intervals == pytest.approx([290.0, 250.0, 270.0])
        await clock.stall_to(link.last_tx + 270.0 + 5.0)   # late again, then a message
        await wait_for(lambda: m.heartbeats_answered == 4)
        await d.message(clock.now() + 100.0)
        assert await d.heartbeat()                 # from the message's sync, not the phase
        assert m.intervals == pytest.approx([290.0, 250.0, 270.0, 275.0, 270.0])
        assert m.silent_deaths == 0 and d.lab.nat.stats.mappings_expired == 0
    finally:
        await d.close()


async def test_fixed_1680_dies_at_every_heartbeat_and_loses_nothing(tmp_path):
    d = await Drive.start(tmp_path, "fixed:1680")
    try:
        await d.run()
        m = d.phone.metrics
        # 1680 s of quiet behind a 300 s NAT: every heartbeat finds a dead link
        assert d.beats == [False] * 4            # at 1680, 3380, 5080 and 6780
        assert m.heartbeats_sent == m.silent_deaths == m.reconnects == 4
        assert m.heartbeats_answered == 0
        assert not any(alive for _, _, alive in d.sent)   # every NOTIFY into the hole ...
        d.assert_every_message_once()                    # ... and every message delivered
        assert d.lab.nat.stats.mappings_expired >= 4
    finally:
        await d.close()


async def test_mars_probes_fails_once_and_settles_below_the_nat(tmp_path):
    d = await Drive.start(tmp_path, "mars")
    try:
        await d.run()
        m, policy = d.phone.metrics, d.phone.policy
        # probes 210 and 270 (answered), 330 (the NAT forgot: dies), then 270 - 20 = 250
        assert d.beats[:3] == [True, True, False] and all(d.beats[3:])
        assert m.intervals == pytest.approx([210.0, 270.0, 330.0]
                                            + [250.0] * (len(d.beats) - 3))
        assert m.silent_deaths == 1 and m.reconnects == 1
        assert policy.current == 250.0 and not policy.probing
        d.assert_every_message_once()
    finally:
        await d.close()


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
    await wait_for(lambda: b.metrics.links_closed >= 1 and b.metrics.reconnects >= 1)
    # a's link is gone too: send_text reconnects and retries with the same client_msg_id
    r = await a.send_text(b.username, "after the restart")
    await wait_for(lambda: r.new_msg_id in b.metrics.received)
    stop.set()
    await task
    assert (await read_stats(lab.store)).messages_stored == 1
    await a.stop()
    await b.stop()


async def test_a_failed_sync_after_notify_is_retried(tmp_path):
    """A server fault on the newsync a NOTIFY triggered: the phone tries again SYNC_RETRY_S
    later, so the message still arrives, once, without waiting for a heartbeat."""
    from testbed.wire import ServiceError

    clock = ManualClock()
    lab = await start_lab(tmp_path, users=2, clock=clock)
    try:
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
        await wait_for(lambda: failures and not b.busy)   # the sync failed; a retry is owed
        assert failures == ["long"] and r.new_msg_id not in b.metrics.received
        await clock.advance(SYNC_RETRY_S - 1)
        assert not b.busy and r.new_msg_id not in b.metrics.received
        await clock.advance(1)
        await wait_for(lambda: r.new_msg_id in b.metrics.received)
        assert b.metrics.duplicates == 0
        await a.stop()
        await b.stop()
    finally:
        await lab.stop()
    assert not lab.server_errors()
