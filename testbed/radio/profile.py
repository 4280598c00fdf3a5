"""Radio profiles are data: JSON files in `profiles/`, each number with its source.

A profile is an RRC state machine as a chain of states, from the most powerful (CELL_DCH,
RRC_CONNECTED) down to idle. Each connected state has a power and an inactivity timer (its
tail): when the timer runs out the radio drops to the next state down. A packet that finds
the radio below the top state promotes it back to the top (a delay, a power, signalling),
unless the state it finds can carry it (CELL_FACH carries small packets).

Every number in a profile file is an object `{"value", "source", "kind", "where"}`: `source`
names an entry of the file's `sources`, `kind` says whether the figure was measured, counted
from a 3GPP procedure (`standard`) or is a modelling choice (`choice`), and `where` says
which figure of the source it is. The loader refuses a bare number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

DIRECTIONS = ("c2s", "s2c")          # phone to server (uplink), server to phone (downlink)
KINDS = ("measured", "standard", "choice")


@dataclass(frozen=True)
class Figure:
    """One number of a profile and where it comes from."""

    value: Any                       # a number, or {"c2s": n, "s2c": m}
    source: str
    kind: str
    where: str


@dataclass(frozen=True)
class RadioState:
    name: str
    power_mw: float
    inactivity_timer_s: Optional[float] = None     # None for the idle state
    demotion_messages: int = 0                     # when the timer runs out
    carries_bytes: Optional[dict[str, int]] = None  # packets this small need no promotion


@dataclass(frozen=True)
class Promotion:
    """From one state up to the top state."""

    delay_s: float
    power_mw: float
    messages: dict[str, int]                       # by the direction of the waking packet


@dataclass(frozen=True)
class RadioProfile:
    name: str
    technology: str
    description: str
    states: tuple[RadioState, ...]                 # top first, idle last
    promotions: dict[str, Promotion]               # by the state promoted from
    battery_mah: float
    battery_v: float
    sources: dict[str, str]
    figures: dict[str, Figure] = field(default_factory=dict)   # "states.DCH.power_mw" -> ...

    @property
    def top(self) -> RadioState:
        return self.states[0]

    @property
    def idle(self) -> RadioState:
        return self.states[-1]

    @property
    def battery_j(self) -> float:
        """The battery's energy: mAh x V x 3.6 J per mWh."""
        return self.battery_mah * self.battery_v * 3.6

    def chain(self) -> str:
        """The state machine in one line: `IDLE -2 s promotion-> DCH -5 s-> FACH -12 s-> IDLE`
        (each arrow down is an inactivity timer)."""
        up = self.promotions[self.idle.name].delay_s
        parts = [f"{self.idle.name} -{up:g} s promotion-> {self.top.name}"]
        for cur, nxt in zip(self.states, self.states[1:]):
            parts.append(f" -{cur.inactivity_timer_s:g} s-> {nxt.name}")
        return "".join(parts)

    def summary(self) -> dict:
        """The profile for `--json`: its parameters and its sources."""
        return {
            "name": self.name, "technology": self.technology,
            "description": self.description, "state_machine": self.chain(),
            "states": [{"name": s.name, "power_mw": s.power_mw,
                        "inactivity_timer_s": s.inactivity_timer_s,
                        "demotion_messages": s.demotion_messages,
                        "carries_bytes": s.carries_bytes} for s in self.states],
            "promotions": {k: {"delay_s": p.delay_s, "power_mw": p.power_mw,
                               "messages": dict(p.messages)}
                           for k, p in self.promotions.items()},
            "battery": {"capacity_mah": self.battery_mah, "voltage_v": self.battery_v,
                        "energy_j": round(self.battery_j, 3)},
            "sources": dict(self.sources),
        }


class _Reader:
    """Takes a profile document apart, with errors that name the profile and the field."""

    def __init__(self, doc: dict, label: str) -> None:
        self.doc = doc
        self.label = label
        self.figures: dict[str, Figure] = {}
        sources = doc.get("sources")
        if not isinstance(sources, dict) or not sources:
            self.fail("sources", "must map source keys to citations")
        self.sources = {str(k): str(v) for k, v in sources.items()}

    def fail(self, path: str, msg: str):
        raise ValueError(f"radio profile {self.label}: {path} {msg}")

    def figure(self, obj: Any, path: str, *, per_direction: bool = False,
               integer: bool = False) -> Any:
        if not isinstance(obj, dict) or "value" not in obj:
            self.fail(path, "must be {\"value\", \"source\", \"kind\", \"where\"}: every number "
                            "needs its source")
        src, kind, where = obj.get("source"), obj.get("kind"), obj.get("where")
        if src not in self.sources:
            self.fail(path, f"cites {src!r}, which is not in sources "
                            f"({', '.join(sorted(self.sources))})")
        if kind not in KINDS:
            self.fail(path, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(where, str) or not where.strip():
            self.fail(path, "needs a \"where\": which figure of the source it is")
        value = obj["value"]
        if per_direction:
            if not isinstance(value, dict) or set(value) != set(DIRECTIONS):
                self.fail(path, "must give a value for c2s and for s2c")
            value = {d: self._number(value[d], f"{path}.{d}", integer) for d in DIRECTIONS}
        else:
            value = self._number(value, path, integer)
        self.figures[path] = Figure(value, src, kind, where)
        return value

    def _number(self, v: Any, path: str, integer: bool) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 \
                or v == float("inf"):
            self.fail(path, f"must be a number >= 0, got {v!r}")
        if integer and int(v) != v:
            self.fail(path, f"must be a whole number, got {v!r}")
        return int(v) if integer else float(v)


def profile_from_dict(doc: dict, label: str = "?") -> RadioProfile:
    """Validate a profile document and build the `RadioProfile`."""
    if not isinstance(doc, dict):
        raise ValueError(f"radio profile {label}: not a JSON object")
    label = str(doc.get("name") or label)
    r = _Reader(doc, label)
    raw_states = doc.get("states")
    if not isinstance(raw_states, list) or len(raw_states) < 2:
        r.fail("states", "must list at least a connected state and the idle state")
    states = []
    names = []
    for i, s in enumerate(raw_states):
        if not isinstance(s, dict) or not s.get("name"):
            r.fail(f"states[{i}]", "needs a name")
        name = str(s["name"])
        if name in names:
            r.fail(f"states.{name}", "is listed twice")
        names.append(name)
        p = f"states.{name}"
        idle = i == len(raw_states) - 1
        power = r.figure(s.get("power_mw"), f"{p}.power_mw")
        if idle:
            if "inactivity_timer_s" in s:
                r.fail(p, "is the idle state (the last one): it has no inactivity timer")
            states.append(RadioState(name, power))
            continue
        timer = r.figure(s.get("inactivity_timer_s"), f"{p}.inactivity_timer_s")
        if timer <= 0:
            r.fail(f"{p}.inactivity_timer_s", "must be positive")
        demote = r.figure(s.get("demotion_messages"), f"{p}.demotion_messages", integer=True)
        carries = None
        if "carries_bytes" in s:
            if i == 0:
                r.fail(p, "is the top state: it carries every packet")
            carries = r.figure(s["carries_bytes"], f"{p}.carries_bytes", per_direction=True,
                               integer=True)
        states.append(RadioState(name, power, timer, demote, carries))
    raw_promos = doc.get("promotions")
    if not isinstance(raw_promos, dict):
        r.fail("promotions", "must map each state below the top to its promotion")
    promotions = {}
    for name in names[1:]:
        pr = raw_promos.get(name)
        p = f"promotions.{name}"
        if pr is None:
            r.fail(p, f"is missing: a packet can find the radio in {name}")
        promotions[name] = Promotion(
            r.figure(pr.get("delay_s"), f"{p}.delay_s"),
            r.figure(pr.get("power_mw"), f"{p}.power_mw"),
            r.figure(pr.get("messages"), f"{p}.messages", per_direction=True, integer=True))
    extra = set(raw_promos) - set(names[1:])
    if extra:
        r.fail("promotions", f"names states the profile does not have: {sorted(extra)}")
    bat = doc.get("battery")
    if not isinstance(bat, dict):
        r.fail("battery", "needs capacity_mah and voltage_v")
    mah = r.figure(bat.get("capacity_mah"), "battery.capacity_mah")
    volts = r.figure(bat.get("voltage_v"), "battery.voltage_v")
    if not mah > 0 or not volts > 0:
        r.fail("battery", "capacity and voltage must be positive")
    return RadioProfile(label, str(doc.get("technology", "")), str(doc.get("description", "")),
                        tuple(states), promotions, mah, volts, r.sources, dict(r.figures))


def _profile_dir():
    return resources.files("testbed.radio") / "profiles"


def radio_profile_names() -> list[str]:
    """The built-in radio profiles."""
    return sorted(p.name[:-5] for p in _profile_dir().iterdir() if p.name.endswith(".json"))


def load_radio_profile(name_or_path: str) -> RadioProfile:
    """A built-in radio profile by name (`umts-2010`), or a profile JSON file by path.
    Raises ValueError, with a message a user can act on, for an unknown or invalid one."""
    path = Path(name_or_path)
    if name_or_path.endswith(".json") and path.is_file():
        text, label = path.read_text(encoding="utf-8"), str(path)
    else:
        res = _profile_dir() / f"{name_or_path}.json"
        if not res.is_file():
            raise ValueError(f"unknown radio profile {name_or_path!r}; built-in: "
                             f"{', '.join(radio_profile_names())} (or a .json file)")
        text, label = res.read_text(encoding="utf-8"), name_or_path
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"radio profile {label}: not valid JSON ({exc})") from None
    return profile_from_dict(doc, label)
