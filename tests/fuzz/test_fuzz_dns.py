"""The lab's resolver, over UDP and TCP: random datagrams, queries with bytes changed or
cut, names made of compression pointers (loops included), streams whose length prefixes
lie. Each answer is a DNS response to that query (or there is none, for what is not a
query); the resolver answers a good query after every example."""

from __future__ import annotations

import struct

from hypothesis import event, given
from hypothesis import strategies as st

from testbed.lab.addressing import HOST_NAMES, LONG
from testbed.wire.dns import TYPE_A, build_query, parse_response

from ..fuzzing import budget
from .wire import dns_tcp, dns_udp

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


def alive(manifest) -> None:
    got = dns_udp(manifest, build_query(LONG, 7, TYPE_A), timeout=5.0)
    assert list(parse_response(got).addresses) == list(manifest.hosts[LONG].addresses)


@budget(2)
@given(query=queries())
def test_resolver_over_udp(fuzz_lab, query):
    answer = dns_udp(fuzz_lab.manifest, query)
    if answer is None:
        event("no answer")
    else:
        check(query, answer)
    alive(fuzz_lab.manifest)


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
