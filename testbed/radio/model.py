"""What a phone's packets cost its radio: the RRC state machine of a `RadioProfile` run over
a packet timeline.

The timeline is what crossed the wire, in protocol seconds: each packet's time, direction
(`c2s` phone to server, `s2c` server to phone: a push wakes the radio as surely as a
request) and size in IP bytes. The model, per packet in time order:

* the radio in the top state (DCH, CONNECTED) carries the packet and restarts its
  inactivity timer;
* a lower connected state that can carry the packet (FACH, up to its buffer threshold)
  carries it and restarts its own timer;
* otherwise the packet promotes the radio to the top state: the promotion takes its delay
  (at its power), the packet goes out when it ends and the top state's timer starts then.
  Packets that come during a promotion go out with it;
* between packets, each timer that runs out drops the radio one state down, until idle.
  The time a timer ran before it expired is tail: radio on, nothing sent. After the last
  packet every tail runs out in full.

Energy counts the radio above its idle baseline: seconds in each state and in promotions
times their power. Signalling counts the RRC messages of every promotion (a downlink one
from idle includes the paging) and every timer-driven demotion and release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Optional

from .profile import DIRECTIONS, RadioProfile

DAY_S = 86400.0
DAY_BASIS_S = 3600.0     # shorter timelines say too little about a day to scale them up


class RadioPacket(NamedTuple):
    """One packet of a phone's timeline."""

    t: float                 # protocol seconds
    direction: str           # "c2s" (phone to server) or "s2c" (server to phone)
    size: int                # IP bytes


@dataclass
class RadioCost:
    """What a timeline cost on one profile. Seconds are protocol seconds."""

    profile: str
    packets: dict[str, int]                      # by direction
    promotions: int                              # every promotion to the top state
    promotions_from: dict[str, int]              # by the state promoted from
    wakeups: int                                 # promotions from idle
    server_wakeups: int                          # of those, woken by a server packet
    state_s: dict[str, float]                    # seconds in each connected state
    promotion_s: float                           # seconds spent promoting
    tail_s: float                                # timer seconds that ran out unused
    signalling_messages: int
    signalling: dict[str, int]                   # by transition: "IDLE->DCH", "DCH->FACH"...
    energy_j: float
    energy_by: dict[str, float]                  # by state, and "promotion"
    battery_share: float                         # of the profile's battery (0..1)
    observed_s: Optional[float] = None           # how long the timeline covers
    carried_low: int = 0                         # packets a lower state carried (FACH)

    @property
    def radio_on_s(self) -> float:
        return self.promotion_s + sum(self.state_s.values())

    @property
    def battery_share_per_day(self) -> Optional[float]:
        """The battery share a day of traffic like this would take (None for a timeline
        shorter than `DAY_BASIS_S` or of unknown duration)."""
        if not self.observed_s or self.observed_s < DAY_BASIS_S:
            return None
        return self.battery_share * DAY_S / self.observed_s

    def to_dict(self) -> dict:
        r = lambda v: float(f"{v:.10g}")   # noqa: E731 - no float noise in the JSON
        per_day = self.battery_share_per_day
        return {
            "profile": self.profile, "packets_c2s": self.packets["c2s"],
            "packets_s2c": self.packets["s2c"], "promotions": self.promotions,
            "promotions_from": dict(self.promotions_from), "wakeups": self.wakeups,
            "server_wakeups": self.server_wakeups,
            "state_s": {k: r(v) for k, v in self.state_s.items()},
            "promotion_s": r(self.promotion_s), "radio_on_s": r(self.radio_on_s),
            "tail_s": r(self.tail_s), "signalling_messages": self.signalling_messages,
            "signalling": dict(self.signalling), "energy_j": r(self.energy_j),
            "energy_by": {k: r(v) for k, v in self.energy_by.items()},
            "battery_share": r(self.battery_share),
            "observed_s": None if self.observed_s is None else r(self.observed_s),
            "battery_share_per_day": None if per_day is None else r(per_day),
            "carried_low": self.carried_low,
        }

    def describe(self, profile: RadioProfile, who: str = "the phone") -> str:
        """The cost in one plain sentence."""
        n, k = self.wakeups, self.server_wakeups
        woke = {0: "never woke up", 1: "woke up once"}.get(n, f"woke up {n} times")
        if k:
            woke += " (for a server push)" if n == 1 else \
                f" ({k} of them for a server push)"
        seen = f" in {self.observed_s:.1f} s of traffic" if self.observed_s else ""
        text = (f"{who} on {self.profile}{seen}: the radio {woke} and stayed on "
                f"{self.radio_on_s:.1f} s ({self.tail_s:.1f} s of it tails that carried "
                f"nothing); the network exchanged {self.signalling_messages} signalling "
                f"messages with the phone; the radio spent {self.energy_j:.1f} J above idle, "
                f"{percent(self.battery_share)} of a {profile.battery_mah:g} mAh "
                f"{profile.battery_v:g} V battery")
        day = self.battery_share_per_day
        if day is not None:
            text += f"; a day of traffic like this would take {percent(day)} of it"
        return text + "."


def percent(share: float) -> str:
    """0.00053 -> '0.053%', 4.89 -> '489%'."""
    v = 100 * share
    return f"{v:.0f}%" if v >= 100 else f"{v:.2g}%" if v < 1 else f"{v:.3g}%"


class RadioMeter:
    """The state machine, fed one packet at a time (in time order) and read with `cost()`.
    Memory does not grow with the packets, so a capture of any size can stream through."""

    def __init__(self, profile: RadioProfile) -> None:
        self.profile = profile
        self._states = profile.states
        self._idle = len(profile.states) - 1
        self._k = self._idle            # current state index (0: top)
        self._reset_at = 0.0            # when the current state's timer (re)started
        self._since = 0.0               # state time counted up to here
        self._promo_end = float("-inf")
        self._last_t = float("-inf")
        self._done = False
        self.packets = dict.fromkeys(DIRECTIONS, 0)
        self.state_s = {s.name: 0.0 for s in profile.states[:-1]}
        self.promotion_s = dict.fromkeys(profile.promotions, 0.0)
        self.promotions_from = dict.fromkeys(profile.promotions, 0)
        self.signalling: dict[str, int] = {}
        self.tail_s = 0.0
        self.server_wakeups = 0
        self.carried_low = 0

    def _count(self, transition: str, n: int) -> None:
        self.signalling[transition] = self.signalling.get(transition, 0) + n

    def _expire(self, t: float) -> None:
        """Let every inactivity timer that runs out by `t` drop the radio a state."""
        states = self._states
        while self._k != self._idle:
            st = states[self._k]
            deadline = self._reset_at + st.inactivity_timer_s
            if deadline > t:
                return
            self.state_s[st.name] += deadline - self._since
            self.tail_s += st.inactivity_timer_s
            self._count(f"{st.name}->{states[self._k + 1].name}", st.demotion_messages)
            self._k += 1
            self._since = self._reset_at = deadline

    def packet(self, t: float, direction: str, size: int) -> None:
        """One packet at protocol time `t`. A time before the previous packet's (capture
        clocks can step back) is taken as the previous time."""
        if self._done:
            raise RuntimeError("the meter was read: feed a new one")
        if direction not in self.packets:
            raise ValueError(f"direction must be c2s or s2c, got {direction!r}")
        t = max(float(t), self._last_t)
        self._last_t = t
        self.packets[direction] += 1
        if t < self._promo_end:
            return                              # goes out when the promotion ends
        self._expire(t)
        k = self._k
        st = self._states[k]
        if k == 0 or (st.carries_bytes is not None and size <= st.carries_bytes[direction]):
            self.state_s[st.name] += t - self._since
            self._since = self._reset_at = t
            if k:
                self.carried_low += 1
            return
        if k != self._idle:
            self.state_s[st.name] += t - self._since
        elif direction == "s2c":
            self.server_wakeups += 1
        promo = self.profile.promotions[st.name]
        self.promotions_from[st.name] += 1
        self.promotion_s[st.name] += promo.delay_s
        self._count(f"{st.name}->{self._states[0].name}", promo.messages[direction])
        self._k = 0
        self._since = self._reset_at = self._promo_end = t + promo.delay_s

    def cost(self, observed_s: Optional[float] = None) -> RadioCost:
        """Run the tails out and total up. `observed_s`: how long the timeline covers (for
        the per-day figure). The meter takes no packets after this."""
        if not self._done:
            self._expire(float("inf"))
            self._done = True
        p = self.profile
        power = {s.name: s.power_mw / 1000.0 for s in p.states}
        energy_by = {name: secs * power[name] for name, secs in self.state_s.items()}
        energy_by["promotion"] = sum(secs * p.promotions[name].power_mw / 1000.0
                                     for name, secs in self.promotion_s.items())
        energy = sum(energy_by.values())
        return RadioCost(
            profile=p.name, packets=dict(self.packets),
            promotions=sum(self.promotions_from.values()),
            promotions_from=dict(self.promotions_from),
            wakeups=self.promotions_from[p.idle.name], server_wakeups=self.server_wakeups,
            state_s=dict(self.state_s), promotion_s=sum(self.promotion_s.values()),
            tail_s=self.tail_s, signalling_messages=sum(self.signalling.values()),
            signalling=dict(self.signalling), energy_j=energy, energy_by=energy_by,
            battery_share=energy / p.battery_j, observed_s=observed_s,
            carried_low=self.carried_low)


def simulate(timeline: Iterable, profile: RadioProfile, *,
             observed_s: Optional[float] = None) -> RadioCost:
    """The cost of one phone's packet timeline on `profile`.

    `timeline`: `RadioPacket`s or `(t, direction, size)` tuples, in any order (they are
    sorted by time; t in protocol seconds, direction "c2s" or "s2c", size in IP bytes).
    `observed_s`: how many protocol seconds the timeline covers, for the per-day battery
    figure (None: no per-day figure)."""
    meter = RadioMeter(profile)
    for t, direction, size in sorted(timeline, key=lambda p: p[0]):
        meter.packet(t, direction, size)
    return meter.cost(observed_s)
