"""The lab resolver as `dig` sees it: authoritative (AA), not recursive (RA clear), SOA and NS
for the lab zones, DNS over TCP on the same port, NOTIMP for other opcodes (issue 11.10)."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import dpkt
import pytest

from mocks.dns import LabDNS
from mocks.runner import LabConfig
from testbed.capture.analyze import analyze
from testbed.wire.dns import RCODE_NOERROR, RCODE_NOTIMP, build_query

from ..conftest import start_lab
from .helpers import wait_for

pytestmark = pytest.mark.skipif(shutil.which("dig") is None,
                                reason="dig is not installed (Debian: bind9-dnsutils)")

RECORDS = {"long.weixin.qq.com": ["127.0.0.11", "127.0.0.12"],
           "short.weixin.qq.com": ["127.0.0.21", "127.0.0.22"],
           "mapi.mapabc.com": ["127.0.0.31"], "wx.qlogo.cn": ["127.0.0.41"]}


@pytest.fixture
async def server():
    dns = LabDNS(RECORDS)
    await dns.listen("127.0.0.1", 0)
    yield dns
    dns.close()


async def dig(addr: str, port: int, *args: str) -> dict:
    """Run dig and read its header, flags and sections the way a person reads them."""
    proc = await asyncio.create_subprocess_exec(
        "dig", f"@{addr}", "-p", str(port), "+time=2", "+tries=1", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    head = re.search(r"opcode: (\w+), status: (\w+)", text)
    flags = re.search(r";; flags: ([a-z ]*);", text)
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            current = sections.setdefault(m.group(1), [])
        elif current is not None and line and not line.startswith(";"):
            current.append(line.split())
        elif not line:
            current = None
    return {"opcode": head.group(1), "status": head.group(2), "flags": flags.group(1).split(),
            "sections": sections, "text": text}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_answer_is_authoritative_and_not_recursive(server, transport):
    addr, port = server.address
    r = await dig(addr, port, "long.weixin.qq.com", "A", *(["+tcp"] if transport == "tcp" else []))
    assert r["status"] == "NOERROR"
    assert "aa" in r["flags"] and "ra" not in r["flags"] and "rd" in r["flags"]
    answers = r["sections"]["ANSWER"]
    assert [(a[0], a[1], a[3], a[4]) for a in answers] == [
        ("long.weixin.qq.com.", "600", "A", "127.0.0.11"),
        ("long.weixin.qq.com.", "600", "A", "127.0.0.12")]
    # dig says what a stub resolver learns from RA clear
    assert "recursion requested but not available" in r["text"]
    assert server.tcp_connections == set() or transport == "tcp"


async def test_rd_is_copied_not_set(server):
    addr, port = server.address
    r = await dig(addr, port, "+norecurse", "short.weixin.qq.com")
    assert "rd" not in r["flags"] and "aa" in r["flags"]


@pytest.mark.parametrize("zone", ["weixin.qq.com", "mapabc.com", "qlogo.cn"])
async def test_soa_and_ns_of_each_lab_zone(server, zone):
    addr, port = server.address
    soa = await dig(addr, port, zone, "SOA")
    assert soa["status"] == "NOERROR" and "aa" in soa["flags"]
    (rr,) = soa["sections"]["ANSWER"]
    assert rr[0] == f"{zone}." and rr[3] == "SOA"
    assert rr[4] == f"ns.{zone}." and rr[5] == f"hostmaster.{zone}."

    ns = await dig(addr, port, zone, "NS")
    assert [(a[0], a[3], a[4]) for a in ns["sections"]["ANSWER"]] == [
        (f"{zone}.", "NS", f"ns.{zone}.")]
    # glue: the name server's address is the resolver's own
    assert [(a[0], a[3], a[4]) for a in ns["sections"]["ADDITIONAL"]] == [
        (f"ns.{zone}.", "A", addr)]
    a = await dig(addr, port, f"ns.{zone}", "A")
    assert [x[4] for x in a["sections"]["ANSWER"]] == [addr]


async def test_negative_answers_carry_the_soa(server):
    addr, port = server.address
    missing = await dig(addr, port, "nosuch.weixin.qq.com")
    assert missing["status"] == "NXDOMAIN" and "aa" in missing["flags"]
    assert [x[3] for x in missing["sections"]["AUTHORITY"]] == ["SOA"]
    nodata = await dig(addr, port, "long.weixin.qq.com", "AAAA")
    assert nodata["status"] == "NOERROR" and "ANSWER" not in nodata["sections"]
    assert [x[0] for x in nodata["sections"]["AUTHORITY"]] == ["weixin.qq.com."]
    apex = await dig(addr, port, "weixin.qq.com", "A")     # the zone exists, with no address
    assert apex["status"] == "NOERROR" and "ANSWER" not in apex["sections"]
    # a name outside every lab zone: NXDOMAIN as the contract fixes, without claiming authority
    other = await dig(addr, port, "www.example.com")
    assert other["status"] == "NXDOMAIN" and "aa" not in other["flags"]
    assert "AUTHORITY" not in other["sections"]


async def test_other_opcodes_get_notimp(server):
    addr, port = server.address
    r = await dig(addr, port, "+opcode=notify", "weixin.qq.com", "SOA")
    assert r["status"] == "NOTIMP" and r["opcode"] == "NOTIFY"
    # and over UDP from a hand-built UPDATE message
    def exchange() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(build_query("weixin.qq.com", 0x5151, dpkt.dns.DNS_SOA, opcode=5),
                        (addr, port))
            return sock.recv(512)

    reply = dpkt.dns.DNS(await asyncio.to_thread(exchange))
    assert reply.id == 0x5151 and reply.rcode == RCODE_NOTIMP and reply.opcode == 5
    assert server.stats["notimp"] == 2


async def tcp_exchange(addr, port, payload: bytes, replies: int) -> list[dpkt.dns.DNS]:
    reader, writer = await asyncio.open_connection(addr, port)
    try:
        writer.write(payload)
        out = []
        for _ in range(replies):
            n = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
            out.append(dpkt.dns.DNS(await asyncio.wait_for(reader.readexactly(n), 2)))
        return out
    finally:
        writer.close()


def framed(msg: bytes) -> bytes:
    return struct.pack(">H", len(msg)) + msg


async def test_tcp_pipelined_queries_are_answered_in_order(server):
    addr, port = server.address
    names = ["long.weixin.qq.com", "nosuch.qlogo.cn", "mapi.mapabc.com"]
    payload = b"".join(framed(build_query(n, 100 + i)) for i, n in enumerate(names))
    replies = await tcp_exchange(addr, port, payload, 3)
    assert [r.id for r in replies] == [100, 101, 102]
    assert [r.rcode for r in replies] == [RCODE_NOERROR, 3, RCODE_NOERROR]


async def test_tcp_query_split_byte_by_byte(server):
    addr, port = server.address
    reader, writer = await asyncio.open_connection(addr, port)
    try:
        for b in framed(build_query("wx.qlogo.cn", 7)):
            writer.write(bytes([b]))
            await writer.drain()
        n = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
        reply = dpkt.dns.DNS(await reader.readexactly(n))
    finally:
        writer.close()
    assert reply.id == 7 and len(reply.an) == 1


async def test_tcp_garbage_then_others_still_served(server):
    addr, port = server.address
    reader, writer = await asyncio.open_connection(addr, port)
    writer.write(framed(b"\x00"))           # no id to answer: the server closes
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    (reply,) = await tcp_exchange(addr, port, framed(build_query("long.weixin.qq.com", 9)), 1)
    assert reply.id == 9 and len(reply.an) == 2


async def test_silent_and_excess_tcp_clients_are_closed():
    dns = LabDNS(RECORDS, tcp_idle_s=0.3, max_tcp_connections=2)
    await dns.listen("127.0.0.1", 0)
    try:
        addr, port = dns.address
        held = [await asyncio.open_connection(addr, port) for _ in range(2)]
        extra_r, extra_w = await asyncio.open_connection(addr, port)
        assert await asyncio.wait_for(extra_r.read(), 2) == b""     # over the cap: closed
        for r, _ in held:       # silent past the idle deadline: closed, nothing held
            assert await asyncio.wait_for(r.read(), 3) == b""
        for _, w in held + [(extra_r, extra_w)]:
            w.close()
        assert dns.tcp_connections == set()
    finally:
        dns.close()


async def test_one_address_cannot_take_every_tcp_slot():
    """Connections from one client address beyond its cap are closed at once; another
    address is still answered over TCP while the first holds its share."""
    dns = LabDNS(RECORDS, max_tcp_connections=8, max_tcp_per_address=2)
    await dns.listen("127.0.0.1", 0)
    try:
        addr, port = dns.address
        held = [await asyncio.open_connection(addr, port, local_addr=("127.0.0.1", 0))
                for _ in range(2)]
        extra_r, extra_w = await asyncio.open_connection(addr, port,
                                                         local_addr=("127.0.0.1", 0))
        assert await asyncio.wait_for(extra_r.read(), 2) == b""     # over its cap: closed
        extra_w.close()
        other_r, other_w = await asyncio.open_connection(addr, port,
                                                         local_addr=("127.0.0.2", 0))
        other_w.write(framed(build_query("long.weixin.qq.com", 5)))
        n = struct.unpack(">H", await asyncio.wait_for(other_r.readexactly(2), 2))[0]
        assert dpkt.dns.DNS(await other_r.readexactly(n)).id == 5
        other_w.close()
        for _, w in held:       # a slot given back is the address's again
            w.close()
        await wait_for(lambda: not dns.tcp_connections, 2)
        (reply,) = await tcp_exchange(addr, port, framed(build_query("long.weixin.qq.com", 6)),
                                      1)
        assert reply.id == 6
    finally:
        dns.close()


async def test_a_tcp_query_dripped_a_byte_at_a_time_is_cut_at_the_idle_deadline():
    """Each byte used to restart the idle deadline, so a query of 300 bytes dripped one every
    50 ms held its connection for 15 s (and 256 such held every TCP slot); now the deadline
    runs from the last whole message."""
    dns = LabDNS(RECORDS, tcp_idle_s=0.5)
    await dns.listen("127.0.0.1", 0)
    try:
        addr, port = dns.address
        reader, writer = await asyncio.open_connection(addr, port)
        writer.write(framed(build_query("long.weixin.qq.com", 1)))
        n = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
        assert dpkt.dns.DNS(await reader.readexactly(n)).id == 1
        t0 = asyncio.get_running_loop().time()

        async def drip() -> None:
            try:
                for b in struct.pack(">H", 300) + b"\0" * 300:
                    writer.write(bytes([b]))
                    await asyncio.sleep(0.05)
            except (ConnectionError, OSError):
                pass
        task = asyncio.ensure_future(drip())
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionError:
            pass
        took = asyncio.get_running_loop().time() - t0
        task.cancel()
        assert 0.4 < took < 5, took
        writer.close()
        await wait_for(lambda: not dns.tcp_connections, 2)
    finally:
        dns.close()


async def test_a_tcp_client_that_never_reads_is_not_read_and_is_dropped():
    """Queries pipelined for ever, their answers never read: the resolver stops answering
    and reading once its answers back up (its buffer stays bounded) and drops the
    connection at the idle deadline instead of waiting to flush."""
    dns = LabDNS(RECORDS, tcp_idle_s=1.0)
    await dns.listen("127.0.0.1", 0)
    try:
        addr, port = dns.address
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # and never read
        sock.connect((addr, port))
        await wait_for(lambda: dns.tcp_connections, 5)
        [conn] = dns.tcp_connections
        # a small send buffer on the server's side too, so that its answers back up after a
        # few kB rather than the megabytes loopback grows to (seconds of answering here)
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET,
                                                           socket.SO_SNDBUF, 4096)
        query = framed(build_query("long.weixin.qq.com", 1))
        flood = threading.Thread(target=_send_quietly, args=(sock, query * 1_000_000),
                                 daemon=True)
        flood.start()
        try:
            await wait_for(lambda: not conn.transport.is_reading(), 30)
            # its buffer: about the high-water mark (64 KiB), one answer over at most
            assert conn.transport.get_write_buffer_size() < 128 << 10
            await wait_for(lambda: not dns.tcp_connections, 5)
        finally:
            sock.close()
    finally:
        dns.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


@pytest.mark.parametrize("record", [False, True])
async def test_running_lab_answers_dig_over_tcp(tmp_path: Path, record):
    """`testbed lab up`'s resolver over TCP, with the recorder's relay in front or not; the
    recorded capture shows the TCP exchange."""
    pcap = tmp_path / "lab.pcapng"
    lab = await start_lab(tmp_path, users=2, **({"record": pcap} if record else {}))
    try:
        m = lab.manifest
        r = await dig(m.dns_address, m.dns_port, "+tcp", "short.weixin.qq.com")
        assert r["status"] == "NOERROR" and "aa" in r["flags"]
        assert [a[4] for a in r["sections"]["ANSWER"]] == m.hosts["short.weixin.qq.com"].addresses
    finally:
        await lab.stop()
    if record:
        result = analyze(pcap)
        dns_flows = [f for f in result.flows
                     if f["server"] == f"{m.dns_address}:{m.dns_port}"]
        assert dns_flows, "the TCP DNS connection is in the capture"
        # ... and read as DNS: the answer reached the analysis' dns section
        assert [f["app"] for f in dns_flows] == ["dns"] and dns_flows[0]["requests"] == 1
        assert result.dns["short.weixin.qq.com"] == m.hosts["short.weixin.qq.com"].addresses
