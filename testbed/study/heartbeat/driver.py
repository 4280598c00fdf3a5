"""The fleet driver: planned phones and a sender in one event loop (the lab's, or a phone
process's), from login to the final catch-up, each phone's window measured as it goes.

`run_fleet(payload, channel)` is the worker that `testbed.fleet.Fleet` runs once per
phone process (or once in the lab's loop): the phones' plans come in the payload, progress
and the barrier go over the channel, the `FleetReport` comes back as its result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import os
import random
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from testbed.lab.addressing import LONG

from .config import StudyConfig, usable_cpus
from .fdtable import grow_fd_table
from .measure import (LagMonitor, RadioWindow, cpu_seconds, loop_name, max_rss_mb,
                      quiescent, snapshot, window)

log = logging.getLogger(__name__)

LOGIN_TRIES = 5   # a login-phase request sent this many times before the phone gives up
LOGIN_WAIT_S = 2.0   # wall seconds the first try waits for its answer, doubled each try


@dataclass
class PhonePlan:
    """One phone of the study, decided before anything runs (picklable, for child processes)."""

    index: int
    policy_index: int
    policy: str
    username: str
    password: str
    source: Optional[str]        # loopback address the phone binds, for NAT attribution
    offsets: list[float]         # protocol seconds into its window when it gets a message
    seed: int


@dataclass
class PhoneOutcome:
    """What one phone did, as a fleet reports it (picklable)."""

    index: int
    policy_index: int
    t0: float                    # protocol time its window opened
    window_s: float
    t_end: float                 # protocol time its loop stopped (after the drain)
    snapshot: dict[str, Any]     # the window's counters
    sends: list[tuple[float, float, int, str]]   # (sent_at, acked_at, new_msg_id, error)
    received: dict[int, float]   # new_msg_id -> protocol time, by the phone's own loop
    caught_up: list[int]         # new_msg_ids first seen by the final short-link newsync
    duplicates: int
    loop_errors: list[str]
    notify_sync_failures: int = 0   # over the whole run (PhoneMetrics)
    reconnect_failures: int = 0
    radio: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # the window's RadioCost.to_dict() per radio profile name


@dataclass
class FleetReport:
    """What one fleet (a phone process, or the lab's loop) returns."""

    outcomes: list[PhoneOutcome]
    lag: list[tuple[float, float]]     # (protocol time, wall seconds of lag)
    login_done: float                  # protocol time: every phone of the fleet logged in
    online_done: float                 # protocol time: every phone of the fleet online
    event_loop: str
    cpu_s: float
    max_rss_mb: float
    login_retries: int = 0             # login-phase requests sent again (`PhoneFleet._again`)
    # wall s the fleet's loop waited for a CPU in each `lag` sample (empty: not known)
    lag_cpu_wait: list[float] = dataclasses.field(default_factory=list)
    cpus: list[int] = dataclasses.field(default_factory=list)   # the CPUs its loop ran on

    def to_dict(self) -> dict[str, Any]:
        """As JSON holds it (a study phone posts it to the lab's store): a phone's received
        messages as [new_msg_id, time] pairs, since JSON object keys are strings."""
        d = dataclasses.asdict(self)
        for o in d["outcomes"]:
            o["received"] = sorted(o["received"].items())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FleetReport":
        outcomes = [PhoneOutcome(**{**o, "received": {int(i): t for i, t in o["received"]},
                                    "sends": [tuple(s) for s in o["sends"]]})
                    for o in d["outcomes"]]
        return cls(**{**d, "outcomes": outcomes, "lag": [tuple(x) for x in d["lag"]]})

    def shifted(self, dt: float) -> "FleetReport":
        """The same report with every protocol time stamp `dt` later: a fleet of another
        clock put on the time line of a clock started `dt` protocol seconds before its own."""
        outcomes = [dataclasses.replace(
            o, t0=o.t0 + dt, t_end=o.t_end + dt,
            sends=[(a + dt, b + dt, i, e) for a, b, i, e in o.sends],
            received={i: t + dt for i, t in o.received.items()}) for o in self.outcomes]
        return dataclasses.replace(self, outcomes=outcomes,
                                   lag=[(t + dt, lag) for t, lag in self.lag],
                                   login_done=self.login_done + dt,
                                   online_done=self.online_done + dt)


class _RunningPhone:
    """A planned phone while it runs."""

    def __init__(self, plan: PhonePlan) -> None:
        self.plan = plan
        self.phone = None
        self.arrived = asyncio.Event()
        self.t0 = math.nan
        self.t_end = math.nan
        self.window_s = math.nan
        self.baseline: dict[str, Any] = {}
        self.snapshot: dict[str, Any] = {}
        self.sends: list[list] = []      # [sent_at, acked_at, new_msg_id, error]
        self.loop_errors: list[str] = []
        self.received: dict[int, float] = {}
        self.caught_up: list[int] = []
        self.radio: Optional[RadioWindow] = None
        self.radio_costs: dict[str, dict[str, Any]] = {}
        self.started = False
        self.done = False

    def outcome(self) -> PhoneOutcome:
        ids = {s[2] for s in self.sends if s[2]}
        m = self.phone.metrics if self.phone else None
        return PhoneOutcome(
            index=self.plan.index, policy_index=self.plan.policy_index, t0=self.t0,
            window_s=self.window_s, t_end=self.t_end, snapshot=self.snapshot,
            sends=[tuple(s) for s in self.sends],
            received={i: t for i, t in self.received.items() if i in ids},
            caught_up=[i for i in self.caught_up if i in ids],
            duplicates=m.duplicates if m else 0, loop_errors=self.loop_errors,
            notify_sync_failures=m.notify_sync_failures if m else 0,
            reconnect_failures=m.reconnect_failures if m else 0, radio=self.radio_costs)


class PhoneFleet:
    """Phones and a sender in one event loop (the lab's, or a phone process's).

    Phase 1 logs every phone in (TLS), takes its newinit on the short link and resolves
    the long link's name, `start_concurrency` phones at a time; once every phone of the
    study is in (`barrier`), phase 2 opens each phone's long link, `online_per_s` a wall
    second (`online_concurrency` at most at a time), and its window starts: the costly TLS
    handshakes are over before any heartbeat's timing matters. `connector`, if given, opens
    the phones' long links (`LongLink.connect`)."""

    def __init__(self, manifest, clock, config: StudyConfig, plans: list[PhonePlan],
                 sender: tuple[str, str, Optional[str]], *,
                 report: Optional[Callable[..., None]] = None,
                 barrier: Optional[Callable[[], Any]] = None,
                 connector: Optional[Callable[..., Any]] = None) -> None:
        self.manifest = manifest
        self.connector = connector   # opens the phones' long links (`LongLink.connect`)
        self.clock = clock
        self.cfg = config
        self.window = config.window_s
        self.drain = config.effective_drain_s()
        self.phones = [_RunningPhone(p) for p in plans]
        self.go_at = math.nan     # protocol time every phone of the study was in
        self.sender_user = sender
        self.sender = None
        self.report = report
        self.barrier = barrier
        self.lag = LagMonitor(clock)
        self.radio_profiles = config.radio_profiles()
        self.logged_in = 0
        self.started = 0          # phones whose window has opened
        self.finished = 0         # phones whose loop has stopped
        self.last_t0 = -math.inf  # protocol time the latest window opened
        self.login_retries = 0
        self.login_done = math.nan
        self.online_done = math.nan
        self.everyone_in = asyncio.Event()
        self._online = asyncio.Semaphore(config.online_concurrency)
        self._barrier_task: Optional[asyncio.Future] = None

    # ------------------------------------------------------------------ helpers
    def wall(self, protocol_s: float) -> float:
        return max(0.0, self.clock.to_wall(protocol_s))

    async def sleep_until(self, t: float, watch: Optional[asyncio.Future] = None) -> None:
        """Sleep until protocol time t; if `watch` (a phone's loop) ends first, raise."""
        # loop timers may fire a millisecond early (uvloop rounds): sleep again until due
        while (delay := self.wall(t - self.clock.now())) > 0:
            if watch is None:
                await asyncio.sleep(delay)
                continue
            done, _ = await asyncio.wait({watch}, timeout=delay)
            if done:
                watch.result()   # re-raise the phone's error
                raise RuntimeError("a phone's heartbeat loop ended early")

    def _progress(self, done: float, total: float, what: str) -> None:
        if self.report is not None:
            try:
                self.report("progress", done, total, what)
            except Exception:
                log.exception("progress report failed")

    async def _ticker(self) -> None:
        total = self.window
        n = len(self.phones)
        # counted as phones start and stop, not by a pass over all of them ten times a
        # second (which was a tenth of a phone process's heartbeats' CPU)
        while True:
            started = self.started
            if self.logged_in < n:
                self._progress(0.0, total, f"logging in {self.logged_in}/{n}")
            elif started < n:
                self._progress(0.0, total, f"going online {started}/{n}")
            else:
                # the slowest window is the one that opened last
                done = min(self.clock.now() - self.last_t0, self.window)
                if done >= self.window:
                    left = n - self.finished
                    self._progress(total, total, f"draining ({left} phones)")
                else:
                    self._progress(done, total, "protocol time")
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ one phone
    async def _send(self, p: _RunningPhone, off: float, k: int) -> None:
        from testbed.client.shortlink import HTTPStatusError

        await self.sleep_until(p.t0 + off)
        rec = [math.nan, math.nan, 0, ""]
        p.sends.append(rec)
        cid = uuid.uuid4().hex
        rec[0] = self.clock.now()
        for attempt in range(5):
            try:
                r = await self.sender.send_text(p.plan.username, f"study {p.plan.index}/{k}",
                                                client_msg_id=cid, door="short")
            except (OSError, asyncio.TimeoutError, HTTPStatusError) as exc:
                rec[3] = repr(exc)
                log.info("send to %s failed (%r); retrying", p.plan.username, exc)
                await asyncio.sleep(0.02 * (attempt + 1))
                continue
            rec[1], rec[2], rec[3] = self.clock.now(), r.new_msg_id, ""
            return

    def _all_received(self, p: _RunningPhone) -> bool:
        got = p.phone.metrics.received
        return all(s[2] in got for s in p.sends if s[2])

    async def _keep_running(self, p: _RunningPhone, stop: asyncio.Event) -> None:
        """`Phone.run` until `stop`; if the loop dies of a network error all the same (a
        timeout the phone does not catch), count it, sync and go on, so that one slow reply
        does not end the study."""
        from testbed.client.longlink import LinkClosed

        transient = (asyncio.TimeoutError, LinkClosed, ConnectionError, OSError)
        while True:
            try:
                await p.phone.run(stop)
                return
            except transient as exc:
                if stop.is_set():
                    return
                p.loop_errors.append(f"{self.clock.now():.0f}: {exc!r}")
                log.info("%s: heartbeat loop died (%r); restarting it", p.plan.username, exc)
            try:
                await p.phone.sync()
            except transient:
                pass

    async def _again(self, p: _RunningPhone, request: Callable[[], Any]) -> None:
        """A short-link request of the login phase, sent again (as a phone does) when its
        connection broke or timed out: every short-link connection crosses the carrier NAT,
        and a loop that lags 150 ms of wall time at k = 2000 (on a busy machine) leaves one
        idle past the NAT's 300 protocol seconds, so the NAT forgets it midway. A login the
        lab handled but whose answer was lost is safe to send again: the lab keeps one
        session per device, so the second ends the first (docs/protocol.md, section 5)."""
        for attempt in range(LOGIN_TRIES):
            try:
                # the NAT releases a forgotten connection only after its linger (3.6 s of
                # wall time at k = 2000): a try waits less, and the next one longer, so
                # that a lab slow to answer is not asked again and again
                return await asyncio.wait_for(request(), LOGIN_WAIT_S * 2 ** attempt)
            except (asyncio.TimeoutError, OSError) as exc:   # ConnectionError is an OSError
                if attempt == LOGIN_TRIES - 1:
                    raise
                self.login_retries += 1
                log.info("%s: %s failed (%r); again", p.plan.username,
                         getattr(request, "__name__", "request"), exc)
                await asyncio.sleep(0.01 * (attempt + 1))

    async def _log_in(self, p: _RunningPhone, sem: asyncio.Semaphore) -> None:
        """Phase 1: TLS login and newinit on the short link; no long link yet."""
        from testbed.client.phone import Phone

        if self.radio_profiles:
            p.radio = RadioWindow(self.radio_profiles, self.clock)
        async with sem:
            # built here, not all at once: a Session loads the CA into a fresh SSL context
            p.phone = Phone(self.manifest, p.plan.username, p.plan.password,
                            policy=p.plan.policy, clock=self.clock, local_addr=p.plan.source,
                            on_message=lambda _m, _t, ev=p.arrived: ev.set(),
                            rng=random.Random(p.plan.seed),
                            link_observer=p.radio.observer if p.radio else None,
                            connector=self.connector)
            await self._again(p, p.phone.session.login)
            await self._again(p, p.phone.session.init)
            # asked now, not when going online: one round trip fewer after the barrier,
            # when every phone online beside it heartbeats (the session keeps the answer)
            await p.phone.session.resolve(LONG)
        self.logged_in += 1
        if self.logged_in == len(self.phones):
            self.login_done = self.clock.now()
            self._barrier_task = asyncio.ensure_future(self._cross_barrier())

    async def _cross_barrier(self) -> None:
        if self.barrier is not None:
            await self.barrier()
        self.go_at = self.clock.now()
        self.everyone_in.set()

    async def _go_online(self, p: _RunningPhone) -> None:
        """Phase 2: open and identify the long link and sync (what the end of `Phone.start`
        does; `reconnect()` is its public form, counted once and subtracted by the baseline)."""
        from testbed.client.longlink import LinkClosed

        for attempt in range(3):
            try:
                await p.phone.reconnect()
                return
            except (asyncio.TimeoutError, LinkClosed, ConnectionError, OSError):
                if attempt == 2:
                    raise

    async def _drive(self, p: _RunningPhone, sem: asyncio.Semaphore, turn: int) -> None:
        """One phone's study: logged in, online in its `turn` (`online_per_s`), its window,
        its drain."""
        await self._log_in(p, sem)
        await self.everyone_in.wait()
        if self.cfg.online_per_s > 0:
            await self.sleep_until(self.go_at + self.clock.to_protocol(
                turn / self.cfg.online_per_s))
        async with self._online:
            await self._go_online(p)
        p.t0 = self.clock.now()
        p.baseline = snapshot(p.phone)
        if p.radio is not None:
            p.radio.open()
        p.started = True
        self.started += 1
        self.last_t0 = max(self.last_t0, p.t0)
        if self.started == len(self.phones):
            self.online_done = self.clock.now()
        stop = asyncio.Event()
        run = asyncio.ensure_future(self._keep_running(p, stop))
        sends = [asyncio.ensure_future(self._send(p, off, k))
                 for k, off in enumerate(p.plan.offsets)]
        try:
            await self.sleep_until(p.t0 + self.window, run)
            # close the window when no heartbeat or reconnect is in flight, so that every
            # heartbeat counted has its outcome counted too (at most a NOOP timeout later)
            cap = p.t0 + self.window + self.cfg.noop_timeout_effective() + 300.0
            while not quiescent(p.phone, p.baseline) and self.clock.now() < cap \
                    and not run.done():
                await asyncio.sleep(0.002)
            p.snapshot = window(p.baseline, snapshot(p.phone))
            p.window_s = self.clock.now() - p.t0
            if p.radio is not None:
                p.radio_costs = p.radio.close(p.window_s)
            await asyncio.gather(*sends)
            # the drain: keep running until every message sent to this phone has arrived
            deadline = p.t0 + self.window + self.drain
            while not self._all_received(p):
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    break
                p.arrived.clear()
                waiter = asyncio.ensure_future(p.arrived.wait())
                try:
                    await asyncio.wait({waiter, run}, timeout=self.wall(remaining),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if run.done():
                    run.result()
                    raise RuntimeError("a phone's heartbeat loop ended early")
        finally:
            for s in sends:
                s.cancel()
            stop.set()
            await run
            p.t_end = self.clock.now()
            p.done = True
            self.finished += 1

    async def _catch_up(self, p: _RunningPhone, sem: asyncio.Semaphore) -> None:
        """The loop has stopped: drop the long link and take one newsync on the short link."""
        phone = p.phone
        p.received = dict(phone.metrics.received)
        if phone.session.link is not None:
            phone.session.link.abort()
        async with sem:
            phone.sync_door = "short"
            await phone.sync()
        p.caught_up = [i for i in phone.metrics.received if i not in p.received]
        await phone.stop()

    # ------------------------------------------------------------------ main
    async def run(self) -> FleetReport:
        from testbed.client.session import Session

        grow_fd_table()     # not while the phones go online: each growth stalls the loop
        cpu0 = cpu_seconds()
        lag_task = asyncio.ensure_future(self.lag.run())
        ticker = asyncio.ensure_future(self._ticker())
        try:
            user, password, source = self.sender_user
            self.sender = Session(self.manifest, user, password, local_addr=source)
            await self.sender.login()
            sem = asyncio.Semaphore(self.cfg.start_concurrency)
            drives = [asyncio.ensure_future(self._drive(p, sem, j))
                      for j, p in enumerate(self.phones)]
            try:
                await asyncio.gather(*drives)
            except BaseException:
                for d in drives:
                    d.cancel()
                await asyncio.gather(*drives, return_exceptions=True)
                raise
        finally:
            lag_task.cancel()
            ticker.cancel()
        sem = asyncio.Semaphore(32)
        await asyncio.gather(*(self._catch_up(p, sem) for p in self.phones))
        return FleetReport(outcomes=[p.outcome() for p in self.phones],
                           lag=self.lag.samples, lag_cpu_wait=self.lag.cpu_waits,
                           login_done=self.login_done, online_done=self.online_done,
                           event_loop=loop_name(), cpu_s=cpu_seconds() - cpu0,
                           max_rss_mb=max_rss_mb(), login_retries=self.login_retries,
                           cpus=usable_cpus())


async def run_fleet(payload: Optional[dict[str, Any]], channel) -> FleetReport:
    """A fleet worker: run the plans of `payload` against the lab of its manifest (None:
    started before the lab, it imports what a phone needs and waits for the payload, a
    "plan" from the parent).

    Its clock takes the lab clock's wall origin (both read CLOCK_MONOTONIC), so protocol
    times in every process are one time line. The barrier: "logged_in" to the parent once
    every phone here is in, then wait for its "go" (sent when every fleet is in)."""
    from testbed.client.phone import Phone  # noqa: F401 - imported while the lab starts
    from testbed.lab.clock import Clock
    from testbed.lab.manifest import Manifest

    while payload is None:
        kind, *args = await channel.receive()
        if kind == "plan":
            payload = args[0]
    cfg = StudyConfig.from_dict(payload["config"])
    if payload.get("cpu") is not None:
        os.sched_setaffinity(0, {payload["cpu"]})
    if payload["own_process"] and cfg.pause_gc:   # the lab's process paused its own
        gc.collect()
        gc.disable()

    fleet = PhoneFleet(Manifest.from_dict(payload["manifest"]),
                       Clock(cfg.time_scale, origin=payload["wall0"]), cfg,
                       [PhonePlan(**p) for p in payload["plans"]], tuple(payload["sender"]),
                       report=lambda *msg: channel.send(*msg),
                       barrier=lambda: wait_for_go(channel))
    return await fleet.run()


async def wait_for_go(channel) -> None:
    """A study worker's barrier: "logged_in" to the parent, then wait for its "go" (sent
    once every worker has said it, `orchestrate._workers_messages`)."""
    channel.send("logged_in")
    while (await channel.receive())[0] != "go":
        pass


def fleet_payload(config: StudyConfig, lab, plans: list[PhonePlan],
                  sender: tuple[str, str, Optional[str]], own_process: bool,
                  cpu: Optional[int] = None) -> dict[str, Any]:
    """What `run_fleet` needs, picklable: for a phone process (pinned to `cpu` if given),
    or for the lab's own loop."""
    return {"config": config.to_dict(), "manifest": lab.manifest.to_dict(),
            "wall0": lab.clock.origin, "plans": [dataclasses.asdict(p) for p in plans],
            "sender": sender, "own_process": own_process, "cpu": cpu}
