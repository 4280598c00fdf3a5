"""The lab resolver over a real UDP socket: answers, NXDOMAIN, FORMERR and garbage."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import tracemalloc

import dpkt
import pytest

from mocks.dns import MAX_TCP_PER_ADDRESS, LabDNS
from testbed.lab.addressing import client_address
from testbed.wire.dns import (RCODE_FORMERR, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA,
                              build_query, parse_response)

from ..conftest import start_lab

RECORDS = {
    "long.weixin.qq.com": ["127.0.0.11", "127.0.0.12"],
    "Short.Weixin.QQ.com.": ["127.0.0.21", "127.0.0.22"],   # config is normalised too
    "mapi.mapabc.com": ["127.0.0.31"],
}


class Client(asyncio.DatagramProtocol):
    """A UDP client socket whose replies land in a queue."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.replies.put_nowait(data)

    async def ask(self, data: bytes, timeout: float = 1.0) -> bytes:
        self.transport.sendto(data)
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def silence(self, wait: float = 0.1) -> bool:
        try:
            await asyncio.wait_for(self.replies.get(), wait)
        except asyncio.TimeoutError:
            return True
        return False

    def connection_made(self, transport) -> None:
        self.transport = transport


@pytest.fixture
async def dns():
    server = LabDNS(RECORDS)
    await server.listen("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        Client, remote_addr=server.address, family=socket.AF_INET)
    yield server, client
    transport.close()
    server.close()


def full(data: bytes) -> dpkt.dns.DNS:
    return dpkt.dns.DNS(data)


async def test_a_record_two_addresses_ttl_600(dns):
    server, client = dns
    reply = await client.ask(build_query("long.weixin.qq.com", 0x1234))
    ans = parse_response(reply)
    assert ans.id == 0x1234 and ans.rcode == RCODE_NOERROR
    assert ans.addresses == ("127.0.0.11", "127.0.0.12")
    assert ans.ttls == (600, 600)
    msg = full(reply)
    assert msg.qr == 1 and msg.aa == 1 and msg.ra == 0 and len(msg.qd) == 1 and msg.qd[0].type == TYPE_A
    assert server.seen[-1] == ("long.weixin.qq.com", TYPE_A)


async def test_a_question_asked_again_gets_the_same_answer_under_its_own_id(dns):
    server, client = dns
    fresh = LabDNS(RECORDS)   # never asked: builds every answer it gives
    for qid in (1, 2, 0xBEEF):
        for name in ("long.weixin.qq.com", "nosuch.weixin.qq.com"):
            query = build_query(name, qid)
            reply = await client.ask(query)
            assert reply[:2] == query[:2]
            assert reply[2:] == fresh.answer(query)[0][2:]
            fresh = LabDNS(RECORDS)
            assert server.seen[-1] == (name, TYPE_A)
    assert server.stats["queries"] == 6
    assert server.stats["answered"] == server.stats["nxdomain"] == 3


async def test_a_kept_answer_is_never_given_to_a_question_that_differs(dns):
    """Answers are kept by the query's bytes after its id: the type, the flags and an EDNS
    record each make another question (the name's case does not, but the kept answer comes
    back in the asker's case)."""
    server, _ = dns
    base = build_query("long.weixin.qq.com", 7)
    no_rd = base[:2] + bytes([base[2] & ~0x01]) + base[3:]
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"   # EDNS0, 1232 bytes
    edns = base[:10] + b"\x00\x01" + base[12:] + opt
    variants = [build_query("LONG.Weixin.qq.com", 8), build_query("long.weixin.qq.com", 9,
                                                                   TYPE_AAAA), no_rd, edns]
    server.answer(base)
    for query in variants:
        server.answer(query)                   # kept now, if it is to be
        assert server.answer(query) == LabDNS(RECORDS).answer(query)
    assert [server.answer(q)[0][2:] for q in [base] + variants] == \
        [LabDNS(RECORDS).answer(q)[0][2:] for q in [base] + variants]


async def test_case_insensitive(dns):
    server, client = dns
    # (No trailing-dot case: on the wire a name never has one; the configured
    # "Short.Weixin.QQ.com." shows that configuration is normalised.)
    for name in ("LONG.WeiXin.qq.COM", "long.weixin.qq.com", "short.weixin.qq.com"):
        ans = parse_response(await client.ask(build_query(name, 7)))
        assert ans.rcode == RCODE_NOERROR and len(ans.addresses) == 2, name
    assert parse_response(await client.ask(build_query("short.weixin.qq.com", 8))).addresses \
        == ("127.0.0.21", "127.0.0.22")


async def test_an_answer_echoes_the_askers_case_kept_or_not(dns):
    """0x20 case randomisation: the question and the records' owner come back in the case
    asked, the first time and from the kept answers (which another case filled)."""
    _, client = dns
    await client.ask(build_query("long.weixin.qq.com", 1))
    for qid, name in enumerate(["LoNg.WeIxIn.qq.com", "LoNg.WeIxIn.qq.com",
                                "lOnG.wEiXiN.QQ.COM"], 2):
        msg = full(await client.ask(build_query(name, qid)))
        assert msg.id == qid and len(msg.an) == 2
        assert [r.name for r in msg.qd + msg.an] == [name] * 3
    msg = full(await client.ask(build_query("NoSuch.WeIxIn.qq.com", 9)))
    assert msg.rcode == RCODE_NXDOMAIN and msg.qd[0].name == "NoSuch.WeIxIn.qq.com"


@pytest.mark.parametrize("qtype", [TYPE_AAAA, dpkt.dns.DNS_MX, dpkt.dns.DNS_TXT, 255])
async def test_other_types_empty_noerror(dns, qtype):
    _, client = dns
    msg = full(await client.ask(build_query("long.weixin.qq.com", 99, qtype)))
    assert msg.id == 99 and msg.rcode == RCODE_NOERROR and msg.an == []
    assert msg.qd[0].type == qtype


async def test_unknown_name_nxdomain(dns):
    server, client = dns
    for name in ("nosuch.weixin.qq.com", "www.google.com", "long.weixin.qq.com.evil", "x"):
        ans = parse_response(await client.ask(build_query(name, 5)))
        assert ans.rcode == RCODE_NXDOMAIN and ans.addresses == (), name
    assert server.stats["nxdomain"] == 4


async def test_garbage_formerr_or_silence(dns):
    server, client = dns
    # Two bytes of id and nothing else: FORMERR echoing the id.
    msg = full(await client.ask(b"\xab\xcd"))
    assert msg.id == 0xABCD and msg.qr == 1 and msg.rcode == RCODE_FORMERR
    # A header claiming one question that is not there.
    msg = full(await client.ask(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"))
    assert msg.id == 7 and msg.rcode == RCODE_FORMERR
    # Two questions: not a single-question query.
    two = dpkt.dns.DNS(id=9, qd=[dpkt.dns.DNS.Q(name="a"), dpkt.dns.DNS.Q(name="b")])
    assert full(await client.ask(bytes(two))).rcode == RCODE_FORMERR
    # One byte: no id to answer. A response (QR set) is never answered. Over 512: dropped.
    client.transport.sendto(b"\x01")
    client.transport.sendto(b"\x00\x03\x81\x80" + b"\x00" * 8)
    client.transport.sendto(build_query("long.weixin.qq.com", 4) + b"\x00" * 500)
    assert await client.silence(0.2)
    assert server.stats["dropped"] == 3 and server.stats["formerr"] == 3
    assert server.stats["queries"] == 6


async def test_500_garbage_datagrams_then_still_answers(dns):
    server, client = dns
    rng = random.Random(20130917)
    good = build_query("long.weixin.qq.com", 0x4242)
    sent = 0
    loop = asyncio.get_running_loop()
    for i in range(500):
        kind = i % 4
        if kind == 0:      # pure noise of any length up to 600
            data = rng.randbytes(rng.randint(0, 600))
        elif kind == 1:    # a real query with random bytes flipped
            data = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        elif kind == 2:    # a real query cut short
            data = good[:rng.randrange(len(good))]
        else:              # a valid header followed by noise
            data = good[:12] + rng.randbytes(rng.randint(0, 80))
        client.transport.sendto(data)
        sent += bool(data)  # asyncio's sendto silently skips an empty datagram
        if i % 25 == 24:
            # Let the server catch up so the kernel's receive buffer never overflows: every
            # datagram must reach it for the counts below to be exact.
            deadline = loop.time() + 2.0
            while server.stats["queries"] < sent:
                assert loop.time() < deadline, "server stopped reading"
                await asyncio.sleep(0.001)
    # Whatever came back for the garbage (in order, on loopback), the next good query must
    # still be answered.
    client.transport.sendto(build_query("LONG.weixin.qq.com", 0x7777))
    while True:
        msg = full(await asyncio.wait_for(client.replies.get(), 2.0))
        if msg.id == 0x7777 and msg.qd and msg.qd[0].name == "LONG.weixin.qq.com":
            break
    ans = parse_response(bytes(msg))
    assert ans.rcode == RCODE_NOERROR and ans.addresses == ("127.0.0.11", "127.0.0.12")
    s = server.stats
    assert s["queries"] == sent + 1
    assert s["queries"] == (s["answered"] + s["nxdomain"] + s["formerr"] + s["notimp"]
                            + s["dropped"])
    assert s["formerr"] > 0 and s["dropped"] > 0


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        LabDNS({"x": ["not-an-ip"]})
    with pytest.raises(ValueError):
        LabDNS({"x": ["127.0.0.1"]}, ttl=-1)


def test_oversized_answer_truncated():
    many = [f"10.0.{i // 256}.{i % 256}" for i in range(100)]
    server = LabDNS({"big.example": many})
    reply, outcome = server.answer(build_query("big.example", 1))
    assert outcome == "answered" and len(reply) <= 512
    msg = full(reply)
    assert msg.tc == 1 and 0 < len(msg.an) < 100


def test_seen_is_bounded():
    server = LabDNS(RECORDS)
    q = build_query("long.weixin.qq.com", 1)
    for _ in range(10_050):
        server.answer(q)
    assert len(server.seen) == 10_000


def test_kept_answers_do_not_hold_big_queries():
    """Over TCP a query may be up to 64 KiB and what follows its question is not read, so
    the kept answers must not keep such queries: 300 distinct ones of 60 KB held 18 MB for
    the server's life."""
    server = LabDNS(RECORDS)
    pad = b"\0" * 60_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            reply, outcome = server.answer(build_query(f"x{i}.weixin.qq.com", i) + pad,
                                           tcp=True)
            assert outcome == "nxdomain" and reply[:2] == i.to_bytes(2, "big")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000


async def test_behind_the_nat_every_phone_has_its_tcp_slots(tmp_path):
    """Behind the carrier NAT every connection reaches the resolver from the relay's address,
    so the per-address cap there would have been one cap for all phones (the relay keeps
    its own per client): more phones than `MAX_TCP_PER_ADDRESS` all held and answered."""
    lab = await start_lab(tmp_path, users=1, nat_timeout_s=300.0)
    held = []
    try:
        m = lab.manifest
        for i in range(MAX_TCP_PER_ADDRESS + 4):
            held.append(await asyncio.open_connection(
                m.dns_address, m.dns_port, local_addr=(client_address(m.dns_address, i), 0)))
        for i, (reader, writer) in enumerate(held):
            query = build_query("long.weixin.qq.com", 1000 + i)
            writer.write(struct.pack(">H", len(query)) + query)
            n = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
            assert dpkt.dns.DNS(await reader.readexactly(n)).id == 1000 + i
    finally:
        for _, writer in held:
            writer.close()
        await lab.stop()
