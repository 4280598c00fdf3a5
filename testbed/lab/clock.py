"""One clock that knows the time scale (PROTOCOL.md section 6), and the timers that run on it.

Protocol seconds run `scale` times faster than wall seconds. Every timer of the lab and the
emulator (heartbeats, NOOP and request timeouts, reconnect back-off, idle timeouts, NAT
expiry) takes its time from a clock and is set on it (`call_at`, `sleep_until`,
`timeout_at`), in protocol seconds, so a day of heartbeats can run in seconds and a test can
swap in a `ManualClock` whose time moves only when the test says so.

A timer on a `Clock` never fires before its protocol time: the event loop may wake a little
early (uvloop rounds its timers to the millisecond), so a timer that does is set again.

`Clock.coarse` is a `TimerWheel` on the clock: timers that may fire a few milliseconds of wall
time late (never early) and share one event-loop timer per such slice of time, for the many
deadlines whose exact instant does not matter (a NAT mapping's idle check, a link's idle
timeout); the exact ones (latency, fault timers) stay on `call_at`. `Clock.fine` is one with
slices of a millisecond, uvloop's own timer resolution, for a phone's heartbeat timer: the
~11,000 beats a wall second of a phone process's 1,500 phones at k = 2000 then share about
one loop timer a millisecond instead of one each. A coarse bucket that comes due runs its
timers only after the loop has read what waits on its sockets (`TimerWheel(after_io=True)`):
uvloop runs due timers before it polls, so after a stall a deadline would otherwise be judged
before the bytes that came in time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Any, Awaitable, Callable, Optional, TypeVar

T = TypeVar("T")


class Timer:
    """A call set on a clock for protocol time `when`; `cancel()` stops it."""

    # small on purpose: the long-link server keeps one per idle connection
    __slots__ = ("when", "_callback", "_args", "_handle", "_clock", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple,
                 clock: "Clock") -> None:
        self.when = when
        self._callback = callback
        self._args = args
        self._handle: Any = None    # the loop's handle, or a coarse timer's bucket
        self._clock = clock
        self.cancelled = False

    def __call__(self) -> None:
        # what the event loop calls: not before `when` (the loop may wake a little early:
        # then it is set again), and not once cancelled; in one method, not a call of the
        # clock's: every heartbeat and request deadline of the lab and phones comes here
        if self.cancelled:
            return
        clock = self._clock
        if clock.now() < self.when:
            clock._arm(self)
            return
        self._handle = None
        self._callback(*self._args)

    def cancel(self) -> None:
        self.cancelled = True
        # what it would have called goes now, not when the loop or a coarse timer's bucket
        # lets go of the timer (a bucket keeps its cancelled timers until its end)
        self._callback = self._args = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = None
        if not self.cancelled:
            self._callback(*self._args)


class Clock:
    """Protocol time = (wall seconds since `origin`) * scale, with timers on the running loop."""

    __slots__ = ("scale", "_wall0", "_epoch0", "coarse", "fine")
    # its time is the wall's: a loop behind it can find a deadline due before it has read
    # what came in time (`TimerWheel(after_io=True)`)
    follows_wall = True

    def __init__(self, scale: float = 1.0, epoch: float | None = None,
                 origin: float | None = None) -> None:
        """`origin`: the `time.monotonic()` value at protocol time 0; pass another clock's
        `origin` (another process on this machine) to share its time line."""
        if not scale > 0:
            raise ValueError(f"time scale must be positive, got {scale!r}")
        self.scale = float(scale)
        self._wall0 = time.monotonic() if origin is None else float(origin)
        self._epoch0 = time.time() if epoch is None else float(epoch)
        self.coarse = TimerWheel(self, after_io=True)
        self.fine = TimerWheel(self, FINE_RESOLUTION_WALL_S)

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

    def floor_wall(self, protocol_seconds: float, min_wall_seconds: float) -> float:
        """`protocol_seconds`, lengthened if needed to last at least `min_wall_seconds` of
        wall time: below a few tens of milliseconds a timeout is at the mercy of event-loop
        jitter. (A manual clock has no wall time: it returns `protocol_seconds`.)"""
        return max(protocol_seconds, min_wall_seconds * self.scale)

    # ------------------------------------------------------------------ timers
    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call `callback(*args)` at protocol time `when` (at once if it has passed)."""
        timer = Timer(when, callback, args, self)
        self._arm(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call `callback(*args)` `delay` protocol seconds from now."""
        return self.call_at(self.now() + delay, callback, *args)

    def _arm(self, timer: Timer) -> None:
        # at the loop's own time of the deadline (`call_at` a monotonic time), not
        # `call_later(delay)`: uvloop adds a delay to the time it read when the iteration
        # began (to the millisecond), so a timer set late in a busy iteration woke that much
        # early and was set again. Both loops' `time()` is CLOCK_MONOTONIC; the delay is
        # taken from `now()`, so a clock whose `now()` is its own (a test's) still works.
        # For this class's own `now()` that is `origin + when / scale`, no clock read at all
        # (every heartbeat and NOOP deadline of the phones and the lab is armed here).
        if type(self).now is _CLOCK_NOW:
            at = self._wall0 + timer.when / self.scale
        else:
            at = time.monotonic() + (timer.when - self.now()) / self.scale
        timer._handle = asyncio.get_running_loop().call_at(at, timer)

    async def sleep_until(self, when: float) -> None:
        """Return at protocol time `when`."""
        while (left := when - self.now()) > 0:
            await asyncio.sleep(left / self.scale)

    async def sleep(self, delay: float) -> None:
        """Return `delay` protocol seconds from now."""
        await self.sleep_until(self.now() + delay)

    def timeout_at(self, when: Optional[float]):
        """`async with clock.timeout_at(t):` raises TimeoutError if the body is still
        running at protocol time `t` (None: never)."""
        if when is None:
            return asyncio.timeout(None)
        loop = asyncio.get_running_loop()
        return asyncio.timeout_at(loop.time() + (when - self.now()) / self.scale)

    def timeout(self, delay: Optional[float]):
        """`async with clock.timeout(d):` as `timeout_at(now + d)`."""
        return self.timeout_at(None if delay is None else self.now() + delay)

    async def wait_for(self, aw: Awaitable[T], timeout: Optional[float]) -> T:
        """`aw`'s result, or TimeoutError after `timeout` protocol seconds (it is cancelled)."""
        async with self.timeout(timeout):
            return await aw


_CLOCK_NOW = Clock.now

# how late a coarse timer may be, in wall seconds: a few loop iterations of a busy lab, well
# under the 7.5 ms a study counts as a stall, and 4 protocol s a bucket at k = 1,000
WHEEL_RESOLUTION_WALL_S = 0.004
# `Clock.fine`'s: what uvloop rounds its own timers to, so a beat is no later than it could be
FINE_RESOLUTION_WALL_S = 0.001


class TimerWheel:
    """Coarse timers on a clock: `call_at` / `call_later` as the clock's, returning the same
    `Timer`, but its deadline is put in a bucket of `width` protocol seconds (the
    `resolution_wall_s` of wall time that is at the clock's scale) and each bucket that holds
    a timer has one timer of its own on the clock, at the bucket's end, that runs the
    bucket's timers in the order they were set. Setting a timer is a dict look-up and an
    append, and cancelling one only counts it off its bucket (the bucket keeps it, and skips
    it at its end; the bucket's own timer is cancelled when none is left in it), so thousands
    of deadlines set again at every heartbeat cost a few event-loop timers per
    `resolution_wall_s`, not one each.

    A coarse timer never fires before its `when` (its bucket ends at or after every deadline
    in it, and the clock's own timer is never early), and on a real clock at most
    `resolution_wall_s` of wall time after it, beyond the event loop's own lateness: at any
    scale, milliseconds of wall time. A manual clock has no wall time: its buckets are exact
    deadlines (width 0), so a test sees a coarse timer fire at its `when`, as `call_at`'s.

    Buckets belong to the running loop: a clock taken to another event loop starts new
    buckets there (a bucket runs its timers where its own clock timer was set).
    """

    __slots__ = ("clock", "width", "after_io", "_buckets", "_loop")

    def __init__(self, clock: Clock, resolution_wall_s: float = WHEEL_RESOLUTION_WALL_S, *,
                 after_io: bool = False) -> None:
        self.clock = clock
        # a manual clock's `floor_wall` gives no wall time a duration: width 0, exact buckets
        self.width = clock.floor_wall(0.0, resolution_wall_s)
        # run a bucket's timers only once the loop has read what is waiting on its sockets
        # (on a real clock): see `_Bucket._due`
        self.after_io = after_io and clock.follows_wall
        self._buckets: dict[float, _Bucket] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call `callback(*args)` at protocol time `when` or a little later (see the class)."""
        timer = Timer(when, callback, args, self.clock)
        # (no loop is running when a test sets a manual clock's timer from plain code)
        loop = asyncio._get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._buckets = {}
        width = self.width
        if width:
            end = math.ceil(when / width) * width
            if end < when:      # the product rounded below `when`: the next bucket's end
                end = (math.ceil(when / width) + 1) * width
        else:
            end = when
        bucket = self._buckets.get(end)
        if bucket is None:
            bucket = self._buckets[end] = _Bucket(self, end)
        bucket.timers.append(timer)
        bucket.live += 1
        timer._handle = bucket    # what `Timer.cancel` tells
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call `callback(*args)` `delay` protocol seconds from now, or a little later."""
        return self.call_at(self.clock.now() + delay, callback, *args)

    def pending(self) -> int:
        """How many coarse timers are set (not cancelled, not fired)."""
        return sum(b.live for b in self._buckets.values())


class _Bucket:
    """The timers of one slice of a `TimerWheel`, run by one clock timer at its `end`; a
    member timer's `_handle`, so that cancelling the timer counts it off here."""

    __slots__ = ("wheel", "end", "timers", "live", "timer")

    def __init__(self, wheel: TimerWheel, end: float) -> None:
        self.wheel = wheel
        self.end = end
        self.timers: list[Timer] = []
        self.live = 0
        self.timer = wheel.clock.call_at(end, self._due if wheel.after_io else self._fire)

    def cancel(self) -> None:
        # a member timer was cancelled (Timer.cancel) before the bucket's end: the last one
        # takes the bucket away
        if self.timer is None:
            return              # cancelled by a timer the bucket runs before it: skipped
        self.live -= 1
        if not self.live:
            self.timer.cancel()
            buckets = self.wheel._buckets
            if buckets.get(self.end) is self:
                del buckets[self.end]

    def _due(self) -> None:
        # A deadline that says "nothing came in time" (a phone's NOOP or request deadline, a
        # link's idle timeout) must not be decided before the bytes that did come in time
        # are read. uvloop runs its due timers before it polls its sockets, so after a stall
        # in a read (a busy loop, a process waiting for a core) a reply that arrived on time
        # still waited in the kernel when its deadline fired, and a live link was taken for
        # dead: a phone aborted a link whose answer was there, and each false death made a
        # reconnect that loaded the loops more. Two `call_soon` rounds put the bucket after
        # one poll of the sockets (uvloop runs the callbacks ready before a poll and those
        # they add after it; asyncio's own loop polls between rounds): microseconds when the
        # loop is idle, what was waiting when it is behind. (The NAT's idle check gains
        # nothing: it judges a NOOP by when its loop reads it, `mocks/nat.py`.) On the loop
        # the bucket's clock timer was set on, which is running this.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._after_poll, loop)

    def _after_poll(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon(self._fire)

    def _fire(self) -> None:
        # out of the wheel first: a timer set meanwhile for this slice makes a new bucket
        buckets = self.wheel._buckets
        if buckets.get(self.end) is self:
            del buckets[self.end]
        self.timer = None
        self.live = 0
        error = None
        for timer in self.timers:
            try:
                timer._run()
            except Exception as exc:    # noqa: BLE001 - raised below
                # one failing callback must not lose the rest of the bucket (each would have
                # been a loop handle of its own); the first error is raised after them, to
                # the loop's exception handler, or out of a manual clock's `advance`
                if error is None:
                    error = exc
        if error is not None:
            raise error


class ManualClock(Clock):
    """A clock whose time moves only when `advance()` or `advance_to()` is awaited: for
    tests, which then run heartbeats, idle timeouts and NAT expiry without sleeping and
    without depending on how loaded the machine is.

    Advancing fires the due timers in time order, each at its own time (`now()` reads its
    `when` while it runs), and between instants lets the event loop run a few rounds, so a
    task a timer woke can set its next timer before time moves past it. Advancing does not
    wait for I/O: a test awaits what it expects (a reply, a closed socket) before it moves
    time past a timeout that the I/O would have stopped.

    `scale` is only reported (the manifest, a capture's comment): nothing converts a manual
    clock's time to wall time.
    """

    __slots__ = ("_t", "_heap", "_order", "settle_rounds")
    follows_wall = False   # time moves when a test says, never while I/O waits

    def __init__(self, start: float = 0.0, *, scale: float = 1.0,
                 epoch: float | None = None, settle_rounds: int = 8) -> None:
        super().__init__(scale, epoch)
        self._t = float(start)
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.settle_rounds = settle_rounds

    def now(self) -> float:
        return self._t

    def floor_wall(self, protocol_seconds: float, min_wall_seconds: float) -> float:
        return protocol_seconds

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(float(when), callback, args, self)
        if timer.when <= self._t:   # due already: at once, as on a real clock
            timer._handle = asyncio.get_running_loop().call_soon(timer._run)
        else:
            heapq.heappush(self._heap, (timer.when, next(self._order), timer))
        return timer

    def next_timer(self) -> Optional[float]:
        """Protocol time of the earliest timer still set, or None."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def timers(self) -> int:
        """How many timers are set (not cancelled, not fired)."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    async def advance(self, delay: float) -> None:
        """Move time forward by `delay` protocol seconds, firing what falls due."""
        await self.advance_to(self._t + delay)

    async def advance_to(self, when: float) -> None:
        """Move time forward to protocol time `when`, firing what falls due on the way."""
        self._forward(when)
        await self._settle()
        while (due := self.next_timer()) is not None and due <= when:
            self._t = max(self._t, due)
            self._run_due()
            await self._settle()
        self._t = when
        await self._settle()

    async def stall_to(self, when: float) -> None:
        """Move time to `when` as a loop busy until then would: the timers due on the way
        fire at `when`, late, in the order they were due."""
        self._forward(when)
        await self._settle()
        self._t = when
        self._run_due()
        await self._settle()

    def _forward(self, when: float) -> None:
        if when < self._t:
            raise ValueError(f"time does not run backwards: {when} < {self._t}")

    def _run_due(self) -> None:
        """Fire, in time order, every timer due by now. (A timer set meanwhile for a time
        already reached is due at once: `call_at` hands it to the loop, so this ends.)"""
        heap = self._heap
        while heap and heap[0][0] <= self._t:
            heapq.heappop(heap)[2]._run()

    async def _settle(self) -> None:
        for _ in range(self.settle_rounds):
            await asyncio.sleep(0)

    async def sleep_until(self, when: float) -> None:
        if when <= self._t:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        timer = self.call_at(when, wake, fut)
        try:
            await fut
        finally:
            timer.cancel()

    def timeout_at(self, when: Optional[float]):
        return _ManualTimeout(self, when)


def wake(waiter: asyncio.Future, *_: object) -> None:
    """Resolve `waiter` (to None) unless it is done already: the callback of a clock timer
    (`call_at(when, wake, waiter)`) or of another future's end (`add_done_callback(
    functools.partial(wake, waiter))`, whose argument, that future, it ignores), so that one
    future waits for whichever comes first."""
    if not waiter.done():
        waiter.set_result(None)


class _ManualTimeout:
    """`asyncio.timeout` whose deadline is a manual clock's time: the clock's timer moves the
    asyncio timeout to "now", which cancels the body and raises TimeoutError on exit."""

    __slots__ = ("_clock", "_when", "_cm", "_timer")

    def __init__(self, clock: ManualClock, when: Optional[float]) -> None:
        self._clock = clock
        self._when = when
        self._cm = asyncio.timeout(None)
        self._timer: Optional[Timer] = None

    async def __aenter__(self) -> "_ManualTimeout":
        await self._cm.__aenter__()
        if self._when is not None:
            self._timer = self._clock.call_at(self._when, self._expire)
        return self

    def _expire(self) -> None:
        if self._cm.expired():
            return
        self._cm.reschedule(asyncio.get_running_loop().time())

    async def __aexit__(self, *exc_info) -> Optional[bool]:
        if self._timer is not None:
            self._timer.cancel()
        return await self._cm.__aexit__(*exc_info)
