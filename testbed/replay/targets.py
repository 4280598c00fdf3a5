"""Where a replay may send: the lab its manifest names, and nothing else.

A capture's addresses are never used: a recorded connection is mapped by host name (its
DNS name, SNI or Host header) to the same host of the lab (the same A record where the
recording used the second one), and every address a replay connects to passes `check`
first, which refuses anything outside loopback and the benchmarking range (namespace labs)
and anything that is not one of the manifest's own addresses, whatever the capture says.
`LabTargets.opened` lists every connection made, for the output and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from testbed.lab.addressing import is_lab_address
from testbed.lab.manifest import Manifest


class UnsafeTarget(Exception):
    """A replay was asked to send somewhere that is not the lab."""


@dataclass
class LabTargets:
    manifest: Manifest
    opened: list[tuple[str, str, int]] = field(default_factory=list)   # (host, address, port)

    def __post_init__(self) -> None:
        self.allowed = {self.manifest.dns_address}
        for h in self.manifest.hosts.values():
            self.allowed.update(h.addresses)

    def check(self, address: str, port: int, host: str = "") -> tuple[str, int]:
        """(address, port) when the lab owns it; `UnsafeTarget` otherwise. Every connection
        and datagram of a replay goes through here."""
        try:
            lab_range = is_lab_address(address)
        except ValueError:
            raise UnsafeTarget(f"{address!r} is not an IP address: refusing to send there") \
                from None
        if not lab_range or address not in self.allowed:
            raise UnsafeTarget(f"{address}:{port}{f' ({host})' if host else ''} is not an "
                               f"address of the lab the manifest names: a replay sends "
                               f"only to the lab")
        self.opened.append((host, address, port))
        return address, port

    def host_address(self, host: str, index: int = 0) -> str:
        """The lab's address of `host` (its A record `index`, or its first)."""
        entry = self.manifest.hosts.get(host)
        if entry is None or not entry.addresses:
            raise UnsafeTarget(f"{host or 'a nameless host'} is not a host of the lab: a "
                               f"replay sends only to the lab's hosts")
        return entry.addresses[index] if index < len(entry.addresses) else entry.addresses[0]

    def host_of(self, address: str) -> Optional[str]:
        """The lab host an address of this lab belongs to (None: none does)."""
        for name, h in self.manifest.hosts.items():
            if address in h.addresses:
                return name
        return None
