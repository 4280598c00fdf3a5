"""TCP flows with per-direction stream reassembly, and UDP conversations.

`FlowTable.feed(item)` takes the `Segment`s and `Datagram`s that `packets.decode` makes, in
capture order. For TCP it

- finds the flow by its 4-tuple; a SYN with a new ISN on a 4-tuple already seen starts a
  new flow, so flows line up one to one with tshark's `tcp.stream`;
- decides who is the client: the sender of the SYN (or the receiver of the SYN-ACK); without
  a handshake, the side with the higher (ephemeral) port, or the first sender if equal;
- runs the sequence analysis (`tcp_analysis`: tshark's `tcp.analysis.*` flags) and counts
  its flags per flow;
- reassembles each direction by sequence number: retransmissions and overlaps are trimmed,
  out-of-order data is held (up to `max_buffer` bytes per direction) until the hole is
  filled; a hole the peer has already ACKed (the capture missed it) or that outgrows the
  buffer is skipped and counted in `gaps`; a capture that starts mid-stream starts at the
  first segment seen. In-order bytes go to `on_data(flow, direction, ts, data)`, skipped
  holes to `on_gap(flow, direction, ts, nbytes)`;
- ends a flow on RST, or when both FINs are in and both directions are complete, or at
  `close()`: `on_flow_end(flow)` is called once per flow, and the flow then keeps only its
  summary (counters, no payload). Late segments of an ended flow (the last ACK) still count.

Memory is bounded by the open flows (each holds at most `max_buffer` bytes per direction of
out-of-order data) plus a small summary per flow; with `keep_flows=False` and a `linger`,
ended flows are forgotten `linger` capture-seconds after their end, summaries included.
"""

from __future__ import annotations

import heapq
import socket
import struct
from collections import deque
from typing import Callable, Optional

from .packets import Datagram, Segment
from .tcp_analysis import REUSED_PORTS, Connection, Counts, filter_names

__all__ = ["FlowTable", "TcpFlow", "UdpConversation", "DEFAULT_MAX_BUFFER"]

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
M32 = 0xFFFFFFFF
HALF = 0x80000000
DEFAULT_MAX_BUFFER = 4 << 20      # out-of-order bytes held per direction before skipping
# Ethernet/IPv4/TCP from byte 12: ethertype, IP version and header length, total length,
# fragment field, protocol, (addresses and ports skipped: they are the flow's key) seq,
# ack, data offset and flags, window
_PLAIN = struct.Struct("!HBxHxxHxBxx12xIIHH").unpack_from


def _raw_key(src: str, sport: int, dst: str, dport: int) -> Optional[bytes]:
    """The bytes an Ethernet/IPv4/TCP frame carries from its 26th: both addresses, both
    ports (None for IPv6)."""
    if ":" in src:
        return None
    return _aton(src) + _aton(dst) + _PORTS(sport, dport)


_aton = socket.inet_aton
_PORTS = struct.Struct("!HH").pack


class _Reassembly:
    """Reassembly state of one direction. Sequence numbers are unwrapped to Python ints."""

    __slots__ = ("started", "nxt", "ooo", "heap", "ooo_bytes", "fin", "done", "peer_ack",
                 "delivered", "gaps")

    def __init__(self) -> None:
        self.started = False
        self.nxt = 0                  # next expected byte (unwrapped)
        self.ooo: dict[int, tuple[bytes, int]] = {}   # start -> (payload, seglen)
        self.heap: list[int] = []
        self.ooo_bytes = 0
        self.fin: Optional[int] = None   # unwrapped seq of the FIN
        self.done = False             # all bytes up to the FIN delivered
        self.peer_ack: Optional[int] = None   # latest raw ACK from the other side
        self.delivered = 0
        self.gaps = 0

    def unwrap(self, seq32: int) -> int:
        return self.nxt + (((seq32 - (self.nxt & M32) + HALF) & M32) - HALF)


class TcpFlow:
    """One TCP connection (a tshark `tcp.stream`). Directions are "c2s" and "s2c"."""

    __slots__ = ("id", "client", "server", "first_ts", "last_ts", "syn_seen", "synack_seen",
                 "packets_c2s", "packets_s2c", "bytes_c2s", "bytes_s2c",
                 "data_segments_c2s", "data_segments_s2c", "quiet_s", "closed_by",
                 "rst_by", "fin_first", "fin_c2s_ts", "fin_s2c_ts", "rst_ts", "ended", "end_ts",
                 "fin_next", "fin_acks", "analysis", "_sequence", "_reassembly_c2s",
                 "_reassembly_s2c", "mss", "wscale", "sack_perm", "first_index", "end_index",
                 "handshake", "state")

    def __init__(self, id: int, client: tuple[str, int], server: tuple[str, int],
                 ts: float, first_index: int = 0) -> None:
        self.id = id
        self.first_index = first_index   # its first packet's number
        self.end_index: Optional[int] = None    # the packet that ended it (None: the close)
        # the handshake while it goes on: (the SYN's direction is c2s, its record)
        self.handshake: Optional[tuple[bool, dict]] = None
        self.state = None                # whatever the table's user keeps per flow
        self.client = client
        self.server = server
        self.first_ts = ts
        self.last_ts = ts
        self.syn_seen = False
        self.synack_seen = False
        self.packets_c2s = 0
        self.packets_s2c = 0
        self.bytes_c2s = 0            # payload bytes on the wire, retransmissions included
        self.bytes_s2c = 0
        self.data_segments_c2s = 0    # segments carrying payload, retransmissions included
        self.data_segments_s2c = 0
        self.quiet_s = 0.0            # silence (both ways) before its latest flagged segment
        self.closed_by: Optional[str] = None     # "fin" (both ways) or "rst"
        self.rst_by: Optional[str] = None        # "client" or "server"
        self.fin_first: Optional[str] = None     # who sent the first FIN
        self.fin_c2s_ts: Optional[float] = None
        self.fin_s2c_ts: Optional[float] = None
        self.rst_ts: Optional[float] = None
        # a FIN's acknowledgement: the ACK number that covers it, and the packet that came
        # with it (by the FIN's direction; only while a FIN waits is `fin_next` not empty)
        self.fin_next: dict[str, int] = {}
        self.fin_acks: dict[str, Optional[int]] = {"c2s": None, "s2c": None}
        self.ended = False
        self.end_ts: Optional[float] = None
        self.analysis: Counts = Counts()         # tcp.analysis filter name -> segments
        self.mss = {"c2s": 0, "s2c": 0}
        self.wscale = {"c2s": -1, "s2c": -1}
        self.sack_perm = {"c2s": False, "s2c": False}
        self._sequence = Connection()            # tcp.analysis state; side a: the client
        # reassembly of each direction, then (gaps, delivered) once the flow has ended
        self._reassembly_c2s = _Reassembly()
        self._reassembly_s2c = _Reassembly()

    # ------------------------------------------------------------------ summary
    def count(self, c2s: bool, seglen: int) -> None:
        """One more packet one way, with `seglen` bytes of payload on the wire."""
        if c2s:
            self.packets_c2s += 1
            if seglen:
                self.bytes_c2s += seglen
                self.data_segments_c2s += 1
        else:
            self.packets_s2c += 1
            if seglen:
                self.bytes_s2c += seglen
                self.data_segments_s2c += 1

    @property
    def packets(self) -> dict[str, int]:
        return {"c2s": self.packets_c2s, "s2c": self.packets_s2c}

    @property
    def bytes(self) -> dict[str, int]:
        return {"c2s": self.bytes_c2s, "s2c": self.bytes_s2c}

    @property
    def total_packets(self) -> int:
        return self.packets_c2s + self.packets_s2c

    @property
    def duration(self) -> float:
        return self.last_ts - self.first_ts

    @property
    def fin_ts(self) -> dict[str, Optional[float]]:
        return {"c2s": self.fin_c2s_ts, "s2c": self.fin_s2c_ts}

    # gaps and delivered bytes survive the end of the flow (as a (gaps, delivered) tuple)
    @property
    def gaps(self) -> int:
        """Bytes that were never captured and were skipped over (both directions)."""
        return self.gaps_c2s + self.gaps_s2c

    @property
    def gaps_c2s(self) -> int:
        h = self._reassembly_c2s
        return h.gaps if type(h) is _Reassembly else h[0]

    @property
    def gaps_s2c(self) -> int:
        h = self._reassembly_s2c
        return h.gaps if type(h) is _Reassembly else h[0]

    @property
    def delivered_c2s(self) -> int:
        h = self._reassembly_c2s
        return h.delivered if type(h) is _Reassembly else h[1]

    @property
    def delivered_s2c(self) -> int:
        h = self._reassembly_s2c
        return h.delivered if type(h) is _Reassembly else h[1]

    @property
    def closer(self) -> Optional[str]:
        """Who closed: the RST sender for "rst", the first FIN sender for "fin"."""
        if self.closed_by == "rst":
            return self.rst_by
        if self.closed_by == "fin":
            return self.fin_first
        return None

    def summary(self) -> dict:
        return {
            "id": self.id, "client": f"{self.client[0]}:{self.client[1]}",
            "server": f"{self.server[0]}:{self.server[1]}",
            "start": self.first_ts, "end": self.last_ts,
            "packets_c2s": self.packets_c2s, "packets_s2c": self.packets_s2c,
            "bytes_c2s": self.bytes_c2s, "bytes_s2c": self.bytes_s2c,
            "delivered_c2s": self.delivered_c2s, "delivered_s2c": self.delivered_s2c,
            "gaps": self.gaps, "syn_seen": self.syn_seen, "closed_by": self.closed_by,
            "closer": self.closer, "tcp": dict(self.analysis),
        }

    def __repr__(self) -> str:
        return (f"<TcpFlow {self.id} {self.client[0]}:{self.client[1]} -> "
                f"{self.server[0]}:{self.server[1]} pkts {self.packets_c2s}/"
                f"{self.packets_s2c} closed_by={self.closed_by}>")


class UdpConversation:
    """UDP traffic between two endpoints; `a` (alias `client`) sent the first datagram."""

    __slots__ = ("id", "a", "b", "first_ts", "last_ts", "packets_ab", "packets_ba",
                 "bytes_ab", "bytes_ba")

    def __init__(self, id: int, a: tuple[str, int], b: tuple[str, int], ts: float) -> None:
        self.id = id
        self.a = a
        self.b = b
        self.first_ts = ts
        self.last_ts = ts
        self.packets_ab = 0
        self.packets_ba = 0
        self.bytes_ab = 0
        self.bytes_ba = 0

    client = property(lambda self: self.a)
    server = property(lambda self: self.b)

    @property
    def packets(self) -> int:
        return self.packets_ab + self.packets_ba

    def summary(self) -> dict:
        return {"id": self.id, "a": f"{self.a[0]}:{self.a[1]}", "b": f"{self.b[0]}:{self.b[1]}",
                "start": self.first_ts, "end": self.last_ts,
                "packets_ab": self.packets_ab, "packets_ba": self.packets_ba,
                "bytes_ab": self.bytes_ab, "bytes_ba": self.bytes_ba}

    def __repr__(self) -> str:
        return (f"<UdpConversation {self.id} {self.a[0]}:{self.a[1]} <-> "
                f"{self.b[0]}:{self.b[1]} pkts {self.packets_ab}/{self.packets_ba}>")


OnData = Callable[[TcpFlow, str, float, bytes], None]


class FlowTable:
    """Flows of a capture: feed Segments and Datagrams in capture order, then `close()`.

    Callbacks (all optional):
      on_data(flow, direction, ts, data)   in-order stream bytes, "c2s" or "s2c"; `ts` is the
                                           time of the segment that made them available
      on_gap(flow, direction, ts, nbytes)  bytes the capture never had, skipped over
      on_flow_end(flow)                    once per flow: RST, both FINs and all data in, a
                                           new SYN on the 4-tuple, or close()
      on_datagram(conv, direction, dgram)  every UDP datagram ("c2s": from the first sender)
      on_analysis(flow, segment, flags)    segments with tcp.analysis flags (tcp_analysis.*)
      on_forget(flow)                      an ended flow is forgotten (`linger`): its
                                           counts are final, its 4-tuple will be a new flow

    Results: `flows` (TcpFlow, in order of first packet, ids 0.. as tshark's tcp.stream),
    `udp` ({(endpoint, endpoint) sorted: UdpConversation}), `totals()` / `counts`
    (tcp.analysis filter name -> segments), `open` (flows not ended yet), `handshakes`
    (each completed three-way handshake, in the order they completed: the flow, both initial
    sequence numbers, the SYN-ACK's and the ACK's numbers relative to them, the packets).
    """

    def __init__(self, on_data: Optional[OnData] = None,
                 on_flow_end: Optional[Callable[[TcpFlow], None]] = None, *,
                 on_gap: Optional[Callable[[TcpFlow, str, float, int], None]] = None,
                 on_datagram: Optional[Callable[[UdpConversation, str, Datagram], None]] = None,
                 on_analysis: Optional[Callable[[TcpFlow, Segment, int], None]] = None,
                 on_forget: Optional[Callable[[TcpFlow], None]] = None,
                 max_buffer: int = DEFAULT_MAX_BUFFER, keep_flows: bool = True,
                 linger: Optional[float] = None) -> None:
        self.on_data = on_data
        self.on_flow_end = on_flow_end
        self.on_gap = on_gap
        self.on_datagram = on_datagram
        self.on_analysis = on_analysis
        self.on_forget = on_forget
        self.max_buffer = max_buffer
        self.keep_flows = keep_flows
        # Ended flows stay findable by their 4-tuple (late ACKs, retransmitted FINs count in
        # them, as in tshark) - forever by default, or for `linger` capture seconds. With
        # keep_flows=False and a linger, memory follows the open flows only.
        self.linger = linger
        self._ended: deque = deque()
        self.flows: list[TcpFlow] = []       # every TCP flow, in order of first packet
        self.udp: dict[tuple, UdpConversation] = {}
        self.counts = Counts()               # tcp.analysis totals over all flows
        self.n_flows = 0
        self.open: dict[int, TcpFlow] = {}   # flows not ended yet, by id
        self.handshakes: list[dict] = []
        self._index = 0                      # the packet being fed
        self._closing = False
        self._map: dict[tuple, tuple[TcpFlow, bool]] = {}
        self._umap: dict[tuple, tuple[UdpConversation, bool]] = {}
        # IPv4 flows by the bytes of their addresses and ports as a frame carries them:
        # (flow, c2s, its reassembly that way, the other way, its sequence analysis)
        self._raw: dict[bytes, tuple] = {}

    # ------------------------------------------------------------------ input
    def totals(self) -> dict[str, int]:
        """tcp.analysis filter name -> number of segments, over all flows."""
        return dict(self.counts)

    def close(self) -> None:
        """End every open flow (flushing held data with gaps) and report it."""
        self._closing = True
        for flow in list(self.open.values()):
            self._end(flow, flow.last_ts)

    def lookup(self, s: Segment) -> Optional[tuple[TcpFlow, bool]]:
        """The flow a segment belongs to (the latest on its 4-tuple) and whether it goes
        client to server; None for a 4-tuple never fed (or forgotten)."""
        return self._map.get((s.src, s.sport, s.dst, s.dport))

    # ------------------------------------------------------------------ TCP
    def _forget_ended(self, now: float) -> None:
        limit = now - self.linger
        ended = self._ended
        while ended and ended[0][0] < limit:
            _, flow = ended.popleft()
            (a, pa), (b, pb) = flow.client, flow.server
            for key in ((a, pa, b, pb), (b, pb, a, pa)):
                ent = self._map.get(key)
                if ent is not None and ent[0] is flow:
                    del self._map[key]
                raw = _raw_key(*key)
                ent = self._raw.get(raw)
                if ent is not None and ent[0] is flow:
                    del self._raw[raw]
            if self.on_forget is not None:
                self.on_forget(flow)

    def _new_flow(self, s: Segment, flags: int) -> tuple[TcpFlow, bool]:
        if self._ended:
            self._forget_ended(s.ts)
        src, dst = (s.src, s.sport), (s.dst, s.dport)
        if flags & SYN:
            c2s = not flags & ACK               # SYN: sender is client; SYN-ACK: receiver
        elif s.sport != s.dport:
            c2s = s.sport > s.dport             # ephemeral (higher) port is the client
        else:
            c2s = True                          # first sender
        client, server = (src, dst) if c2s else (dst, src)
        flow = TcpFlow(self.n_flows, client, server, s.ts, s.index)
        self.n_flows += 1
        if self.keep_flows:
            self.flows.append(flow)
        self.open[flow.id] = flow
        self._map[(s.src, s.sport, s.dst, s.dport)] = (flow, c2s)
        self._map[(s.dst, s.dport, s.src, s.sport)] = (flow, not c2s)
        raw = _raw_key(s.src, s.sport, s.dst, s.dport)
        if raw is not None:
            h, other = flow._reassembly_c2s, flow._reassembly_s2c
            if not c2s:
                h, other = other, h
            self._raw[raw] = (flow, c2s, h, other, flow._sequence)
            self._raw[raw[4:8] + raw[:4] + raw[10:] + raw[8:10]] = \
                (flow, not c2s, other, h, flow._sequence)
        return flow, c2s

    def feed(self, s) -> None:
        """Take a Segment or a Datagram (None is ignored), in capture order."""
        if type(s) is not Segment:
            if type(s) is Datagram:
                self.feed_datagram(s)
            elif s is not None:
                raise TypeError(f"FlowTable.feed takes Segment or Datagram, not "
                                f"{type(s).__name__}")
            return
        (index, ts, src, sport, dst, dport, seq, ack, flags, window, payload, seglen,
         wscale, _mss, _sack_perm, _sack, _tsval, _tsecr) = s
        self._index = index
        ent = self._map.get((src, sport, dst, dport))
        reused = 0
        if ent is None:
            flow, c2s = self._new_flow(s, flags)
        else:
            flow, c2s = ent
            if flags & SYN and flow._sequence.opens_new(c2s, seq, flags):
                if not flow.ended:
                    self._end(flow, ts)
                flow, c2s = self._new_flow(s, flags)
                reused = REUSED_PORTS
        flow.count(c2s, seglen)
        before = flow.last_ts
        flow.last_ts = ts
        if flow.handshake is not None and not flags & SYN:
            self._handshake_ack(flow, c2s, seq, ack, index)
        ta = flow._sequence.segment(c2s, ts, seq, ack, seglen, flags, window, wscale)
        if flags & 0x07:                                 # SYN, FIN or RST
            self._control(flow, c2s, s, flags)
            ta |= reused
        if flow.fin_next and flags & ACK:
            self._fin_acked(flow, "s2c" if c2s else "c2s", ack, index)
        if ta:
            flow.quiet_s = ts - before
            names = filter_names(ta)
            if names:
                fa = flow.analysis
                tot = self.counts
                for n in names:
                    fa[n] = fa.get(n, 0) + 1
                    tot[n] = tot.get(n, 0) + 1
            if self.on_analysis is not None:
                self.on_analysis(flow, s, ta)
        if flow.ended:
            return
        # -------------------------------------------------------------- reassembly
        if c2s:
            h, other = flow._reassembly_c2s, flow._reassembly_s2c
            d = "c2s"
        else:
            h, other = flow._reassembly_s2c, flow._reassembly_c2s
            d = "s2c"
        if seglen and not flags & RST:
            if flags & SYN:
                seq = (seq + 1) & M32
            if not h.started:
                h.started = True
                h.nxt = seq
            nxt = h.nxt
            if (nxt - seq) & M32 == 0 and not h.heap and seglen == len(payload):
                # in order, nothing held: the common case
                h.nxt = nxt + seglen
                h.delivered += seglen
                if self.on_data is not None:
                    self.on_data(flow, d, ts, payload)
                if h.fin is not None and h.nxt >= h.fin:
                    h.done = True
            else:
                self._data(flow, h, d, ts, seq, payload, seglen)
        if flags & ACK:
            other.peer_ack = ack
            if other.heap or (other.fin is not None and not other.done):
                self._acked(flow, other, "s2c" if c2s else "c2s", ts)
        if flags & RST:
            if flow.closed_by is None:
                flow.closed_by = "rst"
            flow.rst_by = "client" if c2s else "server"
            flow.rst_ts = ts
            self._end(flow, ts)
        elif h.done and other.done:
            self._end(flow, ts)

    feed_segment = feed

    def feed_plain(self, pkt) -> bool:
        """Take a captured `Packet` that is the commonest kind (see `feed_frame`) and say
        True; else False, nothing changed, and the caller feeds `decode(pkt)` instead."""
        data = pkt.data
        return pkt.linktype == 1 and self.feed_frame(data, 0, len(data), pkt.origlen, pkt.ts,
                                                     pkt.index)

    def feed_frame(self, buf, at: int, caplen: int, origlen: int, ts: float, index: int, *,
                   _plain=_PLAIN, _tsopt=b"\x01\x01\x08\x0a") -> bool:
        """Take an Ethernet frame (`caplen` bytes of `buf` from `at`: `Capture.scan` offers
        each record from its read buffer) that is the commonest kind, and say True; else
        False, nothing changed, and the caller feeds `decode` of its packet instead.

        The commonest kind: Ethernet/IPv4/TCP without IP options, no TCP option but the
        timestamps, only ACK (and PSH) set, on a known open flow before any FIN, that the
        sequence analysis does not flag (`Connection.plain`), empty or the next bytes in
        order of its direction. From the frame's bytes to the
        flow's counters, the analysis and `on_data` in one function, without a `Segment`:
        a busy lab's capture is mostly such packets. The flow is found by the frame's
        address and port bytes (`_raw`); the counting is `TcpFlow.count`'s.
        (The keyword-only parameters are constants bound for speed; do not pass them.)
        """
        if caplen < 54:
            return False
        ether, vihl, totlen, frag, proto, seq, ack, offflags, window = _plain(buf, at + 12)
        if ether != 0x0800 or vihl != 0x45 or proto != 6 or frag & 0x3FFF:
            return False
        # the data offset (5: no option) and the flags: ACK, or ACK and PSH, nothing else
        if offflags == 0x5010 or offflags == 0x5018:
            start = 54
        elif (offflags == 0x8010 or offflags == 0x8018) and buf[at + 54:at + 58] == _tsopt:
            start = 66                       # the timestamps option alone
        else:
            return False
        if totlen == 0 or totlen > origlen - 14:
            totlen = origlen - 14
        seglen = totlen - start + 14
        if seglen < 0 or caplen < start + seglen:
            return False
        ent = self._raw.get(buf[at + 26:at + 38])
        if ent is None:
            return False
        flow, c2s, h, other, sequence = ent
        # (a FIN waiting for its ACK, `fin_next`, has set its direction's `fin`)
        if flow.ended or h.fin is not None or other.fin is not None or other.heap:
            return False
        if seglen and (h.heap or not h.started or (h.nxt - seq) & M32):
            return False
        if not sequence.plain(c2s, ts, seq, ack, seglen, window):
            return False
        # (`_index` is left alone: only the ending of a flow reads it, which this is not)
        if flow.handshake is not None:
            self._handshake_ack(flow, c2s, seq, ack, index)
        flow.count(c2s, seglen)
        flow.last_ts = ts
        other.peer_ack = ack
        if seglen:
            h.nxt += seglen
            h.delivered += seglen
            if self.on_data is not None:
                at += start
                self.on_data(flow, "c2s" if c2s else "s2c", ts, buf[at:at + seglen])
        return True

    def _handshake_ack(self, flow: TcpFlow, c2s: bool, seq: int, ack: int, index: int) -> None:
        """The SYN's sender's next segment after the SYN-ACK completes the handshake."""
        syn_c2s, hs = flow.handshake
        if c2s == syn_c2s and hs["isn_s"] is not None:
            hs["ack_seq"] = (seq - hs["isn_c"]) & M32
            hs["ack_ack"] = (ack - hs["isn_s"]) & M32
            hs["packets"].append(index)
            self.handshakes.append(hs)
            flow.handshake = None

    def _control(self, flow: TcpFlow, c2s: bool, s: Segment, flags: int) -> None:
        d = "c2s" if c2s else "s2c"
        if flags & SYN:
            if not flags & ACK:       # a SYN (again): the handshake starts (again)
                flow.handshake = (c2s, {"flow": flow.id, "isn_c": s.seq, "isn_s": None,
                                        "packets": [s.index]})
            elif flow.handshake is not None and flow.handshake[0] != c2s:
                hs = flow.handshake[1]
                hs["isn_s"] = s.seq
                hs["syn_ack_ack"] = (s.ack - hs["isn_c"]) & M32
                hs["packets"].append(s.index)
            if flags & ACK:
                flow.synack_seen = True
            else:
                flow.syn_seen = True
            if s.mss:
                flow.mss[d] = s.mss
            if s.wscale >= 0:
                flow.wscale[d] = s.wscale
            if s.sack_perm:
                flow.sack_perm[d] = True
            if flow.ended:
                return
            h = flow._reassembly_c2s if c2s else flow._reassembly_s2c
            if not h.started:
                h.started = True
                h.nxt = (s.seq + 1) & M32
        if flags & FIN:
            if flow.fin_acks[d] is None:
                flow.fin_next[d] = (s.seq + s.seglen + (2 if flags & SYN else 1)) & M32
            if c2s:
                if flow.fin_c2s_ts is None:
                    flow.fin_c2s_ts = s.ts
            elif flow.fin_s2c_ts is None:
                flow.fin_s2c_ts = s.ts
            if flow.fin_first is None:
                flow.fin_first = "client" if c2s else "server"
            if flow.ended:
                return
            h = flow._reassembly_c2s if c2s else flow._reassembly_s2c
            dseq = (s.seq + 1) & M32 if flags & SYN else s.seq
            if not h.started:
                h.started = True
                h.nxt = dseq
            if h.fin is None:
                h.fin = h.unwrap((dseq + s.seglen) & M32)
                if h.nxt >= h.fin and not h.heap:
                    h.done = True
            if flow.fin_c2s_ts is not None and flow.fin_s2c_ts is not None \
                    and flow.closed_by is None:
                flow.closed_by = "fin"

    @staticmethod
    def _fin_acked(flow: TcpFlow, fin_dir: str, ack: int, index: int) -> None:
        """An ACK from the other side of `fin_dir`: does it cover that side's FIN?"""
        want = flow.fin_next.get(fin_dir)
        if want is not None and (ack - want) & M32 < HALF:   # at or beyond it
            flow.fin_acks[fin_dir] = index
            del flow.fin_next[fin_dir]

    def _data(self, flow: TcpFlow, h: _Reassembly, d: str, ts: float, seq32: int,
              payload: bytes, seglen: int) -> None:
        nxt = h.nxt
        off = ((seq32 - (nxt & M32) + HALF) & M32) - HALF
        if off < 0:
            if off + seglen <= 0:
                return                                   # all old: a retransmission
            payload = payload[-off:]
            seglen += off
            off = 0
        if off == 0:
            self._deliver(flow, h, d, ts, payload, seglen)
            if h.heap:
                self._drain(flow, h, d, ts)
        else:
            start = nxt + off
            pa = h.peer_ack
            if pa is not None and (((pa - (nxt & M32) + HALF) & M32) - HALF) >= off:
                # the peer already ACKed past this hole: the capture missed it
                self._skip(flow, h, d, ts, off)
                self._deliver(flow, h, d, ts, payload, seglen)
                if h.heap:
                    self._drain(flow, h, d, ts)
            else:
                old = h.ooo.get(start)
                if old is None:
                    heapq.heappush(h.heap, start)
                    h.ooo[start] = (payload, seglen)
                    h.ooo_bytes += seglen
                elif old[1] < seglen:
                    h.ooo[start] = (payload, seglen)
                    h.ooo_bytes += seglen - old[1]
                if h.ooo_bytes > self.max_buffer:
                    self._skip(flow, h, d, ts, h.heap[0] - h.nxt)
                    self._drain(flow, h, d, ts)
        if h.fin is not None and not h.done and h.nxt >= h.fin and not h.heap:
            h.done = True

    def _deliver(self, flow, h: _Reassembly, d: str, ts: float, payload: bytes, seglen: int) -> None:
        if payload:
            h.delivered += len(payload)
            if self.on_data is not None:
                self.on_data(flow, d, ts, payload)
        missing = seglen - len(payload)
        h.nxt += seglen
        if missing > 0:                                  # cut by the snaplen
            h.gaps += missing
            if self.on_gap is not None:
                self.on_gap(flow, d, ts, missing)

    def _skip(self, flow, h: _Reassembly, d: str, ts: float, n: int) -> None:
        if n <= 0:
            return
        h.gaps += n
        h.nxt += n
        if self.on_gap is not None:
            self.on_gap(flow, d, ts, n)

    def _drain(self, flow, h: _Reassembly, d: str, ts: float) -> None:
        heap, ooo = h.heap, h.ooo
        while heap and heap[0] <= h.nxt:
            start = heapq.heappop(heap)
            payload, seglen = ooo.pop(start)
            h.ooo_bytes -= seglen
            cut = h.nxt - start
            if cut >= seglen:
                continue
            if cut:
                payload = payload[cut:]
                seglen -= cut
            self._deliver(flow, h, d, ts, payload, seglen)

    def _acked(self, flow, h: _Reassembly, d: str, ts: float) -> None:
        """The peer ACKed up to `h.peer_ack`: holes below it were missed by the capture."""
        ack = h.unwrap(h.peer_ack)
        if h.heap and h.heap[0] <= ack and h.heap[0] > h.nxt:
            self._skip(flow, h, d, ts, h.heap[0] - h.nxt)
            self._drain(flow, h, d, ts)
        if h.fin is not None and not h.done:
            if ack > h.fin and h.nxt < h.fin:            # the FIN itself was ACKed
                while h.heap:
                    self._skip(flow, h, d, ts, h.heap[0] - h.nxt)
                    self._drain(flow, h, d, ts)
                self._skip(flow, h, d, ts, h.fin - h.nxt)
            if h.nxt >= h.fin and not h.heap:
                h.done = True

    def _flush(self, flow, h: _Reassembly, d: str, ts: float) -> None:
        while h.heap:
            self._skip(flow, h, d, ts, h.heap[0] - h.nxt)
            self._drain(flow, h, d, ts)

    def _end(self, flow: TcpFlow, ts: float) -> None:
        if flow.ended:
            return
        self._flush(flow, flow._reassembly_c2s, "c2s", ts)
        self._flush(flow, flow._reassembly_s2c, "s2c", ts)
        flow.ended = True
        flow.end_ts = ts
        flow.end_index = None if self._closing else self._index
        self.open.pop(flow.id, None)
        if self.linger is not None:
            self._ended.append((ts, flow))
        flow._sequence.compact()
        # keep the counters of the reassembly, drop its buffers
        flow._reassembly_c2s = (flow._reassembly_c2s.gaps, flow._reassembly_c2s.delivered)
        flow._reassembly_s2c = (flow._reassembly_s2c.gaps, flow._reassembly_s2c.delivered)
        if self.on_flow_end is not None:
            self.on_flow_end(flow)

    # ------------------------------------------------------------------ UDP
    def feed_datagram(self, d: Datagram) -> None:
        ent = self._umap.get((d.src, d.sport, d.dst, d.dport))
        if ent is None:
            a, b = (d.src, d.sport), (d.dst, d.dport)
            conv = UdpConversation(len(self.udp), a, b, d.ts)
            self.udp[(a, b) if a <= b else (b, a)] = conv
            self._umap[(d.src, d.sport, d.dst, d.dport)] = (conv, True)
            self._umap[(d.dst, d.dport, d.src, d.sport)] = (conv, False)
            ab = True
        else:
            conv, ab = ent
        conv.last_ts = d.ts
        if ab:
            conv.packets_ab += 1
            conv.bytes_ab += len(d.payload)
        else:
            conv.packets_ba += 1
            conv.bytes_ba += len(d.payload)
        if self.on_datagram is not None:
            self.on_datagram(conv, "c2s" if ab else "s2c", d)
