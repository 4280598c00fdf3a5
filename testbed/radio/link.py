"""A live phone's packet timeline, from what its long links do as it runs.

`LinkTimeline` is a `testbed.client.linkobserver.LinkObserver`: give it to a `Phone` (or a
`Session`, or a `LongLink`) and it hands every IP packet of the links to `sink(t, direction,
size)` at the protocol time it happens, ready for a `RadioMeter`. The link reports what the
phone's sockets did; the packets are those a phone's TCP/IP stack makes of it:

* a connect: the SYN (c2s) when it starts; the SYN-ACK (s2c) and the ACK (c2s) when it
  completes; SYNs carry 40 bytes of options (MSS, SACK permitted, timestamps, window scale);
* a write of n bytes: ceil(n / MSS) data segments c2s, each its payload + `TCPIP_HEADER_BYTES`;
* a read of n bytes: ceil(n / MSS) data segments s2c, and the phone's ACK (one per read);
* a close: the closer's FIN; when the server closed, the phone's FIN answers it at once.

Not in it, because the phone cannot see them and a reply or a close follows within the same
radio tail: the server's bare ACKs of the phone's data (its reply carries them) and the last
ACK of a close. Nor retransmissions: none happen on loopback, where a NAT that black-holes a
link still lets the phone's kernel have its writes ACKed (`mocks/nat.py`); a real phone would
retransmit into the hole until it gave up.
"""

from __future__ import annotations

from typing import Callable

from testbed.client.linkobserver import LinkObserver

TCPIP_HEADER_BYTES = 52   # IPv4 (20) + TCP (20) + timestamps option (12)
SYN_BYTES = 60            # IPv4 (20) + TCP (20) + options (40): MSS, SACK-permitted, TS, WS
MSS = 1448                # payload per segment on a 1500-byte MTU with timestamps

Sink = Callable[[float, str, int], None]


class LinkTimeline(LinkObserver):
    """IP packets `(t, direction, size)` to `sink` as the links' events happen; `clock.now()`
    stamps them (protocol seconds)."""

    def __init__(self, clock, sink: Sink) -> None:
        self.now = clock.now
        self.sink = sink

    def _data(self, t: float, direction: str, nbytes: int) -> None:
        full, rest = divmod(nbytes, MSS)
        for _ in range(full):
            self.sink(t, direction, MSS + TCPIP_HEADER_BYTES)
        if rest:
            self.sink(t, direction, rest + TCPIP_HEADER_BYTES)

    def connecting(self) -> None:
        self.sink(self.now(), "c2s", SYN_BYTES)

    def connected(self) -> None:
        t = self.now()
        self.sink(t, "s2c", SYN_BYTES)
        self.sink(t, "c2s", TCPIP_HEADER_BYTES)

    def sent(self, nbytes: int) -> None:
        self._data(self.now(), "c2s", nbytes)

    def received(self, nbytes: int) -> None:
        t = self.now()
        self._data(t, "s2c", nbytes)
        self.sink(t, "c2s", TCPIP_HEADER_BYTES)

    def closed(self, by_peer: bool) -> None:
        t = self.now()
        if by_peer:
            self.sink(t, "s2c", TCPIP_HEADER_BYTES)
        self.sink(t, "c2s", TCPIP_HEADER_BYTES)
