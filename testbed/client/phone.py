"""The emulated phone: a session that stays online the way the 2013 client did.

It logs in over TLS, keeps one long link identified, sends a NOOP whenever the link has been
quiet for the heartbeat policy's interval, answers every NOTIFY with newsync, and when a NOOP
goes unanswered (a carrier NAT forgot the link) or the server closes the link, reconnects with
back-off and syncs so that nothing is missed. All waits are in protocol time on the lab clock.
"""

from __future__ import annotations

import array
import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from testbed.lab.clock import Clock, wake
from testbed.lab.manifest import Manifest
from testbed.wire import Door, Ret, pb
from testbed.wire.commands import MSG_IMAGE

from .heartbeat import HeartbeatPolicy, parse_policy
from .linkobserver import LinkObserver
from .longlink import Connector, LinkClosed, LongLink
from .session import RequestFailed, Session

log = logging.getLogger(__name__)

# Below this many wall seconds a timer is at the mercy of event-loop jitter; timeouts are
# floored here (at k = 2000 the 20 s NOOP timeout becomes 0.05 s = 100 protocol s).
MIN_WALL_TIMEOUT = 0.05
# Requests that carry data (newsync, sends, uploads) get at least this much wall time: their
# timeout only guards against a dead link, and a tight one would fail them under load.
REQUEST_MIN_WALL = 1.0
BACKOFF_S = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
SYNC_RETRY_S = 10.0   # protocol seconds before a failed newsync is tried again
SHORT_SYNC_TRIES = 3  # a newsync over the short link, sent again when its answer is lost
# back-off jitter for phones given no generator of their own: one for all (a Random holds
# 2.5 KB of state, a tenth of an idle phone)
_JITTER = random.Random()


@dataclass
class PhoneMetrics:
    """What one phone did, for scenario summaries and the heartbeat study."""

    heartbeats_sent: int = 0
    heartbeats_answered: int = 0
    silent_deaths: int = 0       # a NOOP went unanswered: the link had died without a word
    links_closed: int = 0        # the server (or a relay) closed the link with FIN/RST
    reconnects: int = 0
    reconnect_attempts: int = 0
    wakeups: int = 0             # timer wake-ups: heartbeat alarms and reconnect timers
    pushes: int = 0              # NOTIFYs received
    syncs: int = 0
    notify_sync_failures: int = 0   # a NOTIFY's newsync failed (owed: tried again later)
    reconnect_failures: int = 0     # a reconnect attempt failed (then backed off)
    tcp_connections: int = 0     # long links opened
    long_bytes: int = 0          # application bytes both ways on closed long links
    long_frames: int = 0
    # idle seconds before each NOOP: 8 bytes each (a list of floats held 32, ~10 KB per
    # phone and protocol day at fixed:270); the heartbeat study reads them all
    intervals: array.array = field(default_factory=lambda: array.array("d"))
    received: dict[int, float] = field(default_factory=dict)  # new_msg_id -> protocol time
    duplicates: int = 0
    messages_sent: int = 0       # texts and media the server stored (retries counted once)


class Phone:
    """One emulated phone for one user. `link_observer` watches its long links on the wire
    (`testbed.client.linkobserver`); `connector`, if given, opens them (`LongLink.connect`)."""

    def __init__(self, manifest: Manifest, username: str, password: str, *,
                 policy: HeartbeatPolicy | str | None = None, clock: Optional[Clock] = None,
                 sync_door: Door | str = Door.LONG, local_addr: Optional[str] = None,
                 on_message: Optional[Callable[[pb.AddMsg, float], None]] = None,
                 rng: Optional[random.Random] = None,
                 link_observer: Optional[LinkObserver] = None,
                 connector: Optional[Connector] = None) -> None:
        sync_door = Door(sync_door)
        if sync_door is Door.TLS:   # the phone syncs in clear or on its long link
            raise ValueError("sync_door is 'long' or 'short'")
        self.manifest = manifest
        self.clock = clock or Clock(manifest.time_scale)
        if policy is None:
            policy = f"fixed:{manifest.heartbeat_s:g}"
        self.policy = parse_policy(policy) if isinstance(policy, str) else policy
        self.session = Session(manifest, username, password, local_addr=local_addr,
                               on_notify=self._on_notify, clock=self.clock,
                               link_observer=link_observer, connector=connector)
        self.sync_door = sync_door
        self.on_message = on_message
        self.metrics = PhoneMetrics()
        self.rng = rng or _JITTER
        self._sync_task: Optional[asyncio.Task] = None
        self._sync_again = False
        self._stopping = False
        self._sync_lock = asyncio.Lock()
        self._sync_owed = False      # a NOTIFY's sync failed: retry it
        self._folded: Optional[LongLink] = None   # the link whose counts are in metrics
        self._reconnecting = False
        self._reconnect_lock = asyncio.Lock()
        self._beat: Optional[asyncio.Future] = None   # the heartbeat's wait, while it waits
        # the callback chain's state while `_beats` runs: its link, the interval it waits
        # out, its timer, the NOOP out (None between beats), the stop and the NOOP timeout
        self._beat_link: Optional[LongLink] = None
        self._beat_interval = 0.0
        self._beat_timer = None
        self._beat_noop: Optional[asyncio.Future] = None
        self._beat_stop: Optional[asyncio.Event] = None
        # where the chain's beats are anchored: when its timer was due, and the link's
        # `bytes_sent` right after its own NOOP went out (None: no NOOP of the chain yet)
        self._beat_at = 0.0
        self._beat_sent_mark: Optional[int] = None
        self._noop_timeout = 0.0
        self.errors: list[BaseException] = []
        self.nearby: Optional[NearbyResult] = None     # the last people_nearby
        self._news = asyncio.Event()     # set (and replaced) when a message or push arrives
        self._pushes_seen = 0            # pushes `wait_for_push` has handed out

    @property
    def username(self) -> str:
        return self.session.username

    @property
    def busy(self) -> bool:
        """A reconnect or a sync is under way (a heartbeat NOOP awaiting its answer is not
        counted). Whoever moves a manual clock waits for this to clear first."""
        return (self._reconnecting or self._sync_lock.locked()
                or (self._sync_task is not None and not self._sync_task.done()))

    def timeout(self, protocol_s: float) -> float:
        """A NOOP timeout or back-off in protocol seconds, floored at MIN_WALL_TIMEOUT of
        wall time on a scaled clock."""
        return self.clock.floor_wall(protocol_s, MIN_WALL_TIMEOUT)

    def request_timeout(self, protocol_s: float) -> float:
        """A data request's timeout in protocol seconds, floored at REQUEST_MIN_WALL."""
        return self.clock.floor_wall(protocol_s, REQUEST_MIN_WALL)

    def long_totals(self) -> tuple[int, int]:
        """(application bytes, frames), both ways, on every long link so far, the live one
        included (closed links are folded into `metrics` when they are dropped)."""
        link = self.session.link
        nbytes, frames = self.metrics.long_bytes, self.metrics.long_frames
        if link is not None and link is not self._folded:
            nbytes += link.bytes_sent + link.bytes_received
            frames += link.frames_sent + link.frames_received
        return nbytes, frames

    # ------------------------------------------------------------------ start and stop
    async def start(self, init_door: str = "short") -> None:
        """Log in over TLS, take the initial sync, open and identify the long link."""
        await self.session.login()
        if init_door == "short":
            await self.session.init()
        await self._connect()
        await self.sync()

    async def stop(self, logout: bool = False) -> None:
        self._stopping = True
        if self._sync_task is not None:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except (asyncio.CancelledError, Exception):
                pass
        if logout:
            await self.session.logout()
        self._account_link()
        await self.session.close()

    # ------------------------------------------------------------------ long link
    async def _connect(self) -> None:
        await self.session.connect_long()
        self.metrics.tcp_connections += 1

    def _account_link(self) -> None:
        """Fold the current link's counts into `metrics`, once per link."""
        link = self.session.link
        if link is not None and link is not self._folded:
            self._folded = link
            self.metrics.long_bytes += link.bytes_sent + link.bytes_received
            self.metrics.long_frames += link.frames_sent + link.frames_received

    async def reconnect(self) -> None:
        """Drop the link and build a new one, backing off between failed attempts. Callers
        that find the link broken at the same time (the heartbeat, a send) share one
        reconnect: whoever comes second finds the new link and returns."""
        stale = self.session.link
        async with self._reconnect_lock:
            link = self.session.link
            if link is not stale and link is not None and link.is_open:
                return
            self._reconnecting = True
            try:
                await self._reconnect()
            finally:
                self._reconnecting = False

    async def _reconnect(self) -> None:
        if self.session.link is not None:
            self.session.link.abort()
            self._account_link()
        attempt = 0
        while not self._stopping:
            self.metrics.reconnect_attempts += 1
            try:
                try:
                    await self._connect()
                except RequestFailed as exc:
                    if exc.ret != Ret.SESSION_INVALID:
                        raise
                    await self.session.login()   # the session is gone: log in again
                    continue
            except (OSError, asyncio.TimeoutError, LinkClosed, RequestFailed) as exc:
                if isinstance(exc, RequestFailed) and not _transient(exc):
                    raise
                if self.session.link is not None:   # connected, not identified: drop it
                    self.session.link.abort()
                    self._account_link()
                log.info("%s: reconnect failed (%r); trying again", self.username, exc)
                self.metrics.reconnect_failures += 1
                await self._back_off(attempt)    # jittered, so phones do not stampede
                attempt += 1
                continue
            self.metrics.reconnects += 1
            try:
                await self.sync()   # catch up on whatever the dead link missed
            except (asyncio.TimeoutError, LinkClosed, ConnectionError, OSError,
                    RequestFailed) as exc:
                log.info("%s: catch-up sync failed (%r); owed", self.username, exc)
                self._sync_owed = True
            return

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the link alive until `stop` is set (or the phone is stopped): the heartbeat
        loop."""
        # The steady beat (wait, NOOP, answer, the next wait) is a chain of callbacks on one
        # future (`_beats`), not this coroutine woken twice per beat: a Task step per wait
        # and per answer was most of the Python a beat cost. The coroutine takes over for
        # whatever is not a plain beat: a reconnect, a failed NOOP, a sync owed, the stop.
        # The stop and each link's closing wake the chain's wait through callbacks set once.
        stopped = asyncio.ensure_future(stop.wait())
        stopped.add_done_callback(self._wake_beat)
        self._beat_stop = stop
        watched: Optional[LongLink] = None
        clock, metrics, policy = self.clock, self.metrics, self.policy
        self._noop_timeout = noop_timeout = self.timeout(policy.noop_timeout_s)
        try:
            while not stop.is_set() and not self._stopping:
                link = self.session.link
                if link is None or not link.is_open:
                    metrics.links_closed += 1
                    await self.reconnect()
                    continue
                if link is not watched:
                    watched = link
                    link.closed.add_done_callback(self._wake_beat)
                if self._sync_owed and (self._sync_task is None or self._sync_task.done()):
                    self._sync_task = asyncio.ensure_future(self._sync_loop())
                interval = policy.interval()
                now = clock.now()
                if link.last_tx + interval > now:
                    # beats by callbacks until one fails (its interval and error come back)
                    # or something calls for this loop (None)
                    failed = await self._beats(link, interval)
                    if failed is None:
                        continue
                    interval, exc = failed
                else:
                    self._beat_sent(link, now)
                    try:
                        await link.noop(timeout=noop_timeout)
                        exc = None
                    except (asyncio.TimeoutError, LinkClosed) as e:
                        exc = e
                    if exc is None:
                        self._beat_ok(interval)
                        continue
                if stop.is_set():
                    break
                if link.is_open:   # no answer on an open link: it died silently
                    metrics.silent_deaths += 1
                    policy.on_failure(interval)
                else:
                    metrics.links_closed += 1
                await self.reconnect()
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            stopped.cancel()

    async def _beats(self, link: LongLink, interval: float):
        """Heartbeat `link` by callbacks (`_beat_due`, `_beat_answered`, `_beat_next`) until
        a NOOP fails: (its interval, its error); None when `run` must look again (the stop,
        the link closed or replaced, a sync owed, a beat already due)."""
        waiter = self._beat = asyncio.get_running_loop().create_future()
        self._beat_link = link
        self._beat_interval = interval
        self._beat_sent_mark = None
        self._beat_at = link.last_tx + interval
        self._beat_timer = self.clock.fine.call_at(self._beat_at, self._beat_due)
        try:
            return await waiter
        finally:
            self._beat = None
            if self._beat_timer is not None:
                self._beat_timer.cancel()
                self._beat_timer = None
            noop, self._beat_noop = self._beat_noop, None
            if noop is not None:   # cancelled while a NOOP was out: forget it, as awaiting it
                noop.remove_done_callback(self._beat_answered)
                noop.cancel()

    def _beat_sent(self, link: LongLink, now: float) -> None:
        """Count a heartbeat going out on `link` at `now` (a wake-up, and its interval)."""
        metrics = self.metrics
        metrics.wakeups += 1
        metrics.heartbeats_sent += 1
        metrics.intervals.append(now - link.last_tx)

    def _beat_ok(self, interval: float) -> None:
        """A heartbeat sent after `interval` was answered: count it, tell the policy."""
        self.metrics.heartbeats_answered += 1
        self.policy.on_success(interval)

    def _beat_end(self, result: Any = None, exc: Optional[BaseException] = None) -> None:
        """Hand the heartbeat back to `run`."""
        waiter = self._beat
        if waiter is None or waiter.done():
            return
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(result)

    def _beat_due(self) -> None:
        """The chain's timer: the link was quiet for the interval, unless it carried
        something meanwhile (then wait again, from its last write)."""
        self._beat_timer = None
        link = self._beat_link
        try:
            if self._beat_stop.is_set() or not link.is_open:
                return self._beat_end()
            now = self.clock.now()
            if link.bytes_sent != self._beat_sent_mark \
                    and link.last_tx + self._beat_interval > now:
                return self._beat_next()   # the link carried something: NAT state is fresh
            self._beat_sent(link, now)
            try:
                noop = link.noop(timeout=self._noop_timeout)
            except LinkClosed as exc:
                return self._beat_end((self._beat_interval, exc))
            self._beat_sent_mark = link.bytes_sent
            self._beat_noop = noop
            noop.add_done_callback(self._beat_answered)
        except Exception as exc:
            self._beat_end(exc=exc)

    def _beat_answered(self, noop: asyncio.Future) -> None:
        self._beat_noop = None
        try:
            exc = noop.exception()
            if exc is not None:
                if isinstance(exc, (asyncio.TimeoutError, LinkClosed)):
                    return self._beat_end((self._beat_interval, exc))
                return self._beat_end(exc=exc)
            self._beat_ok(self._beat_interval)
            self._beat_next()
        except Exception as exc:
            self._beat_end(exc=exc)

    def _beat_next(self) -> None:
        """What the top of `run`'s loop checks, then the next beat's timer, or back to
        `run` for anything else."""
        link = self._beat_link
        if self._beat_stop.is_set() or self._stopping or self.session.link is not link \
                or not link.is_open \
                or (self._sync_owed and (self._sync_task is None or self._sync_task.done())):
            return self._beat_end()
        interval = self.policy.interval()
        # After a beat of the chain's own, with nothing else sent since, the next is due an
        # interval after the last was due, not after it went out: a loop busy for a moment
        # sends every beat due in it late, and timing each phone's next from its late one
        # would keep those phones beating together for the rest of the run, a burst that
        # makes the next moment busy too. The NAT never sees a longer gap this way: the
        # gap is the interval plus this beat's lateness less the last one's.
        if link.bytes_sent == self._beat_sent_mark:
            due = self._beat_at + interval
        else:
            due = link.last_tx + interval
        if due <= self.clock.now():
            return self._beat_end()   # due already: `run` sends it
        self._beat_interval = interval
        self._beat_at = due
        # on the clock's fine wheel: at most a millisecond of wall time late, as uvloop's
        # own timers; the phones of a process whose beats fall in one share a loop timer
        self._beat_timer = self.clock.fine.call_at(due, self._beat_due)

    def _wake_beat(self, *_: object) -> None:
        # the stop or a link's closing; not while a NOOP is out: its outcome comes first
        # (the link's closing fails it), as `run` awaiting it would see
        if self._beat is not None and self._beat_noop is None:
            if self._beat_timer is not None:
                self._beat_timer.cancel()
                self._beat_timer = None
            wake(self._beat)

    # ------------------------------------------------------------------ sync
    def _wake(self) -> None:
        news, self._news = self._news, asyncio.Event()
        news.set()

    async def _wait_until(self, found: Callable[[], Any], timeout: float, what: str):
        """`found()`'s first value that is not None, waiting `timeout` protocol seconds
        (at least REQUEST_MIN_WALL wall seconds) for the arrivals that may change it."""
        # the deadline on the phone's clock: protocol seconds (a wall-clock deadline of the
        # same number waited 100 wall s for 100 protocol s at k = 100)
        deadline = self.clock.now() + self.request_timeout(timeout)
        while True:
            value = found()
            if value is not None:
                return value
            if self.clock.now() >= deadline:
                raise asyncio.TimeoutError(f"{self.username}: no {what} within {timeout:g} "
                                           f"protocol s")
            try:
                await self.clock.wait_for(self._news.wait(), deadline - self.clock.now())
            except asyncio.TimeoutError:
                pass

    async def wait_for_message(self, text: Optional[str] = None, *,
                               sender: Optional[str] = None, msg_type: Optional[int] = None,
                               timeout: float = 60.0) -> pb.AddMsg:
        """The first message this phone has received (by push-then-sync, or any sync) whose
        content is `text`, from `sender`, of `msg_type` (each if given), waiting up to
        `timeout` protocol seconds for it; `asyncio.TimeoutError` (saying what) if none
        came. A message received before the call counts: no race with a fast push."""
        def found():
            for m in self.session.sync_state.messages:
                if (text is None or m.content == text) and (
                        sender is None or m.from_user == sender) and (
                        msg_type is None or m.msg_type == msg_type):
                    return m
            return None
        want = ", ".join(f"{k} {v!r}" for k, v in (("text", text), ("from", sender),
                                                  ("msg_type", msg_type)) if v is not None)
        return await self._wait_until(found, timeout, f"message ({want or 'any'})")

    async def wait_for_push(self, timeout: float = 60.0) -> int:
        """Wait for a NOTIFY this phone has not been handed yet (one arrived since the
        last call counts), up to `timeout` protocol seconds; returns the pushes received so
        far. `asyncio.TimeoutError` if none came."""
        def found():
            return self.metrics.pushes if self.metrics.pushes > self._pushes_seen else None
        n = await self._wait_until(found, timeout, "push (NOTIFY)")
        self._pushes_seen += 1
        return n

    def _on_notify(self, selector: int) -> None:
        self.metrics.pushes += 1
        self._wake()
        if self._stopping:
            return
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_again = True
            return
        self._sync_task = asyncio.ensure_future(self._sync_loop())

    async def _sync_loop(self) -> None:
        self._sync_owed = False
        while True:
            self._sync_again = False
            try:
                await self.sync()
            except (asyncio.TimeoutError, LinkClosed, ConnectionError, OSError,
                    RequestFailed) as exc:
                # owed: retried after a pause (and by the heartbeat loop, after a reconnect
                # if the link died), so a failed sync never leaves a message waiting long
                log.info("%s: sync after NOTIFY failed: %r", self.username, exc)
                self.metrics.notify_sync_failures += 1
                self._sync_owed = True
                self.clock.call_later(self.request_timeout(SYNC_RETRY_S),
                                      self._retry_owed_sync)
                return
            if not self._sync_again:
                return

    def _retry_owed_sync(self) -> None:
        link = self.session.link
        if (self._sync_owed and not self._stopping and link is not None and link.is_open
                and (self._sync_task is None or self._sync_task.done())):
            self._sync_task = asyncio.ensure_future(self._sync_loop())

    async def sync(self) -> list[pb.CmdItem]:
        # one sync at a time: two concurrent syncs from the same key would both get the
        # same items (the server delivers once per key, not once per client)
        async with self._sync_lock:
            return await self._sync_locked()

    async def _sync_locked(self) -> list[pb.CmdItem]:
        before = len(self.session.sync_state.messages)
        for attempt in range(SHORT_SYNC_TRIES):
            try:
                items = await self.session.sync(door=self.sync_door,
                                                timeout=self.request_timeout(60.0))
                break
            except (asyncio.TimeoutError, ConnectionError) as exc:
                # a newsync is idempotent (the same key gets the same items): over the
                # short link, one connection per request, it is simply sent again; a long
                # link's failure is the caller's (it reconnects, which syncs)
                if self.sync_door is Door.LONG or attempt == SHORT_SYNC_TRIES - 1:
                    raise
                log.info("%s: newsync over the short link failed (%r); again",
                         self.username, exc)
        self.metrics.syncs += 1
        now = self.clock.now()
        for msg in self.session.sync_state.messages[before:]:
            if msg.new_msg_id in self.metrics.received:
                self.metrics.duplicates += 1
                continue
            self.metrics.received[msg.new_msg_id] = now
            if self.on_message is not None:
                self.on_message(msg, now)
        self._wake()
        return items

    # ------------------------------------------------------------------ sending
    async def _back_off(self, attempt: int) -> None:
        """Wait before retry `attempt + 1` of a request, as a reconnect does."""
        delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)] * (0.5 + self.rng.random())
        self.metrics.wakeups += 1
        await self.clock.sleep(self.timeout(delay))

    async def send_text(self, to: str, content: str, *, tries: int = 5,
                        door: Door | str = Door.LONG,
                        client_msg_id: Optional[str] = None) -> pb.MicroMsgResponse:
        """Send once, whatever happens to the link or the server: retries (after a broken
        link, a timeout or a server fault) reuse the client_msg_id, so the server stores the
        message once however many of them reach it."""
        door = Door(door)
        cid = client_msg_id or uuid.uuid4().hex
        for attempt in range(tries):
            try:
                sent = await self.session.send_text(to, content, client_msg_id=cid, door=door,
                                                    timeout=self.request_timeout(20.0))
                self.metrics.messages_sent += 1
                return sent
            except (asyncio.TimeoutError, LinkClosed, ConnectionError, RequestFailed) as exc:
                if attempt == tries - 1 or not _transient(exc):
                    raise
                log.info("%s: send failed (%r), retrying with the same id", self.username, exc)
                if door is Door.LONG and not isinstance(exc, RequestFailed):
                    await self.reconnect()    # which backs off if it must
                else:                         # a server in trouble: give it time
                    await self._back_off(attempt)
        raise AssertionError("unreachable")

    async def send_media(self, to: str, data: bytes, msg_type: int = MSG_IMAGE, *,
                         tries: int = 5,
                         client_media_id: Optional[str] = None) -> pb.UploadMediaResponse:
        """An image, voice note or video (`msg_type` 3, 34 or 43), uploaded in chunks; after
        a broken link or a server fault, reconnect and resume where the server is."""
        cid = client_media_id or uuid.uuid4().hex
        pos = 0
        for attempt in range(tries):
            try:
                sent = await self.session.upload(to, data, msg_type=msg_type,
                                                 client_media_id=cid, start_pos=pos,
                                                 timeout=self.request_timeout(20.0))
                self.metrics.messages_sent += 1
                return sent
            except (asyncio.TimeoutError, LinkClosed, ConnectionError, RequestFailed) as exc:
                if attempt == tries - 1 or not _transient(exc):
                    raise
                log.info("%s: upload broke (%r); resuming", self.username, exc)
                pos = 0     # the server answers -100 with where to resume
                if not isinstance(exc, RequestFailed):
                    await self.reconnect()
                else:
                    await self._back_off(attempt)
        raise AssertionError("unreachable")

    async def download(self, msg_id: int, msg_type: int = MSG_IMAGE, *,
                       tries: int = 5) -> bytes:
        """A medium's bytes; after a broken link, reconnect and go on from the bytes
        already here."""
        have = bytearray()
        for attempt in range(tries):
            try:
                return await self.session.download(msg_id, msg_type, into=have,
                                                   timeout=self.request_timeout(20.0))
            except (asyncio.TimeoutError, LinkClosed, ConnectionError) as exc:
                if attempt == tries - 1:
                    raise
                log.info("%s: download broke at %d bytes (%r); resuming", self.username,
                         len(have), exc)
                await self.reconnect()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ friends, nearby, logs
    async def add_friend(self, username: str, *, opcode: int = 1,
                         verify_content: str = "") -> pb.VerifyUserResponse:
        """verifyuser: 1 add at once, 2 send a request, 3 accept a request."""
        return await self.session.cgi("verifyuser", pb.VerifyUserRequest(
            base=self.session.base(), opcode=opcode, username=username,
            verify_content=verify_content))

    async def people_nearby(self, lon: float, lat: float, *, cell: Optional[tuple] = None,
                            fetch_avatars: bool = True) -> "NearbyResult":
        """As the report saw it: ask mapi.mapabc.com where we are, then `lbsfind`, then GET
        the avatars of the people found from wx.qlogo.cn."""
        from .web import WebClient
        from testbed.lab.addressing import MAPABC

        web = WebClient(self.manifest, self.session.resolver, local_addr=self.session.local_addr)
        result = NearbyResult()
        if cell is not None:
            mcc, mnc, lac, cid = cell
            r = await web.get(f"http://{MAPABC}/v3/cell?mcc={mcc}&mnc={mnc}&lac={lac}&cid={cid}")
            result.cell = _json(r)
        r = await web.get(f"http://{MAPABC}/v3/geocode/regeo?location={lon:.6f},{lat:.6f}")
        result.address = _json(r)
        result.lbs = await self.session.cgi("lbsfind", pb.LbsFindRequest(
            base=self.session.base(), opcode=1, longitude=lon, latitude=lat, precision=65,
            gps_source=0))
        if fetch_avatars:
            for contact in result.lbs.contacts:
                resp = await web.get(contact.avatar_url)
                result.avatars[contact.username] = resp.body if resp.status == 200 else b""
        self.nearby = result
        return result

    def view(self) -> dict:
        """What the phone shows its user (`testbed.client.view`): profile, contacts,
        messages, the people nearby it last found and their avatars."""
        from .view import phone_view
        nearby = self.nearby
        return phone_view(self.username, self.session.uin, self.session.sync_state,
                          nearby.lbs if nearby is not None else None,
                          nearby.avatars if nearby is not None else {})

    async def report(self, items: dict[int, str], cgi: str = "statreport") -> int:
        resp = await self.session.cgi(cgi, pb.ReportRequest(
            base=self.session.base(), items=[pb.KV(key=k, value=v) for k, v in items.items()]))
        return resp.accepted


def _transient(exc: BaseException) -> bool:
    """Worth retrying with the same id: anything but an answer that refused the request
    (a server fault, -1, is the server's trouble, not the request's)."""
    return not isinstance(exc, RequestFailed) or exc.ret == Ret.SERVER_FAULT


@dataclass
class NearbyResult:
    cell: Optional[dict] = None
    address: Optional[dict] = None
    lbs: Optional[pb.LbsFindResponse] = None
    avatars: dict[str, bytes] = field(default_factory=dict)


def _json(resp) -> dict:
    import json
    if resp.status != 200:
        raise ConnectionError(f"location service answered HTTP {resp.status}")
    return json.loads(resp.body)
