"""What one lab host is, as data: `HostSpec` (it pickles, so a supervisor hands it to its
worker processes) and the roles. `mocks.hosts.start_host` binds one; `mocks.probe` asks one
whether it is up. Kept apart from the servers so that reading a spec imports none of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from testbed.lab.addressing import LONG, MAPABC, QLOGO, QPIC, SHORT
from testbed.lab.clock import Clock
from testbed.lab.profiles import DEFAULT_PROFILE, Limits, load_profile

from .endpoints import Endpoint

ROLES = ("long", "short", "mapabc", "qlogo", "qpic", "dns", "nat")
WORKER_ROLES = ("long", "short", "mapabc", "qlogo", "qpic")   # may run in N processes
STORE_ROLES = ("long", "short", "qlogo", "qpic")              # read or write the lab's state
# a host role -> the host name it serves (the manifest's, the DNS's)
HOST_OF_ROLE = {"long": LONG, "short": SHORT, "mapabc": MAPABC, "qlogo": QLOGO, "qpic": QPIC}


@dataclass(frozen=True)
class HostSpec:
    """What one host binds and serves. Durations are protocol seconds."""

    role: str
    listen: tuple[Endpoint, ...]
    store: str = "memory:"
    profile: str = DEFAULT_PROFILE
    time_scale: float = 1.0
    epoch: Optional[float] = None        # Unix time of protocol time 0 (shared by workers)
    reuse_port: bool = False             # bind with SO_REUSEPORT (several workers)
    idle_timeout_s: Optional[float] = None   # long: server idle timeout (default: profile)
    max_packet_len: Optional[int] = None     # long (default: profile)
    tls_listen: tuple[Endpoint, ...] = ()    # short
    ca_dir: Optional[str] = None             # short: the lab CA (`LabCA.in_dir`)
    records: tuple[tuple[str, tuple[str, ...]], ...] = ()   # dns: name -> A records
    ttl: int = 600                           # dns
    maps: tuple[tuple[Endpoint, Endpoint], ...] = ()        # nat: listen -> target
    nat_timeout_s: Optional[float] = None    # nat: idle timeout (None: never expires)
    nat_latency_s: float = 0.0               # nat
    add_addresses: bool = False              # nat: take listen addresses it lacks
    behind_relay: bool = False   # every client comes through a relay: no per-address counts

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown host role {self.role!r}: one of {', '.join(ROLES)}")
        if self.reuse_port and self.role not in WORKER_ROLES:
            raise ValueError(f"{self.role} runs in one process")

    def clock(self) -> Clock:
        """This host's clock, on the time line every process given the same `epoch` shares."""
        if self.epoch is None:
            return Clock(self.time_scale)
        return Clock(self.time_scale, epoch=self.epoch,
                     origin=time.monotonic() - (time.time() - self.epoch))

    def limits(self) -> Limits:
        """The profile's limits as this host applies them."""
        limits = load_profile(self.profile).limits
        return limits.behind_relay() if self.behind_relay else limits
