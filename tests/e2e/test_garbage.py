"""Quiet under garbage: malformed requests are answered (or closed) with one log line each
and no traceback, clients that vanish mid-request raise nothing, error replies keep the
contract's reply cmd. Here the log output is the behaviour under test, so the tests count
log records (caplog, every logger at DEBUG)."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from testbed.lab.addressing import LONG, MAPABC, QLOGO, SHORT
from testbed.wire import CGI_PREFIX, encode_frame, pb

from ..conftest import start_lab
from .helpers import limits_profile, read_frame

REPLY = 1_000_000_000

MALFORMED = [
    b"GET / \r\n\r\n",                                        # a version that is blank
    b"GET / HTTP/9.9\r\n\r\n",                                # no such version
    b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",                  # a NUL in the method
    b"\x16\x03\x01\x00\xff\x01\x00\x00\xfb\x03\x03" + b"\0" * 40 + b"\r\n\r\n",  # TLS, plain port
    b"POST " + CGI_PREFIX.encode() + b"newsync HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST " + CGI_PREFIX.encode() + b"newsync HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",                           # two lengths
    b"POST " + CGI_PREFIX.encode() + b"newsync HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",   # both framings
    b"POST / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",       # a field too long
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",               # a line too long
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",       # a field without a colon
    b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",                    # obsolete line folding
    b"\r\n\r\n\r\n\r\n",
    b"\xff\xfe\xfd\xfc garbage \x00\x01\r\n\r\n",
    b"POST " + CGI_PREFIX.encode() + b"newsync HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",              # a chunk size that is not hex
    b"POST " + CGI_PREFIX.encode() + b"newsync HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: gzip\r\n\r\n",                       # a coding we do not take
    b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",           # a broken absolute URL
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ffffffffffffffffffff\r\n",                               # a chunk size too big
    b"GET / HTTP/1.1\r\nHost: x\r\nX:\x00y\r\n\r\n",          # a NUL in a value
    b"GET / HTTP/1.1\r\nHo\x7fst: x\r\n\r\n",                 # a DEL in a name
    b"GET / HTTP/1.1\rHost: x\r\r\r",                          # bare CRs
    b"GET / HTTP/1.1\nHost: x\n\n\x00",                        # bare LFs, then a NUL
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                       # HTTP/2 preface
]


async def exchange(addr: str, port: int, data: bytes, *, tls_ca: str | None = None) -> bytes:
    ctx = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
    r, w = await asyncio.open_connection(addr, port, ssl=ctx,
                                         server_hostname=SHORT if ctx else None)
    w.write(data)
    got = b""
    try:
        while chunk := await asyncio.wait_for(r.read(65536), 10):
            got += chunk
    except (ConnectionError, OSError):
        pass
    w.close()
    return got


def lab_records(caplog) -> list[logging.LogRecord]:
    """What the lab's code and its libraries logged (not the test's own asyncio debug)."""
    return [r for r in caplog.records if r.name.startswith(("mocks", "testbed", "aiohttp"))]


async def test_each_malformed_request_logs_one_line_and_no_traceback(tmp_path, caplog):
    """25 bad requests used to write 15 tracebacks. (Blank lines only are not a request
    yet: that connection ends at the head deadline, short here.)"""
    assert len(MALFORMED) == 25
    caplog.set_level(logging.DEBUG)
    lab = await start_lab(tmp_path, users=1,
                          profile=limits_profile(tmp_path, request_head_wall_s=0.5))
    try:
        await _malformed_everywhere(lab, caplog)
    finally:
        await lab.stop()
    assert lab.server_errors() == []


async def _malformed_everywhere(lab, caplog) -> None:
    h = lab.manifest.hosts[SHORT]
    targets = [(h.addresses[0], h.port, None), (h.addresses[1], h.tls_port, lab.manifest.ca_cert),
               (lab.manifest.hosts[MAPABC].addresses[0], lab.manifest.hosts[MAPABC].port, None),
               (lab.manifest.hosts[QLOGO].addresses[0], lab.manifest.hosts[QLOGO].port, None)]
    for addr, port, ca in targets:
        caplog.clear()
        answers = [await exchange(addr, port, raw, tls_ca=ca) for raw in MALFORMED]
        records = lab_records(caplog)
        assert not [r for r in records if r.exc_info or r.levelno >= logging.WARNING], \
            [(r.name, r.getMessage()) for r in records if r.exc_info]
        assert len(records) <= len(MALFORMED), [r.getMessage() for r in records]
        # every answer that came is a 400-class status on a line of its own
        for raw, answer in zip(MALFORMED, answers):
            if answer:
                assert answer.split(b" ", 2)[1][:1] == b"4", (raw[:30], answer[:60])


async def test_a_request_line_without_a_version_is_400_one_past_1_1_is_505(lab):
    h = lab.manifest.hosts[SHORT]
    for line in (b"GET /\r\n\r\n", b"POST " + CGI_PREFIX.encode() + b"newsync\r\n\r\n"):
        answer = await exchange(h.addresses[0], h.port, line)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:40]
        assert answer.endswith(b"\r\n\r\nthe request line has no version\r\n")
    assert lab.short.status_counts[400] == 2
    answer = await exchange(h.addresses[0], h.port, b"POST " + CGI_PREFIX.encode()
                            + b"newsync HTTP/2.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer[:60]
    assert answer.endswith(b"\r\n\r\nHTTP/1.0 and 1.1 only\r\n")


async def test_clients_that_vanish_mid_request_raise_nothing(lab, caplog):
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    unhandled = []
    loop.set_exception_handler(lambda loop, context: unhandled.append(context))
    h = lab.manifest.hosts[SHORT]
    head = (f"POST {CGI_PREFIX}newsync HTTP/1.1\r\nHost: {SHORT}\r\n").encode()
    cuts = [head[:20],                                                   # mid-head
            head + b"Content-Length: 1000\r\n\r\n" + b"\0" * 300,         # mid-body
            head + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + b"\0" * 5,   # mid-chunk
            head + b"Content-Length: 2000000\r\n\r\n" + b"\0" * 70000,    # mid-refused body
            head + b"Content-Length: 0\r\n\r\n"]                          # before the answer
    for tls in (False, True):
        ctx = ssl.create_default_context(cafile=lab.manifest.ca_cert) if tls else None
        for data in cuts:
            for abort in (False, True):
                r, w = await asyncio.open_connection(
                    h.addresses[0], h.tls_port if tls else h.port, ssl=ctx,
                    server_hostname=SHORT if tls else None)
                w.write(data)
                await w.drain()
                w.transport.abort() if abort else w.close()
    # the long link too: half a frame, then gone
    hl = lab.manifest.hosts[LONG]
    for abort in (False, True):
        r, w = await asyncio.open_connection(hl.addresses[0], hl.port)
        w.write(encode_frame(237, 1, b"\x0a\x02" * 100)[:50])
        await w.drain()
        w.transport.abort() if abort else w.close()
    # a round trip on each door: whatever the vanished clients set off has run by now
    r, w = await asyncio.open_connection(h.addresses[0], h.port)
    w.write(head + b"Content-Length: 0\r\n\r\n")
    assert (await r.read()).startswith(b"HTTP/1.1 200")
    r, w = await asyncio.open_connection(hl.addresses[0], hl.port)
    w.write(encode_frame(6, 1))
    assert await read_frame(r) == (6 + REPLY, 1, b"")
    w.close()
    await asyncio.sleep(0.2)   # a last chance for a stray callback to fail
    assert unhandled == []
    assert lab.server_errors() == []
    records = lab_records(caplog)
    assert not [r for r in records if r.exc_info or r.levelno >= logging.WARNING], \
        [(r.name, r.getMessage()) for r in records]


@pytest.mark.parametrize("cmd", [999, 24, 1_000_000_006, 3_000_000_000,
                                 0xFFFFFFFF - 1_000_000_000])
async def test_long_link_error_replies_carry_cmd_plus_1000000000(lab, cmd):
    hl = lab.manifest.hosts[LONG]
    r, w = await asyncio.open_connection(hl.addresses[0], hl.port)
    w.write(encode_frame(cmd, 5, b"x"))
    got = await read_frame(r)
    assert (got.cmd, got.seq) == (cmd + REPLY, 5)
    assert pb.ErrorResponse.FromString(got.body).base.ret == -1
    w.close()


async def test_a_cmd_whose_reply_cannot_be_written_closes_the_link(lab):
    hl = lab.manifest.hosts[LONG]
    r, w = await asyncio.open_connection(hl.addresses[0], hl.port)
    w.write(encode_frame(6, 1) + encode_frame(0xFFFFFFFF - 1_000_000_000 + 1, 2))
    assert await read_frame(r) == (6 + REPLY, 1, b"")
    assert await asyncio.wait_for(r.read(), 10) == b""
    assert lab.long.violations == 1
