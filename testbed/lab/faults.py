"""Frame-level faults, seeded: a small plan of what goes wrong on the wire, as data.

`testbed lab up --fault SPEC` (the lab's side: what the lab sends) and `testbed replay
--fault SPEC` (the client's side: what the replayer sends) take the same grammar; each spec
is one fault, the option is repeatable:

    ACTION:[DOOR.]COMMAND#N[ARG]     a frame (long link) or a response / request (short link)
    reset:HOST[#N]@DURATION          a connection reset (RST both ways) DURATION after it opened
    blackhole:HOST[#N]@DURATION      from DURATION after it opened, nothing crosses it
    seed=N                           the seed of every random choice below

- ACTION is `drop` (never sent), `delay=DURATION` as `delay:NOTIFY#1=30s` (sent that much
  later; the frames after it do not wait), `dup` (sent twice), `truncate@BYTES` as
  `truncate:GETMSGIMG#1@100` (its first BYTES bytes, then the connection closes) or
  `split@BYTES` as `split:NOOP#3@7` (two TCP segments, cut at byte BYTES).
- DOOR is `long` (the default: long-link frames, replies and NOTIFY pushes on the lab's side,
  requests on the replayer's) or `short` (the short link: the Nth response of a CGI on the
  lab's side, `drop`, `delay` and `truncate` only; the Nth request on the replayer's, `drop`
  and `delay`).
- COMMAND is a name of the command table (`NEWSYNC`, `NOOP`, `NOTIFY`, `GETMSGIMG`, ...).
- `#N` is the Nth such frame (from 1, counted over the whole lab or replay), `#*` every one,
  `%P` each with probability P percent (seeded).
- DURATION is protocol seconds: `30s`, `500ms`, `5m`, `1h`, or a bare number of seconds; a
  delay may be a range, `=10s..30s`, drawn from the seed. BYTES may be `?`: a random offset
  inside the frame, drawn from the seed.
- HOST is `long`, `short`, `mapabc`, `qlogo`, `qpic`, `dns` (its TCP side), or a lab host's
  full name; `#N` is its Nth connection (without it: every connection). On the replayer's
  side HOST is `long`: its other connections carry one request each.

Without `seed=N` a seed is drawn at random; either way the plan and the seed are recorded (a
capture's section comment, the replay's JSON), and the same plan with the same seed on the
same run of requests faults the same frames the same way.

`Faults` is a plan at run time: it counts frames and connections and says, for each, which
fault (if any) applies; `FrameSender` carries one direction of a connection frame by frame
through them, on the lab clock.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from testbed.wire.choices import Choice, unknown
from testbed.wire.commands import BY_NAME

from .addressing import HOST_NAMES, LONG, MAPABC, QLOGO, QPIC, SHORT
from .clock import Clock, Timer

#: wall seconds between the two segments of a split frame (what follows it waits too)
SPLIT_GAP_WALL_S = 0.005
HOST_ALIASES = {"long": LONG, "short": SHORT, "mapabc": MAPABC, "qlogo": QLOGO, "qpic": QPIC,
                "dns": "dns"}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


class FaultKind(Choice, what="fault"):
    DROP = "drop"
    DELAY = "delay"
    DUP = "dup"
    TRUNCATE = "truncate"
    SPLIT = "split"
    RESET = "reset"
    BLACKHOLE = "blackhole"


FRAME_KINDS = (FaultKind.DROP, FaultKind.DELAY, FaultKind.DUP, FaultKind.TRUNCATE,
               FaultKind.SPLIT)
LINK_KINDS = (FaultKind.RESET, FaultKind.BLACKHOLE)
SHORT_KINDS = (FaultKind.DROP, FaultKind.DELAY, FaultKind.TRUNCATE)
#: the two sides a plan runs on: what the lab sends, what the replayer sends
LAB, CLIENT = "lab", "client"


class FaultError(ValueError):
    """A spec that is not one; the message says what is wrong and what would be right."""


@dataclass(frozen=True)
class FaultSpec:
    """One parsed fault: what, where, which one, and its argument."""

    text: str                           # as written (normalised: no spaces)
    kind: FaultKind
    door: str = "long"                  # frames: "long" or "short"
    command: str = ""                   # frames: the command's name
    host: str = ""                      # links: the lab host's name
    nth: Optional[int] = None           # the Nth frame / connection; None: every one
    percent: Optional[float] = None     # each with this probability (frames)
    delay: tuple[float, float] = (0.0, 0.0)   # protocol seconds (a range: drawn)
    offset: Optional[int] = None        # truncate/split: bytes; None with `?`: drawn
    at: float = 0.0                     # links: protocol seconds after the connection opened

    @property
    def random(self) -> bool:
        """It needs the seed: a probability, a delay range or a random offset."""
        return self.percent is not None or self.delay[0] != self.delay[1] or (
            self.kind in (FaultKind.TRUNCATE, FaultKind.SPLIT) and self.offset is None)


def parse_duration(text: str, spec: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|)", text)
    if m is None:
        raise FaultError(f"{spec}: {text!r} is not a duration (30s, 500ms, 5m, 1h, or "
                         f"seconds)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _frame_target(kind: FaultKind, target: str, spec: str, side: str):
    door, _, name = target.rpartition(".")
    door = door or "long"
    if door not in ("long", "short"):
        raise FaultError(f"{spec}: {unknown('door', door, ['long', 'short'])}")
    if door == "short" and kind not in SHORT_KINDS:
        raise FaultError(f"{spec}: {kind} acts on long-link frames; on the short link a fault "
                         f"is one of {', '.join(SHORT_KINDS)}")
    command = BY_NAME.get(name)
    if command is None:
        raise FaultError(f"{spec}: {unknown('command', name, list(BY_NAME))}")
    if door == "long" and command.cmd is None:
        raise FaultError(f"{spec}: {name} has no long-link frame (it is a CGI): write "
                         f"short.{name}")
    if door == "short" and command.cgi is None:
        raise FaultError(f"{spec}: {name} has no CGI (it is a long-link frame): write "
                         f"{name} for its frames")
    if side == CLIENT and door == "short" and kind is FaultKind.TRUNCATE:
        raise FaultError(f"{spec}: on the replayer's short link a fault is drop or delay")
    if side == CLIENT and command.push_only:
        raise FaultError(f"{spec}: NOTIFY is a push the lab sends; on the replayer's side a "
                         f"fault acts on the requests it sends")
    return door, name


def parse_fault(text: str, side: str = LAB) -> FaultSpec:
    """One spec (not `seed=`) -> FaultSpec; `FaultError` saying what is wrong."""
    spec = "".join(text.split())
    action, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise FaultError(f"{text!r}: write ACTION:TARGET (drop:NEWSYNC#2, "
                         f"delay:NOTIFY#1=30s, reset:long@120s, seed=7; docs/replay.md)")
    try:
        kind = FaultKind(action)
    except ValueError:
        raise FaultError(f"{spec}: {unknown('fault', action, list(FaultKind))}") from None
    if kind in LINK_KINDS:
        return _parse_link(kind, rest, spec, side)
    m = re.fullmatch(r"([A-Za-z0-9_.]+)(?:#(\d+|\*)|%(\d+(?:\.\d*)?))?(.*)", rest)
    target, nth, percent, arg = m.groups()
    door, name = _frame_target(kind, target, spec, side)
    if nth is None and percent is None:
        raise FaultError(f"{spec}: say which {name}: #N (the Nth), #* (every one) or %P "
                         f"(each with probability P percent)")
    n = None if nth in (None, "*") else int(nth)
    if n is not None and n < 1:
        raise FaultError(f"{spec}: frames count from #1")
    p = None if percent is None else float(percent)
    if p is not None and not 0 < p <= 100:
        raise FaultError(f"{spec}: a probability is more than 0 and at most 100 percent")
    out = dict(text=spec, kind=kind, door=door, command=name, nth=n, percent=p)
    if kind is FaultKind.DELAY:
        if not arg.startswith("=") or len(arg) < 2:
            raise FaultError(f"{spec}: delay takes =DURATION, as delay:{target}#1=30s (or a "
                             f"range, =10s..30s)")
        lo, dots, hi = arg[1:].partition("..")
        a = parse_duration(lo, spec)
        b = parse_duration(hi, spec) if dots else a
        if b < a:
            raise FaultError(f"{spec}: the range {lo}..{hi} runs backwards")
        out["delay"] = (a, b)
    elif kind in (FaultKind.TRUNCATE, FaultKind.SPLIT):
        if not arg.startswith("@") or len(arg) < 2:
            raise FaultError(f"{spec}: {kind} takes @BYTES (where to cut), as "
                             f"{kind}:{target}#1@100, or @? for a random place")
        if arg[1:] != "?":
            if not arg[1:].isdigit() or int(arg[1:]) < 1:
                raise FaultError(f"{spec}: @{arg[1:]}: a cut is a number of bytes, 1 or more")
            out["offset"] = int(arg[1:])
    elif arg:
        raise FaultError(f"{spec}: {kind} takes nothing after the frame ({arg!r})")
    return FaultSpec(**out)


def _parse_link(kind: FaultKind, rest: str, spec: str, side: str) -> FaultSpec:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:#(\d+))?@(.+)", rest)
    if m is None:
        raise FaultError(f"{spec}: {kind} takes HOST[#N]@DURATION, as {kind}:long@120s (the "
                         f"Nth connection with #N, else every one)")
    host, nth, when = m.groups()
    name = HOST_ALIASES.get(host, host)
    if name not in HOST_NAMES and name != "dns":
        raise FaultError(f"{spec}: {unknown('host', host, list(HOST_ALIASES) + list(HOST_NAMES))}")
    if side == CLIENT and name != LONG:
        raise FaultError(f"{spec}: on the replayer's side a {kind} acts on its long links "
                         f"(write {kind}:long...); its other connections last one request")
    n = None if nth is None else int(nth)
    if n is not None and n < 1:
        raise FaultError(f"{spec}: connections count from #1")
    return FaultSpec(text=spec, kind=kind, host=name, nth=n, at=parse_duration(when, spec))


@dataclass(frozen=True)
class FaultPlan:
    """Faults and the seed of their random choices."""

    specs: tuple[FaultSpec, ...] = ()
    seed: int = 0
    side: str = LAB

    @classmethod
    def parse(cls, texts: list[str], side: str = LAB,
              seed: Optional[int] = None) -> "FaultPlan":
        """The plan of `--fault` options; without `seed=N` among them (or `seed`), a random
        seed."""
        specs = []
        for text in texts:
            t = "".join(text.split())
            if t.startswith("seed="):
                if not re.fullmatch(r"seed=\d+", t):
                    raise FaultError(f"{text!r}: seed=N takes a whole number")
                if seed is not None:
                    raise FaultError(f"{text!r}: the seed is given twice")
                seed = int(t[5:])
                continue
            specs.append(parse_fault(t, side))
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 31)
        return cls(tuple(specs), seed, side)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def describe(self) -> list[str]:
        """The plan as written, for a capture's comment and JSON output."""
        return [s.text for s in self.specs]


@dataclass(frozen=True)
class Fault:
    """A fault that applies to one frame or connection, its random choices made."""

    spec: FaultSpec
    delay: float = 0.0
    offset: int = 0
    n: int = 0               # links: which connection to its host it is (from 1)

    @property
    def kind(self) -> FaultKind:
        return self.spec.kind


@dataclass
class Faults:
    """A plan at run time: counts frames per door and command, connections per host, and
    says which fault applies to each; `applied` lists what it did."""

    plan: FaultPlan
    clock: Optional[Clock] = None
    applied: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)
        self.frames: dict[tuple[str, str], int] = {}
        self.connections: dict[str, int] = {}

    def _log(self, spec: FaultSpec, what: str, n: int, **extra) -> None:
        t = self.clock.now() if self.clock is not None else None
        self.applied.append({"fault": spec.text, "what": what, "n": n,
                             "t": None if t is None else round(t, 3), **extra})

    def frame(self, door: str, name: str, size: int) -> Optional[Fault]:
        """The fault (if any) for the next frame of `name` on `door` (`size` bytes)."""
        key = (door, name)
        n = self.frames[key] = self.frames.get(key, 0) + 1
        for spec in self.plan.specs:
            if spec.kind not in FRAME_KINDS or spec.door != door or spec.command != name:
                continue
            if spec.nth is not None and spec.nth != n:
                continue
            if spec.percent is not None and self.rng.random() * 100 >= spec.percent:
                continue
            lo, hi = spec.delay
            delay = lo if lo == hi else self.rng.uniform(lo, hi)
            offset = spec.offset
            if spec.kind in (FaultKind.TRUNCATE, FaultKind.SPLIT):
                if offset is None:
                    offset = self.rng.randint(1, max(1, size - 1))
                offset = min(offset, max(1, size - 1))
            fault = Fault(spec, delay, offset or 0)
            self._log(spec, f"{door}.{name}", n, bytes=size,
                      **({"delay_s": round(delay, 3)} if spec.kind is FaultKind.DELAY else {}),
                      **({"offset": fault.offset} if offset is not None else {}))
            return fault
        return None

    def link(self, host: str) -> list[Fault]:
        """The faults of the next connection to `host`."""
        n = self.connections[host] = self.connections.get(host, 0) + 1
        return [Fault(s, n=n) for s in self.plan.specs if s.kind in LINK_KINDS
                and s.host == host and (s.nth is None or s.nth == n)]

    def link_fired(self, fault: Fault, host: str) -> None:
        """A connection's fault happened (for `applied`: the connection's own number, not
        how many were opened since)."""
        self._log(fault.spec, host, fault.n)

    def to_dict(self) -> dict:
        return {"plan": self.plan.describe(), "seed": self.plan.seed,
                "applied": list(self.applied)}


class FrameSender:
    """One direction of one connection, whole frames at a time, through the faults.

    `send(bytes)` writes to the connection, `cut()` ends it after a truncated frame. A
    dropped frame is not sent; a delayed one is sent later, on the clock, between whole
    frames, and what follows it is not held up; a duplicated one is sent twice; a split one
    goes as two writes a moment apart (`SPLIT_GAP_WALL_S`), what follows it after its second
    part; a truncated one as its first bytes, and then the connection ends.
    """

    def __init__(self, faults: Faults, door: str, send: Callable[[bytes], None],
                 cut: Callable[[], None], clock: Clock) -> None:
        self.faults = faults
        self.door = door
        self._send = send
        self._cut = cut
        self.clock = clock
        self._held: Optional[list] = None      # while a split frame's second part waits
        self._timers: list[Timer] = []
        self.closed = False

    def frame(self, name: str, data: bytes) -> None:
        fault = self.faults.frame(self.door, name, len(data))
        if fault is None:
            self._out(data)
            return
        kind = fault.kind
        if kind is FaultKind.DROP:
            return
        if kind is FaultKind.DELAY:
            self._timers.append(self.clock.call_later(fault.delay, self._out, data))
        elif kind is FaultKind.DUP:
            self._out(data)
            self._out(data)
        elif kind is FaultKind.TRUNCATE:
            self._out(data[:fault.offset])
            self._out(None)
        elif kind is FaultKind.SPLIT:
            self._out(data[:fault.offset])
            self._out(_SPLIT)
            self._out(data[fault.offset:])

    def _out(self, item) -> None:
        if self.closed:
            return
        if self._held is not None:
            self._held.append(item)
            return
        if item is None:
            self.close()
            self._cut()
        elif item is _SPLIT:
            self._held = []
            asyncio.get_running_loop().call_later(SPLIT_GAP_WALL_S, self._release)
        else:
            self._send(item)

    def _release(self) -> None:
        held, self._held = self._held or [], None
        for item in held:
            self._out(item)

    def close(self) -> None:
        """Nothing more goes out (the connection ended): delayed frames are forgotten."""
        self.closed = True
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self._held = None


_SPLIT = object()      # in a FrameSender's stream: the pause between a split frame's parts
