"""From a capture file to each client's packet timeline, and through the radio model.

A client (a phone) is an address that is the client of some TCP flow (it sent the SYN), as
`testbed.capture.analyze` decides, or the higher-port end of some UDP conversation (the
first sender when the ports are equal). Each of
its packets, either way, goes on its timeline: uplink when it comes from the client's end
of a flow, downlink when it goes to it. Times are protocol seconds from the capture's first
packet (the capture's recorded time scale applied); sizes are the IP packet's bytes.

`capture_costs` streams the file once more after the analysis, feeding one `RadioMeter` per
client and profile, so memory does not grow with the capture.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from testbed.capture.analyze import Analysis, analyze
from testbed.capture.packets import decode, read_capture

from .model import RadioCost, RadioMeter, RadioPacket
from .profile import RadioProfile

# bytes before the IP header, by pcap link type (VLAN tags, rare in captures of a phone's
# traffic, are counted as IP bytes)
_LINK_HEADER = {1: 14, 113: 16, 276: 20, 0: 4, 108: 4, 101: 0, 228: 0, 229: 0, 12: 0, 14: 0}


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _client_ends(analysis: Analysis) -> set[tuple]:
    """(client endpoint, server endpoint) of every flow and UDP conversation."""
    ends = set()
    for f in analysis.flows:
        ends.add((_endpoint(f["client"]), _endpoint(f["server"])))
    for u in analysis.udp:
        a, b = _endpoint(u["a"]), _endpoint(u["b"])
        # the server's is the lower (well-known) port: a DNS answer can come first in a
        # capture that began mid-exchange; with equal ports, the first sender is the client
        ends.add((a, b) if a[1] >= b[1] else (b, a))
    return ends


def capture_packets(path: str, analysis: Optional[Analysis] = None
                    ) -> Iterator[tuple[str, RadioPacket]]:
    """`(client address, RadioPacket)` for every TCP or UDP packet of the capture that a
    client sent or received, in capture order."""
    if analysis is None:
        analysis = analyze(str(path), keep_events=False)
    ends = _client_ends(analysis)
    if not ends:
        return
    t0 = analysis.first_ts or 0.0
    scale = analysis.time_scale
    cap = read_capture(str(path))
    try:
        for pkt in cap:
            item = decode(pkt)
            if item is None:
                continue
            src, dst = (item.src, item.sport), (item.dst, item.dport)
            if (src, dst) in ends:
                who, direction = item.src, "c2s"
            elif (dst, src) in ends:
                who, direction = item.dst, "s2c"
            else:
                continue
            size = pkt.origlen - _LINK_HEADER.get(pkt.linktype, 0)
            yield who, RadioPacket((pkt.ts - t0) * scale, direction, size)
    finally:
        cap.close()


def phone_timelines(path: str, analysis: Optional[Analysis] = None
                    ) -> dict[str, list[RadioPacket]]:
    """Each client's timeline, as lists (for small captures; `capture_costs` streams)."""
    out: dict[str, list[RadioPacket]] = {}
    for who, p in capture_packets(path, analysis):
        out.setdefault(who, []).append(p)
    return out


def capture_costs(path: str, profiles: Iterable[RadioProfile],
                  analysis: Optional[Analysis] = None) -> dict[str, dict[str, RadioCost]]:
    """{client address: {profile name: RadioCost}} for every client of the capture, each
    cost's `observed_s` being the capture's duration in protocol seconds."""
    if analysis is None:
        analysis = analyze(str(path), keep_events=False)
    profiles = list(profiles)
    meters: dict[str, list[RadioMeter]] = {}
    for who, p in capture_packets(path, analysis):
        ms = meters.get(who)
        if ms is None:
            ms = meters[who] = [RadioMeter(prof) for prof in profiles]
        for m in ms:
            m.packet(p.t, p.direction, p.size)
    observed = analysis.protocol_seconds(analysis.duration)
    return {who: {m.profile.name: m.cost(observed) for m in ms}
            for who, ms in sorted(meters.items())}
