"""One clock that knows the time scale (PROTOCOL.md section 6).

Protocol seconds run `scale` times faster than wall seconds. Every timer (heartbeats, idle
timeouts, NAT expiry) reads `now()` from here and converts its delays with `to_wall()`, so a
day of heartbeats can run in seconds.
"""

from __future__ import annotations

import time


class Clock:
    """Protocol time = start + (wall elapsed) * scale."""

    __slots__ = ("scale", "_wall0", "_epoch0")

    def __init__(self, scale: float = 1.0, epoch: float | None = None,
                 origin: float | None = None) -> None:
        """`origin`: the `time.monotonic()` value at protocol time 0; pass another clock's
        `origin` (another process on this machine) to share its time line."""
        if not scale > 0:
            raise ValueError(f"time scale must be positive, got {scale!r}")
        self.scale = float(scale)
        self._wall0 = time.monotonic() if origin is None else float(origin)
        self._epoch0 = time.time() if epoch is None else float(epoch)

    @property
    def origin(self) -> float:
        return self._wall0

    def now(self) -> float:
        """Protocol seconds since the clock started (monotonic)."""
        return (time.monotonic() - self._wall0) * self.scale

    def epoch(self) -> float:
        """Protocol time as a Unix timestamp, for `create_time` fields."""
        return self._epoch0 + self.now()

    def to_wall(self, protocol_seconds: float) -> float:
        """Wall seconds that `protocol_seconds` of protocol time take."""
        return protocol_seconds / self.scale

    def to_protocol(self, wall_seconds: float) -> float:
        return wall_seconds * self.scale
