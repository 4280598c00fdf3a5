"""The lab's resolver, over UDP and TCP: random datagrams, queries with bytes changed or
cut, names made of compression pointers (loops included), streams whose length prefixes
lie. Each answer is a DNS response to that query (or there is none, for what is not a
query); the resolver answers a good query after every example."""

from __future__ import annotations

import socket
import struct

from hypothesis import event, given
from hypothesis import strategies as st

from testbed.lab.addressing import HOST_NAMES, LONG
from testbed.wire import RemoteProtocolError
from testbed.wire.dns import TYPE_A, build_query, parse_response

from ..fuzzing import budget
from .wire import TIMEOUT_S, dns_tcp, dns_udp

QTYPES = [1, 2, 5, 6, 12, 15, 16, 28, 33, 255, 0, 65535]


@st.composite
def queries(draw) -> bytes:
    how = draw(st.sampled_from(["random", "changed", "cut", "pointers"]))
    event(how)
    if how == "random":
        return draw(st.binary(min_size=0, max_size=300))
    base = bytearray(build_query(draw(st.sampled_from([*HOST_NAMES, "nosuch.qq.com", "a" * 63])),
                                 draw(st.integers(0, 0xFFFF)), draw(st.sampled_from(QTYPES))))
    if how == "changed":
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(base) - 1),
                                                st.integers(0, 255)), min_size=1, max_size=5)):
            base[pos] = val
        return bytes(base)
    if how == "cut":
        return bytes(base[:draw(st.integers(0, len(base) - 1))])
    # a question name of labels and compression pointers to anywhere (itself, loops, past
    # the end), then qtype and qclass
    name = b""
    for kind in draw(st.lists(st.sampled_from(["label", "pointer"]), min_size=1, max_size=6)):
        if kind == "label":
            name += bytes([draw(st.integers(0, 70))]) + draw(st.binary(max_size=8))
        else:
            name += struct.pack(">H", 0xC000 | draw(st.integers(0, 0x3FFF)))
    return bytes(base[:12]) + name + struct.pack(">HH", draw(st.sampled_from(QTYPES)), 1)


def check(query: bytes, answer: bytes) -> None:
    assert len(answer) >= 12
    qid, flags = struct.unpack_from(">HH", answer)
    assert flags & 0x8000, "an answer has QR set"
    assert (flags & 0xF) in (0, 1, 2, 3, 4, 5), flags
    event(f"rcode {flags & 0xF}")
    if len(query) >= 2:
        assert qid == struct.unpack_from(">H", query)[0]


PROBE_ID = 7


def alive(manifest) -> None:
    got = dns_udp(manifest, build_query(LONG, PROBE_ID, TYPE_A), timeout=5.0)
    assert list(parse_response(got).addresses) == list(manifest.hosts[LONG].addresses)


def answers_then_probe(manifest, query: bytes) -> list[bytes]:
    """`query`, then a good query (the probe), from one socket: what came back before the
    probe's answer. The resolver answers datagrams in the order they come, so that is the
    answer to `query` or nothing, with no guess at how long an answer may take."""
    probe = build_query(LONG, PROBE_ID, TYPE_A)
    want = list(manifest.hosts[LONG].addresses)
    before = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        for data in (query, probe):
            s.sendto(data, (manifest.dns_address, manifest.dns_port))
        while True:
            got = s.recv(65536)   # a timeout here: the resolver did not answer the probe
            if got[:2] == probe[:2]:
                try:
                    if list(parse_response(got).addresses) == want:
                        # (an answer to `query` that is just like it counts as none)
                        return before
                except RemoteProtocolError:
                    pass
            before.append(got)


@budget(2)
@given(query=queries())
def test_resolver_over_udp(fuzz_lab, query):
    answers = answers_then_probe(fuzz_lab.manifest, query)
    assert len(answers) <= 1, "one query, one answer"
    if not answers:
        event("no answer")
    else:
        check(query, answers[0])


@budget(1)
@given(parts=st.lists(st.tuples(queries(), st.sampled_from(["true", "short", "long"])),
                      min_size=1, max_size=4))
def test_resolver_over_tcp(fuzz_lab, parts):
    stream = b""
    for q, length in parts:
        n = {"true": len(q), "short": max(0, len(q) - 3), "long": len(q) + 3}[length]
        stream += struct.pack(">H", n) + q
    answers = dns_tcp(fuzz_lab.manifest, stream)
    event(f"{len(answers)} answers to {len(parts)}")
    assert len(answers) <= len(parts)
    for answer in answers:
        assert len(answer) >= 12 and struct.unpack_from(">H", answer, 2)[0] & 0x8000
    alive(fuzz_lab.manifest)
