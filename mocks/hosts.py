"""One lab host, started in this process: what `testbed serve ROLE` runs (in each worker).

A `HostSpec` (`mocks.hostspec`) says everything a host needs: its role, the addresses it
binds, the store URL, the profile, the time line. `start_host(spec, store)` binds it and
returns a `RunningHost` that says what it bound.

Roles: `long` (the long link), `short` (the short link: plain HTTP and TLS), `mapabc`,
`qlogo` and `qpic` (HTTP), `dns` (the lab's resolver, UDP and TCP on one port) and `nat` (the
carrier NAT: a TCP relay in front of given targets). `long`, `short`, `mapabc`, `qlogo` and
`qpic` may run in several workers (`spec.reuse_port`); the state they share is all in the
store. `dns` and `nat` keep per-process state (query log, mappings) and run in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

from testbed.lab.profiles import load_profile

from . import cdn, mapabc
from .addresses import HeldAddresses
from .dns import LabDNS
from .endpoints import Endpoint
from .hostspec import HostSpec
from .long_link import LongLinkServer
from .nat import NatRelay
from .service import Service
from .short_link import ShortLinkServer
from .state import Store
from .stats import process_name
from .tls import LabCA
from .web_server import AppServer


@dataclass
class RunningHost:
    """A started host: what it bound (ports resolved) and how to stop it."""

    spec: HostSpec
    listen: list[Endpoint] = field(default_factory=list)
    tls: list[Endpoint] = field(default_factory=list)
    details: dict = field(default_factory=dict)   # role-specific, for the ready file
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def describe(self) -> dict:
        """Plain data (what a worker sends its supervisor, what the ready file holds)."""
        return {"listen": [e.to_list() for e in self.listen],
                "tls": [e.to_list() for e in self.tls], **self.details}

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()
        self._closers.clear()


async def start_host(spec: HostSpec, store: Optional[Store]) -> RunningHost:
    """Bind `spec`'s host in this process on `store` (None for roles without state). On an
    error (OSError for an address that cannot be had) whatever was bound is closed."""
    host = RunningHost(spec)
    try:
        await _STARTERS[spec.role](spec, store, host)
    except BaseException:
        await host.close()
        raise
    return host


# ---------------------------------------------------------------------------- roles
async def _long(spec: HostSpec, store: Store, host: RunningHost) -> None:
    profile, limits = load_profile(spec.profile), spec.limits()
    clock = spec.clock()
    service = Service(store, clock, nearby_radius_m=profile.nearby_radius_m, limits=limits)
    server = LongLinkServer(service, clock, spec.idle_timeout_s or profile.server_idle_s,
                            spec.max_packet_len or profile.max_packet_len, process_name(),
                            limits=limits)
    host._closers.append(server.close)
    host.errors = server.errors
    for e in spec.listen:
        bound = await server.listen(e.host, e.port, reuse_port=spec.reuse_port or None)
        host.listen.append(Endpoint(e.host, bound.sockets[0].getsockname()[1]))
    host.details["server_idle_s"] = server.idle_timeout_s


async def _short(spec: HostSpec, store: Store, host: RunningHost) -> None:
    profile, limits = load_profile(spec.profile), spec.limits()
    service = Service(store, spec.clock(), nearby_radius_m=profile.nearby_radius_m,
                      limits=limits)
    server = ShortLinkServer(service, process_name(), limits=limits)
    host._closers.append(server.close)
    host.errors = server.errors
    for e in spec.listen:
        port = await server.listen(e.host, e.port, reuse_port=spec.reuse_port)
        host.listen.append(Endpoint(e.host, port))
    if spec.tls_listen:
        if spec.ca_dir is None:
            raise ValueError("the short link's TLS port needs the lab CA (--ca DIR)")
        ca = LabCA.in_dir(spec.ca_dir)
        tls = ca.server_context()
        for e in spec.tls_listen:
            port = await server.listen(e.host, e.port, tls, reuse_port=spec.reuse_port)
            host.tls.append(Endpoint(e.host, port))
        host.details["ca_cert"] = str(ca.ca_pem_path.resolve())


def _app_role(make_app: Callable[[Optional[Service]], object]):
    async def start(spec: HostSpec, store: Optional[Store], host: RunningHost) -> None:
        limits = spec.limits()
        service = Service(store, spec.clock(), limits=limits) if store is not None else None
        server = AppServer(make_app(service), limits=limits)
        host._closers.append(server.close)
        for e in spec.listen:
            port = await server.listen(e.host, e.port, reuse_port=spec.reuse_port)
            host.listen.append(Endpoint(e.host, port))
    return start


async def _dns(spec: HostSpec, store: Optional[Store], host: RunningHost) -> None:
    records = {name: list(addrs) for name, addrs in spec.records}
    for e in spec.listen:
        server = LabDNS(records, spec.ttl, ns_address=e.host,
                        backlog=spec.limits().listen_backlog)

        async def close(server=server) -> None:
            server.close()

        await server.listen(e.host, e.port)
        host._closers.append(close)
        host.listen.append(Endpoint(*server.address))
    host.details["records"] = {name: list(addrs) for name, addrs in spec.records}


async def _nat(spec: HostSpec, store: Optional[Store], host: RunningHost) -> None:
    if spec.add_addresses:
        held = HeldAddresses()

        async def release() -> None:
            held.release()

        host._closers.append(release)
        for address in dict.fromkeys(listen.host for listen, _ in spec.maps):
            held.take(address)
        host.details["added_addresses"] = [a for a, _ in held.added]
    limits = spec.limits()
    relay = NatRelay(spec.clock(), spec.nat_timeout_s, latency_s=spec.nat_latency_s,
                     max_connections_per_address=limits.max_connections_per_address,
                     backlog=limits.listen_backlog)
    host._closers.append(relay.close)
    maps = []
    for listen, target in spec.maps:
        port = await relay.add_mapping(listen.host, listen.port, target.host, target.port)
        host.listen.append(Endpoint(listen.host, port))
        maps.append([f"{listen.host}:{port}", str(target)])
    host.details.update(maps=maps, idle_timeout_s=spec.nat_timeout_s,
                        latency_s=spec.nat_latency_s)


_STARTERS = {
    "long": _long, "short": _short, "dns": _dns, "nat": _nat,
    "mapabc": _app_role(lambda service: mapabc.make_app()),
    "qlogo": _app_role(cdn.make_qlogo_app),
    "qpic": _app_role(cdn.make_qpic_app),
}
