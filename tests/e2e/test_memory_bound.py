"""Bounded memory per user and per lab: an upload storm against `testbed lab up` (a process
of its own, its RSS read from /proc) leaves the lab's memory within its media quota plus a
fixed allowance, however much the phones try to upload; a link that pipelines big requests
while the store is slow is not read past a few MiB."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading

import pytest

from mocks.long_link import MAX_QUEUED_BYTES
from mocks.state import MemoryStore
from mocks.stats import read_stats
from testbed.client.session import RequestFailed
from testbed.lab.addressing import LONG
from testbed.wire import Door, Ret, encode_frame, pb
from testbed.wire.frames import FrameDecoder

from ..conftest import start_lab
from .helpers import (limits_profile, logged_in, raw_long, read_frame, start_lab_up, wait_for,
                      wait_manifest)

MIB = 1 << 20
USERS = 8
USER_QUOTA, LAB_QUOTA = 4 * MIB, 16 * MIB
TRIES = 20            # 1 MiB uploads per user: 160 MiB in all, ten times the lab's quota
# what the lab may grow by besides the media it holds: the interpreter's own arenas, the
# frames in flight, the sync logs of the storm's messages
ALLOWANCE = 24 * MIB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _Manifest:   # what logged_in needs of a lab: its manifest
    def __init__(self, manifest) -> None:
        self.manifest = manifest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_an_upload_storm_stays_within_the_quotas(tmp_path):
    profile = limits_profile(tmp_path, media_quota_user_bytes=USER_QUOTA,
                             media_quota_lab_bytes=LAB_QUOTA)
    proc, path = start_lab_up(tmp_path, "--profile", profile, "--friends", "all", users=USERS)
    try:
        lab = _Manifest(await asyncio.to_thread(wait_manifest, proc, path))
        phones = [await logged_in(lab, i) for i in range(USERS)]
        names = [u["username"] for u in lab.manifest.users]
        # warm up every path the storm takes, then the baseline
        await phones[0].upload(names[1], b"w" * 1000)
        before = rss(proc.pid)

        async def storm(i: int) -> list[int]:
            rets = []
            for k in range(TRIES):
                blob = bytes([i, k]) * (MIB // 2)
                try:
                    await phones[i].upload(names[(i + 1) % USERS], blob)
                    rets.append(0)
                except RequestFailed as exc:
                    rets.append(exc.ret)
            return rets
        results = await asyncio.gather(*(storm(i) for i in range(USERS)))
        after = rss(proc.pid)
        stored = sum(r.count(0) for r in results)
        refused = sum(r.count(Ret.NOT_ALLOWED) for r in results)
        assert stored + refused == USERS * TRIES
        assert stored == LAB_QUOTA // MIB - 1        # the warm-up's 1,000 bytes took one
        assert all(r.count(0) <= USER_QUOTA // MIB for r in results)
        assert after - before <= LAB_QUOTA + ALLOWANCE, \
            f"RSS grew {(after - before) / MIB:.1f} MiB for {stored} MiB of media"
        for p in phones:
            await p.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        proc.stdout.close()
        proc.stderr.close()


class SlowStore(MemoryStore):
    """The memory store, whose request counting waits while `gate` is clear: a store that
    has stopped answering (a Redis under load), as every long-link request meets it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def count(self, counts):
        await self.gate.wait()
        await super().count(counts)


async def test_a_link_is_not_read_past_a_few_mib_of_waiting_requests(tmp_path):
    """48 uploads of 512 KiB pipelined on one identified link while the store is stuck: the
    server stops reading after MAX_QUEUED_BYTES of waiting bodies (before, it read 256 of
    them, up to 256 MiB for one link); once the store answers, every request is answered, in
    order."""
    store = SlowStore()
    lab = await start_lab(tmp_path, users=1, store=store)
    try:
        phone = await logged_in(lab, 0, long=False)
        h = lab.manifest.hosts[LONG]
        sock = socket.create_connection((h.addresses[0], h.port), timeout=30)
        decoder, pending = FrameDecoder(), []

        def replies(n: int) -> list:
            """The next `n` reply frames from the link (pushes, seq 0, left out)."""
            while len(pending) < n:
                data = sock.recv(65536)
                assert data, "the server closed the link"
                pending.extend(f for f in decoder.receive_data(data) if f.seq != 0)
            out = pending[:n]
            del pending[:n]
            return out
        sock.sendall(encode_frame(205, 1, pb.IdentifyRequest(base=phone.base())
                                  .SerializeToString()))
        [identified] = await asyncio.to_thread(replies, 1)
        assert pb.IdentifyResponse.FromString(identified.body).base.ret == 0
        [link] = lab.long.links
        # a stolen-looking session: each upload is refused (-13) once the store answers
        body = pb.UploadMediaRequest(base=pb.BaseRequest(uin=phone.uin,
                                                         session_key=os.urandom(16)),
                                     client_media_id="x", total_len=1 << 19,
                                     data=b"\1" * (1 << 19)).SerializeToString()
        frames = b"".join(encode_frame(9, 100 + i, body) for i in range(48))
        read_before = lab.long.bytes_in
        store.gate.clear()
        sender = threading.Thread(target=sock.sendall, args=(frames,), daemon=True)
        sender.start()
        await wait_for(lambda: link.reading_paused, 10)
        await asyncio.sleep(0.3)   # anything the server still read after pausing is in
        read = lab.long.bytes_in - read_before
        # at most one read past the bound (asyncio reads 256 KiB at a time) and the frame
        # it began
        assert MAX_QUEUED_BYTES <= read <= MAX_QUEUED_BYTES + (256 << 10) + len(body) + 16
        store.gate.set()
        await asyncio.to_thread(sender.join, 30)
        got = await asyncio.to_thread(replies, 48)
        assert [f.seq for f in got] == [100 + i for i in range(48)]
        assert {pb.UploadMediaResponse.FromString(f.body).base.ret for f in got} == \
            {Ret.SESSION_INVALID}
        sock.close()
        await phone.close()
    finally:
        store.gate.set()
        await lab.stop()
    assert lab.server_errors() == []


async def test_a_request_waiting_for_the_store_ends_with_its_link(tmp_path):
    """A newsync read while the store is stuck waits for it (its work goes on in a Task from
    that wait); the link closes meanwhile: the work is cancelled there, so when the store
    answers again the request is never served (not counted, no error)."""
    store = SlowStore()
    lab = await start_lab(tmp_path, users=1, store=store)
    try:
        phone = await logged_in(lab, 0, long=False)
        reader, writer = await raw_long(lab)
        writer.write(encode_frame(205, 1, pb.IdentifyRequest(base=phone.base())
                                  .SerializeToString()))
        assert (await read_frame(reader)).seq == 1
        [link] = lab.long.links
        served = (await read_stats(store)).requests[(Door.LONG, "NEWSYNC")]
        store.gate.clear()
        writer.write(encode_frame(121, 2, pb.NewSyncRequest(base=phone.base(), selector=7)
                                  .SerializeToString()))
        await wait_for(lambda: link.worker is not None and not link.queue, 10)
        writer.transport.abort()
        await wait_for(lambda: not lab.long.links, 10)
        store.gate.set()
        await asyncio.sleep(0.05)
        assert link.worker.cancelled()
        assert (await read_stats(store)).requests[(Door.LONG, "NEWSYNC")] == served
        await phone.close()
    finally:
        store.gate.set()
        await lab.stop()
    assert lab.server_errors() == []
