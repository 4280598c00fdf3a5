"""The lab's frame and connection faults (`lab up --fault`), each with the outcome a user
would predict for the emulated phone: it resends with the same ids (the receiver gets a
message once), syncs what a late or lost NOTIFY announced, resumes a broken download, and
reconnects after a reset or a black hole. The lab and the phones share a `ManualClock`: the
test moves protocol time itself, so timeouts are exact and nothing depends on load."""

from __future__ import annotations

import asyncio

import pytest

from testbed.capture.packets import Segment, decode, read_capture
from testbed.client.phone import Phone
from testbed.client.scenarios import photo
from testbed.client.session import Session
from testbed.lab.clock import ManualClock
from testbed.lab.faults import FaultPlan
from testbed.wire import Door

from ..conftest import start_lab
from .helpers import wait_for

SEND_TIMEOUT_S = 20.0     # Phone.send_text's request timeout (protocol seconds)


class Bed:
    """A lab with faults, a sender and a receiver phone on one manual clock."""

    def __init__(self, lab, clock: ManualClock, a: Phone, b: Phone) -> None:
        self.lab, self.clock, self.a, self.b = lab, clock, a, b
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    @classmethod
    async def start(cls, tmp_path, *faults: str, policy: str = "fixed:270",
                    **lab_kw) -> "Bed":
        clock = ManualClock()
        lab = await start_lab(tmp_path, users=2, clock=clock,
                              faults=FaultPlan.parse(list(faults), seed=1), **lab_kw)
        u, v = lab.manifest.users[:2]
        a = Phone(lab.manifest, u["username"], u["password"], clock=clock, policy=policy)
        b = Phone(lab.manifest, v["username"], v["password"], clock=clock, policy=policy)
        await a.start()
        await b.start()
        return cls(lab, clock, a, b)

    def run_phones(self) -> None:
        """The phones' heartbeat loops (they reconnect when a link dies)."""
        self.tasks = [asyncio.create_task(p.run(self.stop)) for p in (self.a, self.b)]

    async def close(self) -> None:
        self.stop.set()
        await self.clock.advance(0)
        for t in self.tasks:
            await asyncio.wait_for(t, 10)
        for p in (self.a, self.b):
            await p.stop()
        await self.lab.stop()
        assert not self.lab.server_errors()

    def received(self, phone: Phone, content: str) -> list:
        return [m for m in phone.session.sync_state.messages if m.content == content]

    def applied(self) -> list[str]:
        return [f["fault"] for f in self.lab.faults.applied]


async def test_a_dropped_send_reply_is_resent_with_the_same_id_and_arrives_once(tmp_path):
    bed = await Bed.start(tmp_path, "drop:NEWSENDMSG#1")
    try:
        a, b = bed.a, bed.b
        send = asyncio.create_task(a.send_text(b.username, "only once"))
        # the lab stored it and pushed b (b syncs), but a's answer was dropped
        await wait_for(lambda: bed.received(b, "only once") and not b.busy)
        assert not send.done() and bed.applied() == ["drop:NEWSENDMSG#1"]
        await bed.clock.advance(SEND_TIMEOUT_S)          # a's request times out
        out = await asyncio.wait_for(send, 10)           # reconnected, resent, answered
        assert a.metrics.reconnects == 1
        [got] = bed.received(b, "only once")             # exactly once
        assert got.new_msg_id == out.new_msg_id
        await b.sync()
        assert len(bed.received(b, "only once")) == 1
        assert bed.lab.faults.frames[("long", "NEWSENDMSG")] == 2
    finally:
        await bed.close()


async def test_a_delayed_notify_brings_the_message_that_much_later(tmp_path):
    bed = await Bed.start(tmp_path, "delay:NOTIFY#1=30s")
    try:
        a, b = bed.a, bed.b
        await a.send_text(b.username, "late")
        await bed.clock.advance(29)
        await asyncio.sleep(0.05)
        assert b.metrics.pushes == 0 and not bed.received(b, "late")
        await bed.clock.advance(1)                       # the NOTIFY, then b's newsync
        await wait_for(lambda: bed.received(b, "late") and not b.busy)
        assert b.metrics.pushes == 1
    finally:
        await bed.close()


async def test_a_duplicated_reply_is_ignored_and_the_link_stays(tmp_path):
    bed = await Bed.start(tmp_path, "dup:NEWSENDMSG#1")
    try:
        a, b = bed.a, bed.b
        before = a.session.link.frames_received
        out = await a.send_text(b.username, "twice on the wire")
        await wait_for(lambda: a.session.link.frames_received == before + 2)
        await wait_for(lambda: bed.received(b, "twice on the wire") and not b.busy)
        assert a.session.link.is_open and a.metrics.reconnects == 0
        assert [m.new_msg_id for m in bed.received(b, "twice on the wire")] == [out.new_msg_id]
    finally:
        await bed.close()


async def test_a_truncated_download_reply_resumes_after_a_reconnect(tmp_path):
    bed = await Bed.start(tmp_path, "truncate:GETMSGIMG#1@100")
    try:
        a, b = bed.a, bed.b
        import random
        image = photo(random.Random(5), 150)              # two 64 KiB chunks and a bit
        up = await a.send_media(b.username, image)
        await wait_for(lambda: any(m.new_msg_id == up.new_msg_id
                                   for m in b.session.sync_state.messages) and not b.busy)
        got = await b.download(up.new_msg_id)             # cut at byte 100: reconnect, again
        assert got == image
        assert b.metrics.reconnects == 1
        assert bed.applied() == ["truncate:GETMSGIMG#1@100"]
        assert bed.lab.faults.applied[0]["offset"] == 100
    finally:
        await bed.close()


async def test_a_split_heartbeat_reply_is_one_frame_to_the_phone(tmp_path):
    out = tmp_path / "split.pcapng"
    bed = await Bed.start(tmp_path, "split:NOOP#3@7", record=out)
    try:
        a = bed.a
        bed.run_phones()
        for beat in range(1, 5):                          # both phones beat every 270 s
            await bed.clock.advance_to(270.0 * beat + 1)
            await wait_for(lambda: a.metrics.heartbeats_answered == beat
                           and bed.b.metrics.heartbeats_answered == beat)
        assert bed.applied() == ["split:NOOP#3@7"]
        for p in (a, bed.b):
            assert p.metrics.silent_deaths == 0 and p.metrics.reconnects == 0
    finally:
        await bed.close()
    # the capture shows the third NOOP reply as two segments: 7 bytes, then the other 9
    long_port = bed.lab.manifest.hosts["long.weixin.qq.com"].port
    with read_capture(out) as cap:
        segs = [s for s in map(decode, cap) if isinstance(s, Segment) and s.payload
                and s.sport == long_port]
    [first] = [s for s in segs if len(s.payload) == 7]
    after = [s for s in segs if s.dport == first.dport and s.index > first.index]
    assert len(after[0].payload) == 9
    assert (first.payload + after[0].payload)[:4] == (16).to_bytes(4, "big")   # one frame


async def test_a_reset_long_link_reconnects_at_once_and_loses_nothing(tmp_path):
    bed = await Bed.start(tmp_path, "reset:long#1@120s")
    try:
        a, b = bed.a, bed.b
        bed.run_phones()
        await bed.clock.advance_to(121)
        await wait_for(lambda: a.metrics.reconnects == 1 and not a.busy)
        assert a.metrics.links_closed == 1 and a.metrics.silent_deaths == 0
        assert b.metrics.reconnects == 0                  # #1: only the first connection
        await b.send_text(a.username, "after the reset", door="short")
        await wait_for(lambda: bed.received(a, "after the reset") and not a.busy)
        await bed.clock.advance_to(400)
        assert a.metrics.reconnects == 1
    finally:
        await bed.close()


async def test_a_black_holed_long_link_dies_at_the_next_heartbeat_and_syncs_what_it_owed(
        tmp_path):
    bed = await Bed.start(tmp_path, "blackhole:long#1@300s")
    try:
        a, b = bed.a, bed.b
        bed.run_phones()
        await bed.clock.advance_to(271)                   # the first NOOP: answered
        await wait_for(lambda: a.metrics.heartbeats_answered == 1)
        await bed.clock.advance_to(400)                   # the hole opened at 300
        sender = Session(bed.lab.manifest, b.username, bed.lab.manifest.users[1]["password"],
                         clock=bed.clock)
        await sender.login()
        await sender.send_text(a.username, "into the hole", door="short")
        await asyncio.sleep(0.05)
        assert not bed.received(a, "into the hole")       # its NOTIFY went into the hole
        await bed.clock.advance_to(541)                   # the second NOOP: no answer
        await wait_for(lambda: a.metrics.heartbeats_sent == 2)
        await bed.clock.advance(a.policy.noop_timeout_s)  # ...so the link is dead
        await wait_for(lambda: a.metrics.reconnects == 1 and not a.busy)
        assert a.metrics.silent_deaths == 1
        assert len(bed.received(a, "into the hole")) == 1  # the owed sync brought it
        assert b.metrics.silent_deaths == 0
    finally:
        await bed.close()


async def test_a_dropped_short_link_answer_is_resent_and_arrives_once(tmp_path):
    bed = await Bed.start(tmp_path, "drop:short.NEWSENDMSG#1")
    try:
        a, b = bed.a, bed.b
        send = asyncio.create_task(a.send_text(b.username, "over http", door="short"))
        await wait_for(lambda: bed.received(b, "over http") and not b.busy)
        assert not send.done()
        await bed.clock.advance(120)                      # the lab lets the connection go
        for _ in range(200):          # the phone backs off (protocol s) before it resends
            if send.done():
                break
            await asyncio.sleep(0.01)
            await bed.clock.advance(0.5)
        out = await asyncio.wait_for(send, 10)
        [got] = bed.received(b, "over http")
        assert got.new_msg_id == out.new_msg_id
        assert bed.lab.faults.frames[("short", "NEWSENDMSG")] == 2
    finally:
        await bed.close()


async def test_a_lost_short_link_sync_is_sent_again_and_brings_the_message_once(tmp_path):
    bed = await Bed.start(tmp_path, "drop:short.NEWSYNC#1")
    try:
        a, b = bed.a, bed.b
        b.sync_door = Door.SHORT                          # b syncs over HTTP
        await a.send_text(b.username, "fetched twice, kept once", door="short")
        sync = asyncio.create_task(b.sync())
        await wait_for(lambda: bed.lab.faults.frames.get(("short", "NEWSYNC")) == 1)
        await asyncio.sleep(0.05)
        assert not sync.done() and not bed.received(b, "fetched twice, kept once")
        await bed.clock.advance(120)                      # the lab lets the connection go
        await asyncio.wait_for(sync, 10)                  # ...and b asked again at once
        assert len(bed.received(b, "fetched twice, kept once")) == 1
        assert bed.applied() == ["drop:short.NEWSYNC#1"]
        assert b.metrics.duplicates == 0
    finally:
        await bed.close()


async def test_a_login_sent_again_after_its_answer_was_lost_leaves_one_session(tmp_path):
    """The lab logged the phone in but its answer was cut: the phone's second login (as the
    study's login phase sends it) replaces the first session, which it never learnt the
    key of, instead of leaving it on the server beside the new one."""
    lab = await start_lab(tmp_path, users=1, clock=ManualClock(),
                          faults=FaultPlan.parse(["truncate:short.MANUALAUTH#1@20"], seed=1))
    u = lab.manifest.users[0]
    session = Session(lab.manifest, u["username"], u["password"], clock=lab.clock)
    try:
        with pytest.raises(ConnectionError, match="before the whole answer"):
            await session.login()
        assert await lab.store.session_count() == 1     # handled: only the answer was lost
        await session.login()
        assert await lab.store.session_count() == 1
        assert [i.cmd_id for i in await session.init()]   # the key it holds is the one
    finally:
        await session.close()
        await lab.stop()
    assert not lab.server_errors()


async def test_the_plan_and_its_seed_are_in_the_capture(tmp_path):
    out = tmp_path / "faulted.pcapng"
    bed = await Bed.start(tmp_path, "delay:NOTIFY#*=1s..5s", record=out)
    try:
        await bed.a.send_text(bed.b.username, "x")
        await bed.clock.advance(5)
        await wait_for(lambda: bed.received(bed.b, "x") and not bed.b.busy)
    finally:
        await bed.close()
    with read_capture(out) as cap:
        meta = cap.meta
    assert meta["fault_plan"] == ["delay:NOTIFY#*=1s..5s"] and meta["seed"] == 1
    [applied] = bed.lab.faults.applied
    assert 1 <= applied["delay_s"] <= 5


@pytest.mark.parametrize("seed", [3, 4])
async def test_the_same_seed_faults_the_same_frames(tmp_path, seed):
    """Half of the NOOP replies dropped at random: two runs with one seed drop the same
    ones, and the phone dies and reconnects at the same heartbeats."""
    runs = []
    for i in range(2):
        clock = ManualClock()
        lab = await start_lab(tmp_path / f"{seed}-{i}", users=1, clock=clock,
                              faults=FaultPlan.parse(["drop:NOOP%50", f"seed={seed}"]))
        u = lab.manifest.users[0]
        p = Phone(lab.manifest, u["username"], u["password"], clock=clock, policy="fixed:270")
        await p.start()
        stop = asyncio.Event()
        task = asyncio.create_task(p.run(stop))
        try:
            for _ in range(8):
                sent, deaths = p.metrics.heartbeats_sent, p.metrics.silent_deaths
                await clock.advance_to(p.session.link.last_tx + 270)
                await wait_for(lambda: p.metrics.heartbeats_sent == sent + 1)
                await clock.advance(1)
                if p.metrics.heartbeats_answered + deaths < p.metrics.heartbeats_sent:
                    await clock.advance(p.policy.noop_timeout_s)
                    await wait_for(lambda: p.metrics.silent_deaths == deaths + 1
                                   and p.metrics.reconnects == deaths + 1 and not p.busy)
            runs.append(([a["n"] for a in lab.faults.applied], p.metrics.silent_deaths))
        finally:
            stop.set()
            await clock.advance(0)
            await asyncio.wait_for(task, 10)
            await p.stop()
            await lab.stop()
    assert runs[0] == runs[1]
    assert 0 < runs[0][1] < 8               # some dropped, not all


def test_lab_up_fault_records_the_plan_and_says_what_it_did(tmp_path):
    """`testbed lab up --fault ... --record` as a user runs it: the plan and the seed in the
    capture's comment and on stderr, each fault applied listed when the lab stops; a bad
    spec is a one-line error and exit 2."""
    import signal
    import subprocess
    import sys

    from .helpers import start_lab_up, wait_manifest

    bad = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--manifest",
                          str(tmp_path / "x.json"), "--fault", "drop:NEWSYNK#1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "did you mean 'NEWSYNC'" in bad.stderr
    assert "Traceback" not in bad.stderr

    out = tmp_path / "lab.pcapng"
    proc, manifest_path = start_lab_up(tmp_path, "--time-scale", "100", "--record", str(out),
                                       "--fault", "drop:NOOP#1", "--fault", "seed=42")
    try:
        manifest = wait_manifest(proc, manifest_path)

        async def beat():
            u = manifest.users[0]
            s = Session(manifest, u["username"], u["password"])
            await s.login()
            await s.connect_long()
            with pytest.raises(asyncio.TimeoutError):
                await s.link.noop(timeout=100)           # dropped: 1 wall second at k = 100
            await s.link.noop(timeout=1000)              # the second is answered
            await s.close()
        asyncio.run(beat())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err                   # stopped by Ctrl-C
    said = " ".join(err.split())
    assert "faults on what the lab sends: drop:NOOP#1 (seed 42)" in said
    assert "fault applied: drop:NOOP#1 at" in said and "(long.NOOP #1)" in said
    with read_capture(out) as cap:
        assert (cap.meta["fault_plan"], cap.meta["seed"]) == (["drop:NOOP#1"], 42)


def _stable(views: list[dict]) -> list[dict]:
    """Phone views without what differs from run to run of one seeded scenario on a fresh
    lab: the ids the phones pick, the server's timestamps, the CDN keys it draws, and its
    message ids (a resent send draws one before its first send's claim answers it, so the
    ids after it are one higher; each phone's ids must still be distinct)."""
    import json

    out = json.loads(json.dumps(views))
    for v in out:
        ids = [m.pop("new_msg_id") for m in v["messages"]]
        assert len(set(ids)) == len(ids), ids
        for m in v["messages"]:
            m.pop("client_msg_id", None)
            m.pop("create_time", None)
            m.get("media", {}).pop("cdn_url", None)
    return out


def _emulate_storyboard_under(tmp_path, plan: list[str]) -> tuple[dict, int, str]:
    """`testbed lab up --fault ...` and `testbed emulate storyboard --views --json` against
    it, as the storyboard golden was recorded; Ctrl-C to the lab: (emulate's result, its
    exit status, the lab's stderr). Each fault applied is checked on the lab's stderr."""
    import json
    import signal
    import subprocess
    import sys

    from testbed.replay.golden import GOLDENS

    from .helpers import start_lab_up, wait_manifest

    g = GOLDENS["storyboard"]
    proc, manifest_path = start_lab_up(
        tmp_path, "--time-scale", f"{g.time_scale:g}",
        *[a for spec in plan + ["seed=9"] for a in ("--fault", spec)], users=g.users)
    try:
        wait_manifest(proc, manifest_path)
        run = subprocess.run([sys.executable, "-m", "testbed.cli", "emulate", g.scenario,
                              "--manifest", str(manifest_path), "--clients", str(g.clients),
                              "--seed", str(g.seed), "--views", "--json"],
                             capture_output=True, text=True, timeout=300)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    said = " ".join(err.split())
    for spec in plan:
        assert f"fault applied: {spec} at" in said, (spec, err)
    assert run.stdout.strip(), run.stderr
    return json.loads(run.stdout), run.returncode, err


def _recorded_storyboard_views() -> list[dict]:
    from pathlib import Path

    from testbed.replay import load_sessions
    from testbed.replay.golden import GOLDENS
    from testbed.replay.views import recorded_views

    golden = Path(__file__).resolve().parents[2] / "captures" / "golden"
    return recorded_views(load_sessions(str(golden / GOLDENS["storyboard"].file)))


def test_the_emulator_recovers_from_every_frame_fault_as_a_user_runs_it(tmp_path):
    """One fault of each frame kind in one storyboard run: the lost send is resent with its
    id (stored once), the late NOTIFY and the duplicated sync reply change nothing, the
    truncated download resumes after a reconnect, the split NOOP reply is read whole, the
    late short-link sync answer is waited for. Every step passes, and the phones end up showing
    what they show with no fault at all (the golden's replies)."""
    plan = ["drop:NEWSENDMSG#1", "delay:NOTIFY#2=10s", "dup:NEWSYNC#3",
            "truncate:GETMSGIMG#1@100", "split:NOOP#2@7", "delay:short.NEWSYNC#1=30s"]
    result, rc, _ = _emulate_storyboard_under(tmp_path, plan)
    assert rc == 0 and result["ok"] and result["errors"] == [], result["steps"]
    m = result["metrics"]
    # the send's and the download's links were given up: one reconnect each
    assert (m["reconnects"], m["silent_deaths"], m["duplicates"]) == (2, 0, 0)
    live = sorted(result["views"], key=lambda v: v["uin"])
    assert _stable(live) == _stable(_recorded_storyboard_views())


def test_the_emulator_recovers_from_a_reset_and_a_black_hole_as_a_user_runs_it(tmp_path):
    """A reset of one phone's link and a black hole on the other's, mid-session: the first
    reconnects at once and starts its heartbeat anew (2 NOOPs in the 960 s, not 3), the
    second reconnects at its next unanswered heartbeat (a silent death): the two steps that
    fail, as a user predicts; nothing is lost."""
    # A fault's time counts from the link's opening, the heartbeat phase's from its own start,
    # X protocol s later (the earlier steps: ~20-40 s here, more on a busy machine). With NOOPs
    # at 300, 600, 900 s of the phase, the reset must land after the first NOOP and late
    # enough that the renewed heartbeat beats only once more before 960 s: 360 < 500 - X < 600
    # for X up to 140 s (at 400 s, an X over 40 s gave the reset phone a third NOOP).
    plan = ["reset:long#1@500s", "blackhole:long#2@600s"]
    result, rc, _ = _emulate_storyboard_under(tmp_path, plan)
    failed = [(s["name"], s["detail"]) for s in result["steps"] if not s["ok"]]
    assert failed == [("heartbeat every 300 s", "2..3 NOOPs per phone in 960 s"),
                      ("heartbeats answered", "4 of 5 heartbeats answered, 1 silent deaths")], \
        result["steps"]
    assert rc == 1 and result["errors"] == []
    m = result["metrics"]
    assert (m["reconnects"], m["silent_deaths"], m["duplicates"]) == (2, 1, 0)
    live = sorted(result["views"], key=lambda v: v["uin"])
    assert _stable(live) == _stable(_recorded_storyboard_views())
