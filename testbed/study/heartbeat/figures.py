"""From what the phones did (`PhoneOutcome`s, lag samples, NAT expiries) to the figures
(`PolicyResult`, `StudyResult`). A policy's figures are built part by part below: a new
kind of figure is one more part, reading the outcomes and filling its `PolicyResult` fields."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Optional

from .config import DAY_S, LATE_S, TCP_CONN_SEGMENTS, TCPIP_HEADER_BYTES, StudyConfig, \
    timing_margin
from .driver import FleetReport, PhoneOutcome
from .measure import (LagMonitor, cpu_wait_between, histogram, lag_between, max_rss_mb,
                      percentile)
from .results import PolicyResult, RadioFigures, StudyResult


def expiries_in_windows(outcomes: list[PhoneOutcome], expiries: list[tuple[str, float]],
                        by_source: dict[str, int]) -> Counter:
    """NAT expiries (client address, protocol time) per phone index, counting only those
    inside the phone's window; `by_source` maps a phone's source address to its index."""
    by_index = {o.index: o for o in outcomes}
    out: Counter = Counter()
    for ip, t in expiries:
        g = by_source.get(ip)
        if g is not None and by_index[g].t0 <= t <= by_index[g].t0 + by_index[g].window_s:
            out[g] += 1
    return out


# ---------------------------------------------------------------------------- per policy
def policy_result(spec: str, cs: list[PhoneOutcome], expiries: Optional[Counter],
                  radio: tuple[str, ...] = (), population: float = 0.0) -> PolicyResult:
    """One policy's figures from its phones' outcomes; `expiries` per phone index, or None
    when the NAT could not tell phones apart; `radio`: the radio profile names costed, with
    the operator's view at `population` users."""
    r = PolicyResult(policy=spec, clients=len(cs),
                     window_s=statistics.fmean(c.window_s for c in cs))
    days = sum(c.window_s for c in cs) / DAY_S
    _link_counters(r, cs, days)
    _nat_expiries(r, cs, days, expiries)
    _messages(r, cs)
    _settled(r, cs)
    _radio(r, cs, days, radio, population)
    return r


def _link_counters(r: PolicyResult, cs: list[PhoneOutcome], days: float) -> None:
    """Heartbeats, deaths, reconnects, wake-ups and bytes: totals, then per phone-day."""
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
        r.loop_errors += len(c.loop_errors)
        r.notify_sync_failures += c.notify_sync_failures
        r.reconnect_failures += c.reconnect_failures
    r.tcpip_bytes = (2 * r.long_frames + TCP_CONN_SEGMENTS * r.tcp_connections) \
        * TCPIP_HEADER_BYTES
    r.heartbeats_per_day = r.heartbeats_sent / days
    r.silent_deaths_per_day = r.silent_deaths / days
    r.reconnects_per_day = r.reconnects / days
    r.wakeups_per_day = r.wakeups / days
    r.app_bytes_per_day = r.app_bytes / days
    r.bytes_per_day = (r.app_bytes + r.tcpip_bytes) / days
    intervals = sorted(v for c in cs for v in c.snapshot["intervals"])
    r.interval_p50_s = percentile(intervals, 50)
    r.interval_max_s = intervals[-1] if intervals else None


def _nat_expiries(r: PolicyResult, cs: list[PhoneOutcome], days: float,
                  expiries: Optional[Counter]) -> None:
    if expiries is not None:
        r.nat_expiries = sum(expiries[c.index] for c in cs)
        r.nat_expiries_per_day = r.nat_expiries / days


def _messages(r: PolicyResult, cs: list[PhoneOutcome]) -> None:
    """Sent, delivered, caught up, lost, duplicated; delays and the sender's latency."""
    delays, latencies = [], []
    for c in cs:
        r.duplicates += c.duplicates
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
    r.delay_p50_s = percentile(delays, 50)
    r.delay_p99_s = percentile(delays, 99)
    r.delay_max_s = delays[-1] if delays else None
    r.delay_mean_s = statistics.fmean(delays) if delays else None
    r.messages_late = sum(1 for d in delays if d > LATE_S)
    latencies.sort()
    r.send_latency_p50_s = percentile(latencies, 50)
    r.send_latency_p99_s = percentile(latencies, 99)


def _settled(r: PolicyResult, cs: list[PhoneOutcome]) -> None:
    """Adaptive policies (mars): the interval each phone settled on."""
    settled = [c.snapshot["policy_current"] for c in cs
               if c.snapshot.get("policy_probing") is False]
    if any(c.snapshot.get("policy_probing") is not None for c in cs):
        r.settled_clients = len(settled)
        r.settled_intervals = {f"{v:g}": n for v, n in sorted(Counter(settled).items())}
        r.settled_interval_s = statistics.median(settled) if settled else None


# a radio cost's totals (`RadioCost.to_dict()` keys) and the RadioFigures per-day field of each
_RADIO_TOTALS = {"wakeups": "wakeups_per_day", "server_wakeups": "server_wakeups_per_day",
                 "promotions": "promotions_per_day", "signalling_messages": "signalling_per_day",
                 "radio_on_s": "radio_on_s_per_day", "tail_s": "tail_s_per_day",
                 "energy_j": "energy_j_per_day"}


def _radio(r: PolicyResult, cs: list[PhoneOutcome], days: float, names: tuple[str, ...],
           population: float) -> None:
    """Each radio profile's cost of the windows' traffic: totals, per phone-day, and the
    operator's rates for `population` phones like these."""
    for name in names:
        costs = [c.radio[name] for c in cs]
        f = RadioFigures(profile=name, population=population)
        for total, per_day in _RADIO_TOTALS.items():
            setattr(f, total, sum(cost[total] for cost in costs))
            setattr(f, per_day, getattr(f, total) / days)
        # a server packet that finds the radio idle is a push, the server closing the link,
        # or a reply held back longer than the radio's tails (the testbed's doing)
        f.late_wakeups = max(0, f.server_wakeups - r.pushes - r.links_closed)
        f.packets = sum(cost["packets_c2s"] + cost["packets_s2c"] for cost in costs)
        f.packets_per_day = f.packets / days
        f.battery_share_per_day = sum(cost["battery_share"] for cost in costs) / days
        f.signalling_per_s_per_million = f.signalling_per_day * 1e6 / DAY_S
        f.signalling_per_s = f.signalling_per_day * population / DAY_S
        f.wakeups_per_s = f.wakeups_per_day * population / DAY_S
        r.radio[name] = f


# ---------------------------------------------------------------------------- the run
def study_result(cfg: StudyConfig, fleets: list[FleetReport],
                 lab_lag: Optional[LagMonitor], wall: float, cpu: float,
                 nat_stats: dict[str, Any], expiries: Optional[Counter],
                 hosts: Optional[list[str]] = None,
                 startup_wall_s: Optional[float] = None,
                 lab_cpus: Optional[list[int]] = None) -> StudyResult:
    """Every figure of the run. `lab_lag`: the lab loop's lag monitor when the phones ran
    in processes of their own (None: one loop for all, measured by the one fleet).
    `hosts`: the fleets were phone hosts of a lab running elsewhere (a shared lab,
    `shared.collect`), by these names; the lab's loop is not measured, and this process
    (the collector) was no part of the run. `startup_wall_s`: from the process's start to
    the lab clock's, when known."""
    k = cfg.time_scale
    outcomes = sorted((o for f in fleets for o in f.outcomes), key=lambda o: o.index)
    first = min(o.t0 for o in outcomes)
    last_window_end = max(o.t0 + o.window_s for o in outcomes)
    profiles = cfg.radio_profiles()
    names = tuple(prof.name for prof in profiles)
    policies = [policy_result(spec, [o for o in outcomes if o.policy_index == p], expiries,
                              names, cfg.population)
                for p, spec in enumerate(cfg.policies)]
    # event-loop lag while phones were in their windows, per process
    if hosts is not None:
        sources = [(h, f.lag, f.lag_cpu_wait) for h, f in zip(hosts, fleets)]
    elif lab_lag is not None:
        sources = [("lab", lab_lag.samples, lab_lag.cpu_waits)] + [
            (f"phones-{i + 1}", f.lag, f.lag_cpu_wait) for i, f in enumerate(fleets)]
    else:
        sources = [("lab+phones", fleets[0].lag, fleets[0].lag_cpu_wait)]
    lags: dict[str, list[float]] = {}
    whole_max = 0.0
    for name, samples, _ in sources:
        lags[name] = lag_between(samples, first, last_window_end)
        whole_max = max(whole_max, max((lag for _, lag in samples), default=0.0))
    allv = sorted(v for vs in lags.values() for v in vs)
    margin = timing_margin(cfg)

    def is_stall(v: float) -> bool:     # a wall lag of at least half the slack, scaled
        return margin is not None and v * k >= margin / 2

    def stalls_in(vs: list[float]) -> int:
        return sum(1 for v in vs if is_stall(v))

    stalls = stalls_in(allv)
    # which loop stalled: the count above pools every process's samples; and, where the
    # kernel says, how long each loop waited for a CPU in the windows (a machine short of
    # cores) and how many of its stalls were mostly that
    waited = {name: cpu_wait_between(samples, waits, first, last_window_end, is_stall)
              for name, samples, waits in sources}
    lag_by_process = {name: {"max_s": (vs[-1] if vs else 0.0) * k,
                             "p99_s": (percentile(vs, 99) or 0.0) * k,
                             "p50_s": (percentile(vs, 50) or 0.0) * k,
                             "samples": len(vs), "stalls": stalls_in(vs),
                             "cpu_wait_s": None if waited[name] is None else waited[name][0],
                             "stalls_waiting_for_cpu":
                                 None if waited[name] is None else waited[name][1]}
                      for name, vs in lags.items()}
    # the totals only where every loop's waits are known: a part would read as the whole
    known = None if None in waited.values() else list(waited.values())
    # CPU seconds of each phone process's fleet (from its start: logins included); the
    # lab's process has the rest of `cpu`
    cpu_by_process = {name: f.cpu_s for (name, _, _), f in zip(sources[-len(fleets):], fleets)}
    cpus_by_process = {name: f.cpus for (name, _, _), f in zip(sources[-len(fleets):], fleets)}
    if lab_lag is not None and hosts is None:
        cpu_by_process["lab"] = max(0.0, cpu - sum(cpu_by_process.values()))
        if lab_cpus is not None:
            cpus_by_process["lab"] = lab_cpus
    login_done = max(f.login_done for f in fleets)
    online_done = max(f.online_done for f in fleets)
    return StudyResult(
        config=cfg.to_dict(), policies=policies, wall_s=wall,
        # the lab's clock starts with the lab: protocol time / k is wall time since then
        setup_wall_s=online_done / k, login_wall_s=login_done / k,
        login_retries=sum(f.login_retries for f in fleets), startup_wall_s=startup_wall_s,
        start_spread_s=max(o.t0 for o in outcomes) - first,
        protocol_span_s=max(o.t_end for o in outcomes) - first,
        max_loop_lag_s=(allv[-1] if allv else 0.0) * k,
        p99_loop_lag_s=(percentile(allv, 99) or 0.0) * k,
        p50_loop_lag_s=(percentile(allv, 50) or 0.0) * k,
        max_loop_lag_wall_ms=(allv[-1] if allv else 0.0) * 1000,
        max_loop_lag_whole_s=whole_max * k, lag_samples=len(allv),
        lag_histogram=histogram([v * k for v in allv]), lag_by_process=lag_by_process,
        timing_margin_s=margin, stall_threshold_s=None if margin is None else margin / 2,
        stalls=stalls, timing_ok=stalls == 0,
        cpu_wait_s=sum(w for w, _ in known) if known else None,
        stalls_waiting_for_cpu=sum(n for _, n in known) if known else None,
        cpu_s=cpu, cpu_by_process=cpu_by_process, cpus_by_process=cpus_by_process,
        nat=nat_stats, drain_s=cfg.effective_drain_s(),
        noop_timeout_effective_s=cfg.noop_timeout_effective(),
        event_loop=fleets[0].event_loop,
        processes=len(fleets) if lab_lag is not None or hosts is not None else 0,
        gc_paused=cfg.pause_gc,
        max_rss_mb=max(([] if hosts is not None else [max_rss_mb()])
                       + [f.max_rss_mb for f in fleets]),
        radio_profiles=[prof.summary() for prof in profiles])
