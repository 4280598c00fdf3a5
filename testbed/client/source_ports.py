"""The long link's local port, cycled per source address.

A phone with a source address of its own (the heartbeat study gives each one) that let the
kernel pick its port got back a port it had used seconds before: on loopback the kernel
reuses ports quickly (libuv binds with SO_REUSEADDR, and `tcp_tw_reuse`), while the carrier
NAT still held the old, black-holed mapping of the same address and port for its linger
(7,200 protocol s). The new connection then met the old mapping's 4-tuple and the linger
release aborted it. A real phone's kernel does not reuse a port within seconds, so a long
link from an explicit source address takes the next port of that address's counter, over
`PORT_RANGE`, and a port in use is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import zlib
from typing import Callable

log = logging.getLogger(__name__)

PORT_RANGE = (10000, 60999)     # inclusive: wide, so a port comes back only after ~51,000
MAX_TRIES = 16                  # ports tried before leaving the choice to the kernel
_IN_USE = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


class SourcePorts:
    """The local ports of one source address, handed out in turn over `PORT_RANGE`,
    starting at a point that depends on the address (phones do not march in step)."""

    def __init__(self, address: str) -> None:
        self.address = address
        low, high = PORT_RANGE
        self._next = low + zlib.crc32(address.encode()) % (high - low + 1)

    @property
    def next_port(self) -> int:
        """The port `take()` hands out next."""
        return self._next

    def take(self) -> int:
        port = self._next
        low, high = PORT_RANGE
        self._next = low if port >= high else port + 1
        return port


_BY_ADDRESS: dict[str, SourcePorts] = {}


def source_ports(address: str) -> SourcePorts:
    """This process's port counter for `address` (one per address, shared by its sessions)."""
    ports = _BY_ADDRESS.get(address)
    if ports is None:
        ports = _BY_ADDRESS[address] = SourcePorts(address)
    return ports


async def create_connection_from(loop: asyncio.AbstractEventLoop,
                                 factory: Callable[[], asyncio.Protocol], host: str,
                                 port: int, address: str):
    """`loop.create_connection(factory, host, port)` from `address` and the next port of its
    counter; a port in use (EADDRINUSE, or EADDRNOTAVAIL: its 4-tuple is taken) is skipped.
    After `MAX_TRIES` such ports the kernel picks one (port 0)."""
    ports = source_ports(address)
    for _ in range(MAX_TRIES):
        local = ports.take()
        try:
            return await loop.create_connection(factory, host, port, local_addr=(address, local))
        except OSError as exc:
            if exc.errno not in _IN_USE:
                raise
    log.debug("long link from %s: %d ports in use in a row (last %d); the kernel picks one",
              address, MAX_TRIES, local)
    return await loop.create_connection(factory, host, port, local_addr=(address, 0))
