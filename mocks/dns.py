"""The lab resolver (PROTOCOL.md section 1): authoritative for the lab's zones, over UDP and TCP.

Only what a 2013 phone asks is answered, the way an authoritative server that does not
recurse answers it: A queries for the lab's names with every configured address (the client
picks one and falls back to the next), TTL 600, AA set and RA clear. Names match whatever
their case, and an answer echoes the question in the case it was asked (clients that
randomise it, 0x20, check that). Each host's parent name is
a zone (`weixin.qq.com`, `mapabc.com`, `qlogo.cn`, `qpic.cn`) with an SOA and one NS,
`ns.<zone>`, whose A record is the resolver's own address, so `dig SOA` and `dig NS` show a
well-formed zone. Other types for a known name are NOERROR with an empty answer (and the SOA
in the authority section), so a client asking AAAA first falls back to A instead of giving up;
unknown names are NXDOMAIN; opcodes other than QUERY are NOTIMP. Malformed messages get
FORMERR when there is at least a query id to answer, otherwise nothing, and no message can
stop the server: each one is handled under its own try/except and counted.

DNS over TCP (RFC 7766) is served on the same port: two-byte length-prefixed messages,
several per connection, answered in order; connections are capped in number, in all and per
client address (so one client cannot take every slot), and closed when idle, so clients that
never finish hold nothing for long.

`stats` counts every message under "queries" and then under exactly one of "answered"
(NOERROR), "nxdomain", "formerr", "notimp", "refused" or "dropped", so queries == the sum of
the others.

Under server replay (`replay`, set by the lab) each query is first offered to the replay,
which says whether it is answered as usual (the capture has it: the recorded answer's hosts
are this lab's addresses), refused (REFUSED) or not answered at all.

An optional `tap` (e.g. `testbed.capture.tap.Tap`) is told every datagram received and
every reply sent, with the real addresses: `tap.udp(src, dst, payload)`. TCP is recorded by
the relay in front of the TCP listener when the lab has one (`mocks.runner`).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import time
from typing import Callable, Optional

from testbed.capture.tap import GuardedTap
from testbed.wire.dns import (OPCODE_QUERY, RCODE_NOTIMP, RCODE_NXDOMAIN, RCODE_REFUSED, SOA,
                              TYPE_A,
                              TYPE_NS, TYPE_SOA, Question, build_response, error_response,
                              formerr, parse_query)

from .limits import AddressCap, peer_address
from .served import RequestObserver, Served, endpoint, tell

log = logging.getLogger(__name__)

MAX_DATAGRAM = 512          # classic DNS over UDP (RFC 1035 4.2.1); we never advertise EDNS
SEEN_LIMIT = 10_000
_QR_BIT = 0x80              # in the third header byte: set on responses
_TC_BIT = 0x02              # in the third header byte: the answer was truncated
MAX_TCP_MESSAGE = 0xFFFF    # the two-byte length prefix's bound
MAX_TCP_CONNECTIONS = 256   # at once; a connection beyond this is closed at once
# from one client address at once: without it one address could hold every slot above and
# leave the other phones no DNS over TCP
MAX_TCP_PER_ADDRESS = 16
TCP_IDLE_S = 10.0           # wall seconds a TCP client may stay silent (RFC 7766 6.2.3)
NS_LABEL = "ns"
PORT_TRIES = 20              # port 0: UDP ports tried until the same TCP port is free
ANSWERS_KEPT = 1024          # distinct questions whose answers are kept (see `answer`)
# the longest query kept: over TCP a query may be 64 KiB, 1,024 of them 64 MB held for good
KEPT_QUERY_MAX = MAX_DATAGRAM
_KEPT_OUTCOMES = frozenset({"answered", "nxdomain", "notimp"})


def normalize(name: str) -> str:
    """DNS names compare case-insensitively and the root dot is optional in configuration."""
    return name.rstrip(".").lower()


def _name_end(data: bytes) -> int:
    """Where the name of a message's first question ends (it starts at byte 12), or -1 when
    it is not plain labels (a pointer, an extended label type) or runs off the end."""
    i, n = 12, len(data)
    while i < n:
        length = data[i]
        if length == 0:
            return i + 1
        if length > 63:
            return -1
        i += 1 + length
    return -1


def zone_of(host: str) -> str:
    """The zone a lab host name lives in: its parent (`long.weixin.qq.com` -> `weixin.qq.com`)."""
    labels = normalize(host).split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else ".".join(labels)


class LabDNS(asyncio.DatagramProtocol):
    """`records` maps host name -> IPv4 addresses, served in the order given.

    `ns_address` is the address `ns.<zone>` resolves to (default: the address the UDP socket
    is bound to)."""

    def __init__(self, records: dict[str, list[str]], ttl: int = 600, *, tap=None,
                 ns_address: Optional[str] = None, tcp_idle_s: float = TCP_IDLE_S,
                 max_tcp_connections: int = MAX_TCP_CONNECTIONS,
                 max_tcp_per_address: Optional[int] = MAX_TCP_PER_ADDRESS,
                 backlog: int = 4096) -> None:
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise ValueError(f"TTL {ttl} outside 0..2^31-1")
        self.ttl = ttl
        self.records: dict[str, tuple[str, ...]] = {}
        for name, addresses in records.items():
            # Fail at start-up on a bad address, not later inside an answer.
            checked = tuple(str(ipaddress.IPv4Address(a)) for a in addresses)
            self.records[normalize(name)] = checked
        self.stats: collections.Counter = collections.Counter()
        self.seen: collections.deque[tuple[str, int]] = collections.deque(maxlen=SEEN_LIMIT)
        self.observer: Optional[RequestObserver] = None   # told of every query answered
        self._asked = ""        # the name of the query `answer` read last
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.tap = GuardedTap(tap, "lab DNS") if tap is not None else None
        self.zones: dict[str, SOA] = {}
        for name in self.records:
            zone = zone_of(name)
            self.zones.setdefault(zone, SOA(zone, f"{NS_LABEL}.{zone}", f"hostmaster.{zone}"))
        self.ns_address = ns_address
        self.tcp_server: Optional[asyncio.base_events.Server] = None
        self.transport_tap = None   # a recording lab's `TransportTap`: TCP queries reported
        self.tcp_connections: set[_TCPConnection] = set()
        self.tcp_idle_s = tcp_idle_s
        self.max_tcp_connections = max_tcp_connections
        self.tcp_address_cap = AddressCap(max_tcp_per_address)
        self.backlog = backlog
        #: server replay: (name, qtype) -> "answer", "refuse" or "drop"
        self.replay: Optional[Callable[[str, int], str]] = None
        # (tcp, the query after its id) -> (the answer after its id, outcome, name, qtype)
        self._answers: dict[tuple[bool, bytes], tuple[bytes, str, str, int]] = {}

    # ------------------------------------------------------------------ lifecycle
    async def listen(self, host: str, port: int, *, tcp: bool = True) -> None:
        """Bind a UDP socket and (unless `tcp` is False) a TCP listener on the same port; with
        port 0 read the chosen one from `address`."""
        if self.transport is not None:
            raise RuntimeError("already listening")
        loop = asyncio.get_running_loop()
        # with port 0 the UDP port is free but its TCP twin may not be: try a few
        for attempt in range(1 if port or not tcp else PORT_TRIES):
            await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
            if not tcp:
                return
            try:
                await self.listen_tcp(host, self.address[1])
                return
            except OSError as exc:
                self.close()
                if port or exc.errno != errno.EADDRINUSE or attempt == PORT_TRIES - 1:
                    raise

    async def listen_tcp(self, host: str, port: int) -> int:
        """Serve DNS over TCP on host:port (port 0: any free one); returns the bound port."""
        loop = asyncio.get_running_loop()
        factory = lambda: _TCPConnection(self)  # noqa: E731
        if self.transport_tap is not None:
            factory = self.transport_tap.wrap(factory)
        self.tcp_server = await loop.create_server(factory, host, port,
                                                   reuse_address=True, backlog=self.backlog)
        return self.tcp_server.sockets[0].getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        if self.transport is None:
            raise RuntimeError("not listening")
        return self.transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        self._answers.clear()   # `ns.<zone>` may answer another address once listening again
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None
        for conn in list(self.tcp_connections):
            conn.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable from a client that already went away: nothing to do.
        log.debug("lab DNS socket error: %s", exc)

    # ------------------------------------------------------------------ queries
    def _tap_udp(self, src, dst, payload: bytes) -> None:
        self.tap.udp(tuple(src[:2]), tuple(dst[:2]), payload)

    def observe(self, client, t0: float, outcome: str) -> None:
        """Tell the observer (if any) of the query just answered (`outcome`, from `t0`)."""
        if self.observer is not None:
            tell(self.observer, Served("dns", endpoint(client), self._asked or "?", outcome,
                                       (time.perf_counter() - t0) * 1000))
        self._asked = ""

    def datagram_received(self, data: bytes, addr) -> None:
        t0 = time.perf_counter()
        self.stats["queries"] += 1
        here = None
        if self.tap is not None and self.transport is not None:
            here = self.transport.get_extra_info("sockname")
            self._tap_udp(addr, here, data)
        try:
            reply, outcome = self.answer(data)
        except Exception:  # noqa: BLE001 - one bad datagram must never stop the resolver
            log.exception("lab DNS failed on a %d-byte datagram from %s", len(data), addr)
            reply, outcome = None, "dropped"
        if reply is not None and self.transport is not None:
            try:
                self.transport.sendto(reply, addr)
            except Exception:  # noqa: BLE001 - e.g. the socket closed under us
                log.debug("lab DNS could not reply to %s", addr, exc_info=True)
                outcome = "dropped"
            else:
                if here is not None:
                    self._tap_udp(here, addr, reply)
        self.stats[outcome] += 1
        self.observe(addr, t0, outcome)

    def answer(self, data: bytes, tcp: bool = False) -> tuple[Optional[bytes], str]:
        """The reply to one message (or None) and how it is counted; over TCP neither the
        query nor the answer is held to the 512 bytes of a classic datagram.

        An answer is a function of the query's bytes after its id (the zones never change
        while the server listens) but for the name's case, which it echoes as asked (0x20
        randomisation); so the answers to the first `ANSWERS_KEPT` distinct questions (of at
        most `KEPT_QUERY_MAX` bytes, the name case-folded) are kept and the next query asking
        the same gets the kept bytes under its own id and in its own case: dpkt's parse and
        build were most of a query's cost, and 3,000 phones ask the same two questions. Not
        under server replay, whose verdicts may change."""
        # kept by the question's name case-folded (names compare so) and every other byte
        # as it is; a name that is not plain labels (a pointer) is not kept
        end = _name_end(data) if self.replay is None else -1
        if end < 0:
            return self._answer(data, tcp)
        key = (tcp, data[2:12], data[12:end].lower(), data[end:])
        kept = self._answers.get(key)
        if kept is not None:
            tail, outcome, name, qtype = kept
            self.seen.append((name, qtype))
            self._asked = name
            # the answer's question sits where the query's does: the asker's case written
            # there reaches every name dpkt pointed at it (the answers' owners, the zone)
            return data[:2] + tail[:10] + data[12:end] + tail[end - 2:], outcome
        reply, outcome = self._answer(data, tcp)
        if (reply is not None and outcome in _KEPT_OUTCOMES
                and len(self._answers) < ANSWERS_KEPT and len(data) <= KEPT_QUERY_MAX
                and self.seen and reply[12:end].lower() == key[2]):
            name, qtype = self.seen[-1]
            self._answers[key] = (reply[2:], outcome, name, qtype)
        return reply, outcome

    def _answer(self, data: bytes, tcp: bool) -> tuple[Optional[bytes], str]:
        limit = MAX_TCP_MESSAGE if tcp else MAX_DATAGRAM
        if len(data) > limit:
            return None, "dropped"
        try:
            q = parse_query(data)
        except Exception:  # noqa: BLE001 - dpkt raises more than parse_query wraps
            # Answer FORMERR only to what claims to be a query: replying to a response (QR
            # set) could start a loop between two resolvers, and without an id there is
            # nothing a client could match the reply to.
            if len(data) >= 2 and (len(data) < 3 or not data[2] & _QR_BIT):
                return formerr(int.from_bytes(data[:2], "big")), "formerr"
            return None, "dropped"
        name = normalize(q.name)   # matched so; the answer echoes `q.name` as asked
        self.seen.append((name, q.qtype))
        self._asked = name
        if q.opcode != OPCODE_QUERY:
            return error_response(q.id, RCODE_NOTIMP, q), "notimp"
        if self.replay is not None:
            verdict = self.replay(name, q.qtype)
            if verdict == "drop":
                return None, "dropped"
            if verdict == "refuse":
                return error_response(q.id, RCODE_REFUSED, q), "refused"
        addresses = self._addresses(name)
        soa = self._zone_soa(name)
        if addresses is None and name not in self.zones:
            if soa is None:     # not ours at all: NXDOMAIN, as the contract fixes, not AA
                return build_response(q, None, self.ttl, rcode=RCODE_NXDOMAIN,
                                      authoritative=False), "nxdomain"
            return build_response(q, None, self.ttl, rcode=RCODE_NXDOMAIN, soa=soa), "nxdomain"
        if name in self.zones and q.qtype in (TYPE_SOA, TYPE_NS):
            server = f"{NS_LABEL}.{name}"
            return build_response(q, None, self.ttl, soa=soa, answer_soa=q.qtype == TYPE_SOA,
                                  ns=(server, self._addresses(server) or [])), "answered"
        return self._fit(q, list(addresses or ()) if q.qtype == TYPE_A else [], soa,
                         limit), "answered"

    def _addresses(self, name: str) -> Optional[tuple[str, ...]]:
        """A records of a lab name; `ns.<zone>` is the resolver itself."""
        found = self.records.get(name)
        if found is None and name.startswith(NS_LABEL + ".") and name[3:] in self.zones:
            ns = self.ns_address or (self.address[0] if self.transport is not None else None)
            found = (ns,) if ns else None
        return found

    def _zone_soa(self, name: str) -> Optional[SOA]:
        """The SOA of the lab zone `name` is in (or is), None for a name outside them."""
        while name:
            if name in self.zones:
                return self.zones[name]
            name = name.partition(".")[2]
        return None

    def _fit(self, q: Question, addresses: list[str], soa: Optional[SOA],
             limit: int) -> bytes:
        """An answer within `limit` bytes: drop trailing records and set TC if it would not
        fit."""
        reply = build_response(q, addresses, self.ttl, soa=soa)
        if len(reply) <= limit:
            return reply
        while addresses:
            addresses.pop()
            reply = build_response(q, addresses, self.ttl, soa=soa)
            if len(reply) <= limit:
                break
        out = bytearray(reply)
        out[2] |= _TC_BIT
        return bytes(out)


class _TCPConnection(asyncio.Protocol):
    """One DNS-over-TCP client: length-prefixed queries in, answers out in the same order.

    The idle deadline runs from the accept and from each whole message, not from any byte,
    so a message dripped a byte at a time is cut there too; a client that does not read its
    answers is not read either (back-pressure), and its close at the deadline is an abort,
    so no client holds a socket or a growing buffer by not reading.
    """

    def __init__(self, server: LabDNS) -> None:
        self.server = server
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.idle: Optional[asyncio.TimerHandle] = None
        self.writing_paused = False   # our answers back up: answer and read nothing more
        self.client: Optional[str] = None   # its address, once admitted under the caps

    def connection_made(self, transport) -> None:
        self.transport = transport
        srv = self.server
        client = peer_address(transport.get_extra_info("peername"))
        if len(srv.tcp_connections) >= srv.max_tcp_connections \
                or not srv.tcp_address_cap.admit(client):
            transport.abort()
            return
        self.client = client
        srv.tcp_connections.add(self)
        self._rearm()

    def _rearm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.tcp_idle_s, self._idle)

    def _idle(self) -> None:
        t = self.transport
        if t is not None and t.get_write_buffer_size():
            t.abort()   # answers it never read would hold the socket until it does: drop them
        else:
            self.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._answer_buffered()

    def _answer_buffered(self) -> None:
        """Answer the whole messages buffered, until the answers back up (`pause_writing`):
        the rest waits, so what a client that does not read costs is bounded by the
        transport's high-water mark and one read, however big the answers."""
        srv = self.server
        answered = False
        while len(self.buf) >= 2 and not self.writing_paused:
            n = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) < 2 + n:
                break
            msg = bytes(self.buf[2:2 + n])
            del self.buf[:2 + n]
            srv.stats["queries"] += 1
            t0 = time.perf_counter()
            try:
                reply, outcome = srv.answer(msg, tcp=True)
            except Exception:  # noqa: BLE001 - one bad message must never stop the resolver
                log.exception("lab DNS failed on a %d-byte TCP message", n)
                reply, outcome = None, "dropped"
            srv.stats[outcome] += 1
            srv.observe(self.transport.get_extra_info("peername") if self.transport else "",
                        t0, outcome)
            if reply is None:   # nothing to say to it: a TCP client learns that by a close
                self.close()
                return
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
            answered = True
        if answered:
            self._rearm()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.transport.is_closing():
            self._answer_buffered()
            if not self.writing_paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()   # after the answers written (the idle deadline still runs)

    def connection_lost(self, exc) -> None:
        self.server.tcp_connections.discard(self)
        if self.client is not None:
            self.server.tcp_address_cap.release(self.client)
            self.client = None
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
