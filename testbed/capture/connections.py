"""A capture read once more for a few connections only: their segments (`segments_of`), and
when each end last sent bytes it had not sent before (`last_new_data`).

The analysis reads a capture once, in bounded memory, and keeps no segment; a check that
needs more about a connection or two (the copies of a retransmitted segment, the last time a
phone used a connection) asks for them here, so the first pass stays as cheap as it is.
"""

from __future__ import annotations

from typing import Iterable

from .packets import Segment, decode, read_capture

MAX_SEGMENTS = 200_000      # segments kept from the connections asked about
RST = 0x04
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


def last_new_data(path: str, connections: Iterable[tuple[str, str]]
                  ) -> dict[tuple[str, str], float]:
    """(sender, receiver) -> the capture time of the last segment in which `sender` sent
    bytes it had not sent before on that connection, for each direction of `connections`
    that carried data.

    That is when a program last wrote to a connection, as near as the wire tells: after it
    closes one, its kernel may still resend what was not acknowledged, and reset the peer's
    late packets, but sends nothing new."""
    frontier: dict[tuple[str, str], int] = {}    # bytes past the first seq seen
    first: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], float] = {}
    for s in segments_of(path, connections):
        if not s.seglen or s.flags & RST:
            continue
        key = (f"{s.src}:{s.sport}", f"{s.dst}:{s.dport}")
        base = first.setdefault(key, s.seq)
        end = ((s.seq - base) & M32) + s.seglen
        if end > frontier.get(key, 0) and (s.seq - base) & M32 < HALF:
            frontier[key] = end
            last[key] = s.ts
    return last
