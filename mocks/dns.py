"""The lab resolver (PROTOCOL.md section 1): authoritative A records for the lab's hosts, over UDP.

Only what a 2013 phone asks is answered: A queries for the lab's names, every configured
address in every answer (the client picks one and falls back to the next), TTL 600. Other
types for a known name are NOERROR with an empty answer, so a client asking AAAA first falls
back to A instead of giving up; unknown names are NXDOMAIN. Malformed datagrams get FORMERR
when there is at least a query id to answer, otherwise nothing, and no datagram can stop the
server: each one is handled under its own try/except and counted.

`stats` counts every datagram under "queries" and then under exactly one of "answered"
(NOERROR), "nxdomain", "formerr" or "dropped", so queries == the sum of the other four.

An optional `tap` (e.g. `testbed.capture.tap.Tap`) is told every datagram received and
every reply sent, with the real addresses: `tap.udp(src, dst, payload)`.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from typing import Optional

from testbed.wire.dns import (RCODE_NXDOMAIN, TYPE_A, Question, build_response, formerr,
                              parse_query)

log = logging.getLogger(__name__)

MAX_DATAGRAM = 512          # classic DNS over UDP (RFC 1035 4.2.1); we never advertise EDNS
SEEN_LIMIT = 10_000
_QR_BIT = 0x80              # in the third header byte: set on responses
_TC_BIT = 0x02              # in the third header byte: the answer was truncated


def normalize(name: str) -> str:
    """DNS names compare case-insensitively and the root dot is optional in configuration."""
    return name.rstrip(".").lower()


class LabDNS(asyncio.DatagramProtocol):
    """`records` maps host name -> IPv4 addresses, served in the order given."""

    def __init__(self, records: dict[str, list[str]], ttl: int = 600, *, tap=None) -> None:
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
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.tap = tap
        self._tap_failed = False

    # ------------------------------------------------------------------ lifecycle
    async def listen(self, host: str, port: int) -> None:
        """Bind a UDP socket; with port 0 read the chosen one from `address`."""
        if self.transport is not None:
            raise RuntimeError("already listening")
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))

    @property
    def address(self) -> tuple[str, int]:
        if self.transport is None:
            raise RuntimeError("not listening")
        return self.transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable from a client that already went away: nothing to do.
        log.debug("lab DNS socket error: %s", exc)

    # ------------------------------------------------------------------ queries
    def _tap_udp(self, src, dst, payload: bytes) -> None:
        try:
            self.tap.udp(tuple(src[:2]), tuple(dst[:2]), payload)
        except Exception:  # noqa: BLE001 - a broken tap must not stop the resolver
            if not self._tap_failed:
                self._tap_failed = True
                log.exception("lab DNS: tap failed")

    def datagram_received(self, data: bytes, addr) -> None:
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

    def answer(self, data: bytes) -> tuple[Optional[bytes], str]:
        """The reply to one datagram (or None) and how it is counted."""
        if len(data) > MAX_DATAGRAM:
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
        self.seen.append((q.name, q.qtype))
        addresses = self.records.get(normalize(q.name))
        if addresses is None:
            return build_response(q, None, self.ttl, rcode=RCODE_NXDOMAIN), "nxdomain"
        return self._fit(q, list(addresses) if q.qtype == TYPE_A else []), "answered"

    def _fit(self, q: Question, addresses: list[str]) -> bytes:
        """An answer within 512 bytes: drop trailing records and set TC if it would not fit."""
        reply = build_response(q, addresses, self.ttl)
        if len(reply) <= MAX_DATAGRAM:
            return reply
        while addresses:
            addresses.pop()
            reply = build_response(q, addresses, self.ttl)
            if len(reply) <= MAX_DATAGRAM:
                break
        out = bytearray(reply)
        out[2] |= _TC_BIT
        return bytes(out)
