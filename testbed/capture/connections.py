"""A capture read once more for a few connections only: their segments (`segments_of`), and
when each end last took in what the other sent (`last_acknowledged`).

The analysis reads a capture once, in bounded memory, and keeps no segment; a check that
needs more about a connection or two (the copies of a retransmitted segment, the last time a
phone used a connection) asks for them here, so the first pass stays as cheap as it is.
"""

from __future__ import annotations

from typing import Iterable

from .packets import Segment, decode, read_capture

MAX_SEGMENTS = 200_000      # segments kept from the connections asked about
RST = 0x04
ACK = 0x10
M32 = 0xFFFFFFFF
HALF = 0x80000000

Endpoint = tuple[str, int]


def endpoint(text: str) -> Endpoint:
    """("address", port) of "address:port", as a flow row writes its `client` and `server`."""
    host, _, port = text.rpartition(":")
    return host, int(port)


def segments_of(path: str, connections: Iterable[tuple[str, str]]) -> list[Segment]:
    """The segments of `connections` (pairs of "address:port", either way round), in capture
    order, at most MAX_SEGMENTS."""
    wanted = set()
    for a, b in connections:
        ea, eb = endpoint(a), endpoint(b)
        wanted.add((ea, eb))
        wanted.add((eb, ea))
    segments: list[Segment] = []
    if not wanted:
        return segments
    for pkt in read_capture(path):
        s = decode(pkt)
        if type(s) is Segment and ((s.src, s.sport), (s.dst, s.dport)) in wanted:
            segments.append(s)
            if len(segments) >= MAX_SEGMENTS:
                break
    return segments


def last_acknowledged(path: str, connections: Iterable[tuple[str, str]]
                      ) -> dict[tuple[str, str], float]:
    """(receiver, sender) -> the capture time of the last segment in which `receiver`
    acknowledged bytes of `sender`'s it had not acknowledged before (a FIN's sequence
    number does not count), for each direction of `connections` that carried data.

    That is when a program last took in what its peer sent, as near as the wire tells: a
    program that holds a connection has its kernel acknowledge what arrives; once it has
    closed it, its kernel still sends what was left in the send buffer, resends what was
    not acknowledged and acknowledges the peer's FIN, but answers new data with a reset."""
    base: dict[tuple[str, str], int] = {}       # sender -> the first seq seen from it
    sent: dict[tuple[str, str], int] = {}       # sender -> end of its data, from base
    acked: dict[tuple[str, str], int] = {}      # (receiver, sender) -> acknowledged, from base
    last: dict[tuple[str, str], float] = {}
    for s in segments_of(path, connections):
        if s.flags & RST:
            continue
        me, peer = f"{s.src}:{s.sport}", f"{s.dst}:{s.dport}"
        origin = base.setdefault((me, peer), s.seq)
        if s.seglen and (s.seq - origin) & M32 < HALF:
            end = ((s.seq - origin) & M32) + s.seglen
            sent[(me, peer)] = max(sent.get((me, peer), 0), end)
        theirs = (peer, me)
        if not s.flags & ACK or theirs not in base:
            continue
        offset = (s.ack - base[theirs]) & M32
        if offset >= HALF:
            continue
        now = min(offset, sent.get(theirs, 0))
        if now > acked.get((me, peer), 0):
            acked[(me, peer)] = now
            last[(me, peer)] = s.ts
    return last
