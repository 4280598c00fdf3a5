"""The running lab: every lab host in one process, the manifest written once all of them
listen. (`testbed.lab` is the lab's configuration as data: profiles, plan, manifest, clock.)

Recording (`LabConfig.record`): the lab writes a pcapng of everything a phone would see on
its wire, made by the in-process tap (`testbed.capture.tap.Tap`, no privileges). When the lab
has a relay in front of every TCP server (the carrier NAT, or the pass-through `NatRelay` that
carries the faults), the relay reports every accepted connection, chunk, FIN and reset on its
client side; otherwise the servers report their own connections (`mocks.transport_tap`: no
relay hop, which would cost every byte once more); the resolver reports every query and
answer. The section comment
records the lab manifest without passwords, which exists only once every server is bound, so
the tap buffers (bounded) until `start()` has the manifest, then opens the file, writes the
section header with the comment and the buffered packets. In practice nothing is buffered:
no client knows an address before the manifest is written. `stop()` closes the capture after
the relays have closed their connections, so their last FINs are in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from testbed.capture.pcapng_writer import capture_comment
from testbed.capture.tap import Tap
from testbed.lab import NAT_UPSTREAMS
from testbed.lab.addressing import HOST_NAMES, LONG, MAPABC, QLOGO, QPIC, SHORT, AddressPlan
from testbed.lab.clock import Clock
from testbed.lab.faults import FaultPlan, Faults
from testbed.lab.manifest import HostEntry, Manifest
from testbed.lab.profiles import DEFAULT_PROFILE, Profile, load_profile
from testbed.replay.masks import MaskSet
from testbed.replay.script import ServerScript, Unmatched
from testbed.replay.sessions import load_sessions

from . import cdn, mapabc
from .dns import LabDNS
from .long_link import LongLinkServer
from .memory_transport import LocalServers
from .nat import NatRelay
from .transport_tap import TransportTap
from .replay import ReplayService, dns_verdict, get_middleware
from .served import RequestObserver
from .service import Service
from .short_link import ShortLinkServer
from .state import MemoryStore, Store
from .tls import LabCA
from .web_server import AppServer

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
    # the relay's upstream leg to the servers of this process: "socket" (loopback, as any
    # client) or "memory" (`mocks.memory_transport`); see testbed.lab.NAT_UPSTREAMS
    nat_upstream: str = "socket"
    record: Optional[Path] = None        # write a pcapng made by the in-process tap here
    record_comment_extra: dict = field(default_factory=dict)  # added to its section comment
    record_mss: int = 1460               # the tap's segment size
    replay: Optional[Path] = None        # server replay: answer from this capture
    unmatched: str = "fail"              # server replay: fail, forward or error
    replay_masks: Optional[MaskSet] = None   # server replay: request masks (`lab up --mask`)
    faults: Optional[FaultPlan] = None   # frame and connection faults, seeded

    def lab_file(self, suffix: str) -> Optional[Path]:
        """Where a file of the lab goes ("-ca.pem": the CA): `workdir/lab<suffix>`, else
        beside the manifest as `<its stem><suffix>`; None if neither is set."""
        if self.workdir is not None:
            return Path(self.workdir) / f"lab{suffix}"
        if self.manifest_path is not None:
            p = Path(self.manifest_path)
            return p.with_name(p.stem + suffix)
        return None


class Lab:
    """The five hosts and the resolver, sharing one service and one clock.

    `clock` (default: a `Clock` at the config's time scale) times everything in the lab;
    a test passes a `ManualClock` (and gives the same one to its phones) to move time itself.
    `observer` is told of every request a host answers (`mocks.served`: `lab up -v`).
    """

    def __init__(self, config: LabConfig | None = None, store: Store | None = None,
                 clock: Clock | None = None,
                 observer: Optional[RequestObserver] = None) -> None:
        self.config = config or LabConfig()
        self.observer = observer        # told of every request a host answers, if set
        self.profile: Profile = load_profile(self.config.profile)
        self.clock = clock or Clock(self.config.time_scale)
        self.store = store or MemoryStore()
        self.faults: Optional[Faults] = (Faults(self.config.faults, self.clock)
                                         if self.config.faults else None)
        self.script: Optional[ServerScript] = None
        if self.config.replay is not None:
            self.script = ServerScript(load_sessions(str(self.config.replay)),
                                       Unmatched(self.config.unmatched),
                                       masks=self.config.replay_masks)
        self.ca = LabCA()
        self.dns: Optional[LabDNS] = None
        self.record_path: Optional[Path] = (Path(self.config.record)
                                            if self.config.record is not None else None)
        self.tap: Optional[Tap] = (Tap(self.record_path, mss=self.config.record_mss)
                                   if self.record_path is not None else None)
        self._record_started: Optional[float] = None
        self._flush_handle: Optional[asyncio.TimerHandle] = None
        self.nat: Optional[NatRelay] = None
        self.relay: Optional[NatRelay] = None   # the NAT, or a pass-through with faults
        self._make_relay()
        # recording with no relay: the servers' own connections go to the tap
        self.transport_tap: Optional[TransportTap] = (
            TransportTap(self.tap) if self.tap is not None and self.relay is None else None)
        # behind a relay every client has the relay's address: what counts per address
        # (connections, wrong logins) is counted where the relay still sees them, or not
        self.server_limits = self.profile.limits if self.relay is None else \
            self.profile.limits.behind_relay()
        self.service = Service(self.store, self.clock,
                               nearby_radius_m=self.profile.nearby_radius_m,
                               limits=self.server_limits)
        self.service.observer = observer
        self._make_servers()
        self.manifest: Optional[Manifest] = None
        self.manifest_path: Optional[Path] = None
        self._app_servers: list[AppServer] = []
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._ca_file: Optional[Path] = None     # the CA PEM this lab wrote, removed on stop
        self.users = []

    # ------------------------------------------------------------------
    async def start(self) -> Manifest:
        cfg = self.config
        self._record_started = time.time()
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
        # seeded once every server is bound, so a start that cannot bind leaves a store it
        # was given (shared with other processes, say) as it was; no client knows an address
        # before the manifest
        self.users = await self.service.seed_users(cfg.users, cfg.friends)
        self.manifest = self._make_manifest(hosts, dns_addr, dns_port)
        if self.tap is not None:
            self.tap.start(self.record_comment())
            self._flush_tap()
        if cfg.manifest_path is not None:
            self.manifest_path = self.manifest.write(cfg.manifest_path)
        return self.manifest

    def _flush_tap(self) -> None:
        """Every second, so `tshark -r` on a live `lab up --record` file sees recent packets."""
        self._flush_handle = None
        if self.tap is not None and not self.tap.closed:
            self.tap.flush()
            self._flush_handle = asyncio.get_running_loop().call_later(1.0, self._flush_tap)

    def record_comment(self) -> dict:
        """The capture's section comment (how=tap, profile, time scale, manifest without
        passwords, fault plan and seed: null unless `record_comment_extra` sets them)."""
        cfg = self.config
        extra = {"tap": {"mss": self.tap.mss if self.tap else cfg.record_mss,
                         "isn_seed": self.tap.seed if self.tap else 0,
                         "relay": ("nat" if self.nat is not None else "pass-through"
                                   if self.relay is not None else "none")}}
        if self.faults is not None:
            extra.update(fault_plan=self.faults.plan.describe(), seed=self.faults.plan.seed)
        if cfg.replay is not None:
            extra["replay"] = {"capture": str(cfg.replay), "unmatched": cfg.unmatched}
        extra.update(cfg.record_comment_extra)
        return capture_comment("tap", profile=self.profile.name, time_scale=self.clock.scale,
                               manifest=self.manifest, started=self._record_started, **extra)

    async def _expose(self, addr: str, port: int, start, host: str = "") -> int:
        """Start a server on addr; behind the relay (if any) when the lab has one.

        `start(addr, port)` binds a server and returns its port. With a relay (the NAT, or
        the recorder's pass-through) the server takes a free port and the relay takes the
        public one, so clients reach the server only through the relay, as a phone behind a
        carrier gateway does."""
        if self.relay is None:
            return await start(addr, port)
        inner = await start(addr, 0)
        return await self.relay.add_mapping(addr, port, addr, inner, host=host)

    async def _bind(self, plan: Optional[AddressPlan], ports: dict[str, int]):
        def addrs(host: str) -> list[str]:
            return plan.addresses(host) if plan else [FALLBACK_ADDRESS] * (2 if host in (LONG, SHORT) else 1)

        async def long_server(addr: str, port: int) -> int:
            server = await self.long.listen(addr, port, local=self.local)
            return server.sockets[0].getsockname()[1]

        tls_ctx = self.ca.server_context()

        async def short_plain(addr: str, port: int) -> int:
            return await self.short.listen(addr, port, local=self.local)

        async def short_tls(addr: str, port: int) -> int:
            return await self.short.listen(addr, port, ssl_context=tls_ctx)

        hosts: dict[str, HostEntry] = {}
        # one port per host in the manifest: every address of a host binds the same port
        # (a free port found on the first address is reused on the next)
        async def same_port(host: str, port: int, start) -> int:
            for addr in dict.fromkeys(addrs(host)):
                port = await self._expose(addr, port, start, host)
            return port

        hosts[LONG] = HostEntry(addrs(LONG), await same_port(LONG, ports["long"], long_server))
        if "long_fallback" in ports:
            hosts[LONG].fallback_port = await same_port(LONG, ports["long_fallback"], long_server)
        short_port = await same_port(SHORT, ports["short"], short_plain)
        tls_port = await same_port(SHORT, ports["tls"], short_tls)
        hosts[SHORT] = HostEntry(addrs(SHORT), short_port, tls_port=tls_port)

        for name in (MAPABC, QLOGO, QPIC):
            server = AppServer(self.apps[name], host=name, limits=self.server_limits)
            server.observer = self.observer
            server.transport_tap = self.transport_tap
            self._app_servers.append(server)
            hosts[name] = HostEntry(addrs(name), await same_port(name, ports["http"],
                                                                 server.listen))

        records = {name: hosts[name].addresses for name in HOST_NAMES}
        dns_addr = plan.dns if plan else FALLBACK_ADDRESS
        # behind a relay every TCP client has the relay's address: the per-address cap
        # there would be one cap for all phones (the relay keeps one per client)
        self.dns = LabDNS(records, tap=self.tap, ns_address=dns_addr,
                          backlog=self.server_limits.listen_backlog,
                          **({} if self.relay is None else {"max_tcp_per_address": None}))
        if self.script is not None:
            self.dns.replay = dns_verdict(self.script, self.clock)
        self.dns.observer = self.observer
        self.dns.transport_tap = self.transport_tap
        # DNS over TCP shares the UDP port; behind the relay (NAT or recorder) like every
        # other TCP server, so a capture shows it and the NAT forgets it like the rest
        await self.dns.listen(dns_addr, ports["dns"], tcp=self.relay is None)
        dns_port = self.dns.address[1]
        if self.relay is not None:
            await self._expose(dns_addr, dns_port, self.dns.listen_tcp, "dns")
        return hosts, dns_addr, dns_port

    def _make_relay(self) -> None:
        """The carrier NAT when configured; else a pass-through relay when faulting (the
        faults live in the relay, on what the phone's side of it sees)."""
        cfg = self.config
        limits = self.profile.limits
        caps = dict(max_connections_per_address=limits.max_connections_per_address,
                    backlog=limits.listen_backlog)
        self.nat = None
        if cfg.nat_upstream not in NAT_UPSTREAMS:
            raise ValueError(f"NAT upstream must be one of {', '.join(NAT_UPSTREAMS)}, got "
                             f"{cfg.nat_upstream!r}")
        # "memory": the servers behind the relay, reached from it in memory, so a NOOP
        # crosses loopback once in this process (phone -> relay), not three times
        self.local: Optional[LocalServers] = (LocalServers() if cfg.nat_upstream == "memory"
                                              else None)
        caps["local"] = self.local
        if cfg.nat_timeout_s is not None:
            if not cfg.nat_timeout_s > 0:
                raise ValueError(f"NAT timeout must be positive, got {cfg.nat_timeout_s}")
            self.nat = NatRelay(self.clock, cfg.nat_timeout_s, latency_s=cfg.nat_latency_s,
                                tap=self.tap, faults=self.faults, **caps)
            self.relay = self.nat
        elif self.faults is not None:
            self.relay = NatRelay(self.clock, None, tap=self.tap, faults=self.faults, **caps)
        else:
            self.relay = None
            self.local = None

    def _make_servers(self) -> None:
        """The doors and the HTTP apps, on the service (or, under server replay, on the
        capture first: `mocks.replay`), with the profile's limits (behind a relay, the relay
        keeps the per-address cap)."""
        cfg, limits = self.config, self.server_limits
        doors = self.service if self.script is None else ReplayService(self.service,
                                                                        self.script)
        self.long = LongLinkServer(
            doors, self.clock,
            idle_timeout_s=cfg.server_idle_s or self.profile.server_idle_s,
            max_packet_len=cfg.max_packet_len or self.profile.max_packet_len, limits=limits)
        self.short = ShortLinkServer(doors, faults=self.faults, limits=limits)
        self.long.transport_tap = self.short.transport_tap = self.transport_tap
        self.apps = {MAPABC: mapabc.make_app(), QLOGO: cdn.make_qlogo_app(self.service),
                     QPIC: cdn.make_qpic_app(self.service)}
        if self.script is not None:
            for host, app in self.apps.items():
                app.middlewares.append(get_middleware(self.script, host, self.clock))

    def _ca_path(self) -> Path:
        path = self.config.lab_file("-ca.pem")
        if path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="testbed-lab-")
            path = Path(self._tmpdir.name) / "lab-ca.pem"
        return path

    def _make_manifest(self, hosts, dns_addr, dns_port) -> Manifest:
        ca = self.ca.write_ca_pem(self._ca_path())
        self._ca_file = ca
        users = [{"username": u.username, "password": u.password} for u in self.users]
        extra = {}
        if self.nat is not None:
            extra["nat"] = {"idle_timeout_s": self.nat.idle_timeout_s,
                            "latency_s": self.config.nat_latency_s,
                            "upstream": "memory" if self.local is not None else "socket",
                            "hosts": sorted(h for h in hosts)}
        return Manifest(profile=self.profile.name, time_scale=self.clock.scale,
                        dns_address=dns_addr, dns_port=dns_port, hosts=hosts,
                        ca_cert=str(ca.resolve()), users=users,
                        heartbeat_s=self.profile.heartbeat_s,
                        server_idle_s=self.long.idle_timeout_s, extra=extra)

    async def _close_servers(self) -> None:
        """Stop every listener and connection: the relay first, then the servers."""
        if self.relay is not None:
            await self.relay.close()
        await self.long.close()
        await self.short.close()
        for server in self._app_servers:
            await server.close()
        self._app_servers.clear()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        if self.transport_tap is not None:
            self.transport_tap.close()    # connections still waiting for a phone's FIN

    async def _unbind(self) -> None:
        await self._close_servers()
        if self.relay is not None:
            self._make_relay()
        self._make_servers()   # fresh servers for a second attempt

    async def stop(self) -> None:
        """Close every server, then the capture; remove the manifest and the CA file the lab
        wrote. The capture is closed and the files removed even when this is cancelled
        half-way (Ctrl-C)."""
        try:
            await self._close_servers()
        finally:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if self.tap is not None:
                self.tap.close()   # after the relays: their closing FINs are in the capture
            for written in (self.manifest_path, self._ca_file):
                if written is not None:
                    try:
                        os.unlink(written)
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


# a block of 127/8 is taken by another lab (EADDRINUSE) or refused to us (EACCES)
_BLOCK_TAKEN = (errno.EADDRINUSE, errno.EACCES)


async def start_lab(config: LabConfig | None = None, *, first: AddressPlan | None = None,
                    tries: int = 8, store: Store | None = None,
                    clock: Clock | None = None) -> Lab:
    """Start a lab on a free /24 of loopback and return it running.

    Tries `first` (say the report's 127.0.0.x) if given, then random blocks of 127/8 away
    from 127.0.0.x (`AddressPlan.random_loopback`), so that many labs (tests, studies) can
    run at once; a block that is taken is left for the next. `config.plan` is replaced;
    every other field is kept. The lab's state is in `store` if given (else in memory);
    `clock` is its clock (default: one at the config's time scale). Raises OSError when
    `tries` blocks were all taken."""
    config = config or LabConfig()
    plans = [first] if first is not None else []
    plans += [AddressPlan.random_loopback() for _ in range(tries - len(plans))]
    last: Optional[OSError] = None
    for plan in plans:
        lab = Lab(dataclasses.replace(config, plan=plan), store=store, clock=clock)
        try:
            await lab.start()
            return lab
        except OSError as exc:
            await lab.stop()
            if exc.errno not in _BLOCK_TAKEN:
                raise
            last = exc
    raise OSError(errno.EADDRINUSE, f"no free loopback block for a lab after {len(plans)} "
                                    f"tries: {last}")
