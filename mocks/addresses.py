"""Addresses a host stands in front of without having them: `testbed serve nat
--add-addresses`.

A container has one address per network, but the carrier NAT of the container lab stands in
front of every host, at each host's public address (the ones the lab's DNS answers with).
So it takes them: each address it must listen on that is not local yet is added, as a /32,
to the interface that routes to it (`ip addr add`, which needs CAP_NET_ADMIN), and removed
again when it stops. Its neighbours then reach it there as at any address of its own (the
kernel answers ARP for every local address). Only addresses of the benchmarking range
(198.18.0.0/15) are ever added; loopback addresses are local already.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import shutil
import socket
import subprocess

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")


def is_local(address: str) -> bool:
    """Whether a socket can be bound to `address` here (the kernel has it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _ip(*args: str) -> str:
    if shutil.which("ip") is None:
        raise OSError("adding an address needs iproute2's `ip` (apt-get install iproute2)")
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def route_device(address: str) -> str:
    """The interface the kernel would send to `address` through."""
    found = re.search(r"\bdev (\S+)", _ip("-o", "route", "get", address))
    if found is None:
        raise OSError(f"no interface routes to {address}")
    return found.group(1)


class HeldAddresses:
    """The addresses this process added; `release()` removes them (they go with the network
    namespace anyway, when a container ends)."""

    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []   # (address, device)

    def take(self, address: str) -> bool:
        """Make `address` local unless it is; True if it was added. `OSError` if it cannot
        be (no route to it, no CAP_NET_ADMIN), `ValueError` outside 198.18.0.0/15."""
        if is_local(address):
            return False
        if ipaddress.ip_address(address) not in LAB_RANGE:
            raise ValueError(f"{address} is not local, and only addresses of "
                             f"{LAB_RANGE} are ever added")
        dev = route_device(address)
        _ip("addr", "add", f"{address}/32", "dev", dev)
        self.added.append((address, dev))
        return True

    def release(self) -> None:
        while self.added:
            address, dev = self.added.pop()
            try:
                _ip("addr", "del", f"{address}/32", "dev", dev)
            except OSError:   # gone with its interface already
                pass
