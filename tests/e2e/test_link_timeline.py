"""A phone's long links tell a `LinkObserver` what they do on the wire, and `LinkTimeline`
makes the packet timeline of it that the radio model costs: against a real lab (connect,
IDENTIFY, newsync, a server push, the phone's close) and a server that hangs up."""

from __future__ import annotations

import asyncio

import pytest

from testbed.client.linkobserver import LinkObserver
from testbed.client.longlink import LongLink
from testbed.client.phone import Phone
from testbed.client.session import Session
from testbed.radio import load_radio_profile, simulate
from testbed.radio.link import SYN_BYTES, TCPIP_HEADER_BYTES, LinkTimeline
from tests.e2e.helpers import wait_for

K = 1000.0    # 30 protocol s (longer than every tail) is 30 ms of wall time


class Recorder(LinkObserver):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def connecting(self):
        self.events.append(("connecting",))

    def connected(self):
        self.events.append(("connected",))

    def sent(self, nbytes):
        self.events.append(("sent", nbytes))

    def received(self, nbytes):
        self.events.append(("received", nbytes))

    def closed(self, by_peer):
        self.events.append(("closed", by_peer))


def _payload(packets, direction):
    """Application bytes in the data segments of one direction (SYNs and bare ACKs carry
    none; a long-link frame is at least 16 bytes)."""
    return sum(size - TCPIP_HEADER_BYTES for _t, d, size in packets
               if d == direction and size >= TCPIP_HEADER_BYTES + 16)


@pytest.mark.lab(users=2, time_scale=K)
async def test_a_phones_timeline_both_ways(lab):
    a, b = lab.manifest.users[:2]
    packets: list[tuple[float, str, int]] = []
    phone = Phone(lab.manifest, a["username"], a["password"], clock=lab.clock,
                  link_observer=LinkTimeline(lab.clock, lambda *p: packets.append(p)))
    sender = Session(lab.manifest, b["username"], b["password"])
    try:
        await phone.start()                  # TLS login on the short link, then the long link
        link = phone.session.link
        # the handshake first, then IDENTIFY and newsync, each answered and ACKed
        assert [(d, s) for _t, d, s in packets[:3]] == [
            ("c2s", SYN_BYTES), ("s2c", SYN_BYTES), ("c2s", TCPIP_HEADER_BYTES)]
        assert _payload(packets, "c2s") == link.bytes_sent
        assert _payload(packets, "s2c") == link.bytes_received
        assert [t for t, _d, _s in packets] == sorted(t for t, _d, _s in packets)

        # the radio goes idle; then a message is sent to the phone: the server's NOTIFY
        # wakes it, the phone's newsync follows
        await asyncio.sleep(30 / K)
        quiet = lab.clock.now()
        await sender.login()
        pushes = phone.metrics.pushes
        await sender.send_text(a["username"], "wake up", door="short")
        await wait_for(lambda: len(phone.metrics.received) == 1, timeout=10.0)
        assert phone.metrics.pushes == pushes + 1
        push = [p for p in packets if p[0] >= quiet]
        assert push[0][1] == "s2c"           # the NOTIFY came first
        cost = simulate(packets, load_radio_profile("lte-2012"))
        assert cost.wakeups == 2 and cost.server_wakeups == 1
        assert _payload(packets, "c2s") == link.bytes_sent
        assert _payload(packets, "s2c") == link.bytes_received
    finally:
        await phone.stop()
        await sender.close()
    # the phone closed its link: its FIN is the last packet
    assert packets[-1][1:] == ("c2s", TCPIP_HEADER_BYTES)


async def test_a_server_that_hangs_up_is_a_close_by_the_peer():
    async def hang_up(reader, writer):
        writer.write(b"\x00")             # one byte (the link calls it a protocol error
        await writer.drain()              # only once a whole header is in), then FIN
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        rec = Recorder()
        link = await LongLink.connect("127.0.0.1", port, observer=rec)
        await asyncio.wait_for(asyncio.shield(link.closed), 5)
        assert rec.events == [("connecting",), ("connected",), ("received", 1),
                              ("closed", True)]

        rec = Recorder()
        link = await LongLink.connect("127.0.0.1", port, observer=rec)
        link.abort()                      # this side ends it first
        await asyncio.wait_for(asyncio.shield(link.closed), 5)
        link.abort()                      # a second abort tells nobody anything
        assert rec.events[:2] == [("connecting",), ("connected",)]
        assert rec.events[-1] == ("closed", False)
        assert [e for e in rec.events if e[0] == "closed"] == [("closed", False)]
    finally:
        server.close()
        await server.wait_closed()
