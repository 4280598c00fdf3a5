"""Wireshark's TCP sequence analysis (`tcp.analysis.*`), per segment, per flow and in total.

This follows Wireshark 4.0.17's `tcp_analyze_sequence_number()` and the conversation
handling of `dissect_tcp()` (epan/dissectors/packet-tcp.c) rule by rule and in its order,
with its default preferences (analyze sequence numbers on, "fast retransmission supersedes
out-of-order" on, no default window scaling):

1. zero window probe (1 byte at the next expected seq while the peer's window is 0) - skips
   the checks up to the ACK analysis;
2. zero window (window 0, no SYN/FIN/RST);
3. lost segment, "previous segment not captured" (seq beyond the next expected, no RST);
4. keep-alive (0 or 1 byte at next expected - 1, no SYN/FIN/RST);
5. window update, 6. window full;
7. keep-alive ACK and 8. zero window probe ACK (both skip the duplicate ACK check);
9. duplicate ACK (no data, same seq/ack/window as the previous segment that way);
10. ACKed unseen segment (acks beyond what was seen the other way);
11. for segments with data or SYN/FIN whose seq does not advance: keep-alives are never
    retransmissions; spurious retransmission (all the data already ACKed); fast
    retransmission (>= 2 duplicate ACKs the other way for this seq, within 20 ms of the last
    ACK); out-of-order (within the first handshake RTT, or 3 ms without a handshake, of the
    highest segment, and not a plain repeat of it); otherwise retransmission.

Then the per-direction state is updated the same way Wireshark does it (next expected seq,
max seq to be ACKed, last ACK and window, the unacked segment list bounded at 10,000).

The display filter `tcp.analysis.retransmission` matches retransmissions, fast
retransmissions and spurious retransmissions alike (Wireshark adds the retransmission expert
item to all three); `FILTERS` maps each filter name to the flags it matches, so counts here
compare one to one with `tshark -Y tcp.analysis.<name>`.
"""

from __future__ import annotations

from typing import Iterable, Optional

__all__ = [
    "RETRANSMISSION", "FAST_RETRANSMISSION", "SPURIOUS_RETRANSMISSION", "OUT_OF_ORDER",
    "LOST_SEGMENT", "ACK_LOST_SEGMENT", "WINDOW_UPDATE", "WINDOW_FULL", "KEEP_ALIVE",
    "KEEP_ALIVE_ACK", "DUPLICATE_ACK", "ZERO_WINDOW", "ZERO_WINDOW_PROBE",
    "ZERO_WINDOW_PROBE_ACK", "REUSED_PORTS", "FLAG_NAMES", "FILTERS", "names",
    "filter_names", "DirState", "ConvState", "analyze_segment", "after_segment",
    "TcpAnalyzer", "Counts",
]

# Wireshark's TCP_A_* bits (same values).
RETRANSMISSION = 0x0001
LOST_SEGMENT = 0x0002
ACK_LOST_SEGMENT = 0x0004
KEEP_ALIVE = 0x0008
DUPLICATE_ACK = 0x0010
ZERO_WINDOW = 0x0020
ZERO_WINDOW_PROBE = 0x0040
ZERO_WINDOW_PROBE_ACK = 0x0080
KEEP_ALIVE_ACK = 0x0100
OUT_OF_ORDER = 0x0200
FAST_RETRANSMISSION = 0x0400
WINDOW_UPDATE = 0x0800
WINDOW_FULL = 0x1000
REUSED_PORTS = 0x2000
SPURIOUS_RETRANSMISSION = 0x4000

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

# tshark display filter `tcp.analysis.<name>` -> the flags that make it match.
FILTERS = {
    "retransmission": RETRANSMISSION | FAST_RETRANSMISSION | SPURIOUS_RETRANSMISSION,
    "fast_retransmission": FAST_RETRANSMISSION,
    "spurious_retransmission": SPURIOUS_RETRANSMISSION,
    "out_of_order": OUT_OF_ORDER,
    "lost_segment": LOST_SEGMENT,
    "ack_lost_segment": ACK_LOST_SEGMENT,
    "duplicate_ack": DUPLICATE_ACK,
    "zero_window": ZERO_WINDOW,
    "zero_window_probe": ZERO_WINDOW_PROBE,
    "zero_window_probe_ack": ZERO_WINDOW_PROBE_ACK,
    "keep_alive": KEEP_ALIVE,
    "keep_alive_ack": KEEP_ALIVE_ACK,
    "window_update": WINDOW_UPDATE,
    "window_full": WINDOW_FULL,
    "reused_ports": REUSED_PORTS,
}

M32 = 0xFFFFFFFF
HALF = 0x80000000
MAX_UNACKED = 10000          # TCP_MAX_UNACKED_SEGMENTS
FAST_RTX_WINDOW = 0.020      # a fast retransmission comes within 20 ms of the last dup ACK
OOO_DEFAULT = 0.003          # out-of-order threshold without a handshake RTT
# Timestamps are floats; Wireshark compares integer nanoseconds with "<". Captures carry
# micro- (or nano-) second stamps, so "t < limit" on exact values is "t < limit - 0.5 us"
# on floats that carry ~0.2 us of rounding error.
_EPS = 5e-7

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_SFR = SYN | FIN | RST
_SF = SYN | FIN


def names(flags: int) -> list[str]:
    """The analysis flags of a segment as names (Wireshark's order of bits)."""
    return [n for b, n in FLAG_NAMES.items() if flags & b]


_FILTER_CACHE: dict[int, tuple[str, ...]] = {}


def filter_names(flags: int) -> tuple[str, ...]:
    """The `tcp.analysis.<name>` filters a segment with these flags matches."""
    r = _FILTER_CACHE.get(flags)
    if r is None:
        r = tuple(n for n, mask in FILTERS.items() if flags & mask)
        _FILTER_CACHE[flags] = r
    return r


class DirState:
    """What Wireshark keeps per direction of a conversation (tcp_flow_t + seq info)."""

    __slots__ = ("base_set", "base_seq", "nextseq", "nextseqtime", "nextseqframe", "lastack",
                 "lastacktime", "lastnondupack", "dupacknum", "maxseqtobeacked", "window",
                 "win_scale", "lastsegflags", "is_first_ack", "unacked")

    def __init__(self) -> None:
        self.base_set = False
        self.base_seq = 0
        self.nextseq = 0              # 0 means "not known yet", as in Wireshark
        self.nextseqtime = 0.0
        self.nextseqframe = 0
        self.lastack = 0
        self.lastacktime = 0.0
        self.lastnondupack = 0
        self.dupacknum = 0
        self.maxseqtobeacked = 0
        self.window = M32             # G_MAXUINT32 until the first segment
        self.win_scale = -1           # -1 unknown, -2 no scaling, else the shift
        self.lastsegflags = 0
        self.is_first_ack = False
        self.unacked: list = []       # next-seq of each unacked segment, send order


class ConvState:
    """Per conversation: its two directions and the handshake timing."""

    __slots__ = ("ts_mru_syn", "ts_first_rtt")

    def __init__(self) -> None:
        self.ts_mru_syn = 0.0
        self.ts_first_rtt = 0.0


def syn_check(f: DirState, seq: int, flags: int) -> tuple[bool, int]:
    """Wireshark's port-reuse check, run before the analysis of a segment.

    Returns (new_conversation, initial_flags): a SYN whose seq differs from the ISN already
    seen that way starts a new conversation on the same 4-tuple; a retransmitted SYN
    restores the next expected seq.
    """
    sa = flags & (SYN | ACK)
    if sa == SYN and f.base_set:
        if seq != f.base_seq:
            return True, REUSED_PORTS
        f.nextseq = f.maxseqtobeacked        # issue 17616
        return False, 0
    if sa == (SYN | ACK) and f.base_set and seq != f.base_seq:
        f.base_seq = seq
        return False, REUSED_PORTS
    return False, 0


def analyze_segment(conv: ConvState, f: DirState, r: DirState, index: int, ts: float,
                    seq: int, ack: int, seglen: int, flags: int, window: int,
                    ta: int = 0) -> int:
    """Analyse one segment sent in direction `f` (the other one is `r`); returns its flags.

    `ta` carries flags already set for the segment (REUSED_PORTS from `syn_check`).
    Call `after_segment` next (the handshake and window-scale bookkeeping).

    Sequence comparisons are Wireshark's 32-bit ones: with d = (seq - nextseq) mod 2**32,
    GT_SEQ(seq, nextseq) is 0 < d <= 2**31 and LT_SEQ(seq, nextseq) is d >= 2**31.
    """
    # base sequence numbers (only used to tell a new SYN from a retransmitted one)
    if not f.base_set:
        f.base_seq = seq if flags & SYN else (seq - 1) & M32
        f.base_set = True
    if not r.base_set and flags & ACK:
        r.base_seq = (ack - 1) & M32
        r.base_set = True

    nextseq = f.nextseq
    d = (seq - nextseq) & M32
    flastack = f.lastack
    if seglen == 1 and d == 0 and r.window == 0:
        ta |= ZERO_WINDOW_PROBE                                 # ... goto finished_fwd
    else:
        ctl = flags & _SFR
        if window == 0 and not ctl:
            ta |= ZERO_WINDOW
        if nextseq and 0 < d <= HALF and not flags & RST:
            ta |= LOST_SEGMENT
        if seglen <= 1 and d == M32 and not ctl:                 # seq == nextseq - 1
            ta |= KEEP_ALIVE
        if seglen == 0:
            if d == 0 and ack == flastack and not ctl:
                fwin = f.window
                if window and window != fwin:
                    ta |= WINDOW_UPDATE
                if window and window == fwin and r.lastsegflags & KEEP_ALIVE:
                    ta |= KEEP_ALIVE_ACK                         # ... goto finished_fwd
                elif window == 0 and fwin == 0 and r.lastsegflags & ZERO_WINDOW_PROBE:
                    ta |= ZERO_WINDOW_PROBE_ACK                  # ... goto finished_fwd
                elif window and window == fwin:
                    f.dupacknum = 1 if f.dupacknum == -1 else f.dupacknum + 1
                    ta |= DUPLICATE_ACK
        elif r.win_scale != -1 and not ctl:
            shift = 0 if (r.is_first_ack or r.win_scale == -2) else r.win_scale
            if (seq + seglen) & M32 == (r.lastack + ((r.window << shift) & M32)) & M32:
                ta |= WINDOW_FULL

    # finished_fwd:
    if ack != flastack:
        f.lastnondupack = index
        f.dupacknum = 0

    # ACKed unseen segment
    if flags & ACK:
        rmax = r.maxseqtobeacked
        if rmax and ((rmax - ack) & M32) >= HALF:                # GT_SEQ(ack, rmax)
            if ((rmax - r.nextseq) & M32) >= HALF:               # LT_SEQ(rmax, nextseq)
                r.maxseqtobeacked = r.nextseq
                ta |= ACK_LOST_SEGMENT
            else:
                # the other way is stalled with pure ACKs: report the same hole only once
                if r.dupacknum == 0:
                    ta |= ACK_LOST_SEGMENT
                r.dupacknum = -1

    # retransmission / fast retransmission / spurious / out-of-order
    synfin = flags & _SF
    if (seglen > 0 or synfin) and not ta & KEEP_ALIVE:
        seq_not_advanced = nextseq and d >= HALF                 # LT_SEQ(seq, nextseq)
        if seglen > 1 and d == M32:                              # nextseq - 1 == seq
            seq_not_advanced = False
        rlastack = r.lastack
        e = (seq + seglen - rlastack) & M32
        if seglen > 0 and rlastack and (e == 0 or e >= HALF):    # LE_SEQ(seq+len, lastack)
            ta |= SPURIOUS_RETRANSMISSION
        elif seq_not_advanced:
            t = ts - r.lastacktime
            # dupacknum is a guint32 in Wireshark: its -1 marker compares as 0xFFFFFFFF >= 2
            if (r.dupacknum >= 2 or r.dupacknum == -1) and rlastack == seq and \
                    -_EPS < t < FAST_RTX_WINDOW - _EPS:
                ta |= FAST_RETRANSMISSION
            else:
                t = ts - f.nextseqtime
                thres = conv.ts_first_rtt or OOO_DEFAULT
                if -_EPS < t < thres - _EPS and \
                        nextseq != ((seq + seglen + (1 if synfin else 0)) & M32):
                    ta |= OUT_OF_ORDER
                else:
                    ta |= RETRANSMISSION

    # finished_checking_retransmission_type: update this direction
    nxt = (seq + seglen) & M32
    if seglen or synfin:
        unacked = f.unacked
        if len(unacked) >= MAX_UNACKED:
            _prune_all(unacked, r.lastack)
        if len(unacked) < MAX_UNACKED:
            if synfin:
                nxt = (nxt + 1) & M32
            unacked.append(nxt)
    if not ta & ZERO_WINDOW_PROBE:
        if not nextseq or ((nextseq - nxt) & M32) >= HALF:        # GT_SEQ(nxt, nextseq)
            f.nextseq = nextseq = nxt
            f.nextseqtime = ts
            f.nextseqframe = index
        if seq == f.maxseqtobeacked or not f.maxseqtobeacked:
            f.maxseqtobeacked = nextseq
    f.window = window
    f.lastack = ack
    f.lastacktime = ts
    f.lastsegflags = ta

    # segments of the other direction this ACKs (only their count matters here)
    ru = r.unacked
    if ru and ((ack - ru[0]) & M32) < HALF:
        i, n = 1, len(ru)
        while i < n and ((ack - ru[i]) & M32) < HALF:
            i += 1
        del ru[:i]
    return ta


def _prune_all(unacked: list, ack: int) -> None:
    """Drop every segment `ack` covers, wherever it sits in the list (rarely needed)."""
    unacked[:] = [n for n in unacked if ((ack - n) & M32) >= HALF]


def after_segment(conv: ConvState, f: DirState, r: DirState, ts: float, flags: int,
                  wscale: int) -> None:
    """The bookkeeping dissect_tcp does after the analysis: handshake RTT, window scale."""
    sa = flags & (SYN | ACK)
    if wscale >= 0:                       # the option is stored from any segment
        f.win_scale = wscale
    if flags & SYN:
        if not flags & ACK:
            conv.ts_mru_syn = ts
        f.is_first_ack = True
        # verify_tcp_window_scaling
        if f.win_scale == -1:
            f.win_scale = -2
            r.win_scale = -2
        elif flags & ACK and r.win_scale == -2:
            f.win_scale = -2
    elif sa == ACK:
        if conv.ts_mru_syn and not conv.ts_first_rtt:
            conv.ts_first_rtt = ts - conv.ts_mru_syn
        f.is_first_ack = False


class Counts(dict):
    """filter name -> number of segments matching `tcp.analysis.<name>`."""

    def add(self, flags: int) -> None:
        for n in filter_names(flags):
            self[n] = self.get(n, 0) + 1

    def __missing__(self, key: str) -> int:
        return 0


class TcpAnalyzer:
    """Sequence analysis alone (no reassembly): feed Segments in capture order.

    Conversations follow Wireshark's rules: keyed by the unordered 4-tuple, and a SYN with a
    new ISN on a known 4-tuple starts a new one. `feed` returns the segment's flags;
    `counts` totals them per filter name, `per_packet` keeps (index, flags) of flagged
    segments when `keep=True`.
    """

    def __init__(self, keep: bool = False) -> None:
        self._convs: dict = {}
        self.counts = Counts()
        self.keep = keep
        self.per_packet: list[tuple[int, int]] = []
        self.conversations = 0

    def feed(self, seg) -> int:
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        ent = self._convs.get(key)
        flags = seg.flags
        ta = 0
        if ent is not None:
            conv, f, r = ent
            new, ta = syn_check(f, seg.seq, flags)
            if new:
                ent = None
        if ent is None:
            conv, f, r = ConvState(), DirState(), DirState()
            self._convs[key] = (conv, f, r)
            self._convs[(seg.dst, seg.dport, seg.src, seg.sport)] = (conv, r, f)
            self.conversations += 1
        ta = analyze_segment(conv, f, r, seg.index, seg.ts, seg.seq, seg.ack, seg.seglen,
                             flags, seg.window, ta)
        after_segment(conv, f, r, seg.ts, flags, seg.wscale)
        if ta:
            self.counts.add(ta)
            if self.keep:
                self.per_packet.append((seg.index, ta))
        return ta

    def feed_all(self, segments: Iterable) -> "TcpAnalyzer":
        for s in segments:
            self.feed(s)
        return self


def analyze_file(path) -> dict:
    """`tcp.analysis.*` counts of a capture file (flows and reassembly left out)."""
    from .packets import Segment, decode, read_capture
    a = TcpAnalyzer()
    cap = read_capture(path)
    for pkt in cap:
        s = decode(pkt)
        if type(s) is Segment:
            a.feed(s)
    return dict(a.counts)


def describe(flags: int) -> Optional[str]:
    """Wireshark's Info column prefix for the flags, e.g. "[TCP Retransmission]"."""
    labels = []
    if flags & RETRANSMISSION:
        labels.append("TCP Retransmission")
    if flags & FAST_RETRANSMISSION:
        labels.append("TCP Fast Retransmission")
    if flags & SPURIOUS_RETRANSMISSION:
        labels.append("TCP Spurious Retransmission")
    if flags & OUT_OF_ORDER:
        labels.append("TCP Out-Of-Order")
    if flags & LOST_SEGMENT:
        labels.append("TCP Previous segment not captured")
    if flags & ACK_LOST_SEGMENT:
        labels.append("TCP ACKed unseen segment")
    if flags & WINDOW_UPDATE:
        labels.append("TCP Window Update")
    if flags & WINDOW_FULL:
        labels.append("TCP Window Full")
    if flags & KEEP_ALIVE:
        labels.append("TCP Keep-Alive")
    if flags & KEEP_ALIVE_ACK:
        labels.append("TCP Keep-Alive ACK")
    if flags & DUPLICATE_ACK:
        labels.append("TCP Dup ACK")
    if flags & ZERO_WINDOW_PROBE:
        labels.append("TCP ZeroWindowProbe")
    if flags & ZERO_WINDOW:
        labels.append("TCP ZeroWindow")
    if flags & ZERO_WINDOW_PROBE_ACK:
        labels.append("TCP ZeroWindowProbeAck")
    return " ".join(f"[{x}]" for x in labels) or None
