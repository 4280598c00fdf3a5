"""What a heartbeat study is asked to do (`StudyConfig`), and what follows from it alone."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from testbed.eventloop import Loop
from testbed.lab import NAT_UPSTREAMS
from testbed.lab.addressing import MAX_CLIENTS
from testbed.radio.link import TCPIP_HEADER_BYTES  # noqa: F401 (the study's byte estimate)

DAY_S = 86400.0
# the 300 million registered users Tencent announced for WeChat in mid-January 2013 (TechNode,
# 16 January; China Daily, 17 January 2013): the operator's view is given for this many phones
WECHAT_USERS_2013 = 300e6
TCP_CONN_SEGMENTS = 7       # SYN, SYN-ACK, ACK, FIN, ACK, FIN, ACK: header-only segments
LATE_S = 60.0               # a message later than this did not come by push on a live link
MAX_PHONES = MAX_CLIENTS - 1   # one source address each, and one for the sender


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
    # phones logging in at once, per process: each login is a few round trips through
    # busy loops, so 8 at a time left 3,000 phones 27 s of logins, 64 10 s; more in flight
    # make each round trip longer than the NAT keeps an idle connection (docs/performance.md)
    start_concurrency: int = 64
    # phones going online at once, per process: once the first are online their heartbeats
    # (every 135 ms of wall time for fixed:270 at k = 2000) load every loop, so the rest
    # should follow fast; a step is three round trips (connect, IDENTIFY, newsync), no TLS
    online_concurrency: int = 256
    # phones each process takes online per wall second, evenly, in plan order (0: as fast
    # as `online_concurrency` lets them): 1,500 at once saturated every loop for half a
    # second of wall time, the windows' first stalls, and bunched the phones' first beats
    # (and fixed:1680's first deaths) as much; at 1,000 a second the lab still stalled
    # while they came
    online_per_s: float = 500.0
    # how the lab's NAT reaches the long link: "socket" or "memory" (`LabConfig.nat_upstream`);
    # in memory the lab spends a quarter less CPU and, with the phones' beats kept on their
    # phase, stalls less too (docs/performance.md); the phones' leg is loopback TCP either way
    nat_upstream: str = "memory"
    processes: Optional[int] = None         # phone processes; 0: phones in the lab's process;
                                            # None: 2 where there are 2 CPUs or more, else 0
    loop: str = "auto"                      # event loop of phone processes: auto/asyncio/uvloop
    pause_gc: bool = True                   # no cyclic GC during the run (see run_study)
    # each loop on a CPU of its own (the lab's first, then one per phone process): two loops
    # on two cores that the scheduler left sharing one waited for each other for seconds
    # (docs/performance.md, 6 December)
    pin_cpus: bool = False
    # 0: one lab for every phone. N: N labs, each in a process of its own with its share of
    # the phones in its loop, whose long links reach its NAT in memory (no loopback TCP: a
    # third of the socket study's CPU was the kernel's); the figures merged. None: 2 where
    # two CPUs or more may run this process and nothing else is asked of the layout
    # (`processes`, `pin_cpus`, the NAT's upstream by socket), else 0 (`shard_count`)
    shards: Optional[int] = None
    drain_s: Optional[float] = None         # None: longest policy interval + 2 NOOP timeouts + 120
    radio: tuple[str, ...] = ()             # radio profiles (names or .json paths) to cost
    population: float = WECHAT_USERS_2013   # users, for the operator's view of the radio

    def validate(self) -> None:
        """Raise ValueError with a message a user can act on."""
        from testbed.client.heartbeat import parse_policy

        if not _positive(self.nat_timeout_s):
            raise ValueError(f"--nat-timeout must be a positive number of seconds, "
                             f"got {self.nat_timeout_s!r}")
        if self.nat_upstream not in NAT_UPSTREAMS:
            raise ValueError(f"--nat-upstream must be one of {', '.join(NAT_UPSTREAMS)}, "
                             f"got {self.nat_upstream!r}")
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
        if self.clients * len(self.policies) > MAX_PHONES:
            raise ValueError(f"at most {MAX_PHONES} phones in one study")
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
        if self.start_concurrency < 1 or self.online_concurrency < 1:
            raise ValueError("start_concurrency and online_concurrency must be >= 1")
        if not (isinstance(self.online_per_s, (int, float))
                and math.isfinite(self.online_per_s) and self.online_per_s >= 0):
            raise ValueError(f"--online-per-s must be a number of phones >= 0 (0: all at "
                             f"once), got {self.online_per_s!r}")
        if self.processes is not None and (not isinstance(self.processes, int)
                                           or not 0 <= self.processes <= 64):
            raise ValueError(f"--processes must be 0 (phones in the lab's process) to 64, or "
                             f"auto, got {self.processes!r}")
        Loop(self.loop)           # a ValueError naming the loops
        if self.shards is not None and (not isinstance(self.shards, int)
                                        or not 0 <= self.shards <= 64):
            raise ValueError(f"--shards must be a whole number from 0 (one lab) to 64, or "
                             f"auto, got {self.shards!r}")
        if self.shards:
            if self.processes is not None:
                raise ValueError("--shards runs each lab's phones in its own loop: give "
                                 "--shards or --processes, not both")
            if self.pin_cpus:
                raise ValueError("--pin-cpus pins the lab and phone processes of one lab: "
                                 "not with --shards")
            if self.nat_upstream != "memory":
                raise ValueError("--shards keeps every long link in memory, so the NAT's "
                                 "upstream leg too: not with --nat-upstream socket")
            if self.shards > self.clients:
                raise ValueError(f"--shards {self.shards} is more labs than --clients "
                                 f"{self.clients}: each needs a phone of every policy")
        if self.pin_cpus:
            n, have = self.phone_processes(), len(usable_cpus())
            if n < 1:
                raise ValueError("--pin-cpus needs the phones in processes of their own "
                                 "(--processes 1 or more)")
            if 1 + n > have:
                raise ValueError(f"--pin-cpus needs a CPU for the lab and one for each phone "
                                 f"process: {1 + n} CPUs, this process may use {have}")
        names = [p.name for p in self.radio_profiles()]   # raises for an unknown profile
        if len(set(names)) != len(names):
            raise ValueError(f"a radio profile is given twice: {', '.join(names)}")
        if not _positive(self.population):
            raise ValueError(f"--population must be a positive number of users, got "
                             f"{self.population!r}")

    def radio_profiles(self) -> list:
        """The `RadioProfile`s of `radio`, loaded (ValueError for an unknown or bad one)."""
        from testbed.radio import load_radio_profile

        return [load_radio_profile(spec) for spec in self.radio]

    def to_dict(self) -> dict[str, Any]:
        """As JSON has it (and a phone process gets it): `policies` as a list."""
        d = dataclasses.asdict(self)
        d["policies"] = list(self.policies)
        d["radio"] = list(self.radio)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        return cls(**{**d, "policies": tuple(d["policies"]), "radio": tuple(d.get("radio", ()))})

    def shard_count(self) -> int:
        """The labs the study runs: `shards`, or what its default (None) comes to here."""
        if self.shards is not None:
            return self.shards
        auto = (self.processes is None and not self.pin_cpus and self.nat_upstream == "memory"
                and self.clients >= 2 and len(usable_cpus()) >= 2)
        return 2 if auto else 0

    def shard_clients(self) -> list[int]:
        """Phones per policy in each shard (`shard_count()` of them, the first ones one
        more where `clients` does not divide evenly)."""
        n = self.shard_count()
        return [self.clients // n + (1 if s < self.clients % n else 0) for s in range(n)]

    def phone_processes(self) -> int:
        if self.processes is not None:
            return self.processes
        return 2 if (os.cpu_count() or 1) >= 2 else 0

    @property
    def window_s(self) -> float:
        return self.hours * 3600.0

    def message_offsets(self, rng) -> list[float]:
        """When one phone gets its messages: protocol seconds into its window, uniform over
        it, `messages_per_client_per_day` a day on average (the fraction by a draw of `rng`)."""
        per_window = self.messages_per_client_per_day * self.window_s / DAY_S
        whole, frac = int(per_window), per_window - int(per_window)
        k = whole + (1 if rng.random() < frac else 0)
        return sorted(rng.uniform(0.0, self.window_s) for _ in range(k))

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


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order (all of them where the OS does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return list(range(os.cpu_count() or 1))


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
