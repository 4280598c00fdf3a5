"""A long-link connection from the phone's side: the asyncio adapter around the sans-I/O
`testbed.wire.ClientConnection`, which numbers requests, matches replies by seq, checks their
cmd, hands NOTIFY pushes over and times requests out. A protocol violation from the server
closes the link. Times (timeouts, `last_tx`, `last_rx`) are protocol seconds on `clock`."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from typing import Any, Awaitable, Callable, Optional

from google.protobuf.message import Message

from testbed.lab.addressing import LONG
from testbed.lab.clock import Clock, Timer
from testbed.lab.faults import Fault, FaultKind, Faults, FrameSender
from testbed.wire import BY_CMD, BY_NAME, ClientConnection, RemoteProtocolError
from testbed.wire.commands import NOOP_CMD, decode_response
from testbed.wire.connection import Push, Reply, TimedOut, WrongReply

from .linkobserver import LinkObserver
from .source_ports import create_connection_from

# opens a long link's connection instead of the loop (`LongLink.connect`): (protocol factory,
# host, port, source address or None) -> (transport, protocol)
Connector = Callable[[Callable[[], asyncio.Protocol], str, int, Optional[str]],
                     Awaitable[tuple[asyncio.BaseTransport, Any]]]


class LinkClosed(ConnectionError):
    pass


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, link: "LongLink") -> None:
        self.link = link

    def connection_made(self, transport) -> None:
        self.link._transport = transport
        if self.link.observer is not None:
            self.link.observer.connected()

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc) -> None:
        self.link._lost(exc)


class LongLink:
    """One TCP connection to `long.weixin.qq.com`.

    `clock` (default: a clock at scale 1, so seconds are wall seconds) measures the request
    timeouts and stamps `last_tx`/`last_rx`. `observer` is told what the connection does on
    the wire as it happens (`testbed.client.linkobserver`). `faults` (`testbed.lab.faults`,
    the replayer's side) act on the request frames it sends, and can reset the connection or
    black-hole it (nothing sent or read from then on) some protocol seconds after it opened."""

    def __init__(self, on_notify: Optional[Callable[[int], None]] = None,
                 max_packet_len: int = 1 << 20, first_seq: int = 1,
                 clock: Optional[Clock] = None,
                 observer: Optional[LinkObserver] = None,
                 faults: Optional[Faults] = None) -> None:
        self.on_notify = on_notify
        self.observer = observer
        self._closing = False        # this side closed or aborted it
        self.clock = clock or Clock()
        self.conn = ClientConnection(max_packet_len=max_packet_len, first_seq=first_seq)
        self._futures: dict[int, asyncio.Future] = {}
        self._timer: Optional[Timer] = None
        self._transport: Optional[asyncio.Transport] = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.notifies: list[int] = []
        self.address: Optional[tuple[str, int]] = None
        self.bytes_sent = self.bytes_received = 0
        self.last_rx = self.last_tx = self.clock.now()
        self.faults = faults
        self._sender = None if faults is None else FrameSender(
            faults, "long", self._write_frame, self._cut, self.clock)
        self._fault_timers: list[Timer] = []
        self._holed = False           # black-holed: nothing goes out or comes in

    @classmethod
    async def connect(cls, host: str, port: int, *, local_addr: Optional[str] = None,
                      timeout: float = 5.0, connector: Optional[Connector] = None,
                      **kwargs) -> "LongLink":
        """Open the TCP connection; `timeout` is wall seconds (a connect is not protocol
        time: it is the kernel's). `connector`, if given, opens it instead of the loop:
        `await connector(protocol_factory, host, port, local_addr)` returns (transport,
        protocol), as `loop.create_connection` does (the heartbeat study's in-memory leg to
        a NAT in the same loop, `mocks.memory_transport.LocalServers`)."""
        link = cls(**kwargs)
        loop = asyncio.get_running_loop()
        if link.observer is not None:
            link.observer.connecting()
        # a timeout context, not `wait_for`: that wraps the connect in a Task of its own,
        # once per reconnect (tens of thousands in the heartbeat study)
        async with asyncio.timeout(timeout):
            if connector is not None:
                await connector(lambda: _LinkProtocol(link), host, port, local_addr)
            elif local_addr:      # a port not reused while a NAT may hold its old mapping
                await create_connection_from(loop, lambda: _LinkProtocol(link), host, port,
                                             local_addr)
            else:
                await loop.create_connection(lambda: _LinkProtocol(link), host, port)
        link.address = (host, port)
        if link.faults is not None:
            link._fault_timers = [link.clock.call_later(f.spec.at, link._link_fault, f)
                                  for f in link.faults.link(LONG)]
        return link

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    @property
    def sockname(self) -> Optional[tuple[str, int]]:
        """The link's own (address, port): what a NAT in front of the server sees."""
        if self._transport is None:
            return None
        name = self._transport.get_extra_info("sockname")
        return tuple(name[:2]) if name else None

    @property
    def frames_sent(self) -> int:
        return self.conn.frames_sent

    @property
    def frames_received(self) -> int:
        return self.conn.frames_received

    def next_seq(self) -> int:
        return self.conn.next_seq()

    def send_raw(self, data: bytes) -> None:
        if not self.is_open:
            raise LinkClosed("long link is closed")
        self._send(data)

    def _send(self, data: bytes) -> None:
        """Write `data` on the open link (unless a fault holed it), counted and stamped."""
        if self._holed:
            return
        self._transport.write(data)
        self.bytes_sent += len(data)
        if self.observer is not None:
            self.observer.sent(len(data))
        self.last_tx = self.clock.now()

    def request_frame(self, cmd: int, body: bytes = b"", seq: Optional[int] = None,
                      timeout: Optional[float] = None) -> asyncio.Future:
        """Send one request frame; the future resolves to the reply's body, or fails with
        TimeoutError after `timeout` protocol seconds (None: it waits until the link
        closes). Cancelling the future forgets the request (at once, or by its deadline:
        a late reply is then dropped)."""
        if not self.is_open:
            raise LinkClosed("long link is closed")
        deadline = None if timeout is None else self.clock.now() + timeout
        seq, data = self.conn.send_request(cmd, body, seq=seq, deadline=deadline)
        fut = asyncio.get_running_loop().create_future()
        self._futures[seq] = fut
        if deadline is None:
            # only a request that may wait forever is forgotten when cancelled: one with a
            # deadline is by then (a callback per request, the heartbeat's NOOPs included,
            # cost a loop callback per reply)
            fut.add_done_callback(functools.partial(self._request_done, seq))
        if self._sender is None:
            self._send(data)   # the link's check was made above
        else:
            command = BY_CMD.get(cmd)
            self._sender.frame(command.name if command is not None else f"cmd {cmd}", data)
        if deadline is not None:
            self._arm(deadline)   # its own deadline: no need to ask the connection for all
        return fut

    async def request(self, cmd: int, body: bytes = b"", timeout: float = 10.0) -> bytes:
        """Send a request frame and wait for its reply body; TimeoutError after `timeout`
        protocol seconds."""
        return await self.request_frame(cmd, body, timeout=timeout)

    async def call(self, name: str, request: Optional[Message] = None,
                   timeout: float = 10.0) -> Message:
        """Send a table command by name and decode its reply."""
        command = BY_NAME[name]
        body = request.SerializeToString() if request is not None else b""
        return decode_response(command, await self.request_frame(command.cmd, body,
                                                                 timeout=timeout))

    def noop(self, timeout: float = 10.0) -> asyncio.Future:
        """Send a NOOP: a future of its reply's (empty) body, TimeoutError after `timeout`
        protocol seconds. The request's own future, not a coroutine around it: the
        heartbeat sends one per beat."""
        return self.request_frame(NOOP_CMD, b"", timeout=timeout)

    # ------------------------------------------------------------------ faults
    def _write_frame(self, data: bytes) -> None:
        if self.is_open:
            self.send_raw(data)

    def _cut(self) -> None:
        """After a truncated request: the lab gets what was sent, then a FIN."""
        if self._transport is not None and not self._transport.is_closing():
            self._closing = True
            self._transport.close()

    def _link_fault(self, fault: Fault) -> None:
        if not self.is_open:
            return
        self.faults.link_fired(fault, LONG)
        if fault.kind is FaultKind.BLACKHOLE:
            self._holed = True
            return
        sock = self._transport.get_extra_info("socket")     # reset: an RST, not a FIN
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.abort()

    # ------------------------------------------------------------------ internals
    def _request_done(self, seq: int, fut: asyncio.Future) -> None:
        if fut.cancelled() and self._futures.get(seq) is fut:
            del self._futures[seq]
            self.conn.forget(seq)
            if not self._futures:
                self._disarm()

    def _disarm(self) -> None:
        """Nothing is pending: the deadline timer has nothing to time out (a heartbeat's
        NOOP answered in time would otherwise wake the loop once more for nothing)."""
        self._arm(None)

    def _settle(self, seq: int, result: Optional[bytes] = None,
                exc: Optional[BaseException] = None) -> None:
        futures = self._futures
        fut = futures.pop(seq, None)
        if not futures:
            self._disarm()
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _arm(self, when: Optional[float]) -> None:
        """One timer per link, firing by `when` (a request deadline; None: no timer)."""
        timer = self._timer
        if timer is not None and not timer.cancelled and when is not None \
                and timer.when <= when:
            return   # armed early enough: it re-arms for the rest when it fires
        if timer is not None:
            timer.cancel()
        # a coarse timer (`Clock.coarse`, a few ms of wall time late at most): a deadline set
        # for every NOOP and cancelled by its answer, in a phone process with 1,500 links,
        # was one event-loop timer each; a reply is late by the timeout, not by its lateness
        self._timer = None if when is None else self.clock.coarse.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for ev in self.conn.handle_timer(self.clock.now()):
            if isinstance(ev, TimedOut):
                self._settle(ev.seq, exc=asyncio.TimeoutError(
                    f"no reply to cmd {ev.cmd} seq {ev.seq}"))
        self._arm(self.conn.get_timer())   # the earliest deadline still pending

    def _received(self, data: bytes) -> None:
        if self._holed:
            return
        self.bytes_received += len(data)
        if self.observer is not None:
            self.observer.received(len(data))
        self.last_rx = self.clock.now()
        try:
            events = self.conn.receive_data(data)
        except RemoteProtocolError as exc:
            self.abort(exc)
            return
        for ev in events:
            if isinstance(ev, Reply):
                self._settle(ev.seq, ev.body)
            elif isinstance(ev, Push):
                self.notifies.append(ev.selector)
                if self.on_notify is not None:
                    self.on_notify(ev.selector)
            elif isinstance(ev, WrongReply):
                self._settle(ev.seq, exc=RemoteProtocolError(
                    f"reply cmd {ev.got} for seq {ev.seq}, expected {ev.expected}"))
            # Stray frames (late replies, odd pushes) are dropped, as the 2013 client did
        if self.conn.error is not None:
            self.abort(self.conn.error)

    def _lost(self, exc) -> None:
        err = LinkClosed(f"long link closed: {exc!r}" if exc else "long link closed by peer")
        self.conn.close()
        for timer in self._fault_timers:
            timer.cancel()
        if self._sender is not None:
            self._sender.close()
        self._disarm()
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(exc)
            if self.observer is not None:
                self.observer.closed(by_peer=not self._closing)

    def abort(self, exc: Optional[BaseException] = None) -> None:
        if self._transport is not None:
            self._closing = self._closing or not self.closed.done()
            self._transport.abort()

    def reset(self) -> None:
        """End the link with a TCP reset rather than a FIN (as a phone losing its radio
        bearer, or a middlebox, would), at once."""
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    async def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._closing = self._closing or not self.closed.done()
            self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 2.0)
        except asyncio.TimeoutError:
            self._transport.abort()
