"""Expectations over the events of a capture, in protocol time.

`CaptureView` wraps an `Analysis` and answers the questions a test author asks: the first
event of a kind, events in order across hosts, counts, intervals (wall time multiplied back
by the capture's recorded time scale), and whether a secret ever crossed the wire in clear.
Each `expect_*` raises `ExpectationFailed` with a readable account of what was seen instead.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from testbed.capture import events as ev
from testbed.capture.events import Event

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


def match(spec: Matcher) -> Callable[[Event], bool]:
    """A predicate from a spec: a callable; a kind name; a `label` substring with `~`
    (`"~POST /cgi-bin/micromsg-bin/newsync"`); or a dict of `kind`, `host`, `direction`,
    `name`, `label` (substring) and field values (exact)."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        if spec.startswith("~"):
            needle = spec[1:]
            return lambda e: needle in e.label()
        return lambda e: e.kind == spec
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
        pred = match(spec)
        return [e for e in self.events if pred(e) and (since is None or e.ts >= since)]

    def first(self, spec: Matcher) -> Optional[Event]:
        pred = match(spec)
        return next((e for e in self.events if pred(e)), None)

    def count(self, spec: Matcher) -> int:
        return len(self.select(spec))

    def flows(self, **want: Any) -> list[dict]:
        return [f for f in self.analysis.flows if all(f.get(k) == v for k, v in want.items())]

    def protocol_gaps(self, spec: Matcher) -> list[float]:
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
        n = self.count(spec)
        if n < at_least or (at_most is not None and n > at_most):
            raise ExpectationFailed(f"{spec!r}: {n} events, expected "
                                    f"{at_least}..{'' if at_most is None else at_most}")
        return n

    def expect_interval(self, spec: Matcher, seconds: float, *, tolerance: float = 0.1,
                        at_least: int = 2) -> list[float]:
        gaps = self.protocol_gaps(spec)
        if len(gaps) < at_least:
            raise ExpectationFailed(f"{spec!r}: {len(gaps)} intervals, expected >= {at_least}")
        bad = [g for g in gaps if abs(g - seconds) > tolerance * seconds]
        if bad:
            raise ExpectationFailed(f"{spec!r}: intervals {[round(g, 1) for g in bad]} s are "
                                    f"not {seconds} s ± {tolerance:.0%}")
        return gaps

    def expect_heartbeat(self, seconds: float, tolerance: float = 0.1) -> float:
        hb = self.heartbeat_interval()
        if hb is None or abs(hb - seconds) > tolerance * seconds:
            raise ExpectationFailed(f"heartbeat interval {hb} s, expected {seconds} s "
                                    f"± {tolerance:.0%}")
        return hb

    def expect_never_in_clear(self, needle: bytes) -> None:
        hits = self.in_clear(needle)
        if hits:
            raise ExpectationFailed(f"{needle!r} crossed the wire in clear: {hits}")


def verdicts_ok(verdicts: Iterable[Verdict]) -> bool:
    return all(v.ok is not False for v in verdicts)
