"""Expectations over the events of a capture, in protocol time.

`CaptureView` wraps an `Analysis` and answers the questions a test author asks: the first
event of a kind, events in order across hosts, counts, intervals (wall time multiplied back
by the capture's recorded time scale), and whether a secret ever crossed the wire in clear.
Each `expect_*` raises `ExpectationFailed` with a readable account of what was seen instead;
a spec that could never match (a misspelled kind, field or command) raises `SpecError`.
"""

from __future__ import annotations

import difflib
import re
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from testbed.capture import events as ev
from testbed.capture.events import Event
from testbed.wire.choices import unknown
from testbed.wire.commands import BY_CGI, BY_NAME, Door

Matcher = Union[str, dict, Callable[[Event], bool]]


class ExpectationFailed(AssertionError):
    pass


@dataclass
class Verdict:
    """One checked statement: ok True/False, or None when it cannot be judged here."""

    id: str
    statement: str
    ok: Optional[bool]
    detail: str = ""
    scope: str = "lab"

    def to_dict(self) -> dict:
        return {"id": self.id, "statement": self.statement, "ok": self.ok,
                "detail": self.detail, "scope": self.scope}


class SpecError(ValueError):
    """A spec that names an event kind, field, command, door or direction that does not
    exist: it could never match, so it is an error (naming the valid ones), not a miss."""


#: what a dict spec may name besides an event's fields
ATTRIBUTES = ("kind", "host", "direction", "door", "command", "flow", "label", "src", "dst",
              "packet")
_ALL_FIELDS = sorted({name for fields in ev.FIELDS.values() for name in fields}
                     - set(ATTRIBUTES))
_COMMAND_NAME = re.compile(r"cmd \d+")     # a frame whose cmd is not in the table


def _kind(value: Any) -> ev.Kind:
    try:
        return ev.Kind(value)
    except ValueError as exc:
        close = difflib.get_close_matches(str(value), BY_NAME, n=1)
        hint = f" (a command? {{'command': {close[0]!r}}})" if close else ""
        raise SpecError(f"{exc}{hint}") from None


def _check(spec: dict) -> None:
    """Raise `SpecError` unless every key and value of a dict spec can occur. A field's
    value None stands for "absent" and is always allowed."""
    kind = _kind(spec["kind"]) if "kind" in spec else None
    fields = ev.FIELDS[kind] if kind is not None else None
    for key, value in spec.items():
        if key not in ATTRIBUTES:
            if fields is None and key not in _ALL_FIELDS:
                raise SpecError(str(unknown("event field", key, [*ATTRIBUTES, *_ALL_FIELDS])))
            if fields is not None and key not in fields:
                raise SpecError(str(unknown(f"{kind} field", key,
                                            [*ATTRIBUTES, *fields])))
            want = fields[key] if fields is not None else None
            if want is not None and value is not None and (
                    not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
                raise SpecError(f"{kind} field {key!r} is {want.__name__}, not {value!r}")
        elif key in ("host", "label") and not isinstance(value, str) or \
                key in ("flow", "packet") and value is not None and (
                    not isinstance(value, int) or isinstance(value, bool)):
            raise SpecError(f"{key!r} is {'int' if key in ('flow', 'packet') else 'str'}, "
                            f"not {value!r}")
        elif key in ("src", "dst") and not (
                isinstance(value, str) or isinstance(value, tuple) and len(value) == 2):
            raise SpecError(f"{key!r} is an address, 'address:port' or (address, port), "
                            f"not {value!r}")
        if value is None:
            continue
        try:
            if key == "direction" and value not in ev.DIRECTIONS:
                raise unknown("direction", value, ev.DIRECTIONS)
            elif key == "door":
                Door(value)
            elif key == "command" and value not in BY_NAME:
                raise unknown("command", value, BY_NAME)
            elif key == "cgi" and value not in BY_CGI:
                raise unknown("cgi", value, BY_CGI)
            elif key == "name" and isinstance(value, str):
                _check_name(kind, value)
        except ValueError as exc:
            raise SpecError(str(exc)) from None


def _check_name(kind: Optional[ev.Kind], value: str) -> None:
    """A frame's or CGI message's `name` is a command's; a DNS event's is a host name."""
    if kind in (ev.DNS_QUERY, ev.DNS_ANSWER) or value in BY_NAME:
        return
    if kind is None and "." in value:         # may be a DNS name: give the kind to be sure
        return
    if kind == ev.FRAME and _COMMAND_NAME.fullmatch(value):
        return
    exc = unknown("command name", value, BY_NAME)
    if kind is None:
        exc = ValueError(f"{exc} (a DNS name has a dot; give the kind to match one without)")
    raise exc


def _at(endpoint: tuple, want) -> bool:
    """An event's (address, port) against a spec's address, "address:port" or tuple."""
    if isinstance(want, tuple):
        return tuple(endpoint) == want
    if ":" in want:
        return f"{endpoint[0]}:{endpoint[1]}" == want
    return endpoint[0] == want


def match(spec: Matcher) -> Callable[[Event], bool]:
    """A predicate from a spec: a callable; a kind name; a `label` substring with `~`
    (`"~POST /cgi-bin/micromsg-bin/newsync"`); or a dict of `kind`, `host`, `direction`,
    `door`, `command` (a command name), `flow`, `packet` (its number in the capture), `src`
    and `dst` (an address, "address:port" or (address, port)), `label` (substring) and
    field values (exact).

    A kind, field, command, cgi, door or direction that no event can have raises
    `SpecError`, which names the valid ones (`ev.Kind`, `ev.FIELDS`, the command table)."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        if spec.startswith("~"):
            needle = spec[1:]
            return lambda e: needle in e.label()
        kind = _kind(spec)
        return lambda e: e.kind == kind
    if not isinstance(spec, dict):
        raise SpecError(f"a spec is a kind name, '~label', a dict or a callable, not {spec!r}")
    _check(spec)
    want = dict(spec)

    def pred(e: Event) -> bool:
        for k, v in want.items():
            if k == "kind":
                if e.kind != v:
                    return False
            elif k == "host":
                if e.host != v:
                    return False
            elif k == "direction":
                if e.direction != v:
                    return False
            elif k == "label":
                if v not in e.label():
                    return False
            elif k == "door":
                if e.door != v:
                    return False
            elif k == "command":
                if e.command is None or e.command.name != v:
                    return False
            elif k == "flow":
                if e.flow != v:
                    return False
            elif k == "packet":
                if e.index != v:
                    return False
            elif k in ("src", "dst"):
                if not _at(e.src if k == "src" else e.dst, v):
                    return False
            elif e.fields.get(k) != v:
                return False
        return True
    return pred


class CaptureView:
    """Questions over one analysed capture."""

    def __init__(self, analysis) -> None:
        self.analysis = analysis
        self.events: list[Event] = analysis.events
        self.scale = analysis.time_scale

    # -------------------------------------------------------------- queries
    def select(self, spec: Matcher, since: Optional[float] = None) -> list[Event]:
        """Every event the spec matches (from capture time `since`, if given), in order."""
        pred = match(spec)
        return [e for e in self.events if pred(e) and (since is None or e.ts >= since)]

    def first(self, spec: Matcher) -> Optional[Event]:
        """The first event the spec matches, or None."""
        pred = match(spec)
        return next((e for e in self.events if pred(e)), None)

    def count(self, spec: Matcher) -> int:
        """How many events the spec matches."""
        return len(self.select(spec))

    def flows(self, **want: Any) -> list[dict]:
        """The analysis's TCP flow rows (`testbed analyze --json`'s `flows`) whose keys
        equal every `want`: `flows(host="long.weixin.qq.com", kind="long")`."""
        return [f for f in self.analysis.flows if all(f.get(k) == v for k, v in want.items())]

    def protocol_gaps(self, spec: Matcher) -> list[float]:
        """The gaps between consecutive matching events, in protocol seconds."""
        ts = [e.ts for e in self.select(spec)]
        return [(b - a) * self.scale for a, b in zip(ts, ts[1:])]

    def heartbeat_interval(self, host: Optional[str] = None) -> Optional[float]:
        """Median gap between NOOP requests on the long link, in protocol seconds (per flow,
        so a reconnect does not count as a gap)."""
        gaps = []
        by_flow: dict[int, list[float]] = {}
        for e in self.select({"kind": ev.FRAME, "noop": True, "reply": False,
                              "direction": "c2s"}):
            if host is None or e.host == host:
                by_flow.setdefault(e.flow, []).append(e.ts)
        for ts in by_flow.values():
            gaps += [(b - a) * self.scale for a, b in zip(ts, ts[1:])]
        return statistics.median(gaps) if gaps else None

    def in_clear(self, needle: bytes) -> list[dict]:
        """Flows whose bytes carried `needle` readable (needs the analysis to have been
        made with that needle)."""
        return self.analysis.needles_seen.get(needle.decode("utf-8", "replace"), [])

    # -------------------------------------------------------------- expectations
    def expect_sequence(self, *specs: Matcher, since: Optional[float] = None) -> list[Event]:
        """Each spec matched by an event after the previous one's (across hosts)."""
        found: list[Event] = []
        preds = [match(s) for s in specs]
        i = 0
        for e in self.events:
            if since is not None and e.ts < since:
                continue
            if i < len(preds) and preds[i](e):
                found.append(e)
                i += 1
        if i < len(preds):
            seen = ", ".join(f"{e.label()}@{e.host or e.dst[0]}" for e in found) or "nothing"
            raise ExpectationFailed(f"sequence stopped at step {i + 1} ({specs[i]!r}); "
                                    f"matched so far: {seen}")
        return found

    def expect_count(self, spec: Matcher, *, at_least: int = 1,
                     at_most: Optional[int] = None) -> int:
        """The number of matching events; `ExpectationFailed` unless it is within
        `at_least`..`at_most` (no upper bound when None)."""
        n = self.count(spec)
        if n < at_least or (at_most is not None and n > at_most):
            raise ExpectationFailed(f"{spec!r}: {n} events, expected "
                                    f"{at_least}..{'' if at_most is None else at_most}")
        return n

    def expect_interval(self, spec: Matcher, seconds: float, *, tolerance: float = 0.1,
                        at_least: int = 2) -> list[float]:
        """The protocol-second gaps between matching events; `ExpectationFailed` unless
        there are `at_least` of them, each within `tolerance` (a fraction) of `seconds`."""
        gaps = self.protocol_gaps(spec)
        if len(gaps) < at_least:
            raise ExpectationFailed(f"{spec!r}: {len(gaps)} intervals, expected >= {at_least}")
        bad = [g for g in gaps if abs(g - seconds) > tolerance * seconds]
        if bad:
            raise ExpectationFailed(f"{spec!r}: intervals {[round(g, 1) for g in bad]} s are "
                                    f"not {seconds} s ± {tolerance:.0%}")
        return gaps

    def expect_heartbeat(self, seconds: float, tolerance: float = 0.1) -> float:
        """The median NOOP interval (`heartbeat_interval`); `ExpectationFailed` unless it is
        within `tolerance` (a fraction) of `seconds`."""
        hb = self.heartbeat_interval()
        if hb is None or abs(hb - seconds) > tolerance * seconds:
            raise ExpectationFailed(f"heartbeat interval {hb} s, expected {seconds} s "
                                    f"± {tolerance:.0%}")
        return hb

    def expect_never_in_clear(self, needle: bytes) -> None:
        """`ExpectationFailed` if `needle` crossed the wire readable (the capture must have
        been analysed with it: `recorder.capture(needles=[b"..."])`)."""
        hits = self.in_clear(needle)
        if hits:
            raise ExpectationFailed(f"{needle!r} crossed the wire in clear: {hits}")


def verdicts_ok(verdicts: Iterable[Verdict]) -> bool:
    return all(v.ok is not False for v in verdicts)
