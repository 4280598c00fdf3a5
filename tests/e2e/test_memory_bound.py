"""Bounded memory per user and per lab: an upload storm against `testbed lab up` (a process
of its own, its RSS read from /proc) leaves the lab's memory within its media quota plus a
fixed allowance, however much the phones try to upload."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from testbed.client.session import RequestFailed
from testbed.wire import Ret

from .helpers import limits_profile, logged_in, start_lab_up, wait_manifest

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
