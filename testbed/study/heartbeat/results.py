"""What a heartbeat study reports: figures per policy (`PolicyResult`) and for the whole run
(`StudyResult`), with their JSON form; a policy's cost on each radio profile
(`RadioFigures`). `figures.py` computes them; a new figure is a field here and a line there."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .config import TCP_CONN_SEGMENTS, TCPIP_HEADER_BYTES


@dataclass
class RadioFigures:
    """One policy's traffic on one radio profile (`testbed.radio`): totals over the policy's
    phones and windows, `*_per_day` per phone per 24 h, and the operator's view: the rates
    a network would carry if `population` phones behaved like these (a daily average, not
    a busy hour)."""

    profile: str
    packets: int = 0                        # IP packets both ways
    wakeups: int = 0                        # promotions from idle
    server_wakeups: int = 0                 # of those, woken by a packet from the server
    # server wake-ups beyond the pushes and server closes that could cause them: replies the
    # testbed delivered so late (a loaded loop, times k) that the radio had gone idle
    late_wakeups: int = 0
    promotions: int = 0                     # every promotion (FACH to DCH too)
    signalling_messages: int = 0            # RRC messages of promotions and demotions
    radio_on_s: float = 0.0                 # promoting or in a connected state
    tail_s: float = 0.0                     # of which, inactivity timers that ran out
    energy_j: float = 0.0                   # above the idle baseline
    packets_per_day: float = 0.0
    wakeups_per_day: float = 0.0
    server_wakeups_per_day: float = 0.0
    promotions_per_day: float = 0.0
    signalling_per_day: float = 0.0
    radio_on_s_per_day: float = 0.0
    tail_s_per_day: float = 0.0
    energy_j_per_day: float = 0.0
    battery_share_per_day: float = 0.0      # of the profile's battery (1.0: all of it)
    signalling_per_s_per_million: float = 0.0   # messages a second per million users
    population: float = 0.0
    signalling_per_s: float = 0.0           # messages a second for the population
    wakeups_per_s: float = 0.0              # wake-ups a second for the population


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
    notify_sync_failures: int = 0           # a NOTIFY's newsync failed (the phone retries it)
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
    radio: dict[str, RadioFigures] = field(default_factory=dict)     # by radio profile name


@dataclass
class StudyResult:
    """The whole run: every policy's figures, and how well the run kept time."""

    config: dict[str, Any]
    policies: list[PolicyResult]
    wall_s: float = 0.0                     # whole run, lab start to lab stop
    setup_wall_s: float = 0.0               # lab start until the last phone was online
    startup_wall_s: Optional[float] = None  # before it: the command's start to the lab's
    login_wall_s: float = 0.0               # of which: TLS logins, newinits, long-link names
    login_retries: int = 0                  # login-phase requests sent again (a broken link)
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
    lag_by_process: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)
    timing_margin_s: Optional[float] = None # slack of the tightest policy below the NAT timeout
    stall_threshold_s: Optional[float] = None   # half of it (see timing_margin)
    stalls: int = 0                         # in-window lag samples at least that long
    timing_ok: bool = True                  # no such stall: deaths are the policies' own
    # wall s the loops waited for a CPU in the windows, summed over the processes, and the
    # stalls that were mostly such a wait (the machine's, not the loop's own work); None
    # where the kernel does not say (`measure.CpuWait`)
    cpu_wait_s: Optional[float] = None
    stalls_waiting_for_cpu: Optional[int] = None
    cpu_s: float = 0.0                      # CPU time (user + system), phone processes included
    # of which each phone process's fleet (named as in lag_by_process) and the lab's
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    # the CPUs each loop's thread could run on at the end (one each with --pin-cpus)
    cpus_by_process: dict[str, list[int]] = field(default_factory=dict)
    nat: dict[str, Any] = field(default_factory=dict)
    drain_s: float = 0.0
    noop_timeout_effective_s: float = 0.0
    event_loop: str = ""
    processes: int = 0                      # phone processes (0: phones in the lab's)
    gc_paused: bool = False
    max_rss_mb: float = 0.0                 # peak resident memory of the largest process
    # the radio profiles costed (`--radio`): parameters and sources, as `testbed analyze`
    # gives them
    radio_profiles: list[dict[str, Any]] = field(default_factory=list)
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
        rknown = {f.name for f in dataclasses.fields(RadioFigures)}
        policies = []
        for p in d.get("policies", []):
            p = {k: v for k, v in p.items() if k in pknown}
            p["radio"] = {name: RadioFigures(**{k: v for k, v in r.items() if k in rknown})
                          for name, r in p.get("radio", {}).items()}
            policies.append(PolicyResult(**p))
        d["policies"] = policies
        return cls(**d)
