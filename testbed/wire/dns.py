"""DNS helpers on `dpkt.dns` (PROTOCOL.md section 1): build queries, answer them, read answers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dpkt

from .errors import RemoteProtocolError

TYPE_A = dpkt.dns.DNS_A
TYPE_AAAA = dpkt.dns.DNS_AAAA
RCODE_NOERROR = dpkt.dns.DNS_RCODE_NOERR
RCODE_FORMERR = dpkt.dns.DNS_RCODE_FORMERR
RCODE_NXDOMAIN = dpkt.dns.DNS_RCODE_NXDOMAIN
DEFAULT_TTL = 600


@dataclass(frozen=True)
class Question:
    id: int
    name: str
    qtype: int


def build_query(name: str, qid: int, qtype: int = TYPE_A) -> bytes:
    # dpkt turns a trailing dot into an empty label, which corrupts the question
    q = dpkt.dns.DNS(id=qid, op=dpkt.dns.DNS_RD,
                     qd=[dpkt.dns.DNS.Q(name=name.rstrip("."), type=qtype)])
    return bytes(q)


def parse_query(data: bytes) -> Question:
    """Read the single question of a query; `RemoteProtocolError` for anything malformed."""
    try:
        msg = dpkt.dns.DNS(data)
    except (dpkt.UnpackError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed DNS message: {exc}") from exc
    if msg.qr != dpkt.dns.DNS_Q:
        raise RemoteProtocolError("not a query")
    if len(msg.qd) != 1:
        raise RemoteProtocolError(f"{len(msg.qd)} questions, expected 1")
    q = msg.qd[0]
    return Question(msg.id, q.name.rstrip(".").lower(), q.type)


def build_response(question: Question, addresses: list[str] | None, ttl: int = DEFAULT_TTL,
                   rcode: int = RCODE_NOERROR) -> bytes:
    """Answer a question: A records for `addresses`; none for other types or NXDOMAIN."""
    r = dpkt.dns.DNS(id=question.id, op=dpkt.dns.DNS_RD | dpkt.dns.DNS_RA,
                     qd=[dpkt.dns.DNS.Q(name=question.name, type=question.qtype)])
    # qr and rcode are bits of `op`: set them after it, or the constructor overwrites them.
    r.qr = dpkt.dns.DNS_R
    r.rcode = rcode
    if addresses and question.qtype == TYPE_A and rcode == RCODE_NOERROR:
        r.an = [dpkt.dns.DNS.RR(name=question.name, type=TYPE_A, ttl=ttl,
                                ip=ipaddress.IPv4Address(a).packed) for a in addresses]
    return bytes(r)


def formerr(query_id: int) -> bytes:
    """A FORMERR reply for a query we could read only the id of."""
    r = dpkt.dns.DNS(id=query_id, qd=[])
    r.qr = dpkt.dns.DNS_R
    r.rcode = RCODE_FORMERR
    return bytes(r)


@dataclass(frozen=True)
class Answer:
    id: int
    rcode: int
    name: str
    addresses: tuple[str, ...]
    ttls: tuple[int, ...]


def parse_response(data: bytes) -> Answer:
    try:
        msg = dpkt.dns.DNS(data)
    except (dpkt.UnpackError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed DNS message: {exc}") from exc
    if msg.qr != dpkt.dns.DNS_R:
        raise RemoteProtocolError("not a response")
    name = msg.qd[0].name if msg.qd else ""
    a = [rr for rr in msg.an if rr.type == TYPE_A]
    for rr in a:
        if len(rr.ip) != 4:
            raise RemoteProtocolError(f"A record with {len(rr.ip)} bytes of data, expected 4")
    return Answer(msg.id, msg.rcode, name, tuple(str(ipaddress.IPv4Address(rr.ip)) for rr in a),
                  tuple(rr.ttl for rr in a))
