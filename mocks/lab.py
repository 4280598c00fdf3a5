"""Run every lab host in one process and write the manifest once all of them listen."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from aiohttp import web

from testbed.lab.addressing import HOST_NAMES, LONG, MAPABC, QLOGO, QPIC, SHORT, AddressPlan
from testbed.lab.clock import Clock
from testbed.lab.manifest import HostEntry, Manifest
from testbed.lab.profiles import DEFAULT_PROFILE, Profile, load_profile

from . import cdn, mapabc
from .dns import LabDNS
from .long_link import LongLinkServer
from .nat import NatRelay
from .service import Service
from .short_link import ShortLinkServer
from .state import MemoryStore, Store
from .tls import LabCA

log = logging.getLogger(__name__)

FALLBACK_ADDRESS = "127.0.0.1"


@dataclass
class LabConfig:
    """What `testbed lab up` takes; every field has a default that works unprivileged."""

    users: int = 10
    friends: str = "all"
    profile: str = DEFAULT_PROFILE
    time_scale: float = 1.0
    plan: AddressPlan = field(default_factory=AddressPlan)
    privileged_ports: bool = False       # bind the profile's real ports (80, 443, 53)
    ports: Optional[dict[str, int]] = None   # override the port plan (0 = any free port)
    manifest_path: Optional[Path] = None
    workdir: Optional[Path] = None       # where the CA PEM goes (default: beside the manifest)
    server_idle_s: Optional[float] = None
    max_packet_len: Optional[int] = None
    nat_timeout_s: Optional[float] = None   # put a carrier NAT in front of every TCP host
    nat_latency_s: float = 0.0


class Lab:
    """The five hosts and the resolver, sharing one service and one clock."""

    def __init__(self, config: LabConfig | None = None, store: Store | None = None) -> None:
        self.config = config or LabConfig()
        self.profile: Profile = load_profile(self.config.profile)
        self.clock = Clock(self.config.time_scale)
        self.store = store or MemoryStore()
        self.service = Service(self.store, self.clock,
                               nearby_radius_m=self.profile.nearby_radius_m)
        idle = self.config.server_idle_s or self.profile.server_idle_s
        self.long = LongLinkServer(self.service, self.clock, idle_timeout_s=idle,
                                   max_packet_len=self.config.max_packet_len
                                   or self.profile.max_packet_len)
        self.short = ShortLinkServer(self.service)
        self.ca = LabCA()
        self.apps = {MAPABC: mapabc.make_app(), QLOGO: cdn.make_qlogo_app(self.service),
                     QPIC: cdn.make_qpic_app(self.service)}
        self.dns: Optional[LabDNS] = None
        self.nat: Optional[NatRelay] = self._make_nat()
        self.manifest: Optional[Manifest] = None
        self.manifest_path: Optional[Path] = None
        self._runners: list[web.AppRunner] = []
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self.users = []

    # ------------------------------------------------------------------
    async def start(self) -> Manifest:
        cfg = self.config
        self.users = await self.service.seed_users(cfg.users, cfg.friends)
        ports = cfg.ports or self.profile.port_plan(cfg.privileged_ports)
        try:
            hosts, dns_addr, dns_port = await self._bind(cfg.plan, ports)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            # only 127.0.0.1 exists here (macOS): one address, a free port per server
            log.warning("lab addresses %s.x unavailable; using %s with free ports",
                        cfg.plan.prefix, FALLBACK_ADDRESS)
            await self._unbind()
            hosts, dns_addr, dns_port = await self._bind(None, {k: 0 for k in ports})
        self.manifest = self._make_manifest(hosts, dns_addr, dns_port)
        if cfg.manifest_path is not None:
            self.manifest_path = self.manifest.write(cfg.manifest_path)
        return self.manifest

    async def _expose(self, addr: str, port: int, start) -> int:
        """Start a server on addr; behind the NAT (if any) when the lab has one.

        `start(addr, port)` binds a server and returns its port. With a NAT the server takes
        a free port and the NAT relay takes the public one, so clients reach the server only
        through the relay, as a phone behind a carrier gateway does."""
        if self.nat is None:
            return await start(addr, port)
        inner = await start(addr, 0)
        return await self.nat.add_mapping(addr, port, addr, inner)

    async def _bind(self, plan: Optional[AddressPlan], ports: dict[str, int]):
        def addrs(host: str) -> list[str]:
            return plan.addresses(host) if plan else [FALLBACK_ADDRESS] * (2 if host in (LONG, SHORT) else 1)

        async def long_server(addr: str, port: int) -> int:
            server = await self.long.listen(addr, port)
            return server.sockets[0].getsockname()[1]

        tls_ctx = self.ca.server_context()

        async def short_plain(addr: str, port: int) -> int:
            return await self.short.listen(addr, port)

        async def short_tls(addr: str, port: int) -> int:
            return await self.short.listen(addr, port, ssl_context=tls_ctx)

        hosts: dict[str, HostEntry] = {}
        # one port per host in the manifest: every address of a host binds the same port
        # (a free port found on the first address is reused on the next)
        async def same_port(host: str, port: int, start) -> int:
            for addr in dict.fromkeys(addrs(host)):
                port = await self._expose(addr, port, start)
            return port

        hosts[LONG] = HostEntry(addrs(LONG), await same_port(LONG, ports["long"], long_server))
        if "long_fallback" in ports:
            hosts[LONG].fallback_port = await same_port(LONG, ports["long_fallback"], long_server)
        short_port = await same_port(SHORT, ports["short"], short_plain)
        tls_port = await same_port(SHORT, ports["tls"], short_tls)
        hosts[SHORT] = HostEntry(addrs(SHORT), short_port, tls_port=tls_port)

        for name in (MAPABC, QLOGO, QPIC):
            runner = web.AppRunner(self.apps[name], access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)

            async def http_server(addr: str, port: int, runner=runner) -> int:
                site = web.TCPSite(runner, addr, port, reuse_address=True)
                await site.start()
                return runner.addresses[-1][1]

            hosts[name] = HostEntry(addrs(name), await same_port(name, ports["http"],
                                                                 http_server))

        records = {name: hosts[name].addresses for name in HOST_NAMES}
        self.dns = LabDNS(records)
        dns_addr = plan.dns if plan else FALLBACK_ADDRESS
        await self.dns.listen(dns_addr, ports["dns"])
        dns_port = self.dns.address[1]
        return hosts, dns_addr, dns_port

    def _make_nat(self) -> Optional[NatRelay]:
        cfg = self.config
        if cfg.nat_timeout_s is None:
            return None
        if not cfg.nat_timeout_s > 0:
            raise ValueError(f"NAT timeout must be positive, got {cfg.nat_timeout_s}")
        return NatRelay(self.clock, cfg.nat_timeout_s, latency_s=cfg.nat_latency_s)

    def _ca_path(self) -> Path:
        cfg = self.config
        if cfg.workdir is not None:
            return Path(cfg.workdir) / "lab-ca.pem"
        if cfg.manifest_path is not None:
            p = Path(cfg.manifest_path)
            return p.with_name(p.stem + "-ca.pem")
        self._tmpdir = tempfile.TemporaryDirectory(prefix="testbed-lab-")
        return Path(self._tmpdir.name) / "lab-ca.pem"

    def _make_manifest(self, hosts, dns_addr, dns_port) -> Manifest:
        ca = self.ca.write_ca_pem(self._ca_path())
        users = [{"username": u.username, "password": u.password} for u in self.users]
        extra = {}
        if self.nat is not None:
            extra["nat"] = {"idle_timeout_s": self.nat.idle_timeout_s,
                            "latency_s": self.config.nat_latency_s,
                            "hosts": sorted(h for h in hosts)}
        return Manifest(profile=self.profile.name, time_scale=self.clock.scale,
                        dns_address=dns_addr, dns_port=dns_port, hosts=hosts,
                        ca_cert=str(ca.resolve()), users=users,
                        heartbeat_s=self.profile.heartbeat_s,
                        server_idle_s=self.long.idle_timeout_s, extra=extra)

    async def _unbind(self) -> None:
        if self.nat is not None:
            await self.nat.close()
            self.nat = self._make_nat()
        await self.long.close()
        await self.short.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        # fresh servers for a second attempt
        self.long = LongLinkServer(self.service, self.clock, self.long.idle_timeout_s,
                                   self.long.max_packet_len)
        self.short = ShortLinkServer(self.service)
        self.apps = {MAPABC: mapabc.make_app(), QLOGO: cdn.make_qlogo_app(self.service),
                     QPIC: cdn.make_qpic_app(self.service)}

    async def stop(self) -> None:
        if self.nat is not None:
            await self.nat.close()
        await self.long.close()
        await self.short.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self.dns is not None:
            self.dns.close()
        if self.manifest_path is not None:
            try:
                os.unlink(self.manifest_path)
            except FileNotFoundError:
                pass
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def server_errors(self) -> list[BaseException]:
        """Exceptions raised inside handlers, for tests to re-raise."""
        return [*self.long.errors, *self.short.errors]

    async def __aenter__(self) -> "Lab":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
