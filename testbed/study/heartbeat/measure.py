"""How the study measures: what a phone did between two moments (snapshots of its
`PhoneMetrics`), what its traffic in that window cost its radio (`RadioWindow`), how late
each event loop ran (`LagMonitor`), and the statistics of these."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from typing import Any, Callable, Optional

LAG_PERIOD_S = 0.005        # wall seconds between lag probes
LAG_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 100.0)   # protocol seconds

# the PhoneMetrics counters a phone's window is the difference of
COUNTERS = ("heartbeats_sent", "heartbeats_answered", "silent_deaths", "links_closed",
            "reconnects", "reconnect_attempts", "wakeups", "pushes", "syncs",
            "tcp_connections")


# ---------------------------------------------------------------------------- a phone
def snapshot(phone) -> dict[str, Any]:
    """The phone's counters now, bytes of the link in use included."""
    m = phone.metrics
    d: dict[str, Any] = {k: getattr(m, k) for k in COUNTERS}
    d["app_bytes"], d["long_frames"] = phone.long_totals()
    d["intervals"] = list(m.intervals)
    pol = phone.policy
    d["policy_current"] = getattr(pol, "current", None)
    d["policy_probing"] = getattr(pol, "probing", None)
    return d


def window(base: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots."""
    d = dict(end)
    for k in (*COUNTERS, "app_bytes", "long_frames"):
        d[k] = end[k] - base[k]
    d["intervals"] = end["intervals"][len(base["intervals"]):]
    return d


def quiescent(phone, base: dict[str, Any]) -> bool:
    """No NOOP awaiting its answer and no reconnect under way. In the window each
    `reconnect()` follows exactly one silent death or one closed link, and counts once when
    it succeeds (`base`: the counters when the window opened)."""
    m = phone.metrics
    in_flight = m.heartbeats_sent - m.heartbeats_answered - m.silent_deaths - m.links_closed
    owed = (m.silent_deaths - base["silent_deaths"]) + (m.links_closed - base["links_closed"]) \
        - (m.reconnects - base["reconnects"])
    return in_flight <= 0 and owed == 0


class RadioWindow:
    """What a phone's traffic in its window costs each radio profile: its links' packets
    (`testbed.radio.link.LinkTimeline`, the phone's `link_observer`) feed a `RadioMeter` per
    profile from `open()` to `close()`; packets outside the window are not counted."""

    def __init__(self, profiles: list, clock) -> None:
        from testbed.radio.link import LinkTimeline

        self.profiles = profiles
        self.observer = LinkTimeline(clock, self._packet)
        self._meters: Optional[list] = None

    def _packet(self, t: float, direction: str, size: int) -> None:
        if self._meters is not None:
            for m in self._meters:
                m.packet(t, direction, size)

    def open(self) -> None:
        from testbed.radio import RadioMeter

        self._meters = [RadioMeter(p) for p in self.profiles]

    def close(self, observed_s: float) -> dict[str, dict[str, Any]]:
        """{profile name: `RadioCost.to_dict()`} of the window (the last tails run out)."""
        meters, self._meters = self._meters or [], None
        return {m.profile.name: m.cost(observed_s).to_dict() for m in meters}


# ---------------------------------------------------------------------------- an event loop
class LagMonitor:
    """How late a short wall sleep wakes up: the event loop's lag, stamped in protocol time;
    and, where the kernel tells (`CpuWait`), how long the loop's thread waited for a CPU in
    each sample: a lag made by a machine short of cores, not by the loop's own work."""

    def __init__(self, clock, period: float = LAG_PERIOD_S) -> None:
        self.clock = clock
        self.period = period
        self.samples: list[tuple[float, float]] = []   # (protocol time, wall s of lag)
        self.cpu_waits: list[float] = []   # wall s waited for a CPU, per sample (or none)

    async def run(self) -> None:
        perf = time.perf_counter
        period = self.period
        now = self.clock.now
        append = self.samples.append
        waits = CpuWait.of_this_thread()
        append_wait = self.cpu_waits.append
        try:
            w0 = 0.0 if waits is None else waits.read()
            while True:
                t = perf()
                await asyncio.sleep(period)
                append((now(), max(0.0, perf() - t - period)))
                if waits is not None:
                    try:
                        w1 = waits.read()
                    except (OSError, ValueError, IndexError):
                        # the kernel stopped saying: no wait is known for the run, and the
                        # lag goes on being measured
                        waits.close()
                        waits = None
                        self.cpu_waits.clear()
                        continue
                    append_wait(w1 - w0)
                    w0 = w1
        finally:
            if waits is not None:
                waits.close()


class CpuWait:
    """The time a thread has spent runnable but waiting for a CPU, as the kernel counts it
    (`/proc/thread-self/schedstat`, its second field: Linux with schedstat info). The kernel
    brings it up to date when it schedules the thread, and a wait is a scheduler slice or a
    tick (4 ms on a 250 Hz kernel), so one sample says little and a sum over a window is
    what to read."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def of_this_thread(cls) -> Optional["CpuWait"]:
        """For the calling thread; None where the kernel does not say."""
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            return None
        probe = cls(fd)
        try:
            ran, _ = probe._counts()
        except (OSError, ValueError, IndexError):
            ran = 0
        if not ran:     # "0 0 0": a kernel that does not count (a running thread has run)
            probe.close()
            return None
        return probe

    def read(self) -> float:
        """Seconds waited so far."""
        return self._counts()[1] / 1e9

    def _counts(self) -> tuple[int, int]:
        # nanoseconds on a CPU, nanoseconds waiting for one (then the slices: not read)
        ran, waited = os.pread(self._fd, 96, 0).split()[:2]
        return int(ran), int(waited)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lag_between(samples: list[tuple[float, float]], a: float, b: float) -> list[float]:
    """The lags (sorted) of the samples stamped from protocol time a to b."""
    return sorted(lag for t, lag in samples if a <= t <= b)


def cpu_wait_between(samples: list[tuple[float, float]], waits: list[float], a: float,
                     b: float, is_stall: Callable[[float], bool]) -> Optional[tuple[float, int]]:
    """Of the samples stamped from protocol time a to b: the wall seconds their thread
    waited for a CPU, and how many of the stalls among them (`is_stall(wall lag)`) waited
    for one at least half their lag (a stall the machine made). None without the waits
    (`LagMonitor.cpu_waits`, one a sample)."""
    if not waits or len(waits) != len(samples):
        return None
    total, stalls = 0.0, 0
    for (t, lag), w in zip(samples, waits):
        if a <= t <= b:
            total += w
            if w >= lag / 2 and is_stall(lag):
                stalls += 1
    return total, stalls


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def process_age_s() -> Optional[float]:
    """Wall seconds since this process started (Linux, to the kernel's 10 ms tick; None
    elsewhere): what a study's set-up took from the command's start, imports included."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # the fields after the command name (which may hold spaces) in parentheses
        start_ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- statistics
def percentile(sorted_values: list[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def histogram(values: list[float]) -> dict[str, int]:
    """Counts of values (protocol seconds) in LAG_BUCKETS: "<1", "1-5", ..., ">=100"."""
    edges = LAG_BUCKETS
    labels = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])] \
        + [f">={edges[-1]:g}"]
    out = dict.fromkeys(labels, 0)
    for v in values:
        i = next((j for j, e in enumerate(edges) if v < e), len(edges))
        out[labels[i]] += 1
    return out
