"""Retransmissions told segment by segment: each data segment sent more than once, when each
copy went, and the packet that finally acknowledged it.

The analysis counts retransmissions in one pass and bounded memory, and keeps no segment;
the storyboard's timeout retransmission (a segment sent, sent again after a timeout, again
after a longer one, then acknowledged) needs the copies themselves. `resends` reads a
capture once more (`connections.segments_of`), keeping only the segments of the connections
it is asked about (those the analysis found retransmissions on).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .connections import segments_of
from .packets import Segment

M32 = 0xFFFFFFFF
HALF = 0x80000000
ACK = 0x10
MAX_RESENDS = 1000          # segments sent more than once, told in full
ACK_SEARCH = 10_000         # ACKs looked at after a segment's last copy


@dataclass
class Resend:
    """One data segment sent more than once on one connection."""

    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    length: int
    sends: list[tuple[int, float]] = field(default_factory=list)   # (packet, capture time)
    acked: Optional[tuple[int, float]] = None    # the first ACK that covered it, after it

    @property
    def gaps(self) -> list[float]:
        """Seconds between one copy and the next."""
        return [b[1] - a[1] for a, b in zip(self.sends, self.sends[1:])]

    @property
    def backs_off(self) -> bool:
        """Sent again after a timeout, then again after a longer one (or more times, each
        wait longer than the one before): a retransmission timer backing off."""
        gaps = self.gaps
        return len(gaps) >= 2 and all(b > a for a, b in zip(gaps, gaps[1:]))


def resends(path: str, connections: Iterable[tuple[str, str]]) -> list[Resend]:
    """The data segments sent more than once on `connections` (pairs of "address:port", as
    a flow row's `client` and `server`), in the order of their first copy."""
    segments = segments_of(path, connections)
    copies: dict[tuple, Resend] = {}
    for s in segments:
        if s.seglen:
            key = (s.src, s.sport, s.dst, s.dport, s.seq, s.seglen)
            r = copies.get(key)
            if r is None:
                r = copies[key] = Resend((s.src, s.sport), (s.dst, s.dport), s.seq, s.seglen)
            r.sends.append((s.index, s.ts))
    found = [r for r in copies.values() if len(r.sends) > 1][:MAX_RESENDS]
    acks: dict[tuple, list[Segment]] = {}     # by (sender, receiver), in capture order
    for s in segments:
        if s.flags & ACK:
            acks.setdefault(((s.src, s.sport), (s.dst, s.dport)), []).append(s)
    numbers: dict[tuple, list[int]] = {}      # the packet numbers of those ACKs
    for r in found:
        end = (r.seq + r.length) & M32
        back = acks.get((r.dst, r.src), [])
        if (r.dst, r.src) not in numbers:
            numbers[(r.dst, r.src)] = [s.index for s in back]
        first = bisect.bisect_right(numbers[(r.dst, r.src)], r.sends[-1][0])
        r.acked = next(((s.index, s.ts) for s in back[first:first + ACK_SEARCH]
                        if (s.ack - end) & M32 < HALF), None)
    return sorted(found, key=lambda r: r.sends[0][0])
