"""Relay legs: the second copy of a connection that a sniffer sees when the lab relays it.

A lab that records with its tap, or has a carrier NAT, puts a relay in front of every TCP
server: the phone connects to the relay's public port, and the relay opens its own
connection to the server's internal port on the same address and copies the bytes across.
The tap records only the phone's side; a sniffer on `lo` (`testbed record --run`, a tcpdump)
sees both, so every connection would be counted twice (four TLS logins for two phones).

A leg is known by what the relay does: it connects to the same server address as the
phone's connection, on another port, just after the phone's connection began, and sends
the same first bytes (a TLS ClientHello carries 32 random bytes; an HTTP request or a
long-link frame its headers and body). The analysis leaves legs out unless asked to keep
them (`testbed analyze --all-legs`).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

FIRST_BYTES = 64        # client bytes a flow is fingerprinted by
LEG_DELAY_S = 2.0       # wall seconds between the phone's connection and the relay's at most


def relay_legs(flows: Iterable[dict], first_bytes: dict[int, bytes]) -> dict[int, int]:
    """{leg flow id: the id of the connection it relays} among `flows` (analysis rows,
    sorted by start); `first_bytes`: each flow's first client bytes (up to FIRST_BYTES).

    A flow is a leg of an earlier one to the same server address on another port, begun
    at most LEG_DELAY_S after it, whose first client bytes are the same (and not empty);
    each connection has at most one leg, and a leg relays nothing itself."""
    # by server address and first bytes, then by server port: the connections not relayed
    # yet, begun within LEG_DELAY_S, as (their order, start, id); by port, because on a busy
    # lab thousands of connections go to one server port with the same first bytes, and
    # none of them can be a leg of another
    by_head: dict[tuple[str, bytes], dict[str, deque]] = {}
    legs: dict[int, int] = {}
    for order, f in enumerate(flows):
        head = first_bytes.get(f["id"], b"")
        if not head:
            continue
        ip, _, port = f["server"].rpartition(":")
        ports = by_head.setdefault((ip, head), {})
        start = f["start"]
        best = None
        for p, waiting in list(ports.items()):
            while waiting and start - waiting[0][1] > LEG_DELAY_S:
                waiting.popleft()
            if not waiting:
                del ports[p]
            elif p != port and (best is None or waiting[0] < ports[best][0]):
                best = p
        if best is None:
            ports.setdefault(port, deque()).append((order, start, f["id"]))
        else:
            legs[f["id"]] = ports[best].popleft()[2]
            if not ports[best]:
                del ports[best]
    return legs
