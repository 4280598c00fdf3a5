"""Deadlines and caps for clients that never finish (docs/robustness.md): each test holds a
connection past one of the profile's limits and checks that the lab lets go of it.

The long link's deadlines are protocol time, so its tests move a `ManualClock`; the short
link's and the TLS port's are wall time (they guard sockets, not protocol behaviour), so
their tests set them to a fraction of a second and wait for the server's close. Every wait
has a guard (a few seconds); without the limit the server would hold on for minutes or for
ever (aiohttp's own keep-alive is an hour; asyncio's TLS deadlines 60 s and 30 s).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest

from testbed.lab.addressing import LONG, SHORT, lab_host_address
from testbed.lab.clock import ManualClock
from testbed.wire import CGI_PREFIX, encode_frame

from ..conftest import start_lab
from .helpers import limits_profile, read_frame, tls_request_by_hand, wait_for

REPLY = 1_000_000_000
GUARD_S = 5.0   # how long a test waits for something the limit should bring in well under


async def closed_within(reader, seconds: float) -> float:
    """Wall seconds until the server ends the stream (EOF or reset); fails past `seconds`."""
    t0 = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    except (ConnectionError, OSError):
        pass
    return time.monotonic() - t0


def source(lab, octet: int):
    """A source address of the lab's /24 (None on a one-address lab: the kernel picks)."""
    return lab_host_address(lab.manifest.dns_address, octet)


def short_addr(lab, tls: bool = False) -> tuple[str, int]:
    h = lab.manifest.hosts[SHORT]
    return h.addresses[0], h.tls_port if tls else h.port


def head(path: str = "newsync", **headers) -> bytes:
    lines = [f"POST {CGI_PREFIX}{path} HTTP/1.1", f"Host: {SHORT}",
             "Content-Type: application/octet-stream",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


async def response(reader, timeout: float = GUARD_S) -> bytes:
    """What the server sent until it closed: a client still sending when the server closes
    may see a reset after the response, as with any HTTP server that stops reading."""
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            got += chunk
    except (ConnectionError, OSError):
        pass
    return got


# ------------------------------------------------------------------ short link and TLS port

async def test_slowloris_heads_are_cut_at_the_head_deadline(tmp_path):
    """Connections that send a request head a line at a time, for ever, and one that sends
    nothing at all: each is closed by the head deadline, counted from the accept."""
    lab = await start_lab(tmp_path, users=1,
                          profile=limits_profile(tmp_path, request_head_wall_s=0.5))
    try:
        addr, port = short_addr(lab)
        opened = []
        for _ in range(30):
            r, w = await asyncio.open_connection(addr, port)
            w.write(f"POST {CGI_PREFIX}newsync HTTP/1.1\r\nHost: {SHORT}\r\n".encode())
            opened.append((r, w))
        silent_r, silent_w = await asyncio.open_connection(addr, port)
        me = opened[0][1].get_extra_info("sockname")[0]
        assert lab.short.address_cap.held(me) == 31

        async def drip(w) -> None:
            try:
                for i in range(100):
                    w.write(f"X-Drip-{i}: y\r\n".encode())
                    await asyncio.sleep(0.05)
            except (ConnectionError, OSError):
                pass
        dripping = [asyncio.ensure_future(drip(w)) for _, w in opened]
        waits = await asyncio.gather(*(closed_within(r, GUARD_S) for r, _ in opened),
                                     closed_within(silent_r, GUARD_S))
        assert max(waits) < GUARD_S
        await wait_for(lambda: lab.short.address_cap.held(me) == 0, GUARD_S)
        for task in dripping:
            task.cancel()
        # the server still answers a request sent at once
        r, w = await asyncio.open_connection(addr, port)
        w.write(head(Content_Length=0))
        assert status_of(await asyncio.wait_for(r.read(), GUARD_S)) == 200
    finally:
        await lab.stop()


async def test_a_tls_handshake_must_finish_by_its_deadline(tmp_path):
    lab = await start_lab(tmp_path, users=1,
                          profile=limits_profile(tmp_path, tls_handshake_wall_s=0.5))
    try:
        addr, port = short_addr(lab, tls=True)
        silent = await asyncio.open_connection(addr, port)
        partial = await asyncio.open_connection(addr, port)
        partial[1].write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # a ClientHello begun
        t0 = time.monotonic()
        for r, _ in (silent, partial):
            await closed_within(r, GUARD_S)
        assert 0.4 < time.monotonic() - t0 < GUARD_S
    finally:
        await lab.stop()


def _tls_request_without_close_notify(addr: str, port: int, cafile: str, request: bytes):
    """A TLS client by hand (ssl.MemoryBIO): handshake, one request, read the response and
    the server's close_notify, then never answer it and never close. Returns (response,
    wall seconds from the server's close_notify until it dropped the TCP connection)."""
    sock = socket.create_connection((addr, port), timeout=GUARD_S)
    try:
        tls, incoming = tls_request_by_hand(sock, ssl.create_default_context(cafile=cafile),
                                            request)
        response = b""
        while True:
            try:
                data = tls.read(65536)
            except ssl.SSLWantReadError:
                data = None
            except ssl.SSLZeroReturnError:
                data = b""
            if data == b"":   # the server's close_notify: we stay silent
                break
            if data:
                response += data
                continue
            raw = sock.recv(65536)
            if not raw:
                raise AssertionError("the server closed TCP without a close_notify")
            incoming.write(raw)
        notified = time.monotonic()
        try:
            while sock.recv(65536):
                pass
        except (ConnectionError, OSError):
            pass
        return response, time.monotonic() - notified
    finally:
        sock.close()


async def test_the_tls_port_does_not_wait_long_for_a_close_notify(tmp_path):
    lab = await start_lab(tmp_path, users=1,
                          profile=limits_profile(tmp_path, tls_close_wall_s=0.5))
    try:
        addr, port = short_addr(lab, tls=True)
        response, held = await asyncio.to_thread(
            _tls_request_without_close_notify, addr, port, lab.manifest.ca_cert,
            head(Content_Length=0))
        assert status_of(response) == 200
        assert 0.3 < held < GUARD_S   # it waited for ours a while, as it should, then let go
    finally:
        await lab.stop()


async def test_a_body_must_come_at_the_minimum_rate(tmp_path):
    """Slower than the minimum rate after the grace period: 408. A client above the rate
    (but slower than one segment) is served."""
    lab = await start_lab(tmp_path, users=1, profile=limits_profile(
        tmp_path, body_min_rate=1000, body_grace_wall_s=1.0, drain_wall_s=0.3))
    try:
        addr, port = short_addr(lab)

        async def send(total: int, step: int, pause: float) -> tuple[bytes, float]:
            r, w = await asyncio.open_connection(addr, port)
            w.write(head(Content_Length=total))
            t0 = time.monotonic()

            async def body() -> None:
                try:
                    for _ in range(0, total, step):
                        w.write(b"\0" * step)
                        await asyncio.sleep(pause)
                except (ConnectionError, OSError):
                    pass
            task = asyncio.ensure_future(body())
            resp = await response(r, GUARD_S + 3)
            task.cancel()
            return resp, time.monotonic() - t0
        # 400 bytes every 0.1 s: 4,000 B/s, four times the minimum (a stall of the loop
        # of up to 1.4 s, the grace plus the first chunk's due, cannot make it late)
        fast, _ = await send(4000, 400, 0.1)
        assert status_of(fast) == 200
        # 50 bytes every 0.2 s: 250 B/s; behind from about 1.4 s (grace + bytes / rate)
        slow, took = await send(5000, 50, 0.2)
        assert status_of(slow) == 408 and took < GUARD_S
        assert lab.short.status_counts[408] == 1
    finally:
        await lab.stop()


async def test_a_chunked_body_trickled_for_ever_gets_an_answer(tmp_path):
    lab = await start_lab(tmp_path, users=1, profile=limits_profile(
        tmp_path, body_min_rate=1000, body_grace_wall_s=0.3, drain_wall_s=0.3))
    try:
        addr, port = short_addr(lab)

        async def chunked(size: int, pause: float) -> tuple[bytes, int]:
            r, w = await asyncio.open_connection(addr, port)
            w.write(head(Transfer_Encoding="chunked"))
            sent = 0

            async def body() -> None:
                nonlocal sent
                try:
                    while True:   # never the last chunk
                        w.write(b"%x\r\n" % size + b"\0" * size + b"\r\n")
                        sent += size
                        await (asyncio.sleep(pause) if pause else w.drain())
                except (ConnectionError, OSError):
                    pass
            task = asyncio.ensure_future(body())
            resp = await response(r, GUARD_S + 3)
            task.cancel()
            return resp, sent
        # slow: one byte every 50 ms is 20 B/s, far below the minimum: 408
        slow, _ = await chunked(1, 0.05)
        assert status_of(slow) == 408
        # fast: 64 KiB chunks as fast as the socket takes them: 413 once past 1 MiB
        fast, sent = await chunked(65536, 0)
        assert status_of(fast) == 413
    finally:
        await lab.stop()


async def test_a_refused_body_is_drained_a_bounded_number_of_bytes(tmp_path):
    """A 4 GiB declaration sent as fast as loopback goes: the 413 comes first, then the
    server reads at most drain_max_bytes of it and closes (before the limit it read and
    discarded 9.3 GiB in 5.9 s)."""
    limit = 256 * 1024
    lab = await start_lab(tmp_path, users=1, profile=limits_profile(
        tmp_path, drain_max_bytes=limit, drain_wall_s=2))
    try:
        addr, port = short_addr(lab)
        r, w = await asyncio.open_connection(addr, port)
        w.write(head(Content_Length=4 << 30))
        sent = 0
        block = b"\0" * 65536

        async def flood() -> None:
            nonlocal sent
            try:
                while True:
                    w.write(block)
                    await w.drain()
                    sent += len(block)
            except (ConnectionError, OSError):
                pass
        task = asyncio.ensure_future(flood())
        t0 = time.monotonic()
        resp = await response(r)
        took = time.monotonic() - t0
        await asyncio.wait_for(task, GUARD_S)
        assert status_of(resp) == 413
        assert limit <= lab.short.drained_bytes <= limit + 256 * 1024
        # what the client got into the connection at all: the drain plus socket buffers
        assert sent < 64 << 20 and took < GUARD_S
    finally:
        await lab.stop()


async def test_the_per_address_cap_on_the_short_link(tmp_path):
    lab = await start_lab(tmp_path, users=1, profile=limits_profile(
        tmp_path, max_connections_per_address=2))
    try:
        a, b = source(lab, 201), source(lab, 202)
        if a is None:
            pytest.skip("a one-address lab: no second source address")
        addr, port = short_addr(lab)
        held = [await asyncio.open_connection(addr, port, local_addr=(a, 0)) for _ in range(2)]
        for _, w in held:
            w.write(head(Content_Length=10))   # and never the body
        over_r, _ = await asyncio.open_connection(addr, port, local_addr=(a, 0))
        assert await closed_within(over_r, GUARD_S) < GUARD_S
        assert lab.short.address_cap.refused == 1
        # another address is served meanwhile
        r, w = await asyncio.open_connection(addr, port, local_addr=(b, 0))
        w.write(head(Content_Length=0))
        assert status_of(await asyncio.wait_for(r.read(), GUARD_S)) == 200
        # one of a's ends: a may connect again
        held[0][1].transport.abort()
        await wait_for(lambda: lab.short.address_cap.held(a) == 1, GUARD_S)
        r, w = await asyncio.open_connection(addr, port, local_addr=(a, 0))
        w.write(head(Content_Length=0))
        assert status_of(await asyncio.wait_for(r.read(), GUARD_S)) == 200
    finally:
        await lab.stop()


# ------------------------------------------------------------------ long link (protocol time)

async def raw_long_from(lab, local: str | None = None):
    h = lab.manifest.hosts[LONG]
    return await asyncio.open_connection(h.addresses[0], h.port,
                                         local_addr=(local, 0) if local else None)


async def test_a_frame_begun_must_be_finished_by_the_frame_deadline(tmp_path):
    """Links dripping one byte per protocol second (the probe held 200 for ever: each byte
    restarts the idle timeout); now each is closed 30 protocol s after its frame began, while
    a link that sends nothing keeps its 660 s idle timeout."""
    clock = ManualClock()
    lab = await start_lab(tmp_path, users=1, clock=clock,
                          profile=limits_profile(tmp_path, frame_timeout_s=30))
    try:
        srv = lab.long
        drippers = [await raw_long_from(lab) for _ in range(20)]
        idle_r, idle_w = await raw_long_from(lab)
        frame = encode_frame(121, 1, b"\x10\x07" * 50)   # 116 bytes: never all sent
        for second in range(40):
            want = srv.bytes_in + len(drippers)
            for _, w in drippers:
                w.write(frame[second:second + 1])
            await wait_for(lambda: srv.bytes_in >= want or srv.frame_timeouts, GUARD_S)
            if second < 29:
                assert srv.frame_timeouts == 0
            await clock.advance(1.0)
            if srv.frame_timeouts:
                break
        assert clock.now() == 30.0 and srv.frame_timeouts == len(drippers)
        for r, _ in drippers:
            assert await closed_within(r, GUARD_S) < GUARD_S
        # the silent link is still open and served; it closes at its idle timeout
        idle_w.write(encode_frame(6, 9))
        assert await read_frame(idle_r) == (6 + REPLY, 9, b"")
        await clock.advance(659.0)
        assert srv.idle_closed == 0
        await clock.advance(1.0)
        assert srv.idle_closed == 1
        assert await closed_within(idle_r, GUARD_S) < GUARD_S
        assert srv.frame_timeouts == len(drippers) and len(srv.links) == 0
    finally:
        await lab.stop()


async def test_a_peer_that_never_reads_is_aborted_when_its_link_closes(tmp_path):
    """10,000s of pipelined NOOPs never read: the server stops reading the link (its
    replies back up), and at the idle timeout the close that cannot flush becomes an abort,
    so the socket is not held for ever."""
    clock = ManualClock()
    lab = await start_lab(tmp_path, users=1, clock=clock, server_idle_s=20)
    try:
        srv = lab.long
        h = lab.manifest.hosts[LONG]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # and it is never read
        sock.connect((h.addresses[0], h.port))
        burst = b"".join(encode_frame(6, i) for i in range(1, 20001))

        def pipeline() -> int:
            """NOOPs until the server stops reading (our send blocks): how many sent."""
            sock.settimeout(1.0)
            sent = 0
            try:
                while sent < 1 << 30:
                    sock.sendall(burst)
                    sent += len(burst) // 16
            except (TimeoutError, OSError):
                pass
            return sent
        try:
            sent = await asyncio.to_thread(pipeline)
            assert sent >= 10000
            assert any(link.reading_paused for link in srv.links)
            await clock.advance(21.0)
            assert srv.idle_closed == 1
            await wait_for(lambda: srv.flush_aborts == 1 and not srv.links, GUARD_S)
        finally:
            sock.close()
    finally:
        await lab.stop()


async def test_the_per_address_cap_on_the_long_link_and_the_nat(tmp_path):
    for nat in (None, 600.0):
        lab = await start_lab(tmp_path, users=1, nat_timeout_s=nat, profile=limits_profile(
            tmp_path, max_connections_per_address=3))
        try:
            a, b = source(lab, 201), source(lab, 202)
            if a is None:
                pytest.skip("a one-address lab: no second source address")
            # behind the NAT the cap is the NAT's: the server sees only the NAT
            cap = lab.nat.address_cap if nat else lab.long.address_cap
            held = [await raw_long_from(lab, a) for _ in range(3)]
            for i, (r, w) in enumerate(held):
                w.write(encode_frame(6, i))
                assert await read_frame(r) == (6 + REPLY, i, b"")
            over_r, _ = await raw_long_from(lab, a)
            assert await closed_within(over_r, GUARD_S) < GUARD_S
            assert cap.refused == 1 and cap.held(a) == 3
            r, w = await raw_long_from(lab, b)
            w.write(encode_frame(6, 7))
            assert await read_frame(r) == (6 + REPLY, 7, b"")
            held[0][1].transport.abort()
            await wait_for(lambda: cap.held(a) == 2, GUARD_S)
            r, w = await raw_long_from(lab, a)
            w.write(encode_frame(6, 8))
            assert await read_frame(r) == (6 + REPLY, 8, b"")
        finally:
            await lab.stop()
