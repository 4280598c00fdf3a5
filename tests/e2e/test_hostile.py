"""The outside probe's attacks, again, against `testbed lab up` in a process of its own: each
may take what it takes while it lasts, but none holds a socket past its deadline. The lab's
open files are counted from /proc before, during and after.

The probe found (issue 12): slowloris held 350 connections for 20 s with no answer; 200
links dripping a byte a second were held for 20 s; a 413 read and discarded 9.3 GiB; 100 of
5,000 connects needed a SYN retry. Here the profile's deadlines are short and the lab runs
at k = 600 (the long link's 660 s idle timeout is 1.1 s, its frame deadline its 1 s floor),
so the whole probe is over in seconds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import socket
import ssl
import struct
import sys
import time

import pytest

from testbed.lab.addressing import LONG, SHORT
from testbed.wire import CGI_PREFIX, encode_frame, pb
from testbed.wire.dns import build_query, parse_response
from testbed.wire.frames import HEADER

from ..fuzz.wire import dns_udp
from .helpers import limits_profile, start_lab_up, tls_request_by_hand, wait_manifest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# short deadlines, so the attacks end in seconds; the TLS handshake's is longer, since the
# close_notify attack needs its handshakes done while the lab is flooded (at 0.5 s a loaded
# machine cut some)
LIMITS = dict(request_head_wall_s=0.5, body_grace_wall_s=0.5, drain_wall_s=0.5,
              tls_handshake_wall_s=2.0, tls_close_wall_s=0.5, max_connections_per_address=2000)
TIME_SCALE = 600
# the longest any attack may last once it stops sending: the long link's idle timeout
# (660 / 600 s) and the abort of a close its peer never reads (2 s), with room for a
# loaded machine
SETTLE_S = 15.0
TCP_ESTABLISHED = 1


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def held_until_closed(reader) -> None:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


def head(**headers) -> bytes:
    lines = [f"POST {CGI_PREFIX}newsync HTTP/1.1", f"Host: {SHORT}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Probe:
    """The attacks, each a coroutine that ends when the lab has let go of its sockets."""

    def __init__(self, manifest) -> None:
        self.m = manifest
        self.long = manifest.hosts[LONG]
        self.short = manifest.hosts[SHORT]
        self.tls = ssl.create_default_context(cafile=manifest.ca_cert)

    async def connect(self, host, port, n: int, **kw):
        return [await asyncio.open_connection(host.addresses[i % 2], port, **kw)
                for i in range(n)]

    async def idle_links(self, n: int) -> None:
        """Connections that never send a byte: the idle timeout (per address: the cap)."""
        conns = await self.connect(self.long, self.long.port, n)
        await asyncio.gather(*(held_until_closed(r) for r, _ in conns))

    async def dripping_links(self, n: int) -> None:
        """A frame a byte every 0.1 s (60 protocol s): each byte restarts the idle timeout,
        the frame deadline ends it."""
        conns = await self.connect(self.long, self.long.port, n)
        frame = encode_frame(237, 1, b"\x0a" * 200)

        async def drip(r, w):
            async def each():
                try:
                    for b in frame:
                        w.write(bytes([b]))
                        await asyncio.sleep(0.1)
                except (ConnectionError, OSError):
                    pass
            task = asyncio.ensure_future(each())
            await held_until_closed(r)
            task.cancel()
        await asyncio.gather(*(drip(r, w) for r, w in conns))

    async def unread_noops(self, n: int) -> None:
        """10,000s of pipelined NOOPs whose replies are never read."""
        burst = b"".join(encode_frame(6, i) for i in range(1, 20001))
        socks = []
        for i in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((self.long.addresses[i % 2], self.long.port))
            s.setblocking(False)
            socks.append(s)

        def push_until_blocked(s) -> None:
            sent = 0
            try:
                while sent < 20 * len(burst):
                    sent += s.send(burst)
            except (BlockingIOError, OSError):
                pass
        for s in socks:
            push_until_blocked(s)
        # never read: the server's close cannot flush, so it aborts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while loop.time() < deadline:
            alive = [s for s in socks if not _reset(s)]
            if not alive:
                break
            await asyncio.sleep(0.2)
        for s in socks:
            s.close()

    async def huge_frames(self, n: int) -> None:
        conns = await self.connect(self.long, self.long.port, n)
        for _, w in conns:
            w.write(HEADER.pack(0xFFFFFFFF, 16, 1, 237, 1))
        await asyncio.gather(*(held_until_closed(r) for r, _ in conns))

    async def garbage_frames(self, n: int) -> None:
        conns = await self.connect(self.long, self.long.port, n)
        for i, (_, w) in enumerate(conns):
            w.write(os.urandom(16 + i % 48))
            w.write_eof()
        await asyncio.gather(*(held_until_closed(r) for r, _ in conns))

    async def slowloris(self, n: int) -> None:
        conns = await self.connect(self.short, self.short.port, n)

        async def loris(r, w):
            async def lines():
                try:
                    w.write(f"POST {CGI_PREFIX}newsync HTTP/1.1\r\n".encode())
                    for i in range(200):
                        w.write(f"X-{i}: y\r\n".encode())
                        await asyncio.sleep(0.1)
                except (ConnectionError, OSError):
                    pass
            task = asyncio.ensure_future(lines())
            await held_until_closed(r)
            task.cancel()
        await asyncio.gather(*(loris(r, w) for r, w in conns))

    async def idle_short(self, n: int) -> None:
        conns = await self.connect(self.short, self.short.port, n)
        await asyncio.gather(*(held_until_closed(r) for r, _ in conns))

    async def gigabytes_declared(self, n: int) -> None:
        """4 GiB declared, sent as fast as loopback takes it: 413, a bounded drain, close."""
        async def one():
            r, w = await asyncio.open_connection(self.short.addresses[0], self.short.port)
            w.write(head(Content_Length=4 << 30))
            block = b"\0" * 65536

            async def flood():
                try:
                    while True:
                        w.write(block)
                        await w.drain()
                except (ConnectionError, OSError):
                    pass
            task = asyncio.ensure_future(flood())
            await held_until_closed(r)
            await asyncio.wait_for(task, SETTLE_S)
        await asyncio.gather(*(one() for _ in range(n)))

    async def stalled_handshakes(self, n: int) -> None:
        conns = await self.connect(self.short, self.short.tls_port, n)
        for _, w in conns[::2]:
            w.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # a ClientHello begun
        await asyncio.gather(*(held_until_closed(r) for r, _ in conns))

    async def no_close_notify(self, n: int) -> None:
        """TLS requests whose client never answers the server's close_notify (nor closes)."""
        await asyncio.gather(*(asyncio.to_thread(_tls_without_close_notify, self.short,
                                                 self.tls, head(Content_Length=0))
                               for _ in range(n)))

    async def forged_sessions(self, n: int) -> None:
        for _ in range(n):
            r, w = await asyncio.open_connection(self.short.addresses[0], self.short.port)
            body = pb.GetProfileRequest(base=pb.BaseRequest(
                uin=1, session_key=os.urandom(16))).SerializeToString()
            w.write(head(Content_Length=len(body)) + body)
            resp = await r.read()
            assert pb.GetProfileResponse.FromString(resp.partition(b"\r\n\r\n")[2]) \
                .base.ret == -13

    async def pointer_loops(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            query = build_query(LONG, i)[:12] + struct.pack(">H", 0xC00C) + b"\0\1\0\1"
            await loop.run_in_executor(None, dns_udp, self.m, query, 1.0)
        answer = await loop.run_in_executor(None, dns_udp, self.m,
                                            build_query(LONG, 9999), 1.0)
        assert list(parse_response(answer).addresses) == list(self.long.addresses)


def _reset(s: socket.socket) -> bool:
    """Whether the server has ended this socket that we never read (its unread replies
    stay in the buffer, so only the TCP state says so: not ESTABLISHED any more)."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED


def _tls_without_close_notify(host, ctx: ssl.SSLContext, request: bytes) -> None:
    for attempt in range(5):
        with socket.create_connection((host.addresses[0], host.tls_port),
                                      timeout=SETTLE_S) as s:
            try:
                _, incoming = tls_request_by_hand(s, ctx, request)
            except (OSError, ssl.SSLError):
                # the lab cut our handshake at its deadline (a flooded, loaded machine): the
                # attack is on the close_notify, so try again
                continue
            try:   # read to the end of TCP, answering nothing
                while data := s.recv(65536):
                    incoming.write(data)
            except OSError:
                pass
            return
    raise AssertionError("no TLS handshake with the lab completed in 5 tries")


async def test_the_probes_attacks_hold_nothing_past_their_deadlines(tmp_path):
    profile = limits_profile(tmp_path, **LIMITS)
    proc, path = start_lab_up(tmp_path, "--profile", profile, "--time-scale", str(TIME_SCALE),
                              users=2)
    try:
        manifest = await asyncio.to_thread(wait_manifest, proc, path)
        probe = Probe(manifest)
        await probe.forged_sessions(5)          # every door once, before the baseline
        await probe.pointer_loops(2)
        baseline = open_files(proc.pid)
        peak = [baseline]

        async def watch():
            while True:
                peak[0] = max(peak[0], open_files(proc.pid))
                await asyncio.sleep(0.05)
        watcher = asyncio.ensure_future(watch())
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(
            probe.idle_links(600), probe.dripping_links(200), probe.unread_noops(5),
            probe.huge_frames(50), probe.garbage_frames(100), probe.slowloris(350),
            probe.idle_short(200), probe.gigabytes_declared(4), probe.stalled_handshakes(50),
            probe.no_close_notify(10), probe.forged_sessions(50), probe.pointer_loops(100)),
            SETTLE_S + 30)
        took = time.monotonic() - t0
        watcher.cancel()
        # every attack was let go of by the lab: its open files are back where they were
        deadline = time.monotonic() + 5
        while open_files(proc.pid) > baseline + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        after = open_files(proc.pid)
        assert after <= baseline + 5, f"{after} open files, {baseline} before"
        assert peak[0] > baseline + 900, "the attacks did reach the lab"
        assert took < SETTLE_S + 20
        assert proc.poll() is None, "the lab is still up"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        proc.stdout.close()
        proc.stderr.close()


def _connects_completed(addr: str, port: int, n: int, within: float) -> int:
    """Open `n` non-blocking connects at once; how many finish their handshake in
    `within` seconds (a SYN dropped for a full accept queue is retried only after 1 s)."""
    socks, done = [], 0
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((addr, port))
            assert err in (0, errno.EINPROGRESS), err
            socks.append(s)
        pending = {s.fileno(): s for s in socks}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + within
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(50):
                s = pending.pop(fd)
                poller.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
        return done
    finally:
        for s in socks:
            s.close()


CONNECTS = 2000


def _state(pid: int) -> str:
    """A process's state letter (/proc/PID/stat: "T" once stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def somaxconn() -> int:
    """The kernel's cap on any accept queue (`net.core.somaxconn`: 4,096 since Linux 5.4)."""
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


@pytest.mark.parametrize("backlog", [4096, 100])
def test_a_burst_of_connects_fits_the_accept_queue(tmp_path, backlog):
    """2,000 connects while the lab accepts nothing (stopped with SIGSTOP): with the
    profile's backlog of 4,096 every handshake completes at once; with asyncio's old
    default of 100 only the queue's 101 do, the rest wait for a SYN retry (1 s)."""
    queue = min(backlog, somaxconn()) + 1   # Linux lets a queue hold one over its backlog
    if backlog > CONNECTS and queue <= CONNECTS:
        pytest.skip(f"net.core.somaxconn is {queue - 1}: the kernel caps the backlog below "
                    f"{CONNECTS}")
    profile = limits_profile(tmp_path, listen_backlog=backlog)
    proc, path = start_lab_up(tmp_path, "--profile", profile, users=1)
    try:
        manifest = wait_manifest(proc, path)
        host = manifest.hosts[LONG]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 5
            while _state(proc.pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)   # until it is stopped: from then on it accepts nothing
            assert _state(proc.pid) == "T"
            done = _connects_completed(host.addresses[0], host.port, CONNECTS, within=0.8)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        if queue > CONNECTS:
            assert done == CONNECTS
        else:
            assert done == queue
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        proc.stdout.close()
        proc.stderr.close()
