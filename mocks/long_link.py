"""The long link (PROTOCOL.md section 2): an asyncio `Protocol` per connection.

`asyncio.Protocol` rather than streams: measured ~3x less memory per idle connection. NOOP
is answered inline from `data_received`; every other request goes through the command table
to `Service.handle`, one at a time per link so replies keep the order of requests.

A link is closed when it breaks the framing, sends nothing for the idle timeout, or leaves a
frame unfinished past the frame deadline (both on the lab clock, by one of its coarse timers:
never early, at most a few milliseconds of wall time late); a close that must flush
replies to a peer that does not read them becomes an abort after `CLOSE_FLUSH_WALL_S`, so no
peer holds a socket by not reading. An address over the per-address cap is closed at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Optional

from testbed.lab.clock import Clock, Timer
from testbed.lab.profiles import Limits
from testbed.wire import (DEFAULT_MAX_PACKET_LEN, ConnectionState, Door, Hangup,
                          RemoteProtocolError, Ret, ServerConnection, ServiceError, error_body)
from testbed.wire.commands import NOOP_CMD
from testbed.wire.connection import FrameTimeout, IdleTimeout, Request
from testbed.wire.frames import HEADER, reply_cmd

from .limits import AddressCap, peer_address
from .memory_transport import LocalServers
from .service import RequestContext, Service
from .state import ALL_SELECTOR, EventsMissed, PushEvent, SessionEnded, new_link_id
from .stats import count_request

log = logging.getLogger(__name__)

# the first 12 bytes of a valid body-less NOOP (packet_len 16, header_len 16, version 1,
# cmd 6) and of its reply (cmd 1000000006); the seq follows in the last 4
_NOOP_HEAD = HEADER.pack(16, 16, 1, NOOP_CMD, 0)[:12]
_NOOP_REPLY_HEAD = HEADER.pack(16, 16, 1, reply_cmd(NOOP_CMD), 0)[:12]
# per link, reading pauses beyond either: requests waiting for the service, and their bodies'
# bytes (256 bodies of up to max_packet_len would be 256 MiB held for one link)
MAX_QUEUED_REQUESTS = 256
MAX_QUEUED_BYTES = 4 << 20
# a frame deadline lasts at least this much wall time, whatever the time scale: below it a
# deadline is at the mercy of event-loop stalls (a busy machine's tens of milliseconds)
FRAME_TIMEOUT_MIN_WALL_S = 1.0
CLOSE_FLUSH_WALL_S = 2.0   # a closing link's unsent replies get this long, then it aborts


class LongLinkProtocol(asyncio.Protocol):
    """The asyncio adapter of one link: bytes to `ServerConnection`, its requests to the
    service, its replies and pushes to the socket, its idle deadline to the lab clock."""

    __slots__ = ("server", "transport", "conn", "session", "queue", "queued_bytes", "worker",
                 "idle_timer", "peer", "closed", "link_id", "admitted", "_reading_paused",
                 "_write_paused")

    def __init__(self, server: "LongLinkServer") -> None:
        self.server = server
        self.transport: Optional[asyncio.Transport] = None
        self.conn = ServerConnection(max_packet_len=server.max_packet_len,
                                     idle_timeout=server.idle_timeout_s,
                                     frame_timeout=server.frame_timeout)
        self.session = None
        self.queue: Optional[collections.deque] = None
        self.queued_bytes = 0   # the bodies' bytes in `queue`
        self.worker: Optional[asyncio.Task] = None
        self.idle_timer: Optional[Timer] = None
        self.peer = None
        self.closed = False
        self.link_id: str = new_link_id()   # what events name this link by
        self.admitted = False   # counted by the server's per-address cap
        self._reading_paused = False
        self._write_paused = False

    # -- asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        srv = self.server
        srv.connections_total += 1
        if not srv.address_cap.admit(peer_address(self.peer)):
            self.conn.close()
            transport.abort()   # over the cap: nothing read, nothing held
            return
        self.admitted = True
        srv.links.add(self)
        self.conn.last_rx = srv.clock.now()
        self._arm_idle()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.conn.close()
        if self.admitted:
            self.admitted = False
            self.server.address_cap.release(peer_address(self.peer))
        self.server.forget(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def pause_writing(self) -> None:
        # a peer that does not read its replies stops us reading its requests
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._set_reading()

    def data_received(self, data: bytes) -> None:
        srv = self.server
        now = srv.clock.now()
        srv.bytes_in += len(data)
        conn = self.conn
        out: list[bytes] = []
        while data:
            if conn.at_frame_boundary:
                # Fast path for heartbeats: answer a leading run of body-less NOOPs straight
                # from the bytes, without building frames or events (about twice the bare
                # echo's speed instead of half; bench/bench_long_link.py). `data` starts on
                # a frame here; a header that is not exactly a valid empty NOOP ends the
                # run, and everything from it on goes to the connection, which checks it as
                # the contract says.
                pos, end = 0, len(data)
                while end - pos >= 16 and data.startswith(_NOOP_HEAD, pos):
                    pos += 16
                if pos:
                    conn.noops_answered(pos >> 4, now)
                    srv.frames_in += pos >> 4
                    # In a run of such frames the 12-byte head occurs only at frame starts
                    # (no shift of it fits over its own fixed bytes), so one replace turns
                    # the run into its replies: same headers, cmd + 1000000000, same seqs.
                    run = data if pos == end else data[:pos]
                    out.append(run.replace(_NOOP_HEAD, _NOOP_REPLY_HEAD))
                    if pos == end:
                        break
                    data = data[pos:]
                chunk, data = data, b""
            else:
                # A frame begun in an earlier read: the connection gets just the bytes that
                # finish it (or its header), so what follows starts on a frame boundary and
                # its NOOPs take the fast path.
                need = conn.bytes_needed
                if need < len(data):
                    chunk, data = data[:need], data[need:]
                else:
                    chunk, data = data, b""
            if not self._feed(chunk, now, out):
                self._start_work()
                return
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.queue:
            self._start_work()   # after the replies above: they answer earlier frames
        if conn.frame_started is not None:
            # a frame was begun: its deadline may come before the timer set for idleness
            timer = self.idle_timer
            if timer is None or conn.get_timer() < timer.when:
                self._rearm()

    def _feed(self, chunk: bytes, now: float, out: list[bytes]) -> bool:
        """Bytes to the connection: its own replies (NOOPs, errors) join `out`, its requests
        go to the worker. False after a violation (the replies before it are written)."""
        conn = self.conn
        before = conn.frames_received
        try:
            events = conn.receive_data(chunk, now)
        except RemoteProtocolError as exc:
            error = exc
        else:
            self.server.frames_in += conn.frames_received - before
            answered = conn.data_to_send()   # in request order
            if answered:
                out.append(answered)
            for ev in events:
                if type(ev) is Request:
                    self._request(ev)
            error = conn.error
            if error is None:
                return True
        if out:   # the frames before the bad header are answered
            self.transport.write(b"".join(out))
        self.violation(error)
        return False

    # -- requests
    def violation(self, exc: Exception) -> None:
        """Close this link at once and send nothing more; other links are untouched."""
        self.server.violations += 1
        log.info("long link %s: protocol violation: %s", self.peer, exc)
        self.close_bounded()

    def _request(self, req: Request) -> None:
        """Queue a request for the worker (`data_received` starts it once the replies it
        wrote itself are out)."""
        if self.queue is None:
            self.queue = collections.deque()
        self.queue.append(req)
        self.queued_bytes += req.size
        if self._backlogged:
            self._set_reading()

    def _start_work(self) -> None:
        """Answer the queued requests, unless a worker already does. On a store that never
        waits (`Store.waits`: the in-memory one) at once, in this callback, with no Task:
        each reconnect's IDENTIFY and newsync made a Task of its own, tens of thousands in
        the heartbeat study. Should the service wait all the same, a Task takes the work on
        from that wait. On any other store a Task from the start (its calls time out with
        `asyncio.timeout`, which needs one)."""
        worker = self.worker
        if worker is not None and not worker.done():
            return
        self.worker = None
        work = self._work()
        loop = self.server.loop
        if self.server.service.store.waits:
            self.worker = loop.create_task(work)
            return
        try:
            waiting = work.send(None)
        except StopIteration:
            return
        self.worker = loop.create_task(_go_on(work, waiting))

    @property
    def _backlogged(self) -> bool:
        return self.queue is not None and (len(self.queue) >= MAX_QUEUED_REQUESTS
                                           or self.queued_bytes >= MAX_QUEUED_BYTES)

    def _set_reading(self) -> None:
        want_pause = self._write_paused or self._backlogged
        if want_pause != self._reading_paused and self.transport is not None \
                and not self.transport.is_closing():
            self._reading_paused = want_pause
            (self.transport.pause_reading if want_pause else self.transport.resume_reading)()

    @property
    def reading_paused(self) -> bool:
        """Whether this link is not being read (back-pressure: replies the peer does not
        read, or our own backlog of its requests)."""
        return self._reading_paused

    @property
    def _held_up_by_us(self) -> bool:
        """Reading is paused by our own backlog of requests, not by a peer that does not
        read: what it sends is not seen, so its frame deadline does not run."""
        return self._reading_paused and not self._write_paused

    async def _work(self) -> None:
        srv = self.server
        while self.queue and not self.closed:
            req = self.queue.popleft()
            self.queued_bytes -= req.size
            if self._reading_paused:
                self._set_reading()
            ctx = RequestContext(origin=self.link_id, peer=self.peer, door=Door.LONG)
            try:
                await count_request(srv.service.store, Door.LONG, req.command.name, srv.process)
                response = await srv.service.handle(req.command, req.message, ctx)
                body = response.SerializeToString()
            except ServiceError as exc:
                body = error_body(exc.code, exc.message)
            except Hangup:            # no answer at all: the link goes
                self.close(abort=True)
                return
            except Exception as exc:  # a server fault: answer -1, keep the link, report it
                srv.record_error(exc)
                body = error_body(Ret.SERVER_FAULT, "server fault")
            if self.closed or self.conn.state is not ConnectionState.OPEN:
                return   # closed (idle, violation) while the service worked: send nothing
            self._write(self.conn.send_reply(req.command, req.seq, body))
            if ctx.session is not None:
                srv.bind(self, ctx.session)
                if ctx.notify_after:
                    self.push(ctx.notify_after)
        # Drained: let go of the deque and of this finished task (~1.5 KB per idle link with
        # its coroutine and weak-set entry); the next request makes new ones. Nothing awaits
        # between the loop test and here, so no request can slip in.
        self.queue = None
        self.worker = None

    # -- output
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def push(self, selector: int) -> None:
        if self.transport is None or self.transport.is_closing() \
                or self.conn.state is not ConnectionState.OPEN:
            return
        self.server.pushes_sent += 1
        self._write(self.conn.send_push(selector))

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            (self.transport.abort if abort else self.transport.close)()

    def close_bounded(self) -> None:
        """Close (FIN after the replies written); if the peer does not read them within
        `CLOSE_FLUSH_WALL_S`, abort."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self.server.loop.call_later(CLOSE_FLUSH_WALL_S, self._abort_unflushed)

    def _abort_unflushed(self) -> None:
        if not self.closed and self.transport is not None:
            self.server.flush_aborts += 1
            self.transport.abort()

    def _arm_idle(self) -> None:
        # a coarse timer (never early, a few ms of wall time late at most: an idle link
        # closes at 660 s plus that, a frame deadline of at least a wall second likewise),
        # so the links set again at every heartbeat share a few event-loop timers
        when = self.conn.get_timer()
        self.idle_timer = None if when is None else self.server.clock.coarse.call_at(
            when, self._idle_check)

    def _rearm(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self._arm_idle()

    def _idle_check(self) -> None:
        # one timer per link, moved lazily: data since it was set only pushes the deadline
        self.idle_timer = None
        srv = self.server
        now = srv.clock.now()
        if self._held_up_by_us:
            self.conn.restart_frame_deadline(now)
        for ev in self.conn.handle_timer(now):
            kind = type(ev)
            if kind is IdleTimeout:
                srv.idle_closed += 1
            elif kind is FrameTimeout:
                srv.frame_timeouts += 1
                log.info("long link %s: frame of %d bytes so far unfinished after %.1f s",
                         self.peer, ev.buffered, ev.held_s)
            self.close_bounded()
            return
        self._arm_idle()


class _Rest:
    """Awaiting it runs coroutine `coro` on from where it yielded `waiting` (begun outside a
    Task, by `coro.send(None)`): the awaiting Task waits for that future, then resumes the
    coroutine, and every later wait, result and thrown-in cancellation goes to it, as if it
    had been the Task's own from the start (what `yield from` does, after the first step)."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro, waiting) -> None:
        self.coro, self.waiting = coro, waiting

    def __await__(self):
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:   # a cancellation, thrown into the coroutine
                step, arg = coro.throw, exc
            else:
                step, arg = coro.send, None
            try:
                waiting = step(arg)
            except StopIteration as done:
                return done.value


async def _go_on(coro, waiting):
    return await _Rest(coro, waiting)


class LongLinkServer:
    """Every long link of one lab: registry by user and session, pushes, idle timeouts."""

    def __init__(self, service: Service, clock: Optional[Clock] = None,
                 idle_timeout_s: float = 660.0,
                 max_packet_len: int = DEFAULT_MAX_PACKET_LEN,
                 process: Optional[str] = None, *, limits: Limits = Limits()) -> None:
        """Deadlines are protocol seconds on `clock`; from `limits` (the profile's): the
        frame deadline (lasting at least `FRAME_TIMEOUT_MIN_WALL_S` of wall time), the
        per-address cap and the accept backlog."""
        self.service = service
        self.process = process   # counted as the serving process (`mocks.stats`), if named
        self.clock = clock or service.clock
        self.idle_timeout_s = idle_timeout_s
        self.max_packet_len = max_packet_len
        self.limits = limits
        self.frame_timeout = None if limits.frame_timeout_s is None else \
            self.clock.floor_wall(limits.frame_timeout_s, FRAME_TIMEOUT_MIN_WALL_S)
        self.address_cap = AddressCap(limits.max_connections_per_address)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.links: set[LongLinkProtocol] = set()
        self.by_uin: dict[int, set[LongLinkProtocol]] = {}
        self.by_session: dict[bytes, set[LongLinkProtocol]] = {}
        self.servers: list[asyncio.base_events.Server] = []
        self.errors: list[BaseException] = []
        self.connections_total = 0
        self.violations = 0
        self.idle_closed = 0
        self.frame_timeouts = 0
        self.flush_aborts = 0     # closes whose replies the peer never read: aborted
        self.pushes_sent = 0
        self.frames_in = 0
        self.bytes_in = 0
        self.transport_tap = None   # a recording lab's `TransportTap`: connections reported
        self._rechecks: set[asyncio.Task] = set()   # sessions checked after missed events
        self._unsubscribe = service.store.subscribe(self._on_event)

    async def listen(self, host: str, port: int, *, local: Optional[LocalServers] = None,
                     **kwargs) -> asyncio.base_events.Server:
        """Listen on host:port (`kwargs` to `loop.create_server`); with `local` (the lab's
        `LocalServers`), a relay in this loop reaches it in memory too. Not when tapped:
        a recorded connection must be the socket the tap watches."""
        self.loop = asyncio.get_running_loop()
        factory = lambda: LongLinkProtocol(self)  # noqa: E731
        if self.transport_tap is not None:
            factory = self.transport_tap.wrap(factory)
            local = None
        server = await self.loop.create_server(factory, host, port,
                                               reuse_address=True,
                                               backlog=self.limits.listen_backlog, **kwargs)
        self.servers.append(server)
        if local is not None:
            local.add(server, factory)
        return server

    def bind(self, link: LongLinkProtocol, session) -> None:
        if link.session is not None and link.session is not session:
            self.forget(link, keep_in_links=True)
        link.session = session
        link.conn.identify()
        self.by_uin.setdefault(session.uin, set()).add(link)
        self.by_session.setdefault(session.session_key, set()).add(link)

    def forget(self, link: LongLinkProtocol, keep_in_links: bool = False) -> None:
        if not keep_in_links:
            self.links.discard(link)
        s = link.session
        if s is not None:
            for index, key in ((self.by_uin, s.uin), (self.by_session, s.session_key)):
                group = index.get(key)
                if group is not None:
                    group.discard(link)
                    if not group:
                        del index[key]

    def _on_event(self, event) -> None:
        if isinstance(event, PushEvent):
            for link in tuple(self.by_uin.get(event.uin, ())):
                if link.link_id != event.origin:
                    link.push(event.selector)
        elif isinstance(event, EventsMissed):
            # a push may have been lost: every identified link syncs, which costs an empty
            # answer where nothing was
            for link in tuple(self.links):
                if link.session is not None:
                    link.push(ALL_SELECTOR)
            # and so may a logout: the store says which of our sessions still exist
            if self.by_session and self.loop is not None:
                task = self.loop.create_task(self._end_lost_sessions(tuple(self.by_session)))
                self._rechecks.add(task)
                task.add_done_callback(self._rechecks.discard)
        elif isinstance(event, SessionEnded):
            self._end_session(event.session_key)

    def _end_session(self, session_key: bytes) -> None:
        for link in tuple(self.by_session.get(session_key, ())):
            self.forget(link, keep_in_links=True)
            link.session = None
            link.conn.unidentify()
            link.close_bounded()

    async def _end_lost_sessions(self, keys: tuple[bytes, ...]) -> None:
        """End the links of every session in `keys` that the store no longer holds: their
        `SessionEnded` may have been published while the subscription was down."""
        try:
            for key in keys:
                if key in self.by_session and await self.service.store.get_session(key) is None:
                    self._end_session(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # noqa: BLE001 - the store is down again: the next
            # resubscription sends EventsMissed again, and so rechecks
            log.warning("long link: could not recheck sessions after missed events: %s", exc)

    def record_error(self, exc: BaseException) -> None:
        log.exception("long link handler failed", exc_info=exc)
        self.errors.append(exc)

    def identified_count(self) -> int:
        return sum(len(v) for v in self.by_uin.values())

    async def close(self) -> None:
        self._unsubscribe()
        for task in tuple(self._rechecks):
            task.cancel()
        for server in self.servers:
            server.close()
        for link in list(self.links):
            link.close(abort=True)
        for server in self.servers:
            await server.wait_closed()
