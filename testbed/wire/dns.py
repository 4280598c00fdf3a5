"""DNS helpers on `dpkt.dns` (PROTOCOL.md section 1): build queries, answer them, read answers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dpkt

from .errors import RemoteProtocolError

TYPE_A = dpkt.dns.DNS_A
TYPE_AAAA = dpkt.dns.DNS_AAAA
TYPE_NS = dpkt.dns.DNS_NS
TYPE_SOA = dpkt.dns.DNS_SOA
TYPE_ANY = dpkt.dns.DNS_ANY
OPCODE_QUERY = dpkt.dns.DNS_QUERY
RCODE_NOERROR = dpkt.dns.DNS_RCODE_NOERR
RCODE_FORMERR = dpkt.dns.DNS_RCODE_FORMERR
RCODE_NXDOMAIN = dpkt.dns.DNS_RCODE_NXDOMAIN
RCODE_NOTIMP = dpkt.dns.DNS_RCODE_NOTIMP
RCODE_REFUSED = dpkt.dns.DNS_RCODE_REFUSED
DEFAULT_TTL = 600


@dataclass(frozen=True)
class Question:
    id: int
    name: str
    qtype: int
    opcode: int = OPCODE_QUERY
    rd: bool = True     # recursion desired: a response copies it (RFC 1035 4.1.1)


@dataclass(frozen=True)
class SOA:
    """The start of authority of one zone; `minimum` is the negative-caching TTL (RFC 2308)."""

    zone: str
    mname: str
    rname: str
    serial: int = 1
    refresh: int = 3600
    retry: int = 600
    expire: int = 86400
    minimum: int = 60


def build_query(name: str, qid: int, qtype: int = TYPE_A, opcode: int = OPCODE_QUERY) -> bytes:
    # dpkt turns a trailing dot into an empty label, which corrupts the question
    q = dpkt.dns.DNS(id=qid, op=dpkt.dns.DNS_RD,
                     qd=[dpkt.dns.DNS.Q(name=name.rstrip("."), type=qtype)])
    q.opcode = opcode
    return bytes(q)


def parse_query(data: bytes) -> Question:
    """Read the single question of a query; `RemoteProtocolError` for anything malformed.

    The name keeps the asker's case (less a trailing dot): an answer echoes it as asked,
    which clients that randomise the case of their queries (0x20) check; compare names
    case-insensitively (`mocks.dns.normalize`)."""
    try:
        msg = dpkt.dns.DNS(data)
    except (dpkt.UnpackError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed DNS message: {exc}") from exc
    if msg.qr != dpkt.dns.DNS_Q:
        raise RemoteProtocolError("not a query")
    if len(msg.qd) != 1:
        raise RemoteProtocolError(f"{len(msg.qd)} questions, expected 1")
    q = msg.qd[0]
    return Question(msg.id, q.name.rstrip("."), q.type, msg.opcode, bool(msg.rd))


def _a(name: str, address: str, ttl: int):
    return dpkt.dns.DNS.RR(name=name, type=TYPE_A, ttl=ttl,
                           ip=ipaddress.IPv4Address(address).packed)


def soa_record(soa: SOA):
    return dpkt.dns.DNS.RR(name=soa.zone, type=TYPE_SOA, ttl=soa.minimum, mname=soa.mname,
                           rname=soa.rname, serial=soa.serial, refresh=soa.refresh,
                           retry=soa.retry, expire=soa.expire, minimum=soa.minimum)


def build_response(question: Question, addresses: list[str] | None, ttl: int = DEFAULT_TTL,
                   rcode: int = RCODE_NOERROR, *, authoritative: bool = True,
                   soa: SOA | None = None, answer_soa: bool = False,
                   ns: tuple[str, list[str]] | None = None) -> bytes:
    """Answer a question as an authoritative server that does not recurse.

    A records for `addresses` (A questions only); `answer_soa` answers with the zone's SOA,
    `ns` = (server name, its addresses) with the zone's NS record and its glue; otherwise,
    for a name in the zone (`soa` given), an empty answer or NXDOMAIN carries the SOA in the
    authority section so a resolver can cache the negative answer (RFC 2308). RA is clear and
    RD copied from the query; AA is set unless `authoritative` is False."""
    r = dpkt.dns.DNS(id=question.id, op=dpkt.dns.DNS_RD if question.rd else 0,
                     qd=[dpkt.dns.DNS.Q(name=question.name, type=question.qtype)])
    # qr, opcode, aa and rcode are bits of `op`: set them after it, or the constructor
    # overwrites them.
    r.qr = dpkt.dns.DNS_R
    r.opcode = question.opcode
    r.aa = 1 if authoritative else 0
    r.rcode = rcode
    if rcode == RCODE_NOERROR:
        if addresses and question.qtype == TYPE_A:
            r.an = [_a(question.name, a, ttl) for a in addresses]
        elif answer_soa and soa is not None:
            r.an = [soa_record(soa)]
        elif ns is not None and soa is not None:
            server, glue = ns
            r.an = [dpkt.dns.DNS.RR(name=soa.zone, type=TYPE_NS, ttl=ttl, nsname=server)]
            r.ar = [_a(server, a, ttl) for a in glue]
    if not r.an and soa is not None and rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
        r.ns = [soa_record(soa)]
    return bytes(r)


def error_response(query_id: int, rcode: int, question: Question | None = None) -> bytes:
    """A reply that only says `rcode` (FORMERR, NOTIMP), echoing the question if there is one."""
    r = dpkt.dns.DNS(id=query_id, qd=[] if question is None else
                     [dpkt.dns.DNS.Q(name=question.name, type=question.qtype)])
    r.qr = dpkt.dns.DNS_R
    if question is not None:
        r.opcode = question.opcode
        r.rd = 1 if question.rd else 0
    r.rcode = rcode
    return bytes(r)


def formerr(query_id: int) -> bytes:
    """A FORMERR reply for a query we could read only the id of."""
    return error_response(query_id, RCODE_FORMERR)


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
