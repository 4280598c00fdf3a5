"""A lab whose hosts are separate processes (`testbed lab up --store redis://...`): each host is
a `testbed serve ROLE` child, exactly the command a container would run, the long and short
links with N workers each; they share the lab's state through the Redis store.

The parent places the hosts on the same addressing plan as the one-process lab, waits for
every child's ready file, seeds the users, writes the same manifest, and stops the children
(SIGTERM by PID, then SIGKILL) when it stops. Children die with it however it ends
(`TESTBED_PARENT_PID`, see `testbed.serve_cli`). With a carrier NAT, the servers take free
ports and a `testbed serve nat` child takes the public ones, relaying to them (the DNS server
answers directly: its TCP side is not behind that NAT).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from testbed.lab.addressing import HOST_NAMES, LONG, MAPABC, QLOGO, QPIC, SHORT
from testbed.lab.manifest import Manifest
from testbed.lab.profiles import load_profile

from .addresses import is_local
from .endpoints import Endpoint, parse_endpoint
from .lab_manifest import LabParts, manifest_from_parts
from .runner import FALLBACK_ADDRESS, LabConfig
from .state import Store

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 2.0
ROLE_OF_HOST = {LONG: "long", SHORT: "short", MAPABC: "mapabc", QLOGO: "qlogo", QPIC: "qpic"}


@dataclass
class Child:
    """One `testbed serve` child process."""

    role: str
    argv: list[str]
    ready_file: Path
    proc: Optional[asyncio.subprocess.Process] = None
    ready: dict = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return list(self.ready.get("workers", [self.proc.pid] if self.proc else []))


class HostFailed(Exception):
    """A host process that would not start or that ended; the message says which and how."""


class ProcessLab:
    """`await start()` -> Manifest, `await wait()` until a host ends, `await stop()`."""

    def __init__(self, config: LabConfig, store: Store, store_url: str, *, workers: int = 2,
                 uvloop: bool = False,
                 place: Optional[Callable[[str], list[str]]] = None) -> None:
        """`place(role)`, if given, is the command line prefix that runs the `role` host where
        it belongs (`ip netns exec NS`: the namespace lab); the hosts' addresses are then
        taken as they are, and a carrier NAT (`config.nat_timeout_s`) is left to whoever
        placed them: no relay child."""
        if config.record is not None:
            raise ValueError("--record needs the one-process lab (the in-process tap); on "
                             "a lab of processes record with `testbed record --iface lo`")
        self.config = config
        self.place = place
        self.extra: dict = {}    # more for the manifest (`manifest.extra`)
        self.profile = load_profile(config.profile)
        self.store = store
        self.store_url = store_url
        self.workers = workers
        self.uvloop = uvloop
        self.children: list[Child] = []
        self.manifest: Optional[Manifest] = None
        self.manifest_path: Optional[Path] = None
        # the children's ready files: beside the manifest (`<stem>-run/`), so a lab that was
        # killed leaves them there, not in /tmp; a temporary directory when there is none
        run = config.lab_file("-run")
        if run is None:
            run = Path(tempfile.mkdtemp(prefix="testbed-lab-"))
        run.mkdir(parents=True, exist_ok=True)
        self._dir = run
        self._ca_dir: Optional[Path] = None

    # ------------------------------------------------------------------ start
    def _common(self, epoch: float) -> list[str]:
        cfg = self.config
        out = ["--profile", cfg.profile, "--time-scale", repr(cfg.time_scale),
               "--epoch", repr(epoch)]
        return out + (["--uvloop"] if self.uvloop else [])

    def _child(self, role: str, args: list[str], epoch: float) -> Child:
        ready = self._dir / f"{role}.json"
        argv = [sys.executable, "-m", "testbed.cli", "serve", role, *args,
                *self._common(epoch), "--ready-file", str(ready)]
        if self.place is not None:
            argv = self.place(role) + argv
        child = Child(role, argv, ready)
        self.children.append(child)
        return child

    async def start(self) -> Manifest:
        """Start every host, seed the users, write the manifest: `start_hosts()`, then
        `make_manifest()`, then `write_manifest()`."""
        await self.start_hosts()
        await self.make_manifest()
        return self.write_manifest()

    async def start_hosts(self) -> None:
        """Every host running and ready, the users seeded."""
        cfg = self.config
        epoch = time.time()
        plan = cfg.plan
        ports = cfg.ports or self.profile.port_plan(cfg.privileged_ports)
        if self.place is not None or is_local(plan.dns):
            def addrs(host: str) -> list[str]:
                return plan.addresses(host)
            dns = Endpoint(plan.dns, ports["dns"])
        else:   # only 127.0.0.1 here: every host there, each on a free port
            def addrs(host: str) -> list[str]:
                return [FALLBACK_ADDRESS]
            ports = {k: 0 for k in ports}
            dns = Endpoint(FALLBACK_ADDRESS, 0)
        nat = cfg.nat_timeout_s is not None and self.place is None
        # `serve short --ca`: made there (or a killed lab's reused); removed on stop with the
        # manifest that names it
        self._ca_dir = cfg.lab_file("-ca") or self._dir / "lab-ca"

        def listen(host: str, *keys: str, flag: str = "--listen") -> list[str]:
            out = []
            for k in keys:
                if k in ports:
                    for a in addrs(host):
                        out += [flag, f"{a}:{0 if nat else ports[k]}"]
            return out

        store = ["--store", self.store_url]
        # behind the NAT every client has the NAT's address: the NAT caps per address
        relayed = ["--behind-relay"] if nat else []
        workers = ["--workers", str(self.workers)] + relayed
        long_args = listen(LONG, "long", "long_fallback") + store + workers
        if cfg.server_idle_s:
            long_args += ["--idle-timeout", repr(cfg.server_idle_s)]
        if cfg.max_packet_len:
            long_args += ["--max-packet-len", str(cfg.max_packet_len)]
        hosts = {
            "long": long_args,
            "short": (listen(SHORT, "short") + listen(SHORT, "tls", flag="--tls-listen")
                      + ["--ca", str(self._ca_dir)] + store + workers),
            "mapabc": listen(MAPABC, "http") + relayed,
            "qlogo": listen(QLOGO, "http") + store + relayed,
            "qpic": listen(QPIC, "http") + store + relayed,
        }
        records = []
        for name in HOST_NAMES:
            records += ["--record", f"{name}={','.join(addrs(name))}"]
        self._child("dns", ["--listen", str(dns), *records], epoch)
        for role, args in hosts.items():
            self._child(role, args, epoch)
        await self._launch(self.children)
        if nat:
            maps = self._nat_maps(ports, addrs)
            child = self._child("nat", [a for m in maps for a in ("--map", m)] +
                                ["--idle-timeout", repr(cfg.nat_timeout_s),
                                 "--latency", repr(cfg.nat_latency_s)], epoch)
            await self._launch([child])
        # seeded once every host is up, so a start that fails leaves the store as it was
        await self._seed()

    def write_manifest(self) -> Manifest:
        """Write the manifest made by `make_manifest()` where the config says (if anywhere):
        clients may come once it is there."""
        if self.config.manifest_path is not None:
            self.manifest_path = self.manifest.write(self.config.manifest_path)
        return self.manifest

    def _nat_maps(self, ports, addrs) -> list[str]:
        """LISTEN=TARGET for every server address: its public port -> where it listens."""
        by_role = {c.role: c.ready for c in self.children}
        maps = []
        for host, role in ROLE_OF_HOST.items():
            doc = by_role[role]
            keys = {"long": ["long", "long_fallback"], "short": ["short"]}.get(role, ["http"])
            public = [ports[k] for k in keys if k in ports]
            inner = [Endpoint(h, p) for h, p in doc["listen"]]
            if role == "short":
                public.append(ports["tls"])
                inner += [Endpoint(h, p) for h, p in doc["tls"]]
            n = len(addrs(host))   # listen flags go port by port, address by address
            for k, target in enumerate(inner):
                maps.append(f"{target.host}:{public[k // n]}={target}")
        return maps

    async def _launch(self, children: list[Child]) -> None:
        env = dict(os.environ, TESTBED_PARENT_PID=str(os.getpid()))
        for child in children:
            child.ready_file.unlink(missing_ok=True)   # a killed lab's, not this child's
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv, stdin=asyncio.subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(children)
        while waiting:
            for child in list(waiting):
                if child.ready_file.exists():
                    child.ready = json.loads(child.ready_file.read_text())
                    waiting.remove(child)
                elif child.proc.returncode is not None:
                    raise HostFailed(f"the {child.role} host did not start (exit "
                                     f"{child.proc.returncode})")
            if time.monotonic() > deadline:
                raise HostFailed(f"{', '.join(c.role for c in waiting)} not ready in "
                                 f"{READY_TIMEOUT_S:g} s")
            await asyncio.sleep(0.02)

    async def _seed(self) -> None:
        from .service import Service
        await Service(self.store).seed_users(self.config.users, self.config.friends)

    async def make_manifest(self) -> Manifest:
        """The manifest of the running hosts (with `extra`), kept as `self.manifest`."""
        parts = LabParts()
        parts.extra.update(self.extra)
        nat = next((c.ready for c in self.children if c.role == "nat"), None)
        public = {}
        if nat is not None:   # clients see the NAT's ports, not the servers' own
            public = {target: parse_endpoint(listen).to_list()
                      for listen, target in nat["maps"]}
            cfg = self.config
            parts.extra["nat"] = {"idle_timeout_s": cfg.nat_timeout_s,
                                  "latency_s": cfg.nat_latency_s,
                                  "hosts": sorted(HOST_NAMES)}
        for child in self.children:
            doc = dict(child.ready)
            for key in ("listen", "tls"):
                if key in doc:
                    doc[key] = [public.get(f"{h}:{p}", [h, p]) for h, p in doc[key]]
            parts.add_ready(doc)
        self.manifest = await manifest_from_parts(parts, self.store, self.config.profile,
                                                  self.config.time_scale)
        return self.manifest

    # ------------------------------------------------------------------ run and stop
    async def wait(self) -> str:
        """Until some host process ends; says which and how."""
        procs = {asyncio.ensure_future(c.proc.wait()): c for c in self.children if c.proc}
        done, pending = await asyncio.wait(procs, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        child = procs[next(iter(done))]
        return f"the {child.role} host (pid {child.proc.pid}) exited with code " \
               f"{child.proc.returncode}"

    async def stop(self) -> None:
        running = [c.proc for c in self.children
                   if c.proc is not None and c.proc.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)   # our own children, by PID
        if running:
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running],
                                         timeout=STOP_TIMEOUT_S)
            for proc in running:
                if proc.returncode is None:
                    proc.kill()
            for proc in running:
                await proc.wait()
        if self.manifest_path is not None:
            try:
                os.unlink(self.manifest_path)
            except FileNotFoundError:
                pass
        if self._ca_dir is not None:
            shutil.rmtree(self._ca_dir, ignore_errors=True)
        shutil.rmtree(self._dir, ignore_errors=True)
