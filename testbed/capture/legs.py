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

from typing import Iterable

FIRST_BYTES = 64        # client bytes a flow is fingerprinted by
LEG_DELAY_S = 2.0       # wall seconds between the phone's connection and the relay's at most


def _ip(endpoint: str) -> str:
    return endpoint.rpartition(":")[0]


def _port(endpoint: str) -> str:
    return endpoint.rpartition(":")[2]


def relay_legs(flows: Iterable[dict], first_bytes: dict[int, bytes]) -> dict[int, int]:
    """{leg flow id: the id of the connection it relays} among `flows` (analysis rows,
    sorted by start); `first_bytes`: each flow's first client bytes (up to FIRST_BYTES).

    A flow is a leg of an earlier one to the same server address on another port, begun
    at most LEG_DELAY_S after it, whose first client bytes are the same (and not empty);
    each connection has at most one leg, and a leg relays nothing itself."""
    by_head: dict[tuple[str, bytes], list[dict]] = {}
    legs: dict[int, int] = {}
    relayed: set[int] = set()
    for f in flows:
        head = first_bytes.get(f["id"], b"")
        if not head:
            continue
        key = (_ip(f["server"]), head)
        earlier = by_head.setdefault(key, [])
        earlier[:] = [p for p in earlier if f["start"] - p["start"] <= LEG_DELAY_S]
        for p in earlier:
            if p["id"] in relayed or p["id"] in legs \
                    or _port(p["server"]) == _port(f["server"]):
                continue
            legs[f["id"]] = p["id"]
            relayed.add(p["id"])
            break
        else:
            earlier.append(f)
    return legs
