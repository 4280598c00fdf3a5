"""The run: one lab with a carrier NAT, the phones planned, their fleets run in the lab's
loop or in processes of their own (`testbed.fleet.Fleet`), NAT expiries collected
per client address, and the figures made from it all; or, with `shards`, that many labs,
each in a process of its own with its share of the phones in its loop (their long links in
memory), whose parts are merged into the same figures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import resource
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from testbed.fleet import Fleet, Message
from testbed.lab.addressing import client_address

from .config import StudyConfig, usable_cpus
from .driver import (FleetReport, PhoneFleet, PhonePlan, fleet_payload, run_fleet,
                     wait_for_go)
from .fdtable import grow_fd_table
from .figures import expiries_in_windows, study_result
from .measure import LagMonitor, cpu_seconds, process_age_s
from .results import StudyResult

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, float, str], None]


def _can_bind(addr: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False


def _guarded(progress: Optional[ProgressFn]) -> ProgressFn:
    """`progress` as the run calls it: nothing without one, and a callback that raises is
    logged, not let end the study."""
    def report(done: float, total: float, what: str) -> None:
        if progress is not None:
            try:
                progress(done, total, what)
            except Exception:
                log.exception("progress callback failed")
    return report


def _startup_wall_s(origin: float) -> Optional[float]:
    """Wall seconds from this process's start to a lab clock's `origin` (None: not
    known)."""
    age = process_age_s()
    return None if age is None else age - (time.monotonic() - origin)


def _workers_messages(fleet: Fleet, report: ProgressFn) -> Callable[[Message], None]:
    """The parent's side of a fleet of study workers (phone processes or shards): the
    slowest one's "progress" to `report` once every worker has said, and "go" to all once
    every one has said "logged_in" (`wait_for_go`)."""
    last: dict[int, tuple] = {}
    logged_in: set[int] = set()

    def on_message(m: Message) -> None:
        if m.kind == "progress":
            last[m.worker] = m.args
            if len(last) == len(fleet):
                done = min(v[0] for v in last.values())
                what = next(v[2] for v in last.values() if v[0] == done)
                report(done, m.args[1], what)
        elif m.kind == "logged_in":
            logged_in.add(m.worker)
            if len(logged_in) == len(fleet):
                fleet.broadcast("go")
    return on_message


def memory_connector(local) -> Callable[..., Any]:
    """A `LongLink.connect` connector that opens a phone's long link in memory through
    `local` (the lab's `mocks.memory_transport.LocalServers`, where the NAT accepts in
    memory), from the phone's source address and the next port of its counter, as its
    socket would be."""
    from testbed.client.source_ports import source_ports

    async def connect(factory, host: str, port: int, address: Optional[str]):
        source = None if address is None else (address, source_ports(address).take())
        return await local.connect(factory, host, port, source=source)
    return connect


@dataclass
class _Parts:
    """What one lab's run gives the figures (`study_result`), picklable but for `lab_lag`
    (None in a shard)."""

    fleets: list[FleetReport]
    lab_lag: Optional[LagMonitor]
    wall: float
    cpu: float
    nat_stats: dict[str, Any]
    expiries: Optional[Counter]
    startup: Optional[float]
    lab_cpus: Optional[list[int]]
    origin: float                # the lab clock's wall origin (CLOCK_MONOTONIC seconds)


class _Study:
    """One lab and its phones. `share` (lo, hi): a shard's, the phones of clients lo..hi-1
    of every policy (the lab's users are theirs alone, the phones keep the whole study's
    indices and message times), run in the lab's loop with their long links in memory."""

    def __init__(self, config: StudyConfig, progress: Optional[ProgressFn],
                 share: Optional[tuple[int, int]] = None,
                 workdir: Optional[Path] = None,
                 barrier: Optional[Callable[[], Any]] = None) -> None:
        self.cfg = config
        self._report = _guarded(progress)
        self.share = share
        self.barrier = barrier   # a shard's: awaited once its phones are in, before online
        self.workdir = workdir   # for the lab's files (None: a temporary directory)
        self.lab = None
        self.plans: list[PhonePlan] = []
        self.sender: tuple[str, str, Optional[str]] = ("", "", None)
        self.by_source: dict[str, int] = {}
        self.expiries: list[tuple[str, float]] = []   # (client address, protocol time)
        self.nat_attributed = False

    async def start_lab(self, workdir: Path):
        from mocks.runner import LabConfig, start_lab

        cfg = self.cfg
        lo, hi = self.share or (0, cfg.clients)
        lab = await start_lab(LabConfig(
            users=(hi - lo) * len(cfg.policies) + 1, friends="none", profile=cfg.profile,
            time_scale=cfg.time_scale, nat_timeout_s=cfg.nat_timeout_s,
            nat_upstream=cfg.nat_upstream,
            server_idle_s=cfg.server_idle_s, manifest_path=workdir / "manifest.json"))
        self.lab = lab
        # the figures' config says how the lab's NAT reached the long link, as the lab has it
        self.cfg = dataclasses.replace(cfg, nat_upstream=lab.manifest.extra["nat"]["upstream"])
        # the sender must be allowed to message every phone; "all" would make N^2 pairs
        sender_rec = lab.users[-1]
        for rec in lab.users[:-1]:
            await lab.service.make_friends(sender_rec, rec)
        return lab

    def plan(self) -> None:
        cfg, manifest = self.cfg, self.lab.manifest
        users = manifest.users
        lo, hi = self.share or (0, cfg.clients)
        P = len(cfg.policies)
        n = (hi - lo) * P
        # each phone its own source address (the sender the next one), where the lab has a
        # block of its own (not the 127.0.0.1 fallback) and the kernel lets us bind them
        first = client_address(manifest.dns_address, 0)
        own = first is not None and _can_bind(first)
        rng = random.Random(cfg.seed)
        for i in range(cfg.clients):
            for p in range(P):   # interleaved, so every policy's starts spread the same way
                g = i * P + p            # the phone's index in the whole study
                offsets = cfg.message_offsets(rng)   # drawn for every phone, kept for ours
                if not lo <= i < hi:
                    continue
                u = (i - lo) * P + p     # its user and address in this lab
                src = client_address(manifest.dns_address, u) if own else None
                self.plans.append(PhonePlan(index=g, policy_index=p, policy=cfg.policies[p],
                                            username=users[u]["username"],
                                            password=users[u]["password"], source=src,
                                            offsets=offsets, seed=cfg.seed * 1_000_003 + g))
                if src is not None:
                    self.by_source[src] = g
        su = users[-1]
        self.sender = (su["username"], su["password"],
                       client_address(manifest.dns_address, n) if own else None)
        if own and self.lab.nat is not None:
            self.lab.nat.on_event = self._nat_event
            self.nat_attributed = True

    def _nat_event(self, event) -> None:
        if event.kind == "expire" and event.client is not None:
            self.expiries.append((event.client[0], event.at))

    async def run(self) -> StudyResult:
        parts = await self.run_parts()
        return study_result(self.cfg, parts.fleets, parts.lab_lag, parts.wall, parts.cpu,
                            parts.nat_stats, parts.expiries, startup_wall_s=parts.startup,
                            lab_cpus=parts.lab_cpus)

    async def _start(self, workdir: Path) -> Optional[float]:
        """The lab and the plans; the wall seconds from this process's start to the lab
        clock's (None: not known)."""
        await self.start_lab(workdir)
        startup = _startup_wall_s(self.lab.clock.origin)
        self.plan()
        return startup

    async def run_parts(self) -> _Parts:
        wall0 = time.perf_counter()
        cpu0 = cpu_seconds() + cpu_seconds(resource.RUSAGE_CHILDREN)
        grow_fd_table()     # the lab's, before its phones connect (`fdtable`)
        gc_was = gc.isenabled()
        if self.cfg.pause_gc:
            gc.collect()
            gc.disable()
        nproc = 0 if self.share else self.cfg.phone_processes()
        # with pin_cpus: the CPUs the loops are pinned to, and what this thread gets back
        affinity = usable_cpus() if self.cfg.pin_cpus else None
        n = min(nproc, self.cfg.clients * len(self.cfg.policies)) if nproc else 1
        lab_lag = None
        try:
            with (contextlib.nullcontext(self.workdir) if self.workdir is not None
                  else tempfile.TemporaryDirectory(prefix="testbed-study-")) as tmp:
                try:
                    if self.share:
                        startup = await self._start(Path(tmp))
                        fleets = [await self._run_in_memory()]
                    else:
                        # the phone processes start (and import) while the lab starts;
                        # their plans follow once the lab and its users exist
                        async with Fleet(run_fleet, [None] * n, spawn=nproc > 0,
                                         loop=self.cfg.loop, name="study-phones") as fleet:
                            startup = await self._start(Path(tmp))
                            lab_lag = LagMonitor(self.lab.clock) if nproc else None
                            lag_task = asyncio.ensure_future(lab_lag.run()) if nproc else None
                            try:
                                fleets = await self._run_fleets(fleet, n, nproc, affinity)
                            finally:
                                if lag_task is not None:
                                    lag_task.cancel()
                    lab_cpus = usable_cpus()
                    nat_stats = (dataclasses.asdict(self.lab.nat.stats) if self.lab.nat is not None
                                 else {})
                    errors = self.lab.server_errors()
                    if errors:
                        raise RuntimeError(f"lab handlers raised: {errors!r}")
                finally:
                    if self.lab is not None:
                        await self.lab.stop()
            wall = time.perf_counter() - wall0
            cpu = cpu_seconds() + cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
            outcomes = [o for f in fleets for o in f.outcomes]
            expiries = (expiries_in_windows(outcomes, self.expiries, self.by_source)
                        if self.nat_attributed else None)
            return _Parts(fleets=fleets, lab_lag=lab_lag, wall=wall, cpu=cpu,
                          nat_stats=nat_stats, expiries=expiries, startup=startup,
                          lab_cpus=lab_cpus, origin=self.lab.clock.origin)
        finally:
            if affinity is not None:   # the caller's thread as it was
                os.sched_setaffinity(0, affinity)
            if self.cfg.pause_gc and gc_was:
                gc.enable()

    async def _run_in_memory(self) -> FleetReport:
        """A shard's phones in the lab's loop, their long links in memory to its NAT."""
        local = self.lab.local
        self.lab.nat.accept_in_memory(local)
        fleet = PhoneFleet(self.lab.manifest, self.lab.clock, self.cfg, self.plans,
                           self.sender, connector=memory_connector(local),
                           barrier=self.barrier,
                           report=lambda kind, *args: self._report(*args)
                           if kind == "progress" else None)
        return await fleet.run()

    async def _run_fleets(self, fleet: Fleet, n: int, nproc: int,
                          cpus: Optional[list[int]]) -> list[FleetReport]:
        """The `n` fleets of `fleet` (one in the lab's loop when `nproc` is 0, else one per
        phone process) get their plans ("plan"); a fleet sends "progress" ticks and
        "logged_in", and all go online on the one "go". With `cpus` (pin_cpus), this
        thread runs on the first of them and each phone process on one of the next."""
        if cpus is not None:   # `StudyConfig.validate` made sure there are enough
            os.sched_setaffinity(0, {cpus[0]})
        for i in range(n):
            fleet.send(i, "plan", fleet_payload(self.cfg, self.lab, self.plans[i::n],
                                                self.sender, own_process=nproc > 0,
                                                cpu=None if cpus is None else cpus[1 + i]))
        return await fleet.run(_workers_messages(fleet, self._report))


async def run_shard(payload: dict[str, Any], channel) -> _Parts:
    """A shard's worker (`testbed.fleet.Fleet`, a process of its own): its lab and its
    share of the phones, "progress" to the parent, its parts as the result. Its phones go
    online on the parent's "go", once every shard's are logged in ("logged_in"): a shard
    still logging in (a TLS handshake is milliseconds of its loop) is not measured while
    the others' windows run."""
    cfg = StudyConfig.from_dict(payload["config"])
    workdir = Path(payload["workdir"])
    workdir.mkdir()
    study = _Study(cfg, lambda *msg: channel.send("progress", *msg),
                   share=tuple(payload["share"]), workdir=workdir,
                   barrier=lambda: wait_for_go(channel))
    return await study.run_parts()


def merge_shards(cfg: StudyConfig, parts: list[_Parts], wall: float,
                 startup: Optional[float]) -> StudyResult:
    """The figures of the shards' parts: every fleet on the time line of the lab clock
    that started first (all read CLOCK_MONOTONIC), NAT counters and expiries added up, each
    shard's loop (its lab and its phones) measured as one."""
    first = min(p.origin for p in parts)
    fleets = [dataclasses.replace(p.fleets[0], cpu_s=p.cpu)
              .shifted((p.origin - first) * cfg.time_scale) for p in parts]
    nat: dict[str, Any] = {}
    for p in parts:
        for key, v in p.nat_stats.items():
            nat[key] = nat.get(key, 0) + v
    expiries = None
    if all(p.expiries is not None for p in parts):
        expiries = sum((p.expiries for p in parts), Counter())
    return study_result(cfg, fleets, None, wall, sum(p.cpu for p in parts), nat, expiries,
                        hosts=[f"shard-{i + 1}" for i in range(len(parts))],
                        startup_wall_s=startup)


async def _run_sharded(config: StudyConfig, progress: Optional[ProgressFn]) -> StudyResult:
    wall0 = time.perf_counter()
    bounds, lo = [], 0
    for n in config.shard_clients():
        bounds.append((lo, lo + n))
        lo += n

    # the shards' labs keep their files (the manifest: passwords) here, removed by this
    # process once every shard has stopped, however they stop (a shard gets SIGTERM)
    with tempfile.TemporaryDirectory(prefix="testbed-study-") as tmp:
        payloads = [{"config": config.to_dict(), "share": b,
                     "workdir": str(Path(tmp) / f"shard-{i + 1}")}
                    for i, b in enumerate(bounds)]
        async with Fleet(run_shard, payloads, spawn=True, loop=config.loop,
                         name="study-shard") as fleet:
            parts = await fleet.run(_workers_messages(fleet, _guarded(progress)))
    startup = _startup_wall_s(min(p.origin for p in parts))
    return merge_shards(config, parts, time.perf_counter() - wall0, startup)


async def run_study(config: StudyConfig, progress: Optional[ProgressFn] = None) -> StudyResult:
    """Run the study from the current event loop (the lab runs in it; the phones too, or in
    `config.processes` child processes; with `config.shards`, that many labs run in child
    processes, each with its share of the phones); `progress(done, total, what)` is called
    about ten times a wall second with the protocol seconds of the slowest phone's window.

    The cyclic garbage collector is paused for the run (`pause_gc`): a full collection of
    the lab's objects stalls the loop 50-80 ms, 100-160 protocol seconds at k = 2000, enough
    to kill links that should live. Reference counting still frees nearly everything."""
    config.validate()
    # the layout the run takes, as its figures' config says
    config = dataclasses.replace(config, shards=config.shard_count())
    if config.shards:
        return await _run_sharded(config, progress)
    return await _Study(config, progress).run()
