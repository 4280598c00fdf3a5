"""`LinkTimeline`: a long link's events as the IP packets a phone's TCP/IP stack makes of
them, stamped on the clock."""

from __future__ import annotations

from testbed.radio.link import MSS, SYN_BYTES, TCPIP_HEADER_BYTES, LinkTimeline


class StepClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def test_events_become_packets():
    clock, out = StepClock(), []
    tl = LinkTimeline(clock, lambda *p: out.append(p))
    H = TCPIP_HEADER_BYTES
    tl.connecting()
    clock.t = 0.1
    tl.connected()
    clock.t = 1.0
    tl.sent(16)                         # a NOOP: one segment
    clock.t = 1.2
    tl.received(16)                     # its reply, and the phone's ACK
    clock.t = 5.0
    tl.sent(2 * MSS + 100)              # a large write: three segments
    clock.t = 6.0
    tl.received(MSS)                    # a full segment, and the ACK
    clock.t = 9.0
    tl.closed(by_peer=True)             # the server's FIN, the phone's FIN
    clock.t = 10.0
    tl.closed(by_peer=False)            # (another link) the phone's FIN alone
    assert out == [
        (0.0, "c2s", SYN_BYTES), (0.1, "s2c", SYN_BYTES), (0.1, "c2s", H),
        (1.0, "c2s", 16 + H),
        (1.2, "s2c", 16 + H), (1.2, "c2s", H),
        (5.0, "c2s", MSS + H), (5.0, "c2s", MSS + H), (5.0, "c2s", 100 + H),
        (6.0, "s2c", MSS + H), (6.0, "c2s", H),
        (9.0, "s2c", H), (9.0, "c2s", H),
        (10.0, "c2s", H)]
    assert SYN_BYTES == 60 and H == 52 and MSS + H == 1500
