"""A lab manifest from the parts of a lab whose hosts run separately (`testbed lab manifest`,
and `testbed lab up --store redis://...`): where each host listens, the CA clients trust, the
profile and time scale, and the users, which come from the store.

Parts come from command-line flags (`ADDR[,ADDR]:PORT` per host, as a compose file knows its
fixed addresses) or from the hosts' ready files (`testbed serve ... --ready-file`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from testbed.lab.addressing import HOST_NAMES, SHORT, is_lab_address
from testbed.lab.manifest import HostEntry, Manifest
from testbed.lab.profiles import load_profile

from .endpoints import Endpoint
from .hostspec import HOST_OF_ROLE
from .service import Service
from .state import Store



@dataclass
class LabParts:
    """Where a lab's hosts are. Missing parts make `missing()` non-empty."""

    hosts: dict[str, HostEntry] = field(default_factory=dict)
    dns: Optional[Endpoint] = None
    ca_cert: Optional[str] = None
    server_idle_s: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def missing(self) -> list[str]:
        out = [name for name in HOST_NAMES if name not in self.hosts]
        if SHORT in self.hosts and self.hosts[SHORT].tls_port is None:
            out.append("the short link's TLS port")
        if self.dns is None:
            out.append("the DNS server")
        if self.ca_cert is None:
            out.append("the CA certificate")
        return out

    def add_ready(self, doc: dict) -> None:
        """Take the parts a host's ready file names (a `dns` or a host role; `nat` names
        none: its addresses are the hosts' own, given by the lab that placed it)."""
        role = doc.get("role")
        listen = [Endpoint(h, p) for h, p in doc.get("listen", [])]
        if role == "dns":
            self.dns = listen[0]
            return
        if role not in HOST_OF_ROLE:
            return
        addresses = list(dict.fromkeys(e.host for e in listen))
        ports = list(dict.fromkeys(e.port for e in listen))
        entry = HostEntry(addresses, ports[0])
        if role == "long":
            entry.fallback_port = ports[1] if len(ports) > 1 else None
            self.server_idle_s = doc.get("server_idle_s", self.server_idle_s)
        if role == "short" and doc.get("tls"):
            entry.tls_port = doc["tls"][0][1]
            self.ca_cert = doc.get("ca_cert", self.ca_cert)
        self.hosts[HOST_OF_ROLE[role]] = entry


async def manifest_from_parts(parts: LabParts, store: Store, profile_name: str,
                              time_scale: float) -> Manifest:
    """The manifest; `ValueError` naming what is missing, or if the store has no users."""
    missing = parts.missing()
    if missing:
        raise ValueError(f"the manifest needs {', '.join(missing)}")
    for addr in [parts.dns.host] + [a for h in parts.hosts.values() for a in h.addresses]:
        if not is_lab_address(addr):
            raise ValueError(f"{addr} is outside loopback and 198.18.0.0/15: a lab manifest "
                             f"may name only those")
    profile = load_profile(profile_name)
    users = await Service(store).users()
    if not users:
        raise ValueError("the store holds no users: seed it first (testbed lab seed "
                         "--store URL --users N)")
    return Manifest(profile=profile.name, time_scale=time_scale,
                    dns_address=parts.dns.host, dns_port=parts.dns.port,
                    hosts={name: parts.hosts[name] for name in HOST_NAMES},
                    ca_cert=parts.ca_cert,
                    users=[{"username": u.username, "password": u.password} for u in users],
                    heartbeat_s=profile.heartbeat_s,
                    server_idle_s=parts.server_idle_s or profile.server_idle_s,
                    extra=dict(parts.extra))
