"""Caps on what one client address may hold: concurrent connections per door.

One `AddressCap` per door (the long link, the short link, each NAT port): a connection from
an address that already holds `limit` of that door's connections is closed at once, before
any byte is read, so no single address can take all of a process's open files (20,000 here)
from the others. Behind a relay (the carrier NAT, the faults' pass-through) every
connection comes from the relay, so the lab puts the cap on the relay's public side and none
on the servers behind it.
"""

from __future__ import annotations

from typing import Optional


def peer_address(peer) -> str:
    """The address part of a transport's `peername` ("" when it has none)."""
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return ""


class AddressCap:
    """Concurrent connections per client address, at most `limit` (None: no cap)."""

    __slots__ = ("limit", "_held", "refused")

    def __init__(self, limit: Optional[int]) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a per-address cap must be at least 1, got {limit}")
        self.limit = limit
        self._held: dict[str, int] = {}
        self.refused = 0          # connections closed at once for being over the cap

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`; False (and not counted) over the cap."""
        held = self._held.get(address, 0)
        if self.limit is not None and held >= self.limit:
            self.refused += 1
            return False
        self._held[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """An admitted connection from `address` ended."""
        held = self._held.get(address, 0) - 1
        if held > 0:
            self._held[address] = held
        else:
            self._held.pop(address, None)

    def held(self, address: str) -> int:
        """Connections `address` holds now."""
        return self._held.get(address, 0)
