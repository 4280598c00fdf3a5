"""The long link over real sockets: framing, checks in order, violations, pushes, logout."""

from __future__ import annotations

import asyncio
import os

import pytest

from testbed.lab.clock import WHEEL_RESOLUTION_WALL_S, Clock, ManualClock
from testbed.wire import encode_frame, pb

from .helpers import HEADER, logged_in, raw_long, read_frame, wait_for

REPLY = 1_000_000_000


def ret_of(body: bytes) -> int:
    return pb.ErrorResponse.FromString(body).base.ret


async def test_heartbeat_vector_exact(lab):
    reader, writer = await raw_long(lab)
    writer.write(bytes.fromhex("0000001000100001000000060000000b"))
    reply = await asyncio.wait_for(reader.readexactly(16), 5)
    assert reply == bytes.fromhex("00000010001000013b9aca060000000b")
    writer.close()


async def test_frames_split_and_coalesced(lab):
    reader, writer = await raw_long(lab)
    stream = b"".join(encode_frame(6, seq) for seq in range(1, 6))
    # one byte at a time, then all five in one write
    for i in range(len(stream)):
        writer.write(stream[i:i + 1])
        await writer.drain()
    writer.write(stream)
    seqs = [(await read_frame(reader))[1] for _ in range(10)]
    assert seqs == [1, 2, 3, 4, 5] * 2
    writer.close()


async def test_replies_keep_the_order_of_requests_in_one_read(lab):
    """NOOPs (answered by the link itself) and an IDENTIFY (answered by the service, at once
    on the in-memory store) in one write, each way round: the replies come in the order of
    the requests."""
    s = await logged_in(lab, 0, long=False)
    identify = pb.IdentifyRequest(base=s.base()).SerializeToString()
    reader, writer = await raw_long(lab)
    writer.write(encode_frame(6, 1) + encode_frame(6, 2) + encode_frame(205, 3, identify))
    got = [await read_frame(reader) for _ in range(3)]
    assert [(f.cmd, f.seq) for f in got] == [(6 + REPLY, 1), (6 + REPLY, 2), (205 + REPLY, 3)]
    assert pb.IdentifyResponse.FromString(got[2].body).base.ret == 0
    # and a request before a NOOP: both answered (the NOTIFY the IDENTIFY earned, seq 0,
    # comes in between)
    writer.write(encode_frame(121, 4, pb.NewSyncRequest(base=s.base(), selector=7)
                              .SerializeToString()) + encode_frame(6, 5))
    seqs = set()
    while seqs != {4, 5}:
        f = await read_frame(reader)
        if f.seq:
            seqs.add(f.seq)
    writer.close()
    await s.close()


async def test_request_checks_in_order(lab):
    s = await logged_in(lab, 0, long=False)
    reader, writer = await raw_long(lab)
    # 1. unknown command, and the push-only NOTIFY as a request: -1 (before identify too)
    writer.write(encode_frame(999, 1) + encode_frame(24, 2, b"\0\0\0\1"))
    for seq, cmd in ((1, 999), (2, 24)):
        rcmd, rseq, body = await read_frame(reader)
        assert (rcmd, rseq, ret_of(body)) == (cmd + REPLY, seq, -1)
    # 2. before IDENTIFY any command but NOOP/IDENTIFY: -13, even with a bad body
    writer.write(encode_frame(121, 3, b"\xff\xff"))
    rcmd, rseq, body = await read_frame(reader)
    assert (rcmd, rseq, ret_of(body)) == (121 + REPLY, 3, -13)
    # IDENTIFY with a body that does not decode: -2
    writer.write(encode_frame(205, 4, b"\xff\xff\xff"))
    assert ret_of((await read_frame(reader))[2]) == -2
    # IDENTIFY with a wrong key: -13
    bad = pb.IdentifyRequest(base=pb.BaseRequest(uin=s.uin, session_key=os.urandom(16)))
    writer.write(encode_frame(205, 5, bad.SerializeToString()))
    assert ret_of((await read_frame(reader))[2]) == -13
    # a good IDENTIFY, then 3. an undecodable body: -2; the link stays open throughout
    good = pb.IdentifyRequest(base=s.base(), key_buf=pb.SyncKey(keys=[
        pb.KeyVal(key=k, val=10**6) for k in (1, 2, 3)]))
    writer.write(encode_frame(205, 6, good.SerializeToString()))
    rcmd, rseq, body = await read_frame(reader)
    assert (rcmd, rseq, ret_of(body)) == (205 + REPLY, 6, 0)
    writer.write(encode_frame(121, 7, b"\xff\xff\xff"))
    rcmd, rseq, body = await read_frame(reader)
    assert (rcmd, rseq, ret_of(body)) == (121 + REPLY, 7, -2)
    writer.write(encode_frame(6, 8))
    assert await read_frame(reader) == (6 + REPLY, 8, b"")
    writer.close()


@pytest.mark.parametrize("header", [
    HEADER.pack(16, 20, 1, 6, 1),             # header_len != 16
    HEADER.pack(16, 16, 2, 6, 1),             # version != 1
    HEADER.pack(15, 16, 1, 6, 1),             # packet_len < 16
    HEADER.pack((1 << 20) + 1, 16, 1, 6, 1),  # over the 1 MiB maximum
], ids=["header_len", "version", "short_len", "too_long"])
async def test_violation_closes_only_that_link(lab, header):
    other_r, other_w = await raw_long(lab)
    reader, writer = await raw_long(lab)
    writer.write(encode_frame(6, 1) + header)
    assert await read_frame(reader) == (6 + REPLY, 1, b"")   # the good frame before it
    assert await asyncio.wait_for(reader.read(), 5) == b""     # then FIN, nothing more
    other_w.write(encode_frame(6, 2))
    assert await read_frame(other_r) == (6 + REPLY, 2, b"")
    other_w.close()
    assert lab.long.violations == 1


async def test_push_then_sync_between_two_users(lab):
    alice = await logged_in(lab, 0)
    bob = await logged_in(lab, 1)
    await alice.sync()
    await bob.sync()
    got = asyncio.Event()
    bob.on_notify = lambda sel: got.set()
    alice_notified = len(alice.link.notifies)
    out = await alice.send_text(bob.username, "你好, bob")
    await asyncio.wait_for(got.wait(), 5)
    assert bob.link.notifies[-1] & 0x1
    items = await bob.sync()
    msgs = [m for m in bob.sync_state.messages if m.content == "你好, bob"]
    assert len(items) == 1 and len(msgs) == 1
    assert msgs[0].new_msg_id == out.new_msg_id and msgs[0].from_user == alice.username
    # the sender's own link caused it, so it gets no NOTIFY; its log has the message too.
    # (A NOTIFY to alice would have been pushed before her send was answered; a NOOP round
    # trip after it is the barrier.)
    await alice.link.noop()
    assert len(alice.link.notifies) == alice_notified
    await alice.sync()
    assert [m.content for m in alice.sync_state.messages][-1] == "你好, bob"
    # bob answers over the short link; alice is pushed on her long link
    await bob.send_text(alice.username, "hi alice", door="short")
    await wait_for(lambda: len(alice.link.notifies) > alice_notified)
    await alice.sync()
    assert alice.sync_state.messages[-1].content == "hi alice"
    for s in (alice, bob):
        await s.close()


async def test_notify_skips_only_the_link_that_sent(lab):
    """A user on two devices: a send through one device's link notifies the other device
    (and the receiver) but not the link the request came through."""
    phone = await logged_in(lab, 0)
    tablet = await logged_in(lab, 0, device_id=b"tablet-device-01")
    bob = await logged_in(lab, 1)
    for s in (phone, tablet, bob):
        await s.sync()
    before = len(phone.link.notifies), len(tablet.link.notifies), len(bob.link.notifies)
    await phone.send_text(bob.username, "from my phone")
    # a NOTIFY for the phone would have been written before the reply to its send
    assert len(phone.link.notifies) == before[0]
    await wait_for(lambda: len(tablet.link.notifies) > before[1]
                   and len(bob.link.notifies) > before[2])
    assert tablet.link.notifies[-1] & 0x1 and bob.link.notifies[-1] & 0x1
    for s in (phone, tablet, bob):
        await s.close()


async def test_identify_pushes_notify_for_missed_items(lab):
    bob = await logged_in(lab, 1, long=False)
    await bob.init()
    alice = await logged_in(lab, 0)
    await alice.send_text(bob.username, "while you were away")
    await bob.connect_long()
    await wait_for(lambda: bob.link.notifies)
    assert bob.link.notifies == [0x1]
    await bob.sync()
    assert bob.sync_state.messages[-1].content == "while you were away"
    # up to date: a fresh link gets no NOTIFY (it would follow the IDENTIFY reply at once,
    # before the barrier NOOP's reply)
    await bob.close()
    await bob.connect_long()
    await bob.link.noop()
    assert bob.link.notifies == []
    await bob.close()
    await alice.close()


async def test_offline_user_gets_250_messages_once_in_order(lab):
    alice = await logged_in(lab, 0)
    bob = await logged_in(lab, 1, long=False)
    await bob.init()
    before = len(bob.sync_state.messages)
    for i in range(250):
        await alice.send_text(bob.username, f"m{i:03d}")
    await bob.connect_long()
    pages = 0
    while True:
        req = pb.NewSyncRequest(base=bob.base(), selector=7, key_buf=bob.sync_state.key_buf())
        resp = await bob.long_call("NEWSYNC", req)
        bob.sync_state.apply(resp)
        pages += 1
        assert len(resp.cmd_list) <= 100
        if not resp.continue_flag:
            break
    got = [m.content for m in bob.sync_state.messages[before:]]
    assert got == [f"m{i:03d}" for i in range(250)]
    assert pages == 3
    # nothing twice: another sync returns nothing
    assert await bob.sync() == []
    await alice.close()
    await bob.close()


async def test_idempotent_resend(lab):
    alice = await logged_in(lab, 0)
    bob = await logged_in(lab, 1)
    await bob.sync()
    first = await alice.send_text(bob.username, "once", client_msg_id="retry-1")
    again = await alice.send_text(bob.username, "once", client_msg_id="retry-1", door="short")
    assert again.new_msg_id == first.new_msg_id and again.create_time == first.create_time
    await bob.sync()
    assert [m.content for m in bob.sync_state.messages].count("once") == 1
    await alice.close()
    await bob.close()


async def test_logout_closes_that_sessions_links_with_fin(lab):
    alice = await logged_in(lab, 0)
    other_device = await logged_in(lab, 0, device_id=b"other-device-001")   # same user
    await alice.logout()
    exc = await asyncio.wait_for(alice.link.closed, 5)
    assert exc is None          # a clean FIN, not a reset
    assert other_device.link.is_open
    await other_device.link.noop()
    with pytest.raises(Exception) as info:
        await alice.cgi("getprofile", pb.GetProfileRequest(base=alice.base()))
    assert getattr(info.value, "ret", None) == -13
    await other_device.close()


async def test_idle_link_is_closed(tmp_path):
    from tests.conftest import start_lab
    clock = ManualClock()
    lab = await start_lab(tmp_path, users=2, server_idle_s=20, clock=clock)
    try:
        reader, writer = await raw_long(lab)
        await clock.advance(19.0)
        writer.write(encode_frame(6, 1))      # bytes push the deadline to 39
        assert await read_frame(reader) == (6 + REPLY, 1, b"")
        await clock.advance(19.5)
        writer.write(encode_frame(6, 2))      # still open at 38.5; the deadline is 58.5
        assert await read_frame(reader) == (6 + REPLY, 2, b"")
        await clock.advance(19.75)
        assert lab.long.idle_closed == 0
        await clock.advance(0.25)             # 20 s after the last byte: closed with a FIN
        assert lab.long.idle_closed == 1
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        await lab.stop()


async def test_on_a_real_clock_an_idle_link_closes_at_its_timeout_never_before(tmp_path):
    """The idle timer is one of the clock's coarse timers: at k = 100 (20 protocol s are
    0.2 s of wall time, a bucket 0.4 protocol s) the close comes after 20 s of silence,
    never sooner, and a few milliseconds of wall time after it on a quiet machine."""
    from tests.conftest import start_lab
    clock = Clock(scale=100)
    lab = await start_lab(tmp_path, users=1, server_idle_s=20, clock=clock)
    try:
        reader, writer = await raw_long(lab)
        for seq in (1, 2, 3):        # each NOOP moves the deadline on
            sent = clock.now()        # before the server's stamp of the bytes
            writer.write(encode_frame(6, seq))
            assert await read_frame(reader) == (6 + REPLY, seq, b"")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        silent = clock.now() - sent
        assert silent >= 20.0
        # a bucket, and what a loaded machine's loops add (0.2 s of wall time)
        assert silent <= 20.0 + clock.to_protocol(WHEEL_RESOLUTION_WALL_S + 0.2)
        assert lab.long.idle_closed == 1
    finally:
        await lab.stop()


async def test_storm_of_malformed_connections(lab):
    rng = __import__("random").Random(7)
    h = lab.manifest.hosts["long.weixin.qq.com"]

    async def hostile(i: int) -> None:
        try:
            r, w = await asyncio.open_connection(h.addresses[i % 2], h.port)
            kind = i % 4
            if kind == 0:
                w.write(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))))
            elif kind == 1:
                w.write(HEADER.pack(0xFFFFFFFF, 16, 1, 6, 1))
            elif kind == 2:
                w.write(HEADER.pack(1000, 16, 1, 237, 1) + b"x" * 10)  # half a frame, then gone
            else:
                w.write(encode_frame(rng.randrange(1, 10**6), 1, os.urandom(30)))
            await w.drain()
            w.transport.abort() if i % 3 == 0 else w.close()
        except (ConnectionError, OSError):
            pass

    await asyncio.gather(*(hostile(i) for i in range(400)))
    alice = await logged_in(lab, 0)
    await alice.link.noop()
    bob = await logged_in(lab, 1)
    await alice.send_text(bob.username, "still serving")
    await bob.sync()
    assert bob.sync_state.messages[-1].content == "still serving"
    await alice.close()
    await bob.close()
