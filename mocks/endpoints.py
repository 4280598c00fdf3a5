"""Addresses a host listens on (`ADDR:PORT`), and the port reservation that lets several worker
processes share one listening port with `SO_REUSEPORT`.

Each worker binds and listens on its own socket with `SO_REUSEPORT`, so the kernel spreads new
connections over the workers' accept queues, and a worker that dies takes only its own queue
with it (new connections go to the others at once). The parent holds a *reservation*: a socket
bound to the same address and port with `SO_REUSEPORT` but never listening, so it gets no
connections. It turns port 0 into one port that every worker binds, and keeps the port ours
while a worker is restarted. Before reserving, the parent binds once without `SO_REUSEPORT`:
if anyone listens there already (another lab, by the same user, which `SO_REUSEPORT` would
otherwise let us join silently), that fails with EADDRINUSE.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """An IPv4 address and a TCP/UDP port (0: any free one)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def to_list(self) -> list:
        return [self.host, self.port]


def parse_endpoint(text: str) -> Endpoint:
    """`ADDR:PORT` (IPv4) -> Endpoint; `ValueError` with a message fit for a user."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.11:8080)")
    try:
        host = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be 0 to 65535")
    return Endpoint(host, int(port))


def parse_hosts_port(text: str) -> tuple[list[str], int]:
    """`ADDR[,ADDR...]:PORT` (the manifest's form of a host: its A records and one port)."""
    addrs, sep, port = text.rpartition(":")
    if not sep or not addrs:
        raise ValueError(f"{text!r} is not ADDR[,ADDR...]:PORT")
    points = [parse_endpoint(f"{a}:{port}") for a in addrs.split(",")]
    if points[0].port == 0:
        raise ValueError(f"{text!r}: a manifest needs the real port, not 0")
    return [p.host for p in points], points[0].port


def _socket(reuse_port: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


def reserve(endpoint: Endpoint) -> socket.socket:
    """Check nobody listens on `endpoint`, then hold it for `SO_REUSEPORT` workers: a bound,
    never listening socket (its port is the one they bind). OSError (EADDRINUSE,
    EADDRNOTAVAIL) if the address cannot be had."""
    if endpoint.port:
        with _socket(reuse_port=False) as probe:
            probe.bind((endpoint.host, endpoint.port))
    held = _socket(reuse_port=True)
    try:
        held.bind((endpoint.host, endpoint.port))
    except OSError:
        held.close()
        raise
    return held


def reserved_endpoint(held: socket.socket) -> Endpoint:
    host, port = held.getsockname()[:2]
    return Endpoint(host, port)
