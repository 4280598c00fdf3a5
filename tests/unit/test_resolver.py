"""The phone's stub resolver against a server that misbehaves: datagrams that are not DNS,
answers under another id, a lost query, a closed port; and no socket left behind."""

from __future__ import annotations

import asyncio
import os

import pytest

from testbed.client.resolver import ResolveError, Resolver
from testbed.wire.dns import TYPE_A, Question, build_response, parse_query


class Server(asyncio.DatagramProtocol):
    """Answers the n-th query as `script[n]` says: "drop", or a list of what to send back
    ("garbage", "other id", "answer")."""

    def __init__(self, script) -> None:
        self.script = list(script)
        self.queries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        q = parse_query(data)
        plan = self.script[min(self.queries, len(self.script) - 1)]
        self.queries += 1
        if plan == "drop":
            return
        for what in plan:
            if what == "garbage":
                self.transport.sendto(b"\x00\x01junk", addr)
            else:
                qid = q.id if what == "answer" else (q.id + 1) & 0xFFFF
                ask = Question(qid, q.name, q.qtype, q.opcode, q.rd)
                self.transport.sendto(build_response(ask, ["127.0.0.9"], 60), addr)


async def serve(script):
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: Server(script), local_addr=("127.0.0.1", 0))
    return transport, server, transport.get_extra_info("sockname")[1]


def open_sockets() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_garbage_and_other_ids_are_skipped_for_the_answer():
    transport, server, port = await serve([["garbage", "other id", "answer"]])
    try:
        assert await Resolver("127.0.0.1", port, timeout=1).resolve("a.lab") == ["127.0.0.9"]
    finally:
        transport.close()


async def test_a_lost_query_and_a_wrong_answer_are_asked_again():
    transport, server, port = await serve(["drop", ["other id", "garbage"], ["answer"]])
    try:
        fds = open_sockets()
        addrs = await Resolver("127.0.0.1", port, timeout=0.2, tries=3).resolve("a.lab")
        assert addrs == ["127.0.0.9"] and server.queries == 3
        assert open_sockets() == fds
    finally:
        transport.close()


async def test_no_answer_after_every_try_is_a_resolve_error():
    transport, server, port = await serve(["drop"])
    try:
        fds = open_sockets()
        with pytest.raises(ResolveError, match="no answer"):
            await Resolver("127.0.0.1", port, timeout=0.1, tries=2).resolve("a.lab")
        assert server.queries == 2 and open_sockets() == fds
    finally:
        transport.close()
