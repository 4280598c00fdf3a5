"""DNS helpers (PROTOCOL.md section 1): testbed.wire.dns."""

from __future__ import annotations

import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.wire import dns
from testbed.wire.dns import (DEFAULT_TTL, RCODE_FORMERR, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_A,
                              TYPE_AAAA, Answer, Question, build_query, build_response, formerr,
                              parse_query, parse_response)
from testbed.wire.errors import RemoteProtocolError

from ..fuzzing import budget

LONG = "long.weixin.qq.com"
SHORT = "short.weixin.qq.com"
TYPE_MX, TYPE_TXT, TYPE_ANY = 15, 16, 255


def header_of(msg: bytes) -> dict:
    """Read the 12-byte DNS header by hand (RFC 1035 4.1.1), independently of dpkt."""
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", msg[:12])
    return {"id": qid, "qr": flags >> 15, "opcode": (flags >> 11) & 0xF,
            "aa": (flags >> 10) & 1, "tc": (flags >> 9) & 1, "rd": (flags >> 8) & 1,
            "ra": (flags >> 7) & 1, "rcode": flags & 0xF,
            "qd": qd, "an": an, "ns": ns, "ar": ar}


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\x00"


def raw_message(qid: int, flags: int, questions=(), answers=()) -> bytes:
    """A DNS message built by hand: questions are (name, type), answers (name, type, ttl,
    rdata)."""
    out = struct.pack(">HHHHHH", qid, flags, len(questions), len(answers), 0, 0)
    for name, qtype in questions:
        out += encode_name(name) + struct.pack(">HH", qtype, 1)
    for name, rtype, ttl, rdata in answers:
        out += encode_name(name) + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return out


def test_constants():
    assert DEFAULT_TTL == 600
    assert (RCODE_NOERROR, RCODE_FORMERR, RCODE_NXDOMAIN) == (0, 1, 3)
    assert (TYPE_A, TYPE_AAAA) == (1, 28)


# --------------------------------------------------------------------- queries

@pytest.mark.parametrize("qid", [0, 1, 0x1234, 0xFFFF])
@pytest.mark.parametrize("qtype", [TYPE_A, TYPE_AAAA, TYPE_MX, TYPE_ANY])
def test_query_round_trip(qid, qtype):
    q = build_query(LONG, qid, qtype)
    assert parse_query(q) == Question(qid, LONG, qtype)


def test_query_defaults_to_a():
    assert parse_query(build_query(SHORT, 7)).qtype == TYPE_A


def test_query_wire_format():
    q = build_query(LONG, 0xBEEF)
    h = header_of(q)
    assert h == {"id": 0xBEEF, "qr": 0, "opcode": 0, "aa": 0, "tc": 0, "rd": 1, "ra": 0,
                 "rcode": 0,
                 "qd": 1, "an": 0, "ns": 0, "ar": 0}
    assert q[12:] == encode_name(LONG) + b"\x00\x01\x00\x01"


def test_parse_query_of_a_hand_built_query():
    raw = raw_message(42, 0x0100, [("Short.WEIXIN.qq.com", TYPE_AAAA)])
    assert parse_query(raw) == Question(42, "Short.WEIXIN.qq.com", TYPE_AAAA)


def test_an_answer_echoes_the_case_of_the_question():
    """0x20: a client that mixes the case of its query checks the answer's question (and
    its records' owner) came back in that case."""
    q = parse_query(build_query("LONG.Weixin.QQ.Com", 1))
    assert q.name == "LONG.Weixin.QQ.Com"
    msg = dpkt.dns.DNS(build_response(q, ["127.0.0.11"]))
    assert [r.name for r in msg.qd + msg.an] == ["LONG.Weixin.QQ.Com"] * 2


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x12\x34", b"\xff" * 11, b"\xff" * 12, b"\xff" * 64,
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",            # 1 question, none there
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc",     # label runs off the end
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # ptr loop
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=lambda d: d[:8].hex() or "empty")
def test_parse_query_rejects_garbage(data):
    with pytest.raises(RemoteProtocolError):
        parse_query(data)


def test_parse_query_rejects_responses():
    q = parse_query(build_query(LONG, 5))
    with pytest.raises(RemoteProtocolError):
        parse_query(build_response(q, ["127.0.0.11"]))
    with pytest.raises(RemoteProtocolError):
        parse_query(formerr(5))
    with pytest.raises(RemoteProtocolError):
        parse_query(raw_message(5, 0x8180, [(LONG, TYPE_A)]))


@pytest.mark.parametrize("questions", [[], [(LONG, TYPE_A), (SHORT, TYPE_A)]])
def test_parse_query_wants_exactly_one_question(questions):
    with pytest.raises(RemoteProtocolError):
        parse_query(raw_message(9, 0x0100, questions))


# --------------------------------------------------------------------- responses

ADDRS = ["127.0.0.11", "127.0.0.12", "10.255.0.1"]


def test_response_with_several_a_records():
    q = parse_query(build_query(LONG, 0x4242))
    r = build_response(q, ADDRS)
    h = header_of(r)
    assert h["id"] == 0x4242 and h["qr"] == 1 and h["rcode"] == RCODE_NOERROR
    # authoritative and not recursive: AA set, RA clear, RD copied from the query
    assert h["rd"] == 1 and h["ra"] == 0 and h["aa"] == 1
    assert h["qd"] == 1 and h["an"] == 3
    assert parse_response(r) == Answer(0x4242, RCODE_NOERROR, LONG, tuple(ADDRS),
                                       (600, 600, 600))


def test_response_records_on_the_wire():
    """The A records, read by hand: name, type A, class IN, TTL 600, 4 bytes each."""
    q = Question(1, SHORT, TYPE_A)
    r = build_response(q, ["127.0.0.21", "127.0.0.22"])
    for addr in ("127.0.0.21", "127.0.0.22"):
        packed = bytes(int(x) for x in addr.split("."))
        assert struct.pack(">HHIH", TYPE_A, 1, 600, 4) + packed in r
    assert r.count(struct.pack(">I", 600)) == 2


def test_response_ttl_is_configurable():
    q = Question(3, LONG, TYPE_A)
    assert parse_response(build_response(q, ADDRS[:2], ttl=30)).ttls == (30, 30)
    assert parse_response(build_response(q, ADDRS[:1])).ttls == (DEFAULT_TTL,)


def test_response_keeps_the_address_order():
    q = Question(3, LONG, TYPE_A)
    assert parse_response(build_response(q, ADDRS[::-1])).addresses == tuple(ADDRS[::-1])


@pytest.mark.parametrize("addresses", [None, [], ["127.0.0.11"]])
def test_nxdomain(addresses):
    q = parse_query(build_query("nosuch.example.com", 77))
    r = build_response(q, addresses, rcode=RCODE_NXDOMAIN)
    h = header_of(r)
    assert h["qr"] == 1 and h["rcode"] == 3 and h["an"] == 0 and h["id"] == 77
    a = parse_response(r)
    assert a.rcode == RCODE_NXDOMAIN == 3
    assert a.addresses == () and a.ttls == ()
    assert a.name == "nosuch.example.com"


@pytest.mark.parametrize("qtype", [TYPE_AAAA, TYPE_MX, TYPE_TXT, TYPE_ANY])
def test_other_types_get_noerror_without_answers(qtype):
    q = parse_query(build_query(LONG, 8, qtype))
    r = build_response(q, ADDRS)
    h = header_of(r)
    assert h["rcode"] == RCODE_NOERROR and h["an"] == 0 and h["qr"] == 1
    # the question is echoed with its own type
    assert encode_name(LONG) + struct.pack(">HH", qtype, 1) in r
    a = parse_response(r)
    assert a.rcode == RCODE_NOERROR and a.addresses == () and a.id == 8


def test_formerr():
    r = formerr(0x0A0B)
    h = header_of(r)
    assert h["id"] == 0x0A0B and h["qr"] == 1 and h["rcode"] == RCODE_FORMERR == 1
    assert h["qd"] == 0 and h["an"] == 0
    a = parse_response(r)
    assert a == Answer(0x0A0B, 1, "", (), ())


def test_parse_response_of_a_hand_built_answer():
    raw = raw_message(0x0102, 0x8180, [(LONG, TYPE_A)], [
        (LONG, TYPE_A, 600, bytes([127, 0, 0, 11])),
        (LONG, 5, 600, encode_name("x.example")),      # a CNAME is ignored
        (LONG, TYPE_A, 60, bytes([127, 0, 0, 12])),
    ])
    assert parse_response(raw) == Answer(0x0102, 0, LONG, ("127.0.0.11", "127.0.0.12"),
                                         (600, 60))


def test_parse_response_rejects_queries():
    with pytest.raises(RemoteProtocolError):
        parse_response(build_query(LONG, 1))


@pytest.mark.parametrize("data", [b"", b"\x00" * 5, b"\xff" * 12, b"\xff" * 40])
def test_parse_response_rejects_garbage(data):
    with pytest.raises(RemoteProtocolError):
        parse_response(data)


@pytest.mark.parametrize("rdlen", [0, 3, 5, 16])
def test_parse_response_rejects_an_a_record_of_the_wrong_length(rdlen):
    raw = raw_message(1, 0x8180, [(LONG, TYPE_A)], [(LONG, TYPE_A, 600, b"\x7f" * rdlen)])
    with pytest.raises(RemoteProtocolError):
        parse_response(raw)


@pytest.mark.parametrize("bad", ["300.1.1.1", "::1", "localhost", "1.2.3"])
def test_build_response_refuses_a_bad_address(bad):
    with pytest.raises(ValueError):
        build_response(Question(1, LONG, TYPE_A), [bad])


# --------------------------------------------------------------------- fuzz

FUZZ = budget(4)


@FUZZ
@given(st.binary(max_size=120))
def test_parse_query_random_bytes_raise_only_remote_protocol_error(data):
    try:
        q = parse_query(data)
    except RemoteProtocolError:
        return
    assert isinstance(q, Question)
    assert 0 <= q.id <= 0xFFFF and isinstance(q.name, str)


def _mutated(base: bytes, data) -> bytes:
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    return bytes(buf[:data.draw(st.integers(0, len(buf)))])


@FUZZ
@given(st.data())
def test_parse_query_mutated_queries_raise_only_remote_protocol_error(data):
    base = build_query(data.draw(st.sampled_from([LONG, SHORT, "wx.qlogo.cn"])),
                       data.draw(st.integers(0, 0xFFFF)),
                       data.draw(st.sampled_from([TYPE_A, TYPE_AAAA, TYPE_MX])))
    try:
        parse_query(_mutated(base, data))
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.data())
def test_parse_response_mutated_answers_raise_only_remote_protocol_error(data):
    q = Question(data.draw(st.integers(0, 0xFFFF)), LONG, TYPE_A)
    base = build_response(q, ADDRS)
    try:
        a = parse_response(_mutated(base, data))
    except RemoteProtocolError:
        return
    assert len(a.addresses) == len(a.ttls)


@FUZZ
@given(st.binary(max_size=120))
def test_parse_response_random_bytes_raise_only_remote_protocol_error(data):
    try:
        parse_response(data)
    except RemoteProtocolError:
        pass


@budget()
@given(qid=st.integers(0, 0xFFFF),
       labels=st.lists(st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True), min_size=1,
                       max_size=4),
       addrs=st.lists(st.ip_addresses(v=4).map(str), max_size=6),
       ttl=st.integers(0, 0x7FFFFFFF))
def test_round_trip_property(qid, labels, addrs, ttl):
    name = ".".join(labels)
    q = parse_query(build_query(name, qid))
    assert q == Question(qid, name, TYPE_A)
    a = parse_response(build_response(q, addrs, ttl=ttl))
    assert a == Answer(qid, RCODE_NOERROR, name, tuple(addrs), (ttl,) * len(addrs))


def test_module_exports():
    for name in ("build_query", "parse_query", "build_response", "parse_response", "formerr"):
        assert callable(getattr(dns, name))
