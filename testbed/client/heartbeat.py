"""Heartbeat policies: data (a spec string such as `fixed:300` or `mars`) plus small strategy
objects that say how long to wait before the next NOOP and learn from its outcome.

All times are protocol seconds; the phone converts them with the lab clock.
"""

from __future__ import annotations

from dataclasses import dataclass


class HeartbeatPolicy:
    """Base: `interval()` is the idle time before the next NOOP; the phone reports whether a
    NOOP sent after that interval was answered within `noop_timeout_s`."""

    name = "policy"
    noop_timeout_s = 20.0

    def interval(self) -> float:
        raise NotImplementedError

    def on_success(self, interval: float) -> None:
        """A NOOP sent after `interval` idle seconds was answered."""

    def on_failure(self, interval: float) -> None:
        """The link died after `interval` idle seconds (NOOP unanswered)."""

    def describe(self) -> str:
        return self.name


class FixedHeartbeat(HeartbeatPolicy):
    """The same interval whatever happens: the 2013 Android client's 300 s, GCM's 1680 s."""

    def __init__(self, seconds: float, noop_timeout_s: float = 20.0) -> None:
        if not seconds > 0:
            raise ValueError(f"heartbeat interval must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.noop_timeout_s = noop_timeout_s
        self.name = f"fixed:{seconds:g}"

    def interval(self) -> float:
        return self.seconds


@dataclass(frozen=True)
class MarsParams:
    """Mars smart heartbeat (Tencent's open-source network component), as of today."""

    min_s: float = 210.0        # 3.5 min
    max_s: float = 600.0        # 10 min
    step_s: float = 60.0        # grow by this after a success while probing
    backoff_s: float = 20.0     # settle this far below the best interval that worked
    failures_to_reset: int = 3  # consecutive failures that restart the search from min_s
    noop_timeout_s: float = 20.0


class MarsHeartbeat(HeartbeatPolicy):
    """Probe upward from `min_s` in `step_s` steps while NOOPs are answered; on the first
    failure settle at the best working interval less `backoff_s` and stop probing; after
    `failures_to_reset` failures in a row (the network changed) start over from `min_s`."""

    def __init__(self, params: MarsParams = MarsParams()) -> None:
        self.p = params
        self.noop_timeout_s = params.noop_timeout_s
        self.name = "mars"
        self.current = params.min_s
        self.best_ok = 0.0
        self.probing = True
        self.failures = 0

    def interval(self) -> float:
        return self.current

    def on_success(self, interval: float) -> None:
        self.failures = 0
        self.best_ok = max(self.best_ok, interval)
        if self.probing:
            self.current = min(self.current + self.p.step_s, self.p.max_s)

    def on_failure(self, interval: float) -> None:
        self.failures += 1
        if self.failures >= self.p.failures_to_reset:
            self.current, self.best_ok, self.probing, self.failures = self.p.min_s, 0.0, True, 0
            return
        anchor = self.best_ok if self.best_ok else self.p.min_s
        self.current = max(self.p.min_s, anchor - self.p.backoff_s)
        self.probing = False

    def describe(self) -> str:
        state = "probing" if self.probing else "settled"
        return f"mars ({state} at {self.current:g} s)"


def parse_policy(spec: str, noop_timeout_s: float = 20.0) -> HeartbeatPolicy:
    """`fixed:<seconds>`, `mars`, or `mars:<min>-<max>` (seconds)."""
    kind, _, arg = spec.strip().partition(":")
    if kind == "fixed":
        try:
            return FixedHeartbeat(float(arg), noop_timeout_s)
        except ValueError:
            raise ValueError(f"bad heartbeat policy {spec!r}: fixed:<seconds>, e.g. fixed:300")
    if kind == "mars":
        if not arg:
            return MarsHeartbeat(MarsParams(noop_timeout_s=noop_timeout_s))
        try:
            lo, hi = (float(x) for x in arg.split("-"))
        except ValueError:
            raise ValueError(f"bad heartbeat policy {spec!r}: mars or mars:<min>-<max>")
        if not 0 < lo <= hi:
            raise ValueError(f"bad heartbeat policy {spec!r}: need 0 < min <= max")
        return MarsHeartbeat(MarsParams(min_s=lo, max_s=hi, noop_timeout_s=noop_timeout_s))
    raise ValueError(f"unknown heartbeat policy {spec!r}: use fixed:<seconds> or mars")
