"""TCP sequence analysis: the `tcp.analysis.*` flags tshark would give each segment.

Written for this project from the behaviour the Wireshark User's Guide describes for each
flag (chapter "Advanced Topics", section "TCP Analysis") and from black-box comparison with
tshark 4.0: `tests/capture/test_tshark_agreement.py` compares every segment's flags with
tshark's on real captures, captures of real loss and hostile random sequences, and stays
the reference. Each rule below is stated as that guide states it or as tshark was seen to
behave, in this project's own terms; it is not a translation of Wireshark's code.

The analysis keeps, for each side of a connection, what that side's segments told so far:
the sequence number its next segment should carry (and when that last moved forward), how
far the other side has to acknowledge, its last acknowledgement and window, its window
scale, and how many duplicate ACKs it has sent in a row. A segment's flags come from
comparing it with that state (both sides'), in one pass; then the state takes it in.

What a flag means, in the guide's terms and as tshark does it:
- `zero_window_probe`: one byte at the expected sequence number while the peer's window is
  0; such a segment is exempt from the window and ACK checks and does not move the
  expected sequence number;
- `zero_window`: window 0 on a segment without SYN, FIN or RST;
- `lost_segment` ("previous segment not captured"): the sequence number is past the
  expected one (never for a RST);
- `keep_alive`: 0 or 1 byte one before the expected sequence number, no SYN/FIN/RST;
  a keep-alive is never any kind of retransmission;
- an empty segment at the expected sequence number that acknowledges what this side
  acknowledged last (no SYN/FIN/RST) is a `window_update` if its window changed, else a
  `keep_alive_ack` after a keep-alive from the peer, a `zero_window_probe_ack` (window still
  0) after a zero window probe, or else a `duplicate_ack`;
- `window_full`: data that ends exactly where the peer's advertised window ends;
- `ack_lost_segment`: an ACK beyond anything the peer was seen sending. When the peer has
  sent nothing new since (its data stalled behind a hole), the same hole is reported once,
  and the peer counts as having sent enough duplicate ACKs for a fast retransmission;
- data (or SYN/FIN) whose sequence number is behind the expected one: a
  `spurious_retransmission` when the peer already acknowledged all of it (this is checked
  first, for any data); a `fast_retransmission` when the peer has sent two or more
  duplicate ACKs for exactly this sequence number, the last one less than 20 ms ago; an
  `out_of_order` segment when it comes within the handshake's round trip (3 ms without
  one) of the segment that last moved the expected sequence number forward, and is not just
  a repeat of that segment's end; else a `retransmission`. One byte past the expected number
  minus one (the data after a zero window probe) is not "behind".
- `reused_ports`: a SYN with a new initial sequence number on a 4-tuple already seen starts
  a new connection (the caller asks `opens_new`); a SYN-ACK with a new one is flagged too.

Sequence numbers are compared by their signed 32-bit distance: `(a - b + 2**31) & M32 <
2**31` says a comes before b. As in tshark, 0 stands for "not known yet" in the expected
sequence and acknowledgement numbers and in the last ACK.

The display filter `tcp.analysis.retransmission` matches retransmissions, fast
retransmissions and spurious retransmissions alike; `FILTERS` maps each filter name to the
flags it matches, so counts here compare one to one with `tshark -Y tcp.analysis.<name>`.
Like tshark, it remembers at most 10,000 segments per side that wait for an ACK: in a
one-way capture, once that many are outstanding, a FIN no longer moves the expected
sequence number (and tshark's next flags follow from that).
"""

from __future__ import annotations

from typing import Iterable, Optional

__all__ = [
    "RETRANSMISSION", "FAST_RETRANSMISSION", "SPURIOUS_RETRANSMISSION", "OUT_OF_ORDER",
    "LOST_SEGMENT", "ACK_LOST_SEGMENT", "DUPLICATE_ACK", "ZERO_WINDOW", "ZERO_WINDOW_PROBE",
    "ZERO_WINDOW_PROBE_ACK", "KEEP_ALIVE", "KEEP_ALIVE_ACK", "WINDOW_UPDATE", "WINDOW_FULL",
    "REUSED_PORTS", "FLAG_NAMES", "FILTERS", "names", "filter_names", "describe",
    "Counts", "Connection", "TcpAnalyzer",
]

# One bit per flag; FLAG_NAMES gives each its `tcp.analysis.<name>` name.
RETRANSMISSION = 1 << 0
FAST_RETRANSMISSION = 1 << 1
SPURIOUS_RETRANSMISSION = 1 << 2
OUT_OF_ORDER = 1 << 3
LOST_SEGMENT = 1 << 4
ACK_LOST_SEGMENT = 1 << 5
DUPLICATE_ACK = 1 << 6
ZERO_WINDOW = 1 << 7
ZERO_WINDOW_PROBE = 1 << 8
ZERO_WINDOW_PROBE_ACK = 1 << 9
KEEP_ALIVE = 1 << 10
KEEP_ALIVE_ACK = 1 << 11
WINDOW_UPDATE = 1 << 12
WINDOW_FULL = 1 << 13
REUSED_PORTS = 1 << 14

FLAG_NAMES = {
    RETRANSMISSION: "retransmission",
    FAST_RETRANSMISSION: "fast_retransmission",
    SPURIOUS_RETRANSMISSION: "spurious_retransmission",
    OUT_OF_ORDER: "out_of_order",
    LOST_SEGMENT: "lost_segment",
    ACK_LOST_SEGMENT: "ack_lost_segment",
    DUPLICATE_ACK: "duplicate_ack",
    ZERO_WINDOW: "zero_window",
    ZERO_WINDOW_PROBE: "zero_window_probe",
    ZERO_WINDOW_PROBE_ACK: "zero_window_probe_ack",
    KEEP_ALIVE: "keep_alive",
    KEEP_ALIVE_ACK: "keep_alive_ack",
    WINDOW_UPDATE: "window_update",
    WINDOW_FULL: "window_full",
    REUSED_PORTS: "reused_ports",
}

# tshark display filter `tcp.analysis.<name>` -> the flags that make it match: each flag
# its own filter, and `retransmission` also matches the fast and the spurious kind.
FILTERS = {name: bit for bit, name in FLAG_NAMES.items()}
FILTERS["retransmission"] = RETRANSMISSION | FAST_RETRANSMISSION | SPURIOUS_RETRANSMISSION

# Wireshark's Info column labels (as tshark prints them), in the order it shows them.
_LABELS = (
    (RETRANSMISSION, "TCP Retransmission"),
    (FAST_RETRANSMISSION, "TCP Fast Retransmission"),
    (SPURIOUS_RETRANSMISSION, "TCP Spurious Retransmission"),
    (OUT_OF_ORDER, "TCP Out-Of-Order"),
    (LOST_SEGMENT, "TCP Previous segment not captured"),
    (ACK_LOST_SEGMENT, "TCP ACKed unseen segment"),
    (WINDOW_UPDATE, "TCP Window Update"),
    (WINDOW_FULL, "TCP Window Full"),
    (KEEP_ALIVE, "TCP Keep-Alive"),
    (KEEP_ALIVE_ACK, "TCP Keep-Alive ACK"),
    (DUPLICATE_ACK, "TCP Dup ACK"),
    (ZERO_WINDOW_PROBE, "TCP ZeroWindowProbe"),
    (ZERO_WINDOW, "TCP ZeroWindow"),
    (ZERO_WINDOW_PROBE_ACK, "TCP ZeroWindowProbeAck"),
)

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
HALF = 0x80000000
FAST_RETRANSMISSION_WITHIN = 0.020   # s after the peer's last duplicate ACK
OUT_OF_ORDER_WITHIN = 0.003          # s, when no handshake gave a round-trip time
UNKNOWN_WINDOW = M32                 # no 16-bit window field holds this
SCALING_OFF = -1                     # a side's window scale when scaling is not in use
# Capture timestamps are integer micro- or nanoseconds, read here as floats (about 0.2 us
# of rounding at today's epoch): "less than" a limit means below it by more than this.
TIME_SLACK = 5e-7
MAX_WAITING = 10_000                 # segments per side awaiting an ACK that tshark tracks


def names(flags: int) -> list[str]:
    """The analysis flags of a segment as names."""
    return [n for b, n in FLAG_NAMES.items() if flags & b]


_FILTERS_OF: dict[int, tuple[str, ...]] = {}


def filter_names(flags: int) -> tuple[str, ...]:
    """The `tcp.analysis.<name>` filters a segment with these flags matches."""
    found = _FILTERS_OF.get(flags)
    if found is None:
        found = tuple(n for n, mask in FILTERS.items() if flags & mask)
        _FILTERS_OF[flags] = found
    return found


def describe(flags: int) -> Optional[str]:
    """What the Info column would start with, e.g. "[TCP Retransmission]"; None if nothing."""
    return " ".join(f"[{label}]" for bit, label in _LABELS if flags & bit) or None


class Counts(dict):
    """filter name -> number of segments matching `tcp.analysis.<name>`."""

    def add(self, flags: int) -> None:
        for n in filter_names(flags):
            self[n] = self.get(n, 0) + 1

    def __missing__(self, key: str) -> int:
        return 0


class _Side:
    """What the analysis knows of one endpoint from the segments it sent."""

    __slots__ = ("isn", "nxt", "nxt_ts", "to_ack", "ack", "ack_ts", "window", "scale",
                 "handshaking", "dups", "stalled", "last", "waiting")

    def __init__(self) -> None:
        self.isn: Optional[int] = None   # initial sequence number (assumed seq - 1 mid-stream)
        self.nxt = 0                     # sequence number its next segment should carry
        self.nxt_ts = 0.0                # when `nxt` last moved forward
        self.to_ack = 0                  # how far the peer has yet to acknowledge it
        self.ack = 0                     # the acknowledgement number it sent last
        self.ack_ts = 0.0                # ... and when
        self.window = UNKNOWN_WINDOW     # the (unscaled) window it sent last
        self.scale: Optional[int] = None  # its window scale shift; None until known
        self.handshaking = False         # its SYN was its latest segment with SYN or ACK
        self.dups = 0                    # duplicate ACKs it sent in a row
        self.stalled = False             # acknowledged past its data: a hole was reported
        self.last = 0                    # flags of its latest segment
        self.waiting: list[int] = []     # ends of its segments the peer may not have acked


def _forget_acked(waiting: list, ack: int) -> None:
    """Drop the ends `ack` covers from the front; all of them once the list is full."""
    i = 0
    n = len(waiting)
    while i < n and (ack - waiting[i]) & M32 < HALF:
        i += 1
    del waiting[:i]
    if len(waiting) >= MAX_WAITING:
        waiting[:] = [e for e in waiting if (ack - e) & M32 >= HALF]


class Connection:
    """The sequence analysis of one TCP connection; `a` and `b` are its two sides.

    Call `segment(from_a, ...)` for each segment in capture order; it returns the
    segment's flags. Before a SYN on a connection already seen, `opens_new` says whether
    it starts a new connection on the same 4-tuple (then start a new `Connection` and add
    `REUSED_PORTS` to that segment's flags).
    """

    __slots__ = ("a", "b", "syn_ts", "rtt", "handshake", "fresh")

    def __init__(self) -> None:
        self.a = _Side()
        self.b = _Side()
        self.syn_ts = 0.0      # time of the latest SYN (without ACK)
        self.rtt = 0.0         # handshake round trip: that SYN to the first plain ACK
        self.handshake = False  # a side is handshaking or the round trip is still unknown
        self.fresh = True       # a side's initial sequence number is not known yet

    def opens_new(self, from_a: bool, seq: int, flags: int) -> bool:
        """A SYN (not SYN-ACK) whose initial sequence number differs from this side's."""
        if flags & (SYN | ACK) != SYN:
            return False
        isn = (self.a if from_a else self.b).isn
        return isn is not None and seq != isn

    def compact(self) -> None:
        """Forget the segments each side's peer has acknowledged (for a connection that has
        ended, whose state is kept for its late segments)."""
        for me, peer in ((self.a, self.b), (self.b, self.a)):
            if me.waiting:
                ack = peer.ack
                me.waiting = [e for e in me.waiting if (ack - e) & M32 >= HALF]

    def plain(self, from_a: bool, ts: float, seq: int, ack: int, seglen: int,
              window: int) -> bool:
        """Take the commonest segment, an ACK (PSH allowed, no other flag, no window scale
        option) that no rule flags, and say True; False, the state untouched, when it is
        not one (then `segment` applies every rule). Decided without the rules that cannot
        apply to it: at the expected sequence number, the window open, both ISNs known,
        acknowledging nothing unseen, and either empty and acknowledging something new or
        data not yet acknowledged that does not fill the peer's window. (It may be the ACK
        that ends the handshake: no rule it could meet depends on the handshake.)"""
        if from_a:
            me, peer = self.a, self.b
        else:
            me, peer = self.b, self.a
        nxt = me.nxt
        if seq != nxt or not nxt or not window or self.fresh:
            return False
        upto = peer.to_ack
        if upto and (upto - ack + HALF) & M32 < HALF:        # acks something unseen
            return False
        if not seglen:
            if ack == me.ack:                                 # acknowledges nothing new
                return False
            me.dups = 0
            me.stalled = False
            end = nxt
        else:
            end = (seq + seglen) & M32
            acked = peer.ack
            if not peer.window or (acked and (acked - end + HALF) & M32 >= HALF):
                return False                                  # already acknowledged
            if peer.scale is not None:
                shift = 0 if peer.handshaking or peer.scale == SCALING_OFF else peer.scale
                if (end - peer.ack - (peer.window << shift)) & M32 == 0:
                    return False                              # fills the window
            if ack != me.ack:
                me.dups = 0
                me.stalled = False
            waiting = me.waiting
            n = len(waiting)
            if n >= MAX_WAITING or (n >= 32 and not n & 31):  # prune now and then
                _forget_acked(waiting, acked)
                n = len(waiting)
            if n < MAX_WAITING:
                waiting.append(end)
            me.nxt = end
            me.nxt_ts = ts
        if not me.to_ack or seq == me.to_ack:
            me.to_ack = end
        me.window = window
        me.ack = ack
        me.ack_ts = ts
        me.last = 0
        if self.handshake:
            self._handshake_acked(me, peer, ts)
        return True

    def segment(self, from_a: bool, ts: float, seq: int, ack: int, seglen: int, flags: int,
                window: int, wscale: int = -1) -> int:
        """The `tcp.analysis` flags of one segment; then the state takes it in.

        `seglen` is the TCP payload length on the wire, `window` the raw window field,
        `wscale` the window scale option's shift (-1 when absent).
        """
        if (flags == ACK or flags == ACK | PSH) and wscale < 0 \
                and self.plain(from_a, ts, seq, ack, seglen, window):
            return 0
        if from_a:
            me, peer = self.a, self.b
        else:
            me, peer = self.b, self.a
        found = 0
        if flags & SYN and me.isn is not None:
            if flags & ACK:
                if seq != me.isn:                     # a SYN-ACK with a new ISN
                    me.isn = seq
                    found = REUSED_PORTS
            else:                                     # the same SYN again: expect it anew
                me.nxt = me.to_ack
        if self.fresh:                                # an ISN not known yet
            if me.isn is None:
                me.isn = seq if flags & SYN else (seq - 1) & M32
            if peer.isn is None and flags & ACK:
                peer.isn = (ack - 1) & M32
            self.fresh = peer.isn is None

        nxt = me.nxt
        last_ack = me.ack
        off = ((seq - nxt + HALF) & M32) - HALF       # 0: the expected seq; -1: one before
        control = flags & (SYN | FIN | RST)
        probe = seglen == 1 and off == 0 and peer.window == 0
        if probe:
            found |= ZERO_WINDOW_PROBE
        else:
            if not control:
                if window == 0:
                    found |= ZERO_WINDOW
                if off == -1 and seglen <= 1:
                    found |= KEEP_ALIVE
            if off > 0 and nxt and not flags & RST:
                found |= LOST_SEGMENT
            if seglen == 0:
                if off == 0 and ack == last_ack and not control:
                    if window == 0:
                        if me.window == 0 and peer.last & ZERO_WINDOW_PROBE:
                            found |= ZERO_WINDOW_PROBE_ACK
                    elif window != me.window:
                        found |= WINDOW_UPDATE
                    elif peer.last & KEEP_ALIVE:
                        found |= KEEP_ALIVE_ACK
                    else:
                        found |= DUPLICATE_ACK
                        me.dups = 1 if me.stalled else me.dups + 1
                        me.stalled = False
            elif not control and peer.scale is not None:
                shift = 0 if peer.handshaking or peer.scale == SCALING_OFF else peer.scale
                if (seq + seglen - peer.ack - (peer.window << shift)) & M32 == 0:
                    found |= WINDOW_FULL
        if ack != last_ack:
            me.dups = 0
            me.stalled = False

        if flags & ACK:
            upto = peer.to_ack
            if upto and (upto - ack + HALF) & M32 < HALF:    # acks what was never seen
                if (upto - peer.nxt + HALF) & M32 < HALF:
                    peer.to_ack = peer.nxt
                    found |= ACK_LOST_SEGMENT
                else:
                    if not peer.dups and not peer.stalled:
                        found |= ACK_LOST_SEGMENT
                    peer.dups = 0
                    peer.stalled = True

        end = (seq + seglen) & M32
        sends = seglen or flags & (SYN | FIN)         # occupies sequence space
        if sends and not found & KEEP_ALIVE:
            acked = peer.ack
            if seglen and acked and (acked - end + HALF) & M32 >= HALF:
                found |= SPURIOUS_RETRANSMISSION
            elif nxt and off < 0 and not (off == -1 and seglen > 1):
                if (peer.stalled or peer.dups >= 2) and acked == seq and \
                        -TIME_SLACK < ts - peer.ack_ts < FAST_RETRANSMISSION_WITHIN - TIME_SLACK:
                    found |= FAST_RETRANSMISSION
                elif -TIME_SLACK < ts - me.nxt_ts < (self.rtt or OUT_OF_ORDER_WITHIN) - TIME_SLACK \
                        and (end + (1 if flags & (SYN | FIN) else 0)) & M32 != nxt:
                    found |= OUT_OF_ORDER
                else:
                    found |= RETRANSMISSION

        if sends:
            # tshark remembers at most MAX_WAITING segments awaiting an ACK per side; past
            # that (a one-way capture) a SYN or FIN no longer counts in the next sequence
            waiting = me.waiting
            n = len(waiting)
            if n >= MAX_WAITING or (n >= 32 and not n & 31):     # prune now and then
                _forget_acked(waiting, peer.ack)
                n = len(waiting)
            if n < MAX_WAITING:
                if flags & (SYN | FIN):
                    end = (end + 1) & M32
                waiting.append(end)
        if not probe:
            if not nxt or (nxt - end + HALF) & M32 < HALF:
                me.nxt = nxt = end
                me.nxt_ts = ts
            if not me.to_ack or seq == me.to_ack:
                me.to_ack = nxt
        me.window = window
        me.ack = ack
        me.ack_ts = ts
        me.last = found

        # the handshake: window scaling in use or not, and its round-trip time
        if wscale >= 0:
            me.scale = wscale
        if flags & SYN:
            me.handshaking = self.handshake = True
            if not flags & ACK:
                self.syn_ts = ts
            if me.scale is None:                      # no scale option: none either way
                me.scale = peer.scale = SCALING_OFF
            elif flags & ACK and peer.scale == SCALING_OFF:
                me.scale = SCALING_OFF
        elif self.handshake and flags & ACK:
            self._handshake_acked(me, peer, ts)
        return found

    def _handshake_acked(self, me: _Side, peer: _Side, ts: float) -> None:
        """An ACK without SYN from `me` during the handshake: its round trip, once the
        first such ACK after a SYN gives it, and whether the handshake goes on."""
        me.handshaking = False
        if self.syn_ts and not self.rtt:
            self.rtt = ts - self.syn_ts
        self.handshake = peer.handshaking or bool(self.syn_ts and not self.rtt)


class TcpAnalyzer:
    """Sequence analysis alone (no reassembly): feed Segments in capture order.

    Connections are keyed by their 4-tuple either way round; a SYN with a new initial
    sequence number on a known 4-tuple starts a new one (as tshark numbers `tcp.stream`).
    `feed` returns the segment's flags; `counts` totals them per filter name, and
    `per_packet` keeps (index, flags) of flagged segments when `keep=True`.
    """

    def __init__(self, keep: bool = False) -> None:
        self._by_tuple: dict[tuple, tuple[Connection, bool]] = {}
        self.counts = Counts()
        self.keep = keep
        self.per_packet: list[tuple[int, int]] = []
        self.conversations = 0

    def feed(self, seg) -> int:
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        known = self._by_tuple.get(key)
        extra = 0
        if known is not None and seg.flags & SYN and known[0].opens_new(known[1], seg.seq,
                                                                         seg.flags):
            known = None
            extra = REUSED_PORTS
        if known is None:
            known = (Connection(), True)
            self._by_tuple[key] = known
            self._by_tuple[(seg.dst, seg.dport, seg.src, seg.sport)] = (known[0], False)
            self.conversations += 1
        conn, from_a = known
        flags = conn.segment(from_a, seg.ts, seg.seq, seg.ack, seg.seglen, seg.flags,
                             seg.window, seg.wscale) | extra
        if flags:
            self.counts.add(flags)
            if self.keep:
                self.per_packet.append((seg.index, flags))
        return flags

    def feed_all(self, segments: Iterable) -> "TcpAnalyzer":
        for s in segments:
            self.feed(s)
        return self
