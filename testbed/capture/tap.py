"""The in-process tap: transports report what they read and write; we render packets.

No privileges and no interface: the lab's relay (`mocks/nat.py`) and resolver
(`mocks/dns.py`) call a `Tap` with every connection they accept, every chunk they read or
deliver, every FIN and reset, and every DNS datagram; the tap renders those events as the
Ethernet/IPv4/TCP (and UDP) packets a real stack would have put on the wire, and writes them
to a pcapng file through `PcapngWriter`. The file is honest about it: its section comment
says `"how": "tap"` and `"synthesised": true` (DESIGN.md "The recorder").

What is rendered, per TCP connection (`tcp_open` -> `Conn`):

* the three-way handshake at open: SYN, SYN-ACK, ACK, each SYN with an MSS option; initial
  sequence numbers come from a seeded RNG, so the same events give the same file;
* each chunk of data split into MSS-sized segments (PSH on the last), acknowledged by the
  peer with a pure ACK after every second segment and after the last one (delayed ACK);
* FIN from each side when that side closes (half-close aware), each ACKed by the other;
  RST|ACK on a reset, after which the connection renders nothing more;
* correct IPv4 header, TCP and UDP checksums (pseudo-header included), IP ids incrementing
  per source address, TTL 64, DF set, window 65535 (no scaling);
* Ethernet addresses derived from the IPv4 addresses (locally administered 02:00:a.b.c.d).

Timestamps are the wall clock (`time.time()`) when the event is reported; packets of one
event share it plus one microsecond per packet for ordering, and stamps never go backwards.

A chunk (or FIN) the relay reports with `acked=False` (a black-holed NAT mapping: the
phone's bytes go into a hole) is rendered without the peer's ACK, and the peer's later
packets keep acknowledging only what it had before; retransmissions a real phone would make
are not invented.

Deferred start: a `Tap` made from a path without a comment (as the lab does: the lab
manifest, which the comment records, only exists once every server is bound) buffers up to
`max_pending` packets in memory until `start(comment)` opens the file, then writes them in
order; packets beyond that bound are counted as drops and recorded in the Interface
Statistics Block written at `close()`. A tap closed without being started writes nothing.

Rendering is cheap enough to record a busy lab (bench/bench_tap.py): each connection keeps a
header template per direction (`_Side`: the MACs, addresses, ports and the one's-complement
sums of the constant words), so a frame is one `struct` pack of the fields that change, and
a payload's checksum is one `int.from_bytes` modulo 0xFFFF (`ones_sum`); a segment and the
ACK it draws go to the writer in one buffered write.

Everything runs in the event-loop thread; nothing here is thread-safe, and nothing needs
to be. Memory is bounded: packets go straight to the writer's buffered file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import struct
import time
from typing import Any, BinaryIO, Optional, Union

from .pcapng_writer import PcapngWriter

log = logging.getLogger(__name__)

__all__ = ["Tap", "Conn", "GuardedTap", "mac_for", "DEFAULT_MSS"]

Addr = tuple[str, int]

DEFAULT_MSS = 1460
WINDOW = 65535
TTL = 64
_ETH_IPV4 = 0x0800
_PROTO_TCP = 6
_PROTO_UDP = 17

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_MOD = 1 << 32
_TICK = 1e-6   # ordering offset between packets of one event (one microsecond)

# Ethernet + IPv4 + TCP headers of one frame, the constant parts as templates of the
# connection: pre (MACs, ethertype, version/IHL, TOS), total length, IP id, mid (DF, TTL,
# protocol), IP checksum, addresses and ports, seq, ack, offset and flags, window, TCP
# checksum, urgent pointer.
_TCP_FRAME = struct.Struct("!16sHH4sH12sIIHHHH")
_UDP_FRAME = struct.Struct("!16sHH4sH12sHH")


def ones_sum(data: bytes) -> int:
    """The 16-bit one's-complement sum of `data` (RFC 1071; big-endian words, an odd last
    byte padded with zero), modulo 0xFFFF. As 2**16 = 1 (mod 0xFFFF), the number the bytes
    spell is congruent to the sum of their words, and C does the whole sum in one
    `int.from_bytes` and one remainder. Sums of parts add up modulo 0xFFFF."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return n % 0xFFFF


def checksum_of(total: int) -> int:
    """The Internet checksum (the complement of the folded sum) from a sum of `ones_sum`s
    and 16-bit words. A folded sum congruent to 0 is 0xFFFF (the words are never all zero:
    the IPv4 header's version and the pseudo-header's protocol are not), whose complement
    is 0: so the checksum is -total mod 0xFFFF."""
    return -total % 0xFFFF


def mac_for(ip: str) -> bytes:
    """A locally administered unicast MAC derived from an IPv4 address: 02:00:a:b:c:d."""
    return b"\x02\x00" + ipaddress.IPv4Address(ip).packed


class _Side:
    """What never changes in the frames one side of a connection sends: the header bytes
    around the fields that do, and the one's-complement sums of the constant words."""

    __slots__ = ("pre", "mid", "addrs", "ip_sum", "tcp_sum", "ip_id")

    def __init__(self, smac: bytes, dmac: bytes, sip: bytes, dip: bytes, sport: int,
                 dport: int, proto: int, ip_id: list) -> None:
        self.ip_id = ip_id      # [next IP id] of the source address, shared by its sides
        self.pre = dmac + smac + struct.pack("!HBB", _ETH_IPV4, 0x45, 0)
        self.mid = struct.pack("!HBB", 0x4000, TTL, proto)
        ports = struct.pack("!HH", sport, dport)
        self.addrs = sip + dip + ports
        addr_sum = ones_sum(sip + dip)
        # IPv4 header: version/IHL/TOS, flags/fragment, TTL/protocol, addresses (the total
        # length, the id and the checksum are added per packet)
        self.ip_sum = 0x4500 + 0x4000 + (TTL << 8 | proto) + addr_sum
        # TCP or UDP checksum: the pseudo-header's addresses and protocol, and the ports
        self.tcp_sum = addr_sum + proto + ones_sum(ports)


class Conn:
    """One rendered TCP connection (client side first)."""

    __slots__ = ("client", "server", "cip", "sip", "cmac", "smac", "c_next", "s_next",
                 "c_rcv", "s_rcv",
                 "c_fin", "s_fin", "reset", "bytes_up", "bytes_down", "up", "down")

    def __init__(self, client: Addr, server: Addr, c_isn: int, s_isn: int) -> None:
        self.client = (str(client[0]), int(client[1]))
        self.server = (str(server[0]), int(server[1]))
        self.cip = ipaddress.IPv4Address(self.client[0]).packed
        self.sip = ipaddress.IPv4Address(self.server[0]).packed
        self.cmac = mac_for(self.client[0])
        self.smac = mac_for(self.server[0])
        self.up: Optional[_Side] = None      # the frames each way (made by the tap)
        self.down: Optional[_Side] = None
        self.c_next = c_isn    # next sequence number the client sends
        self.s_next = s_isn
        self.c_rcv = 0         # what the client acknowledges (the server's bytes it has)
        self.s_rcv = 0         # what the server acknowledges
        self.c_fin = False
        self.s_fin = False
        self.reset = False
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def closed(self) -> bool:
        return self.reset or (self.c_fin and self.s_fin)

    def __repr__(self) -> str:
        return (f"Conn({self.client[0]}:{self.client[1]} -> {self.server[0]}:{self.server[1]}"
                f"{' reset' if self.reset else ''}{' closed' if self.closed else ''})")


class Tap:
    """Renders transport events as packets into a pcapng file.

    `writer_or_path`: a `PcapngWriter` (already carrying its comment), or a path / binary
    file, in which case `comment` (dict or str) is the section comment; when it is None the
    file is opened later by `start(comment)` and packets are buffered until then.
    """

    def __init__(self, writer_or_path: Union[PcapngWriter, str, os.PathLike, BinaryIO], *,
                 comment: Union[dict, str, None] = None, mss: int = DEFAULT_MSS,
                 seed: int = 0, max_pending: int = 10_000, if_name: str = "lab0",
                 snaplen: int = 262144) -> None:
        if not 64 <= mss <= 65495:
            raise ValueError(f"MSS {mss} out of range")
        self.mss = mss
        self.seed = seed
        self.if_name = if_name
        self.snaplen = snaplen
        self._rng = random.Random(seed)
        self._ip_ids: dict[bytes, list] = {}   # source address -> [its next IP id]
        self._last_us = 0
        self._target = writer_or_path
        self.writer: Optional[PcapngWriter] = None
        self._pending: Optional[list] = None
        self.max_pending = max_pending
        self.dropped = 0       # packets lost because the file was not open yet
        self.packets = 0       # packets rendered (written or buffered)
        self.connections = 0
        self.datagrams = 0
        self.closed = False
        self._errors = 0
        if isinstance(writer_or_path, PcapngWriter):
            self.writer = writer_or_path
        elif comment is not None:
            self.start(comment)
        else:
            self._pending = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> bool:
        return self.writer is not None

    @property
    def path(self):
        return self.writer.path if self.writer is not None else self._target

    def start(self, comment: Union[dict, str]) -> None:
        """Open the file with its section comment and write what was buffered."""
        if self.writer is not None:
            raise RuntimeError("tap already started")
        if self.closed:
            raise RuntimeError("tap is closed")
        self.writer = PcapngWriter(self._target, comment=comment, snaplen=self.snaplen,
                                   if_name=self.if_name)
        pending, self._pending = self._pending or [], None
        for ts_us, frame in pending:
            self.writer.write_ns(ts_us * 1000, frame)

    def flush(self) -> None:
        """Push what is written so far to the file (for readers following a live capture)."""
        if self.writer is not None and not self.closed:
            self.writer.flush()

    def close(self) -> None:
        """Write the statistics block (tap drops, if any) and close the file."""
        if self.closed:
            return
        self.closed = True
        if self.writer is None:
            self._pending = None
            return
        try:
            self.writer.write_stats(self.dropped, self.packets, time.time())
        finally:
            self.writer.close()

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ output
    def _stamp(self, ts: Optional[float]) -> int:
        """Microseconds for the next packet: the event's time, never before the last one."""
        us = int((time.time() if ts is None else ts) * 1_000_000)
        if us <= self._last_us:
            us = self._last_us + 1
        self._last_us = us
        return us

    def _next(self) -> int:
        """The next packet of the same event: one microsecond later."""
        self._last_us += 1
        return self._last_us

    def _emit(self, ts_us: int, frame: bytes) -> None:
        if self.closed:
            return
        self.packets += 1
        w = self.writer
        if w is not None:
            try:
                w.write_units(ts_us * 1000 if w.tsresol_ns else ts_us, frame)
            except (OSError, ValueError):
                self._write_failed(1)
        elif self._pending is not None and len(self._pending) < self.max_pending:
            self._pending.append((ts_us, frame))
        else:
            self.dropped += 1

    def _write_failed(self, packets: int) -> None:
        self._errors += 1
        self.dropped += packets
        if self._errors == 1:
            log.exception("tap: cannot write %s", self.path)

    def _ip_counter(self, src: bytes) -> list:
        """The IP id counter of a source address (IDs start at random, per address)."""
        ctr = self._ip_ids.get(src)
        if ctr is None:
            ctr = self._ip_ids[src] = [self._rng.randrange(0x10000)]
        return ctr

    def _tcp(self, c: Conn, from_client: bool, seq: int, ack: int, flags: int,
             payload: bytes = b"", options: bytes = b"") -> bytes:
        """One Ethernet/IPv4/TCP frame from the connection's header template: only the
        lengths, the IP id, seq, ack, flags and the two checksums are computed."""
        side = c.up if from_client else c.down
        body = options + payload if options else payload
        tcp_len = 20 + len(body)
        total = 20 + tcp_len
        ctr = side.ip_id
        ip_id = ctr[0]
        ctr[0] = (ip_id + 1) & 0xFFFF
        seq %= _MOD
        ack = ack % _MOD if flags & ACK else 0
        offflags = (20 + len(options)) << 10 | flags     # data offset in words, << 12
        tcp_sum = (side.tcp_sum + tcp_len + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16)
                   + (ack & 0xFFFF) + offflags + WINDOW)
        if body:    # ones_sum, inline (the hot path)
            b = int.from_bytes(body, "big")
            tcp_sum += (b << 8 if len(body) & 1 else b) % 0xFFFF
        # checksum_of, inline: -sum mod 0xFFFF
        head = _TCP_FRAME.pack(side.pre, total, ip_id, side.mid,
                               -(side.ip_sum + total + ip_id) % 0xFFFF, side.addrs, seq,
                               ack, offflags, WINDOW, -tcp_sum % 0xFFFF, 0)
        return head + body if body else head

    # ------------------------------------------------------------------ TCP events
    def tcp_open(self, client: Addr, server: Addr, ts: Optional[float] = None) -> Conn:
        """A connection was accepted: SYN, SYN-ACK, ACK (MSS option on both SYNs)."""
        rng = self._rng
        c = Conn(client, server, rng.getrandbits(32), rng.getrandbits(32))
        # the client's counter first: its SYN is the first packet (the same draws as ever)
        c.up = _Side(c.cmac, c.smac, c.cip, c.sip, c.client[1], c.server[1], _PROTO_TCP,
                     self._ip_counter(c.cip))
        c.down = _Side(c.smac, c.cmac, c.sip, c.cip, c.server[1], c.client[1], _PROTO_TCP,
                       self._ip_counter(c.sip))
        self.connections += 1
        mss_opt = struct.pack("!BBH", 2, 4, self.mss)
        t = self._stamp(ts)
        self._emit(t, self._tcp(c, True, c.c_next, 0, SYN, options=mss_opt))
        c.c_next = (c.c_next + 1) % _MOD
        c.s_rcv = c.c_next
        self._emit(self._next(), self._tcp(c, False, c.s_next, c.s_rcv, SYN | ACK,
                                           options=mss_opt))
        c.s_next = (c.s_next + 1) % _MOD
        c.c_rcv = c.s_next
        self._emit(self._next(), self._tcp(c, True, c.c_next, c.c_rcv, ACK))
        return c

    def tcp_data(self, conn: Conn, from_client: bool, data: bytes,
                 ts: Optional[float] = None, *, acked: bool = True) -> None:
        """`data` went from one side to the other: MSS-sized segments, ACKed every second
        segment and at the end (unless `acked` is False)."""
        c = conn
        if not data or c.reset:
            return
        if (c.c_fin if from_client else c.s_fin):
            log.debug("tap: data after FIN on %r ignored", c)
            return
        t = self._stamp(ts)
        mss = self.mss
        n = len(data)
        if n <= mss and acked:   # most chunks: one segment, PSH, and the peer's ACK
            if from_client:
                seg = self._tcp(c, True, c.c_next, c.c_rcv, ACK | PSH, data)
                c.c_next = c.s_rcv = (c.c_next + n) % _MOD
                ack = self._tcp(c, False, c.s_next, c.s_rcv, ACK)
            else:
                seg = self._tcp(c, False, c.s_next, c.s_rcv, ACK | PSH, data)
                c.s_next = c.c_rcv = (c.s_next + n) % _MOD
                ack = self._tcp(c, True, c.c_next, c.c_rcv, ACK)
            w = self.writer
            if w is not None and not self.closed and not w.tsresol_ns:
                self._last_us = t + 1
                self.packets += 2
                try:
                    w.write_units(t, seg, ack)
                except (OSError, ValueError):
                    self._write_failed(2)
            else:
                self._emit(t, seg)
                self._emit(self._next(), ack)
        elif n <= mss:
            self._segment(c, from_client, t, data, PSH, False)
        else:
            mv = memoryview(data)
            unacked = 0
            for off in range(0, n, mss):
                last = off + mss >= n
                unacked += 1
                self._segment(c, from_client, t, bytes(mv[off:off + mss]),
                              PSH if last else 0, acked and (unacked == 2 or last))
                if unacked == 2:
                    unacked = 0
                if not last:
                    t = self._next()
        if from_client:
            c.bytes_up += n
        else:
            c.bytes_down += n

    def _segment(self, c: Conn, from_client: bool, t: int, piece: bytes, psh: int,
                 acked: bool) -> None:
        """One data segment at `t`, then (if `acked`) the receiver's ACK of everything."""
        if from_client:
            self._emit(t, self._tcp(c, True, c.c_next, c.c_rcv, ACK | psh, piece))
            c.c_next = (c.c_next + len(piece)) % _MOD
        else:
            self._emit(t, self._tcp(c, False, c.s_next, c.s_rcv, ACK | psh, piece))
            c.s_next = (c.s_next + len(piece)) % _MOD
        if acked:
            self._peer_ack(c, from_client)

    def _peer_ack(self, c: Conn, from_client: bool) -> None:
        """The receiver of `from_client`'s bytes acknowledges everything so far."""
        if from_client:
            c.s_rcv = c.c_next
            frame = self._tcp(c, False, c.s_next, c.s_rcv, ACK)
        else:
            c.c_rcv = c.s_next
            frame = self._tcp(c, True, c.c_next, c.c_rcv, ACK)
        self._emit(self._next(), frame)

    def tcp_close(self, conn: Conn, from_client: bool, reset: bool = False,
                  ts: Optional[float] = None, *, acked: bool = True) -> None:
        """One side closed: FIN|ACK (ACKed by the other side unless `acked` is False), or
        RST|ACK on a reset. A second FIN from the same side, or anything after a reset, is
        ignored."""
        c = conn
        if c.reset:
            return
        t = self._stamp(ts)
        if reset:
            seq = c.c_next if from_client else c.s_next
            ack = c.c_rcv if from_client else c.s_rcv
            self._emit(t, self._tcp(c, from_client, seq, ack, RST | ACK))
            c.reset = True
            return
        if from_client:
            if c.c_fin:
                return
            self._emit(t, self._tcp(c, True, c.c_next, c.c_rcv, FIN | ACK))
            c.c_next = (c.c_next + 1) % _MOD
            c.c_fin = True
        else:
            if c.s_fin:
                return
            self._emit(t, self._tcp(c, False, c.s_next, c.s_rcv, FIN | ACK))
            c.s_next = (c.s_next + 1) % _MOD
            c.s_fin = True
        if acked:
            self._peer_ack(c, from_client)

    # ------------------------------------------------------------------ UDP
    def udp(self, src: Addr, dst: Addr, payload: bytes, ts: Optional[float] = None) -> None:
        """One datagram (DNS): Ethernet/IPv4/UDP with its checksum."""
        sip = ipaddress.IPv4Address(src[0]).packed
        dip = ipaddress.IPv4Address(dst[0]).packed
        ctr = self._ip_counter(sip)
        side = _Side(mac_for(src[0]), mac_for(dst[0]), sip, dip, int(src[1]), int(dst[1]),
                     _PROTO_UDP, ctr)
        ulen = 8 + len(payload)
        total = 20 + ulen
        ip_id = ctr[0]
        ctr[0] = (ip_id + 1) & 0xFFFF
        cs = checksum_of(side.tcp_sum + 2 * ulen + ones_sum(payload))  # pseudo and header
        frame = _UDP_FRAME.pack(side.pre, total, ip_id, side.mid,
                                checksum_of(side.ip_sum + total + ip_id), side.addrs, ulen,
                                cs or 0xFFFF) + payload   # 0 means "no checksum" in UDP
        self.datagrams += 1
        self._emit(self._stamp(ts), frame)

    def stats(self) -> dict[str, Any]:
        return {"packets": self.packets, "dropped": self.dropped,
                "connections": self.connections, "datagrams": self.datagrams}


class GuardedTap:
    """A tap as the transports that report to it hold it: the same methods, none of which
    can raise. The first failure is logged with its traceback and later ones only counted
    (`failures`), so a broken tap (a full disk, a bug) never breaks the relay or the
    resolver, nor floods the log once per packet."""

    def __init__(self, tap: Any, who: str) -> None:
        self.tap = tap
        self.who = who
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.tap, name)
        if not callable(target):
            return target

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - whatever the tap does, the caller goes on
                self.failures += 1
                if self.failures == 1:
                    log.exception("%s: tap %s failed (logged once, later failures counted)",
                                  self.who, name)
                return None
        self.__dict__[name] = guarded     # made once per method: later calls find it here
        return guarded
