"""The heartbeat study (STORYBOARD.md section 5): real phones behind a carrier NAT, per policy.

`testbed study heartbeat` starts one lab with a carrier NAT (`LabConfig.nat_timeout_s`), and
`clients` phones per heartbeat policy (`testbed.client.phone.Phone`, the emulator the other
scenarios use) plus one sender, all lab users; every phone lives `hours` of protocol time
(PROTOCOL.md section 6: at time scale k a protocol day takes 86400/k wall seconds). All
policies share the lab, the NAT and the clock, so one day takes one day of protocol time.
The phones run in the lab's event loop (`processes=0`) or in child processes of their own
(spawned, each with a share of the phones and its own sender session), whose clocks take the
lab clock's origin so that protocol times on both sides are one time line.

How it is measured (docs/heartbeat-study.md explains each choice):

* set-up: every phone logs in over TLS and takes newinit on the short link first; only when
  all are in do phones open their long links (a few at a time), so the costly handshakes are
  over before any heartbeat's timing matters. A phone's window opens when its long link is
  identified and synced, and closes `hours` later, at the first moment no heartbeat or
  reconnect is in flight (so every heartbeat counted has its outcome counted); its counters
  are the difference of two snapshots of `PhoneMetrics`;
* wake-ups and bytes are scaled to 24 h per phone; bytes are the long link's application
  bytes, plus an estimate of TCP/IP overhead (`TCPIP_HEADER_BYTES` per frame for its own
  segment and as much again for the ACK it draws, and `TCP_CONN_SEGMENTS` header-only
  segments per TCP connection for handshake and teardown);
* the sender (a lab user on the short link: one HTTP connection per message, as the report
  saw) messages each phone at random times, uniform over the phone's window, on average
  `messages_per_client_per_day`; a message's send time is read on the shared clock just
  before the request goes out, its receive time is the phone's `metrics.received` entry
  (stamped when the newsync that brought it returned); delay = received - sent;
* after its window a phone keeps running (the drain, in no rate) until every message sent
  to it has arrived or `drain_s` has passed, so that a message sent just before the end
  reaches the phone the way it would have (at the next heartbeat of a dead link); then its
  loop stops, its long link is aborted and it takes one last newsync on the short link: a
  message first seen there is counted `caught_up` (delivered, no delay figure), one still
  missing is `lost`;
* NAT expiries are attributed to phones by source address (each phone binds its own
  loopback address; see `_hook_nat`), counting only expiries inside the phone's window;
* an event-loop lag monitor in every process records how late a 5 ms sleep wakes up; lag
  times k is the error, in protocol seconds, of every timer and time stamp in the run
  (heartbeat due times, the NAT's idleness stamps, the NOOP timeout). Stalls longer than the
  slack of the tightest policy under the NAT timeout (`timing_margin`) are counted: each can
  kill a link that should have lived.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import gc
import json
import logging
import math
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from testbed.argtypes import nonneg_float, positive_float, positive_int

log = logging.getLogger(__name__)

DAY_S = 86400.0
TCPIP_HEADER_BYTES = 52     # IPv4 (20) + TCP (20) + timestamps option (12)
TCP_CONN_SEGMENTS = 7       # SYN, SYN-ACK, ACK, FIN, ACK, FIN, ACK: header-only segments
LAG_PERIOD_S = 0.005        # wall seconds between lag probes
SOURCE_OCTET = 99           # phones bind 127.99.x.y; random lab blocks are 127.100-254.x
SENDER_SOURCE = "127.99.255.254"
LATE_S = 60.0               # a message later than this did not come by push on a live link

ProgressFn = Callable[[float, float, str], None]


# ---------------------------------------------------------------------------- config
@dataclass
class StudyConfig:
    """What `testbed study heartbeat` takes. Durations are protocol seconds (hours: hours)."""

    nat_timeout_s: float = 300.0
    policies: tuple[str, ...] = ("fixed:270", "fixed:1680", "mars")
    clients: int = 100                      # phones per policy
    hours: float = 24.0                     # each phone's measured window
    time_scale: float = 2000.0
    messages_per_client_per_day: float = 4.0
    seed: int = 1
    server_idle_s: Optional[float] = None   # None: the profile's (660 s)
    profile: str = "lab-report-2013"
    start_concurrency: int = 8              # phones logging in (or going online) at once
    processes: Optional[int] = None         # phone processes; 0: phones in the lab's process;
                                            # None: 2 where there are 2 CPUs or more, else 0
    loop: str = "auto"                      # event loop of phone processes: auto/asyncio/uvloop
    pause_gc: bool = True                   # no cyclic GC during the run (see run_study)
    drain_s: Optional[float] = None         # None: longest policy interval + 2 NOOP timeouts + 120

    def validate(self) -> None:
        """Raise ValueError with a message a user can act on."""
        from testbed.client.heartbeat import parse_policy

        if not _positive(self.nat_timeout_s):
            raise ValueError(f"--nat-timeout must be a positive number of seconds, "
                             f"got {self.nat_timeout_s!r}")
        if not self.policies:
            raise ValueError("give at least one --policy (fixed:<seconds> or mars)")
        seen = set()
        for spec in self.policies:
            parse_policy(spec)   # raises ValueError with the accepted forms
            if spec in seen:
                raise ValueError(f"policy {spec!r} given twice")
            seen.add(spec)
        if not isinstance(self.clients, int) or self.clients < 1:
            raise ValueError(f"--clients must be a whole number >= 1, got {self.clients!r}")
        if self.clients * len(self.policies) > 250 * 250:
            raise ValueError("at most 62500 phones in one study")
        if not _positive(self.hours):
            raise ValueError(f"--hours must be positive, got {self.hours!r}")
        if not _positive(self.time_scale):
            raise ValueError(f"--time-scale must be positive, got {self.time_scale!r}")
        m = self.messages_per_client_per_day
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0):
            raise ValueError(f"--messages-per-client-per-day must be >= 0, got {m!r}")
        if self.server_idle_s is not None and not _positive(self.server_idle_s):
            raise ValueError(f"--server-idle must be positive, got {self.server_idle_s!r}")
        if self.drain_s is not None and not (math.isfinite(self.drain_s) and self.drain_s >= 0):
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s!r}")
        if self.start_concurrency < 1:
            raise ValueError("start_concurrency must be >= 1")
        if self.processes is not None and (not isinstance(self.processes, int)
                                           or not 0 <= self.processes <= 64):
            raise ValueError(f"--processes must be 0 (phones in the lab's process) to 64, or "
                             f"auto, got {self.processes!r}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f"--loop must be auto, asyncio or uvloop, got {self.loop!r}")

    def phone_processes(self) -> int:
        if self.processes is not None:
            return self.processes
        return 2 if (os.cpu_count() or 1) >= 2 else 0

    @property
    def window_s(self) -> float:
        return self.hours * 3600.0

    def noop_timeout_effective(self) -> float:
        """The NOOP timeout the phones really wait, in protocol seconds: 20 s, but never
        under MIN_WALL_TIMEOUT wall seconds (100 protocol s at k = 2000)."""
        from testbed.client.phone import MIN_WALL_TIMEOUT

        return max(20.0, MIN_WALL_TIMEOUT * self.time_scale)

    def effective_drain_s(self) -> float:
        if self.drain_s is not None:
            return self.drain_s
        return max(_max_interval(p) for p in self.policies) \
            + 2 * self.noop_timeout_effective() + 120.0


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _max_interval(spec: str) -> float:
    from testbed.client.heartbeat import FixedHeartbeat, MarsHeartbeat, parse_policy

    p = parse_policy(spec)
    if isinstance(p, FixedHeartbeat):
        return p.seconds
    if isinstance(p, MarsHeartbeat):
        return p.p.max_s
    return 1800.0


# ---------------------------------------------------------------------------- results
@dataclass
class PolicyResult:
    """One policy's figures. `*_per_day` are per client per 24 h of protocol time; plain
    counts are totals over the policy's clients and their windows."""

    policy: str
    clients: int
    window_s: float
    heartbeats_sent: int = 0
    heartbeats_answered: int = 0
    silent_deaths: int = 0
    links_closed: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    wakeups: int = 0
    pushes: int = 0
    tcp_connections: int = 0
    app_bytes: int = 0
    long_frames: int = 0
    tcpip_bytes: int = 0                    # estimated header overhead (see module doc)
    nat_expiries: Optional[int] = None      # None when phones could not be told apart
    heartbeats_per_day: float = 0.0
    silent_deaths_per_day: float = 0.0
    reconnects_per_day: float = 0.0
    wakeups_per_day: float = 0.0
    nat_expiries_per_day: Optional[float] = None
    app_bytes_per_day: float = 0.0
    bytes_per_day: float = 0.0              # app bytes + TCP/IP estimate
    interval_p50_s: Optional[float] = None  # idle time before a NOOP, as the phone saw it
    interval_max_s: Optional[float] = None
    messages_sent: int = 0                  # accepted by the server (new_msg_id returned)
    send_failures: int = 0                  # the sender gave up (never accepted)
    messages_delivered: int = 0             # by the phone's own loop (window or drain)
    messages_caught_up: int = 0             # only by the final short-link newsync
    messages_lost: int = 0                  # not even then
    duplicates: int = 0
    loop_errors: int = 0                    # Phone.run raised and was restarted
    notify_sync_failures: int = 0           # a NOTIFY's newsync failed, not retried by Phone
    reconnect_failures: int = 0             # reconnect attempts that failed (then backed off)
    delay_p50_s: Optional[float] = None
    delay_p99_s: Optional[float] = None
    delay_max_s: Optional[float] = None
    delay_mean_s: Optional[float] = None
    messages_late: int = 0                  # delivered more than LATE_S after being sent
    # the sender's own request (send to server's answer), part of every delay: at time scale
    # k each wall millisecond of processing reads as k/1000 protocol seconds
    send_latency_p50_s: Optional[float] = None
    send_latency_p99_s: Optional[float] = None
    settled_interval_s: Optional[float] = None   # mars: median interval of settled phones
    settled_clients: Optional[int] = None        # mars: phones no longer probing
    settled_intervals: dict[str, int] = field(default_factory=dict)  # interval -> phones


@dataclass
class StudyResult:
    config: dict[str, Any]
    policies: list[PolicyResult]
    wall_s: float = 0.0                     # whole run, lab start to lab stop
    setup_wall_s: float = 0.0               # until the last phone was online
    login_wall_s: float = 0.0               # of which: every phone's TLS login and newinit
    start_spread_s: float = 0.0             # protocol s between first and last window start
    protocol_span_s: float = 0.0            # protocol time from first start to last stop
    # event-loop lag (wall lag x k, protocol seconds) while phones were in their windows
    # (first start to last window end); `whole` includes lab set-up, logins and the drain
    max_loop_lag_s: float = 0.0
    p99_loop_lag_s: float = 0.0
    p50_loop_lag_s: float = 0.0
    max_loop_lag_wall_ms: float = 0.0
    max_loop_lag_whole_s: float = 0.0
    lag_samples: int = 0
    lag_histogram: dict[str, int] = field(default_factory=dict)   # protocol s -> samples
    lag_by_process: dict[str, dict[str, float]] = field(default_factory=dict)
    timing_margin_s: Optional[float] = None # slack of the tightest policy below the NAT timeout
    stall_threshold_s: Optional[float] = None   # half of it (see timing_margin)
    stalls: int = 0                         # in-window lag samples at least that long
    timing_ok: bool = True                  # no such stall: deaths are the policies' own
    cpu_s: float = 0.0                      # CPU time (user + system), phone processes included
    nat: dict[str, Any] = field(default_factory=dict)
    drain_s: float = 0.0
    noop_timeout_effective_s: float = 0.0
    event_loop: str = ""
    processes: int = 0                      # phone processes (0: phones in the lab's)
    gc_paused: bool = False
    max_rss_mb: float = 0.0                 # peak resident memory of the largest process
    tcpip_estimate: str = (f"{TCPIP_HEADER_BYTES} B per frame for its segment + "
                           f"{TCPIP_HEADER_BYTES} B for its ACK; {TCP_CONN_SEGMENTS} x "
                           f"{TCPIP_HEADER_BYTES} B per TCP connection")

    def by_policy(self, spec: str) -> PolicyResult:
        for p in self.policies:
            if p.policy == spec:
                return p
        raise KeyError(spec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyResult":
        """Back from `to_dict()` (the --json file), e.g. to redraw the table or the plot."""
        known = {f.name for f in dataclasses.fields(cls)}
        pknown = {f.name for f in dataclasses.fields(PolicyResult)}
        d = {k: v for k, v in d.items() if k in known}
        d["policies"] = [PolicyResult(**{k: v for k, v in p.items() if k in pknown})
                         for p in d.get("policies", [])]
        return cls(**d)


# ---------------------------------------------------------------------------- the run
@dataclass
class _Plan:
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
class _Outcome:
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
    notify_sync_failures: int = 0
    reconnect_failures: int = 0


@dataclass
class _FleetReport:
    outcomes: list[_Outcome]
    lag: list[tuple[float, float]]     # (protocol time, wall seconds of lag)
    login_done: float                  # protocol time: every phone of the fleet logged in
    online_done: float                 # protocol time: every phone of the fleet online
    event_loop: str
    cpu_s: float
    max_rss_mb: float


class _LagMonitor:
    """How late a short wall sleep wakes up: the event loop's lag, stamped in protocol time."""

    def __init__(self, clock, period: float = LAG_PERIOD_S) -> None:
        self.clock = clock
        self.period = period
        self.samples: list[tuple[float, float]] = []

    async def run(self) -> None:
        perf = time.perf_counter
        period = self.period
        now = self.clock.now
        append = self.samples.append
        while True:
            t = perf()
            await asyncio.sleep(period)
            append((now(), max(0.0, perf() - t - period)))


def _lag_between(samples: list[tuple[float, float]], a: float, b: float) -> list[float]:
    return sorted(lag for t, lag in samples if a <= t <= b)


LAG_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 100.0)


def _histogram(values: list[float]) -> dict[str, int]:
    """Counts of values (protocol seconds) in LAG_BUCKETS: "<1", "1-5", ..., ">=100"."""
    edges = LAG_BUCKETS
    labels = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])] \
        + [f">={edges[-1]:g}"]
    out = dict.fromkeys(labels, 0)
    for v in values:
        i = next((j for j, e in enumerate(edges) if v < e), len(edges))
        out[labels[i]] += 1
    return out


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timing_margin(config: StudyConfig) -> Optional[float]:
    """Protocol seconds by which the tightest interval that should survive the NAT stays
    under its timeout (fixed:270 behind 300 s: 30 s; mars probes its steps too). Errors that
    add up to this turn a heartbeat due in time into a NAT expiry: a late heartbeat timer in
    the phone's loop, and the NAT stamping the NOOP late in the lab's; a stall of half the
    margin in one loop (`stall_threshold_s`) is already suspect."""
    from testbed.client.heartbeat import FixedHeartbeat, MarsHeartbeat, parse_policy

    slack = []
    nat = config.nat_timeout_s
    for spec in config.policies:
        p = parse_policy(spec)
        if isinstance(p, FixedHeartbeat) and p.seconds < nat:
            slack.append(nat - p.seconds)
        elif isinstance(p, MarsHeartbeat):
            v = p.p.min_s
            below = None
            while v < nat and v <= p.p.max_s:
                below, v = v, v + p.p.step_s
            if below is not None:
                slack.append(nat - below)
    return min(slack) if slack else None


def _percentile(sorted_values: list[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


_COUNTERS = ("heartbeats_sent", "heartbeats_answered", "silent_deaths", "links_closed",
             "reconnects", "reconnect_attempts", "wakeups", "pushes", "syncs",
             "tcp_connections")


def _snapshot(phone) -> dict[str, Any]:
    """The phone's counters now, bytes of the link in use included."""
    m = phone.metrics
    d: dict[str, Any] = {k: getattr(m, k) for k in _COUNTERS}
    d["app_bytes"], d["long_frames"] = phone.long_totals()
    d["intervals"] = list(m.intervals)
    pol = phone.policy
    d["policy_current"] = getattr(pol, "current", None)
    d["policy_probing"] = getattr(pol, "probing", None)
    return d


def _window(base: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots."""
    d = dict(end)
    for k in (*_COUNTERS, "app_bytes", "long_frames"):
        d[k] = end[k] - base[k]
    d["intervals"] = end["intervals"][len(base["intervals"]):]
    return d


def _quiescent(phone, base: dict[str, Any]) -> bool:
    """No NOOP awaiting its answer and no reconnect under way. In the window each
    `reconnect()` follows exactly one silent death or one closed link, and counts once when
    it succeeds (`base`: the counters when the window opened)."""
    m = phone.metrics
    in_flight = m.heartbeats_sent - m.heartbeats_answered - m.silent_deaths - m.links_closed
    owed = (m.silent_deaths - base["silent_deaths"]) + (m.links_closed - base["links_closed"]) \
        - (m.reconnects - base["reconnects"])
    return in_flight <= 0 and owed == 0


def _source_address(g: int) -> str:
    return f"127.{SOURCE_OCTET}.{g // 250}.{1 + g % 250}"


def _can_bind(addr: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False


def _hook_nat(nat, on_expire: Callable[[str, float], None]) -> bool:
    """Call `on_expire(client_ip, protocol_time)` for every NAT mapping that expires.

    `NatRelay.on_event` names only the listening port, which every phone shares; the client's
    address is on the mapping, which the relay hands to its private `_event`. Wrap that (on
    this instance only), and give up quietly if the relay changes shape."""
    orig = getattr(nat, "_event", None)
    if orig is None or not callable(orig):
        return False

    def event(kind, m):
        if kind == "expire":
            try:
                peer = m.client.transport.get_extra_info("peername")
                on_expire(peer[0], nat.clock.now())
            except Exception:   # never break the relay for a statistic
                pass
        orig(kind, m)

    nat._event = event
    return True


class _PhoneLogCounter(logging.Filter):
    """Counts what `Phone` reports only in its log, per user: a newsync after a NOTIFY that
    failed (the phone does not retry it: the items wait for the next push or reconnect) and
    failed reconnect attempts. Installed as a filter on the phone's logger for the run; the
    INFO records it counts go no further unless that logger was already at INFO."""

    KINDS = {"sync after NOTIFY failed": "notify_sync_failures",
             "reconnect failed": "reconnect_failures"}

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.logger = logging.getLogger("testbed.client.phone")
        self.level = self.logger.level
        self.pass_info = self.logger.getEffectiveLevel() <= logging.INFO

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(record.msg, str) and record.args:
            for text, kind in self.KINDS.items():
                if text in record.msg:
                    self.counts[(str(record.args[0]), kind)] += 1
                    break
            return self.pass_info
        return True

    def __enter__(self) -> "_PhoneLogCounter":
        self.logger.addFilter(self)
        if not self.pass_info:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self)
        self.logger.setLevel(self.level)


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


class _Phone:
    """A planned phone while it runs."""

    def __init__(self, plan: _Plan) -> None:
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
        self.started = False
        self.done = False

    def outcome(self, logs: Counter) -> _Outcome:
        ids = {s[2] for s in self.sends if s[2]}
        user = self.plan.username
        return _Outcome(index=self.plan.index, policy_index=self.plan.policy_index, t0=self.t0,
                        window_s=self.window_s, t_end=self.t_end, snapshot=self.snapshot,
                        sends=[tuple(s) for s in self.sends],
                        received={i: t for i, t in self.received.items() if i in ids},
                        caught_up=[i for i in self.caught_up if i in ids],
                        duplicates=self.phone.metrics.duplicates if self.phone else 0,
                        loop_errors=self.loop_errors,
                        notify_sync_failures=logs[(user, "notify_sync_failures")],
                        reconnect_failures=logs[(user, "reconnect_failures")])


class _Fleet:
    """Phones and a sender in one event loop (the lab's, or a phone process's).

    Phase 1 logs every phone in (TLS) and takes its newinit on the short link; once every
    phone of the study is in (`barrier`), phase 2 opens each phone's long link and its window
    starts: the costly TLS handshakes are over before any heartbeat's timing matters."""

    def __init__(self, manifest, clock, config: StudyConfig, plans: list[_Plan],
                 sender: tuple[str, str, Optional[str]], *,
                 report: Optional[Callable[..., None]] = None,
                 barrier: Optional[Callable[[], Any]] = None) -> None:
        self.manifest = manifest
        self.clock = clock
        self.cfg = config
        self.window = config.window_s
        self.drain = config.effective_drain_s()
        self.phones = [_Phone(p) for p in plans]
        self.sender_user = sender
        self.sender = None
        self.report = report
        self.barrier = barrier
        self.lag = _LagMonitor(clock)
        self.logged_in = 0
        self.login_done = math.nan
        self.online_done = math.nan
        self.everyone_in = asyncio.Event()
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
        while True:
            started = sum(1 for p in self.phones if p.started)
            if self.logged_in < n:
                self._progress(0.0, total, f"logging in {self.logged_in}/{n}")
            elif started < n:
                self._progress(0.0, total, f"going online {started}/{n}")
            else:
                now = self.clock.now()
                done = min(min(now - p.t0, self.window) for p in self.phones)
                if done >= self.window:
                    left = sum(1 for p in self.phones if not p.done)
                    self._progress(total, total, f"draining ({left} phones)")
                else:
                    self._progress(done, total, "protocol time")
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ one phone
    async def _send(self, p: _Phone, off: float, k: int) -> None:
        import aiohttp

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
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError,
                    HTTPStatusError) as exc:
                rec[3] = repr(exc)
                log.info("send to %s failed (%r); retrying", p.plan.username, exc)
                await asyncio.sleep(0.02 * (attempt + 1))
                continue
            rec[1], rec[2], rec[3] = self.clock.now(), r.new_msg_id, ""
            return

    def _all_received(self, p: _Phone) -> bool:
        got = p.phone.metrics.received
        return all(s[2] in got for s in p.sends if s[2])

    async def _keep_running(self, p: _Phone, stop: asyncio.Event) -> None:
        """`Phone.run` until `stop`; if the loop dies of a network timeout (the sync that ends
        `Phone.reconnect` is not guarded, and its wall timeout is floored at 50 ms), count
        it, sync and go on, so one slow reply does not end the study."""
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

    async def _log_in(self, p: _Phone, sem: asyncio.Semaphore) -> None:
        """Phase 1: TLS login and newinit on the short link; no long link yet."""
        from testbed.client.phone import Phone

        async with sem:
            # built here, not all at once: a Session loads the CA into a fresh SSL context
            p.phone = Phone(self.manifest, p.plan.username, p.plan.password,
                            policy=p.plan.policy, clock=self.clock, local_addr=p.plan.source,
                            on_message=lambda _m, _t, ev=p.arrived: ev.set(),
                            rng=random.Random(p.plan.seed))
            await p.phone.session.login()
            await p.phone.session.init()
        self.logged_in += 1
        if self.logged_in == len(self.phones):
            self.login_done = self.clock.now()
            self._barrier_task = asyncio.ensure_future(self._cross_barrier())

    async def _cross_barrier(self) -> None:
        if self.barrier is not None:
            await self.barrier()
        self.everyone_in.set()

    async def _go_online(self, p: _Phone) -> None:
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

    async def _drive(self, p: _Phone, sem: asyncio.Semaphore) -> None:
        await self._log_in(p, sem)
        await self.everyone_in.wait()
        async with sem:
            await self._go_online(p)
        p.t0 = self.clock.now()
        p.baseline = _snapshot(p.phone)
        p.started = True
        if all(q.started for q in self.phones):
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
            while not _quiescent(p.phone, p.baseline) and self.clock.now() < cap \
                    and not run.done():
                await asyncio.sleep(0.002)
            p.snapshot = _window(p.baseline, _snapshot(p.phone))
            p.window_s = self.clock.now() - p.t0
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

    async def _catch_up(self, p: _Phone, sem: asyncio.Semaphore) -> None:
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
    async def run(self) -> _FleetReport:
        with _PhoneLogCounter() as logs:
            return await self._run(logs)

    async def _run(self, logs: _PhoneLogCounter) -> _FleetReport:
        from testbed.client.session import Session

        cpu0 = _cpu_seconds()
        lag_task = asyncio.ensure_future(self.lag.run())
        ticker = asyncio.ensure_future(self._ticker())
        try:
            user, password, source = self.sender_user
            self.sender = Session(self.manifest, user, password, local_addr=source)
            await self.sender.login()
            sem = asyncio.Semaphore(self.cfg.start_concurrency)
            drives = [asyncio.ensure_future(self._drive(p, sem)) for p in self.phones]
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
        return _FleetReport(outcomes=[p.outcome(logs.counts) for p in self.phones],
                            lag=self.lag.samples,
                            login_done=self.login_done, online_done=self.online_done,
                            event_loop=_loop_name(), cpu_s=_cpu_seconds() - cpu0,
                            max_rss_mb=_max_rss_mb())


# ---------------------------------------------------------------------------- phone processes
def _child_main(conn, payload: dict[str, Any]) -> None:
    """A phone process (multiprocessing, spawn): run one fleet against the parent's lab.

    The lab's clock is shared by giving this process's Clock the lab's wall origin (both read
    CLOCK_MONOTONIC), so protocol times on both sides are one time line."""
    import traceback

    from testbed.lab.clock import Clock
    from testbed.lab.manifest import Manifest

    logging.basicConfig(level=payload.get("log_level", logging.WARNING))
    try:
        cfg_d = dict(payload["config"])
        cfg_d["policies"] = tuple(cfg_d["policies"])
        cfg = StudyConfig(**cfg_d)
        if cfg.pause_gc:
            gc.collect()
            gc.disable()
        manifest = Manifest.from_dict(payload["manifest"])
        clock = Clock(cfg.time_scale, origin=payload["wall0"])   # the lab's time line
        plans = [_Plan(**p) for p in payload["plans"]]

        async def main() -> _FleetReport:
            loop = asyncio.get_running_loop()
            go = loop.create_future()

            def readable() -> None:
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == "go" and not go.done():
                        go.set_result(None)

            loop.add_reader(conn.fileno(), readable)
            os.set_blocking(conn.fileno(), True)   # uvloop made it non-blocking: big sends

            def report(*msg) -> None:
                try:
                    conn.send(msg)
                except BlockingIOError:   # never expected; a lost progress tick is harmless
                    pass

            async def barrier() -> None:
                conn.send(("logged_in",))
                await go

            fleet = _Fleet(manifest, clock, cfg, plans, tuple(payload["sender"]),
                           report=report, barrier=barrier)
            try:
                return await fleet.run()
            finally:
                loop.remove_reader(conn.fileno())

        report = _runner(payload.get("loop", "auto"))(main())
        conn.send(("result", report))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        conn.close()


class _Children:
    """Phone processes seen from the lab's event loop, through one pipe each."""

    def __init__(self, payloads: list[dict[str, Any]], progress: Callable[[float, float, str],
                                                                            None]) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.payloads = payloads
        self.progress = progress
        self.procs: list = []
        self.conns: list = []
        self.results: list[asyncio.Future] = []
        self.logged_in = 0
        self.last_progress: dict[int, tuple[float, float, str]] = {}

    async def run(self) -> list[_FleetReport]:
        loop = asyncio.get_running_loop()
        for i, payload in enumerate(self.payloads):
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(target=_child_main, args=(child, payload),
                                    name=f"study-phones-{i + 1}", daemon=True)
            proc.start()
            child.close()
            fut = loop.create_future()
            self.procs.append(proc)
            self.conns.append(parent)
            self.results.append(fut)
            loop.add_reader(parent.fileno(), self._readable, i)
            os.set_blocking(parent.fileno(), True)   # recv() reads whole messages
            loop.add_reader(proc.sentinel, self._exited, i)
        try:
            return list(await asyncio.gather(*self.results))
        finally:
            for i, (proc, conn) in enumerate(zip(self.procs, self.conns)):
                loop.remove_reader(conn.fileno())
                loop.remove_reader(proc.sentinel)
            for proc in self.procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join(5)
            for conn in self.conns:
                conn.close()

    def _readable(self, i: int) -> None:
        conn, fut = self.conns[i], self.results[i]
        try:
            while conn.poll():
                msg = conn.recv()
                kind = msg[0]
                if kind == "progress":
                    self.last_progress[i] = msg[1:]
                    self._merge_progress()
                elif kind == "logged_in":
                    self.logged_in += 1
                    if self.logged_in == len(self.conns):
                        for c in self.conns:
                            c.send(("go",))
                elif kind == "result" and not fut.done():
                    fut.set_result(msg[1])
                elif kind == "error" and not fut.done():
                    fut.set_exception(RuntimeError(f"phone process {i + 1} failed:\n{msg[1]}"))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
        except Exception as exc:   # e.g. a result that does not unpickle
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if not fut.done():
                fut.set_exception(RuntimeError(f"phone process {i + 1}: bad message: {exc!r}"))

    def _exited(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.procs[i].sentinel)
        # let a result still in the pipe arrive first
        loop.call_later(0.5, self._check_exit, i)

    def _check_exit(self, i: int) -> None:
        fut = self.results[i]
        if not fut.done():
            self._readable(i)
        if not fut.done():
            fut.set_exception(RuntimeError(f"phone process {i + 1} exited with code "
                                           f"{self.procs[i].exitcode} before reporting"))

    def _merge_progress(self) -> None:
        if len(self.last_progress) < len(self.conns):
            return
        vals = list(self.last_progress.values())
        done = min(v[0] for v in vals)
        total = vals[0][1]
        what = next((v[2] for v in vals if v[0] == done), vals[0][2])
        self.progress(done, total, what)


# ---------------------------------------------------------------------------- the study
class _Study:
    def __init__(self, config: StudyConfig, progress: Optional[ProgressFn]) -> None:
        self.cfg = config
        self.progress = progress
        self.lab = None
        self.plans: list[_Plan] = []
        self.sender: tuple[str, str, Optional[str]] = ("", "", None)
        self.by_source: dict[str, int] = {}
        self.expiries: list[tuple[str, float]] = []
        self.nat_attributed = False

    async def start_lab(self, workdir: Path):
        from mocks.runner import Lab, LabConfig
        from testbed.lab.addressing import AddressPlan

        cfg = self.cfg
        n = cfg.clients * len(cfg.policies) + 1
        last: Optional[OSError] = None
        for _ in range(8):
            lab = Lab(LabConfig(users=n, friends="none", profile=cfg.profile,
                                time_scale=cfg.time_scale, nat_timeout_s=cfg.nat_timeout_s,
                                server_idle_s=cfg.server_idle_s,
                                plan=AddressPlan.random_loopback(),
                                manifest_path=workdir / "manifest.json"))
            try:
                await lab.start()
            except OSError as exc:
                await lab.stop()
                if exc.errno != errno.EADDRINUSE:
                    raise
                last = exc
                continue
            self.lab = lab
            # the sender must be allowed to message every phone; "all" would make N^2 pairs
            sender_rec = lab.users[-1]
            for rec in lab.users[:-1]:
                await lab.service.make_friends(sender_rec, rec)
            return lab
        raise RuntimeError(f"no free loopback block for the lab after 8 tries: {last}")

    def plan(self) -> None:
        from testbed.lab.addressing import LONG

        cfg, manifest = self.cfg, self.lab.manifest
        users = manifest.users
        # own source addresses only where the lab has its own block (not the 127.0.0.1
        # fallback) and the kernel lets us bind them
        own = manifest.hosts[LONG].addresses[0] != "127.0.0.1" and \
            _can_bind(_source_address(0)) and _can_bind(SENDER_SOURCE)
        rng = random.Random(cfg.seed)
        per_window = cfg.messages_per_client_per_day * cfg.window_s / DAY_S
        whole, frac = int(per_window), per_window - int(per_window)
        P = len(cfg.policies)
        for i in range(cfg.clients):
            for p in range(P):   # interleaved, so every policy's starts spread the same way
                g = i * P + p
                n = whole + (1 if rng.random() < frac else 0)
                offsets = sorted(rng.uniform(0.0, cfg.window_s) for _ in range(n))
                src = _source_address(g) if own else None
                self.plans.append(_Plan(index=g, policy_index=p, policy=cfg.policies[p],
                                        username=users[g]["username"],
                                        password=users[g]["password"], source=src,
                                        offsets=offsets, seed=cfg.seed * 1_000_003 + g))
                if src is not None:
                    self.by_source[src] = g
        su = users[-1]
        self.sender = (su["username"], su["password"], SENDER_SOURCE if own else None)
        if own:
            self.nat_attributed = _hook_nat(self.lab.nat,
                                            lambda ip, t: self.expiries.append((ip, t)))

    def _report(self, done: float, total: float, what: str) -> None:
        if self.progress is not None:
            try:
                self.progress(done, total, what)
            except Exception:
                log.exception("progress callback failed")

    async def run(self) -> StudyResult:
        wall0 = time.perf_counter()
        cpu0 = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN)
        gc_was = gc.isenabled()
        if self.cfg.pause_gc:
            gc.collect()
            gc.disable()
        try:
            with tempfile.TemporaryDirectory(prefix="testbed-study-") as tmp:
                await self.start_lab(Path(tmp))
                lab_lag = _LagMonitor(self.lab.clock)
                nproc = self.cfg.phone_processes()
                lag_task = asyncio.ensure_future(lab_lag.run()) if nproc else None
                try:
                    self.plan()
                    fleets = await self._run_fleets()
                    nat_stats = dataclasses.asdict(self.lab.nat.stats) if self.lab.nat else {}
                    errors = self.lab.server_errors()
                    if errors:
                        raise RuntimeError(f"lab handlers raised: {errors!r}")
                finally:
                    if lag_task is not None:
                        lag_task.cancel()
                    await self.lab.stop()
            wall = time.perf_counter() - wall0
            cpu = _cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
            return self.result(fleets, lab_lag if nproc else None, wall, cpu, nat_stats)
        finally:
            if self.cfg.pause_gc and gc_was:
                gc.enable()

    async def _run_fleets(self) -> list[_FleetReport]:
        cfg, lab = self.cfg, self.lab
        if not cfg.phone_processes():
            fleet = _Fleet(lab.manifest, lab.clock, cfg, self.plans, self.sender,
                           report=lambda _kind, *a: self._report(*a))
            return [await fleet.run()]
        n = min(cfg.phone_processes(), len(self.plans))
        chunks = [self.plans[i::n] for i in range(n)]
        config = dataclasses.asdict(cfg)
        config["policies"] = list(cfg.policies)
        payloads = [{"config": config, "manifest": lab.manifest.to_dict(),
                     "wall0": lab.clock.origin, "plans": [dataclasses.asdict(p) for p in chunk],
                     "sender": self.sender, "loop": cfg.loop,
                     "log_level": logging.getLogger().getEffectiveLevel()}
                    for chunk in chunks]
        return await _Children(payloads, self._report).run()

    # ------------------------------------------------------------------ figures
    def result(self, fleets: list[_FleetReport], lab_lag: Optional[_LagMonitor], wall: float,
               cpu: float, nat_stats: dict[str, Any]) -> StudyResult:
        cfg = self.cfg
        k = cfg.time_scale
        outcomes = sorted((o for f in fleets for o in f.outcomes), key=lambda o: o.index)
        first = min(o.t0 for o in outcomes)
        last_window_end = max(o.t0 + o.window_s for o in outcomes)
        # NAT expiries of each phone's mappings inside its window
        expiries: Counter = Counter()
        if self.nat_attributed:
            by_index = {o.index: o for o in outcomes}
            for ip, t in self.expiries:
                g = self.by_source.get(ip)
                if g is not None and by_index[g].t0 <= t <= by_index[g].t0 + by_index[g].window_s:
                    expiries[g] += 1
        policies = [self._policy_result(spec, [o for o in outcomes if o.policy_index == p],
                                        expiries)
                    for p, spec in enumerate(cfg.policies)]
        # event-loop lag while phones were in their windows, per process
        lags: dict[str, list[float]] = {}
        sources = [("phones" if not lab_lag else f"phones-{i + 1}", f.lag)
                   for i, f in enumerate(fleets)]
        if lab_lag is not None:
            sources.insert(0, ("lab", lab_lag.samples))
        else:
            sources = [("lab+phones", fleets[0].lag)]
        whole_max = 0.0
        for name, samples in sources:
            lags[name] = _lag_between(samples, first, last_window_end)
            whole_max = max(whole_max, max((lag for _, lag in samples), default=0.0))
        allv = sorted(v for vs in lags.values() for v in vs)
        margin = timing_margin(cfg)
        lag_by_process = {name: {"max_s": (vs[-1] if vs else 0.0) * k,
                                 "p99_s": (_percentile(vs, 99) or 0.0) * k,
                                 "p50_s": (_percentile(vs, 50) or 0.0) * k,
                                 "samples": len(vs)} for name, vs in lags.items()}
        config = dataclasses.asdict(cfg)
        config["policies"] = list(cfg.policies)
        login_done = max(f.login_done for f in fleets)
        online_done = max(f.online_done for f in fleets)
        return StudyResult(
            config=config, policies=policies, wall_s=wall,
            # the lab's clock starts with the lab: protocol time / k is wall time since then
            setup_wall_s=online_done / k, login_wall_s=login_done / k,
            start_spread_s=max(o.t0 for o in outcomes) - first,
            protocol_span_s=max(o.t_end for o in outcomes) - first,
            max_loop_lag_s=(allv[-1] if allv else 0.0) * k,
            p99_loop_lag_s=(_percentile(allv, 99) or 0.0) * k,
            p50_loop_lag_s=(_percentile(allv, 50) or 0.0) * k,
            max_loop_lag_wall_ms=(allv[-1] if allv else 0.0) * 1000,
            max_loop_lag_whole_s=whole_max * k, lag_samples=len(allv),
            lag_histogram=_histogram([v * k for v in allv]), lag_by_process=lag_by_process,
            timing_margin_s=margin,
            stall_threshold_s=None if margin is None else margin / 2,
            stalls=(stalls := 0 if margin is None
                    else sum(1 for v in allv if v * k >= margin / 2)),
            timing_ok=stalls == 0,
            cpu_s=cpu, nat=nat_stats, drain_s=cfg.effective_drain_s(),
            noop_timeout_effective_s=cfg.noop_timeout_effective(),
            event_loop=fleets[0].event_loop, processes=len(fleets) if lab_lag else 0,
            gc_paused=cfg.pause_gc,
            max_rss_mb=max([_max_rss_mb()] + [f.max_rss_mb for f in fleets]))

    def _policy_result(self, spec: str, cs: list[_Outcome], expiries: Counter) -> PolicyResult:
        r = PolicyResult(policy=spec, clients=len(cs),
                         window_s=statistics.fmean(c.window_s for c in cs))
        for c in cs:
            s = c.snapshot
            r.heartbeats_sent += s["heartbeats_sent"]
            r.heartbeats_answered += s["heartbeats_answered"]
            r.silent_deaths += s["silent_deaths"]
            r.links_closed += s["links_closed"]
            r.reconnects += s["reconnects"]
            r.reconnect_attempts += s["reconnect_attempts"]
            r.wakeups += s["wakeups"]
            r.pushes += s["pushes"]
            r.tcp_connections += s["tcp_connections"]
            r.app_bytes += s["app_bytes"]
            r.long_frames += s["long_frames"]
        r.tcpip_bytes = (2 * r.long_frames + TCP_CONN_SEGMENTS * r.tcp_connections) \
            * TCPIP_HEADER_BYTES
        days = sum(c.window_s for c in cs) / DAY_S
        r.heartbeats_per_day = r.heartbeats_sent / days
        r.silent_deaths_per_day = r.silent_deaths / days
        r.reconnects_per_day = r.reconnects / days
        r.wakeups_per_day = r.wakeups / days
        r.app_bytes_per_day = r.app_bytes / days
        r.bytes_per_day = (r.app_bytes + r.tcpip_bytes) / days
        if self.nat_attributed:
            r.nat_expiries = sum(expiries[c.index] for c in cs)
            r.nat_expiries_per_day = r.nat_expiries / days
        intervals = sorted(v for c in cs for v in c.snapshot["intervals"])
        r.interval_p50_s = _percentile(intervals, 50)
        r.interval_max_s = intervals[-1] if intervals else None

        delays, latencies = [], []
        for c in cs:
            r.duplicates += c.duplicates
            r.loop_errors += len(c.loop_errors)
            r.notify_sync_failures += c.notify_sync_failures
            r.reconnect_failures += c.reconnect_failures
            caught = set(c.caught_up)
            for sent_at, acked_at, msg_id, _err in c.sends:
                if not msg_id:
                    r.send_failures += 1
                    continue
                r.messages_sent += 1
                latencies.append(acked_at - sent_at)
                if msg_id in c.received:
                    r.messages_delivered += 1
                    delays.append(c.received[msg_id] - sent_at)
                elif msg_id in caught:
                    r.messages_caught_up += 1
                else:
                    r.messages_lost += 1
        delays.sort()
        r.delay_p50_s = _percentile(delays, 50)
        r.delay_p99_s = _percentile(delays, 99)
        r.delay_max_s = delays[-1] if delays else None
        r.delay_mean_s = statistics.fmean(delays) if delays else None
        r.messages_late = sum(1 for d in delays if d > LATE_S)
        latencies.sort()
        r.send_latency_p50_s = _percentile(latencies, 50)
        r.send_latency_p99_s = _percentile(latencies, 99)

        settled = [c.snapshot["policy_current"] for c in cs
                   if c.snapshot.get("policy_probing") is False]
        if any(c.snapshot.get("policy_probing") is not None for c in cs):
            r.settled_clients = len(settled)
            r.settled_intervals = {f"{v:g}": n for v, n in sorted(Counter(settled).items())}
            r.settled_interval_s = statistics.median(settled) if settled else None
        return r


async def run_study(config: StudyConfig, progress: Optional[ProgressFn] = None) -> StudyResult:
    """Run the study from the current event loop (the lab runs in it; the phones too, or in
    `config.processes` child processes); `progress(done, total, what)` is called about ten
    times a wall second with the protocol seconds of the slowest phone's window.

    The cyclic garbage collector is paused for the run (`pause_gc`): a full collection of
    the lab's objects stalls the loop 50-80 ms, 100-160 protocol seconds at k = 2000, enough
    to kill links that should live. Reference counting still frees nearly everything."""
    config.validate()
    return await _Study(config, progress).run()


# ---------------------------------------------------------------------------- output
def _fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 600:
        return f"{v / 60:.1f} min"
    return f"{v:.0f} s" if v >= 10 else f"{v:.1f} s"


def timing_summary(result: StudyResult) -> str:
    return (f"wall {result.wall_s:.1f} s (set-up {result.setup_wall_s:.1f} s, of which "
            f"logins {result.login_wall_s:.1f} s), CPU "
            f"{result.cpu_s:.1f} s, peak RSS {result.max_rss_mb:.0f} MB, on {result.event_loop}; "
            f"event-loop lag while phones ran: p50 {result.p50_loop_lag_s:.1f}, p99 "
            f"{result.p99_loop_lag_s:.1f}, max {result.max_loop_lag_s:.1f} protocol s "
            f"({result.max_loop_lag_wall_ms:.1f} ms wall); stalls over the "
            f"{result.stall_threshold_s or 0:g} s threshold: {result.stalls}")


TABLE_WIDTH = 150   # what the one-row-per-policy table needs; narrower consoles get it turned


def _rows(p: PolicyResult) -> list[tuple[str, str]]:
    settled = "-"
    if p.settled_clients is not None:
        settled = (f"{p.settled_interval_s:g} s ({p.settled_clients}/{p.clients})"
                   if p.settled_interval_s is not None else f"none (0/{p.clients})")
    msgs = f"{p.messages_sent}/{p.messages_delivered}"
    if p.messages_caught_up:
        msgs += f"(+{p.messages_caught_up} at end)"
    msgs += f"/{p.messages_lost}/{p.duplicates}"
    if p.send_failures:
        msgs += f" ({p.send_failures} not sent)"
    return [("heart-\nbeats", f"{p.heartbeats_per_day:.1f}"),
            ("silent\ndeaths", f"{p.silent_deaths_per_day:.2f}"),
            ("re-\nconnects", f"{p.reconnects_per_day:.2f}"),
            ("NAT\nexpiries", "-" if p.nat_expiries_per_day is None
             else f"{p.nat_expiries_per_day:.2f}"),
            ("wake-\nups", f"{p.wakeups_per_day:.1f}"),
            ("app\nKB", f"{p.app_bytes_per_day / 1000:.1f}"),
            ("KB with\nTCP/IP", f"{p.bytes_per_day / 1000:.1f}"),
            ("messages\nsent/ok/lost/dup", msgs),
            ("delay\np50", _fmt_s(p.delay_p50_s)),
            ("delay\np99", _fmt_s(p.delay_p99_s)),
            ("delay\nmax", _fmt_s(p.delay_max_s)),
            ("settled\ninterval", settled)]


def render_table(result: StudyResult, vertical: bool = False):
    """A rich Table of the figures, one row per policy (rates per phone per 24 h); with
    `vertical`, one row per figure and a column per policy (for narrow terminals)."""
    from rich.table import Table

    c = result.config
    t = Table(title=f"Heartbeat study: {c['clients']} phones per policy behind a "
                    f"{c['nat_timeout_s']:g} s NAT, {c['hours']:g} h at time scale "
                    f"{c['time_scale']:g} (rates per phone per day)",
              caption=f"Messages: totals, sent / delivered / lost / duplicated. Delay: protocol "
                      f"seconds from send to the phone's newsync. KB: long-link application "
                      f"bytes, then with TCP/IP headers estimated ({result.tcpip_estimate}). "
                      f"Wall {result.wall_s:.1f} s; event-loop lag max "
                      f"{result.max_loop_lag_s:.1f} protocol s "
                      f"({result.max_loop_lag_wall_ms:.1f} ms wall).")
    rows = [_rows(p) for p in result.policies]
    if vertical:
        t.add_column("per phone per day")
        for p in result.policies:
            t.add_column(p.policy, justify="right", no_wrap=True)
        for i, (name, _) in enumerate(rows[0] if rows else []):
            label = "wake-ups" if name.startswith("wake") else \
                name.replace("-\n", "").replace("\n", " ")
            t.add_row(label, *[r[i][1] for r in rows])
        return t
    t.add_column("policy", no_wrap=True)
    for name, _ in (rows[0] if rows else []):
        t.add_column(name, justify="right", no_wrap=True)
    for p, r in zip(result.policies, rows):
        t.add_row(p.policy, *[v for _, v in r])
    return t


def write_plot(result: StudyResult, path) -> Path:
    """Bar charts side by side: wake-ups per client-day and silent deaths per client-day."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = [p.policy for p in result.policies]
    wake = [p.wakeups_per_day for p in result.policies]
    deaths = [p.silent_deaths_per_day for p in result.policies]
    c = result.config
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for ax, values, title, fmt in ((a, wake, "wake-ups per phone per day", "{:.1f}"),
                                   (b, deaths, "silent link deaths per phone per day",
                                    "{:.2f}")):
        bars = ax.bar(names, values, color=[colors[i % len(colors)] for i in range(len(names))])
        ax.set_title(title)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2)
        ax.set_ylim(0, max(values + [1.0]) * 1.3)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    per_timeout = DAY_S / c["nat_timeout_s"]
    a.axhline(per_timeout, color="grey", ls="--", lw=1,
              label=f"one per NAT timeout ({per_timeout:.0f}/day)")
    a.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.suptitle(f"{c['clients']} phones per policy behind a {c['nat_timeout_s']:g} s carrier "
                 f"NAT, {c['hours']:g} h (time scale {c['time_scale']:g})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- command line
def _arg_processes(text: str) -> Optional[int]:
    if text == "auto":
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or auto: {text!r}")
    if not 0 <= v <= 64:
        raise argparse.ArgumentTypeError(f"must be 0 to 64: {text!r}")
    return v


def _arg_policy(text: str) -> str:
    from testbed.client.heartbeat import parse_policy

    try:
        parse_policy(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text.strip()


def register(subparsers) -> argparse.ArgumentParser:
    """Add `study heartbeat` to an argparse subparsers object. Dispatch with
    `args.study_func(args)`; `testbed study` alone prints help and returns 2."""
    study = subparsers.add_parser("study", help="experiments: real clients against a real lab")
    ssub = study.add_subparsers(dest="study_command", metavar="STUDY")

    def study_help(_args) -> int:
        study.print_help(sys.stderr)
        return 2

    study.set_defaults(study_func=study_help)
    hb = ssub.add_parser(
        "heartbeat", help="heartbeat policies behind a carrier NAT: wake-ups, deaths, delay",
        description="Run real phones through the carrier NAT of a real lab, one group per "
                    "heartbeat policy, for a protocol-time day; report heartbeats, silent "
                    "link deaths, reconnects, wake-ups and bytes per day and the delivery "
                    "delay of messages sent to them (docs/heartbeat-study.md).")
    hb.add_argument("--nat-timeout", type=positive_float, default=300.0,
                    metavar="SECONDS", help="carrier NAT idle timeout (default 300)")
    hb.add_argument("--policy", dest="policies", action="append", type=_arg_policy,
                    metavar="SPEC", help="heartbeat policy, repeatable: fixed:<seconds>, mars "
                                         "(default: fixed:270 fixed:1680 mars)")
    hb.add_argument("--clients", type=positive_int, default=100,
                    help="phones per policy (default 100)")
    hb.add_argument("--hours", type=positive_float, default=24.0,
                    help="protocol hours each phone is measured (default 24)")
    hb.add_argument("--time-scale", type=positive_float, default=2000.0,
                    help="protocol seconds per wall second (default 2000)")
    hb.add_argument("--messages-per-client-per-day", type=nonneg_float, default=4.0,
                    metavar="M", help="messages sent to each phone per day (default 4)")
    hb.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    hb.add_argument("--server-idle", type=positive_float, default=None,
                    metavar="SECONDS", help="server idle timeout (default: the profile's)")
    hb.add_argument("--json", type=Path, default=None, metavar="OUT",
                    help="write the figures as JSON")
    hb.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                    help="draw wake-ups/day and silent deaths per policy (needs matplotlib)")
    hb.add_argument("--processes", type=_arg_processes, default=None, metavar="N",
                    help="run the phones in N processes of their own, the lab in this one; "
                         "0: everything in one process (default: 2 with 2 CPUs or more)")
    hb.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                    help="event loop (default: uvloop if installed)")
    hb.add_argument("--quiet", action="store_true", help="no progress bar")
    hb.set_defaults(study_func=main_heartbeat)
    return hb


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    return StudyConfig(nat_timeout_s=args.nat_timeout,
                       policies=tuple(args.policies or StudyConfig.policies),
                       clients=args.clients, hours=args.hours, time_scale=args.time_scale,
                       messages_per_client_per_day=args.messages_per_client_per_day,
                       seed=args.seed, server_idle_s=args.server_idle,
                       processes=getattr(args, "processes", None),
                       loop=getattr(args, "loop", "auto"))


def _runner(choice: str):
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
            return uvloop.run
        except ImportError:
            if choice == "uvloop":
                raise ValueError("--loop uvloop: uvloop is not installed "
                                 "(pip install 'wechat-testbed[fast]')")
    return asyncio.run


def main_heartbeat(args: argparse.Namespace) -> int:
    """`testbed study heartbeat`: 0 on success, 2 on bad arguments, 1 if the run failed."""
    from rich.console import Console
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    err = Console(stderr=True)
    try:
        config = config_from_args(args)
        config.validate()
        runner = _runner(getattr(args, "loop", "auto"))
        for opt, target in (("--json", args.json), ("--plot", args.plot)):
            if target is not None and target.exists() and target.is_dir():
                raise ValueError(f"{opt} {target}: is a directory")
        if args.plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise ValueError("--plot needs matplotlib (pip install 'wechat-testbed[plot]')")
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        return 2

    quiet = getattr(args, "quiet", False)
    progress = Progress(TextColumn("[bold]heartbeat study[/bold]"), BarColumn(),
                        TextColumn("{task.completed:>7.0f}/{task.total:.0f} protocol s"),
                        TextColumn("{task.description}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err, transient=True,
                        disable=quiet, refresh_per_second=4)

    async def go() -> StudyResult:
        with progress:
            task = progress.add_task("starting", total=config.window_s)

            def report(done: float, total: float, what: str) -> None:
                progress.update(task, completed=done, total=total, description=what)

            return await run_study(config, report)

    try:
        result = runner(go())
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        return 130
    except Exception as exc:
        log.exception("heartbeat study failed")
        err.print(f"[red]study failed:[/red] {exc!r}")
        return 1

    # a pipe or file gets the whole table, not 80 columns of it; a narrow terminal gets it
    # turned, one row per figure
    out = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    out.print(render_table(result, vertical=out.width < TABLE_WIDTH))
    err.print(timing_summary(result), soft_wrap=True)
    if result.stalls:
        err.print(f"[yellow]warning:[/yellow] an event loop stalled {result.stalls} time(s) "
                  f"for {result.stall_threshold_s:g} protocol s or more (half the "
                  f"{result.timing_margin_s:g} s slack of the tightest policy under the NAT "
                  f"timeout): some silent deaths of policies that should survive, and some "
                  f"late messages, may be the testbed's doing, not the policy's. A busy "
                  f"machine does this; rerun, or use a lower --time-scale.", soft_wrap=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        err.print(f"figures: {args.json}")
    if args.plot is not None:
        write_plot(result, args.plot)
        err.print(f"plot: {args.plot}")
    return 0


def _main(argv=None) -> int:
    """`python -m testbed.study.heartbeat ...`: the same as `testbed study heartbeat ...`."""
    parser = argparse.ArgumentParser(prog="python -m testbed.study.heartbeat")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "heartbeat", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING)
    return args.study_func(args)


if __name__ == "__main__":
    # run the imported module, not __main__: phone processes pickle its classes by name
    from testbed.study.heartbeat import _main as _canonical_main
    sys.exit(_canonical_main())
