"""A carrier NAT of 2013 (STORYBOARD.md section 5): a TCP relay that forgets idle mappings.

Chinese 2.5G carrier gateways dropped a TCP mapping that had carried no bytes for about five
minutes, and they dropped it *silently*: no RST, no FIN, nothing. The phone's kernel keeps
accepting writes, but nothing ever comes back, so the application only learns the link is
dead when a heartbeat goes unanswered. That is the whole heartbeat argument, and this relay
reproduces it on loopback:

* every client connection accepted on a listening port opens one upstream connection to the
  target (a "mapping") and bytes are relayed both ways, byte-exactly, with back-pressure;
* a mapping that carried no byte in either direction for more than `idle_timeout_s` protocol
  seconds is black-holed: from then on bytes from either side are read and discarded, and
  nothing at all is sent to either side (the server's FIN or reset is not passed on either);
* a black-holed mapping is finally released (both legs aborted) `blackhole_linger_s` protocol
  seconds after it expired, so resources stay bounded; its server leg ends with a reset (at
  the release, or when the phone's FIN or reset reaches the hole first): the server hears
  nothing of the phone's that the NAT forgot, and the relay's side of that leg is left in no
  TIME_WAIT (a FIN left one there per reconnect of the heartbeat study, tens of thousands
  in the kernel's tables, each connect and segment of the lab slower for them);
* before expiry a FIN is relayed as a FIN (half-close) and a reset on one leg aborts the other;
* an optional fixed one-way latency delays every chunk (and FIN), preserving order.

Idleness is judged exactly, against protocol-time stamps taken when bytes arrive: a chunk
arriving when `now - last_activity > idle_timeout_s` finds the mapping already dead. A single
lazy timer per mapping on the relay's clock (set for the earliest possible expiry and set
again for the rest when traffic came meanwhile, never touched on the data path) marks and
counts mappings that expire with no traffic at all, and later runs the linger release; it is
one of the clock's coarse timers (`Clock.coarse`: a few milliseconds of wall time late at
most, never early), so a silent expiry is marked and a linger ends that much late, while the
latency lines keep exact timers. Every timer is on the clock, so a test's `ManualClock`
(where coarse timers are exact) drives expiry, linger and latency.

Limits of the emulation: the relay terminates TCP, so after expiry the phone's kernel gets
its writes ACKed by ours and never sees the ETIMEDOUT a real black hole ends in (death must be
noticed from a missing answer, as WeChat and Mars do); only payload bytes and FINs count as
activity (bare ACKs and TCP keepalive probes, which a real NAT would count, never reach
user space); and an arrival is stamped when `data_received` runs, so at time scale k an event
loop lagging d wall seconds misjudges idleness by up to k*d protocol seconds.

Both legs are bare `asyncio.Protocol`s with `__slots__` (no streams, no task per mapping once
connected), so thousands of mappings cost a few KB each.

The upstream leg is in memory when the target is a server of the relay's own event loop
(`local=`, the lab's `mocks.memory_transport.LocalServers` with `LabConfig.nat_upstream`
"memory", not the default: its long link and the short
link's plain port): a `MemoryTransport` pair with a socket's transport semantics (half-close,
reset, back-pressure, the peername and sockname a loopback socket would have), so a NOOP
crosses loopback once in the lab's process (phone -> relay) instead of three times. Any other
target (another process's, `testbed serve nat`'s, the short link's TLS port) is reached by
`loop.create_connection`. The client leg is always a socket, and the tap watches only that
side, so captures are unchanged. On a memory leg `abort()` is always a reset (there is no
socket to set `SO_LINGER` on), so the server sees any aborted mapping as a reset, not a FIN
(on a socket leg only a black-holed one). The relay parses nothing, unless the
lab has frame faults (`faults=`, `testbed.lab.faults`): then what a long-link server sends is
read as whole frames, each sent on through the faults (dropped, delayed, duplicated,
truncated, split in two segments), and a connection to any host can be reset or black-holed
some protocol seconds after it opened.

With `idle_timeout_s=None` the relay is a pure relay that never expires a mapping (only
`blackhole_all()` still black-holes): the lab puts one in front of every TCP server when it
has faults, which live here (a lab that only records has no relay: its servers report to the
tap themselves, `mocks/transport_tap.py`).

The tap (`tap=`, an observer such as `testbed.capture.tap.Tap`) is told what crosses the wire
between the phone and the relay's public address, which is what a capture at the phone would
show: `tcp_open(client_addr, public_addr) -> conn` when a connection is accepted,
`tcp_data(conn, from_client, data, acked=...)` for every chunk the client leg reads (at
reading, before relaying) and every chunk delivered to the client leg (at delivery, so a
latency line delays it in the capture too), and `tcp_close(conn, from_client, reset=...,
acked=...)` for FINs and resets on the client leg, whichever side they come from. After a
mapping is black-holed the phone's bytes and FIN are reported with `acked=False` (they go into
the hole) and nothing from the server side is reported. A failing observer is logged once and
never breaks the relay.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from testbed.capture.tap import GuardedTap
from testbed.lab.addressing import LONG
from testbed.lab.clock import Clock, Timer
from testbed.lab.faults import Fault, FaultKind, Faults, FrameSender
from testbed.wire.commands import command_for_frame
from testbed.wire.errors import RemoteProtocolError
from testbed.wire.frames import HEADER, HEADER_LEN, VERSION, FrameDecoder

from .limits import AddressCap, peer_address
from .memory_transport import LocalServers

log = logging.getLogger(__name__)

__all__ = ["NatEvent", "NatEventKind", "NatRelay", "NatStats"]

# Why a leg's reading is paused (bit mask; reading resumes when no reason is left).
_P_CONNECTING = 1  # client leg, while connecting upstream with LINE_HIGH bytes waiting
_P_PEER_FULL = 2   # the other leg's write buffer is above its high-water mark
_P_LINE_FULL = 4   # too many bytes waiting in the latency line towards the other leg

# Latency line limits (bytes in flight per direction) for back-pressure.
LINE_HIGH = 256 * 1024
LINE_LOW = 64 * 1024

# Mapping states.
_CONNECTING = 0
_OPEN = 1
_BLACKHOLED = 2
_DONE = 3

_EOF = None  # marker in a latency line
# With faults, a long link's frames are read whole: one larger than this (none of the lab's
# are) ends the reading, and the stream goes on as it comes.
FAULT_FRAME_MAX = 16 << 20
# Expiry needs idleness *over* the timeout: a timer set for exactly the timeout would find
# the mapping still alive, so the idle timer is set this far (protocol seconds) beyond it.
_PAST = 1e-6
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class NatStats:
    """Counters of a `NatRelay` (a snapshot: `NatRelay.stats` returns a copy).

    `mappings_active` counts mappings that relay (connecting or open); black-holed mappings
    still held until their linger ends are in `mappings_blackholed`.
    """

    mappings_opened: int = 0      # client connections accepted
    mappings_active: int = 0      # currently relaying (connecting or open)
    mappings_expired: int = 0     # black-holed for idleness (total)
    bytes_up: int = 0             # client -> server, relayed
    bytes_down: int = 0           # server -> client, relayed
    bytes_blackholed: int = 0     # read and discarded by black-holed mappings
    closed_by_client: int = 0     # live mappings ended by the client (FIN first, or reset)
    closed_by_server: int = 0     # live mappings ended by the server (FIN first, or reset)
    mappings_blackholed: int = 0  # currently held black-holed (awaiting linger or client)
    mappings_released: int = 0    # black-holed mappings freed (linger, client gone, close())
    connect_failures: int = 0     # upstream connects that failed (client leg aborted)


class NatEventKind(str, enum.Enum):
    """What happened to a mapping (equal to its name in lower case: "expire")."""

    OPEN = "open"        # a client connection was accepted
    EXPIRE = "expire"    # black-holed for idleness (or by `blackhole_all`)
    CLOSE = "close"      # the mapping ended: FINs, a reset, a failed connect, release


@dataclass(frozen=True)
class NatEvent:
    """One event of one mapping, for `NatRelay.on_event` observers."""

    kind: NatEventKind
    client: Optional[tuple[str, int]]   # the phone's (address, port), as the NAT accepted it
    listen_port: int                    # the relay's public port it connected to
    at: float                           # protocol time


class _Leg(asyncio.Protocol):
    """One side of a mapping: the client leg (accepted) or the server leg (connected)."""

    __slots__ = ("m", "transport", "is_client", "paused", "eof", "lost")

    def __init__(self, m: "_Mapping", is_client: bool) -> None:
        self.m = m
        self.transport: Optional[asyncio.Transport] = None
        self.is_client = is_client
        self.paused = 0       # bit mask of _P_* reasons
        self.eof = False      # FIN received on this leg
        self.lost = False     # connection_lost called

    # -- asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.is_client:
            self.m.client_made(self)
        else:
            self.m.server_made(self)

    def data_received(self, data: bytes) -> None:
        self.m.on_data(self, data)

    def eof_received(self):
        return self.m.on_eof(self)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.m.on_lost(self, exc)

    def pause_writing(self) -> None:
        self.m.on_write_full(self, True)

    def resume_writing(self) -> None:
        self.m.on_write_full(self, False)

    # -- reading control
    def pause(self, reason: int) -> None:
        was = self.paused
        self.paused = was | reason
        if not was and not self.eof and not self.lost:
            self.transport.pause_reading()

    def unpause(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        # Never resume after EOF: the selector transport would re-add its reader and
        # report the EOF again.
        if not self.paused and not self.eof and not self.lost:
            self.transport.resume_reading()

    def usable(self) -> bool:
        t = self.transport
        return t is not None and not self.lost and not t.is_closing()

    def abort(self) -> None:
        t = self.transport
        if t is not None and not self.lost:
            if self.is_client and self.m.tconn is not None:  # the phone sees our FIN
                self.m.relay.tap.tcp_close(self.m.tconn, False)
            t.abort()

    def reset(self) -> None:
        """Abort with an RST (SO_LINGER 0) rather than a FIN."""
        t = self.transport
        if t is None or self.lost:
            return
        if self.is_client and self.m.tconn is not None:
            self.m.relay.tap.tcp_close(self.m.tconn, False, reset=True)
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        t.abort()


class _Line:
    """A fixed-latency line in one direction: FIFO of (due protocol time, chunk or EOF),
    flushed by a timer on the relay's clock (which never fires before its time)."""

    __slots__ = ("m", "up", "q", "qbytes", "handle")

    def __init__(self, m: "_Mapping", up: bool) -> None:
        self.m = m
        self.up = up
        self.q: collections.deque = collections.deque()
        self.qbytes = 0
        self.handle: Optional[Timer] = None

    def push(self, item) -> None:
        relay = self.m.relay
        due = relay.clock.now() + relay.latency_s
        self.q.append((due, item))
        if item is not _EOF:
            self.qbytes += len(item)
            if self.qbytes > LINE_HIGH:
                src = self.m.client if self.up else self.m.server
                src.pause(_P_LINE_FULL)
        if self.handle is None:
            self.handle = relay.clock.call_at(due, self.flush)

    def flush(self) -> None:
        self.handle = None
        m = self.m
        if m.state != _OPEN:
            self.drop()
            return
        relay = m.relay
        now = relay.clock.now()
        q = self.q
        while q and q[0][0] <= now:
            item = q.popleft()[1]
            if item is _EOF:
                m.deliver_eof(self.up)
                if m.state != _OPEN:
                    self.drop()
                    return
            else:
                self.qbytes -= len(item)
                m.deliver(self.up, item)
        if q:
            self.handle = relay.clock.call_at(q[0][0], self.flush)
        if self.qbytes < LINE_LOW:
            src = m.client if self.up else m.server
            if src is not None:
                src.unpause(_P_LINE_FULL)

    def drop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.q.clear()
        self.qbytes = 0


class _Mapping:
    """One NAT mapping: a client leg, a server leg, the idle/linger timer, the lines."""

    __slots__ = ("relay", "target", "client", "server", "state", "last", "timer",
                 "connect_task", "fin_up", "fin_down", "closer", "up", "down",
                 "listen_port", "pending", "pending_n", "tconn", "peer", "host", "frames",
                 "sender", "fault_timers")

    def __init__(self, relay: "NatRelay", target: tuple[str, int], listen_port: int,
                 host: str = "") -> None:
        self.relay = relay
        self.target = target
        self.listen_port = listen_port
        self.host = host                 # the lab host behind it (for faults)
        # with faults on a long link: the server's bytes as frames, through the faults
        self.frames: Optional[FrameDecoder] = None
        self.sender: Optional[FrameSender] = None
        self.fault_timers: Optional[list[Timer]] = None
        self.client: Optional[_Leg] = None
        self.server: Optional[_Leg] = None
        self.state = _CONNECTING
        self.last = 0.0                  # protocol time of the last byte/FIN relayed
        self.timer: Optional[Timer] = None
        self.connect_task: Optional[asyncio.Task] = None
        self.fin_up = False              # client FIN passed on to the server
        self.fin_down = False            # server FIN passed on to the client
        self.closer: Optional[bool] = None  # True: client ended it first, False: server
        self.up: Optional[_Line] = None
        self.down: Optional[_Line] = None
        # What the client sent (bytes, then maybe _EOF) before the upstream answered. Some
        # loops (uvloop) deliver data even when reading is paused in connection_made, so
        # early bytes are kept here, bounded by pausing the client at LINE_HIGH.
        self.pending: Optional[list] = None
        self.pending_n = 0
        self.tconn = None                # the tap's handle for this connection, if tapped
        self.peer: Optional[tuple[str, int]] = None   # the client's (address, port)

    # -- set-up
    def client_made(self, leg: _Leg) -> None:
        relay = self.relay
        self.client = leg
        if relay._closing:
            self.state = _DONE
            leg.abort()
            return
        peer = leg.transport.get_extra_info("peername")
        self.peer = tuple(peer[:2]) if peer else None
        if not relay.address_cap.admit(peer_address(peer)):
            self.state = _DONE   # over the per-address cap: never a mapping, nothing held
            leg.abort()
            return
        st = relay._stats
        st.mappings_opened += 1
        st.mappings_active += 1
        relay._mappings.add(self)
        self.last = relay.clock.now()
        if relay.tap is not None:
            self.tconn = relay._tap_open(self.peer, leg.transport)
        if relay.latency_s > 0:
            self.up = _Line(self, True)
            self.down = _Line(self, False)
        if relay.idle_timeout_s is not None:
            self._arm(relay.idle_timeout_s + _PAST)
        if relay.faults is not None:
            self._plan_faults(relay.faults)
        self.connect_task = relay._loop.create_task(self._connect())
        relay._event(NatEventKind.OPEN, self)

    # -- faults (`testbed.lab.faults`): on what the server sends, and on the connection
    def _plan_faults(self, faults: Faults) -> None:
        relay = self.relay
        if self.host == LONG:
            self.frames = FrameDecoder(max_packet_len=FAULT_FRAME_MAX)
            self.sender = FrameSender(faults, "long", self._down, self.cut, relay.clock)
        planned = faults.link(self.host)
        if planned:
            self.fault_timers = [relay.clock.call_later(f.spec.at, self._link_fault, f)
                                 for f in planned]

    def _frames_down(self, data: bytes) -> None:
        """The server's bytes, frame by frame, through the faults (a stream that is not
        frames goes on as it comes, from the bad header on)."""
        try:
            frames = self.frames.receive_data(data)
        except RemoteProtocolError:
            self.frames = None
            self._down(data)
            return
        for f in frames:
            command = command_for_frame(f.cmd)
            name = command.name if command is not None else f"cmd {f.cmd}"
            self.sender.frame(name, HEADER.pack(HEADER_LEN + len(f.body), HEADER_LEN, VERSION,
                                                f.cmd, f.seq) + f.body)
        if self.frames.error is not None:
            self.frames = None

    def _down(self, data: bytes) -> None:
        if self.state != _OPEN:
            return
        if self.down is None:
            self.deliver(False, data)
        else:
            self.down.push(data)

    def _link_fault(self, fault: Fault) -> None:
        if self.state != _OPEN:
            return
        self.relay.faults.link_fired(fault, self.host)
        if fault.kind is FaultKind.BLACKHOLE:
            self.expire()
            return
        self._end(None)                      # reset: an RST to each side
        for lg in (self.client, self.server):
            if lg is not None:
                lg.reset()

    def cut(self) -> None:
        """After a truncated frame: the client gets what was sent and a FIN, the server's
        leg is dropped."""
        if self.state != _OPEN:
            return
        self._end(self.closer)
        client = self.client
        if client is not None and client.usable():
            if self.tconn is not None:
                self.relay.tap.tcp_close(self.tconn, False)
            client.transport.close()         # flushes what is buffered, then the FIN
        if self.server is not None:
            self.server.abort()

    async def _connect(self) -> None:
        relay = self.relay
        try:
            if relay.local is None:
                await relay._loop.create_connection(lambda: _Leg(self, False), *self.target)
            else:   # in memory when the target is a server of this loop
                await relay.local.connect(lambda: _Leg(self, False), *self.target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, unreachable, timed out: the client leg goes
            self.connect_task = None
            if self.state == _CONNECTING:
                log.debug("nat: upstream %s:%s failed: %s", *self.target, exc)
                relay._stats.connect_failures += 1
                self._end(None)
                self.client.reset()  # the refusal reaches the phone as a reset
            return
        self.connect_task = None

    def server_made(self, leg: _Leg) -> None:
        if self.state != _CONNECTING:  # client gone or relay closed meanwhile
            leg.transport.abort()
            return
        self.server = leg
        self.state = _OPEN
        self.last = self.relay.clock.now()  # the SYN-ACK crossed the NAT
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.pending_n = 0
            line = self.up
            for item in pending:
                if item is _EOF:
                    if line is None:
                        self.deliver_eof(True)
                    else:
                        line.push(_EOF)
                elif line is None:
                    self.deliver(True, item)
                else:
                    line.push(item)
        self.client.unpause(_P_CONNECTING)

    # -- timer: idle check while live, linger release once black-holed
    def _arm(self, protocol_delay: float) -> None:
        # coarse (a few ms of wall time late at most, never early): idleness is judged
        # exactly when bytes arrive, so this timer only marks the silent expiries and ends
        # the linger, and thousands of mappings set again at every heartbeat share a few
        # event-loop timers
        self.timer = self.relay.clock.coarse.call_later(protocol_delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        st = self.state
        if st == _BLACKHOLED:
            self.release()
            return
        if st == _DONE:
            return
        relay = self.relay
        if st == _CONNECTING:  # the idle clock starts when the upstream answers
            self._arm(relay.idle_timeout_s + _PAST)
            return
        idle = relay.clock.now() - self.last
        if idle > relay.idle_timeout_s:
            self.expire()
        else:  # traffic since we were armed: re-arm for the rest
            self._arm(relay.idle_timeout_s - idle + _PAST)

    def _alive(self) -> bool:
        """Exact idleness check at the arrival of bytes (or FIN); stamps the activity."""
        relay = self.relay
        now = relay.clock.now()
        idle_timeout = relay.idle_timeout_s
        if idle_timeout is not None and now - self.last > idle_timeout:
            self.expire()
            return False
        self.last = now
        return True

    # -- data path
    def on_data(self, leg: _Leg, data: bytes) -> None:
        st = self.state
        tapped = self.tconn is not None and leg.is_client
        if st != _OPEN:
            if st == _BLACKHOLED:
                self.relay._stats.bytes_blackholed += len(data)
                if tapped:  # the phone's bytes go into the hole, unanswered
                    self.relay.tap.tcp_data(self.tconn, True, data, acked=False)
            elif st == _CONNECTING:  # the client spoke first: hold it for the upstream
                if tapped:
                    self.relay.tap.tcp_data(self.tconn, True, data)
                self._hold(data)
            return
        if not self._alive():
            self.relay._stats.bytes_blackholed += len(data)
            if tapped:
                self.relay.tap.tcp_data(self.tconn, True, data, acked=False)
            return
        up = leg.is_client
        if up:
            if tapped:
                self.relay.tap.tcp_data(self.tconn, True, data)
            self.relay._stats.bytes_up += len(data)
            line = self.up
        else:
            self.relay._stats.bytes_down += len(data)
            if self.frames is not None:
                self._frames_down(data)
                return
            line = self.down
        if line is None:
            self.deliver(up, data)
        else:
            line.push(data)

    def _hold(self, item) -> None:
        relay = self.relay
        self.last = relay.clock.now()
        if self.pending is None:
            self.pending = []
        self.pending.append(item)
        if item is not _EOF:
            relay._stats.bytes_up += len(item)
            self.pending_n += len(item)
            if self.pending_n > LINE_HIGH:
                self.client.pause(_P_CONNECTING)

    def deliver(self, up: bool, data: bytes) -> None:
        dst = self.server if up else self.client
        if dst is not None and dst.usable():
            dst.transport.write(data)
            if not up and self.tconn is not None:
                self.relay.tap.tcp_data(self.tconn, False, data)

    def on_write_full(self, leg: _Leg, full: bool) -> None:
        """`leg`'s write buffer crossed a watermark: pause/resume reading the other leg."""
        src = self.server if leg.is_client else self.client
        if src is None:
            return
        if full:
            if self.state == _OPEN:
                src.pause(_P_PEER_FULL)
        else:
            src.unpause(_P_PEER_FULL)

    # -- FIN
    def on_eof(self, leg: _Leg):
        leg.eof = True
        if leg.is_client and self.tconn is not None:
            alive = self.state == _CONNECTING or (self.state == _OPEN and self._alive())
            self.relay.tap.tcp_close(self.tconn, True, acked=alive)
        if self.state == _OPEN and self._alive():
            if self.closer is None:
                self.closer = leg.is_client
            line = self.up if leg.is_client else self.down
            if line is None:
                self.deliver_eof(leg.is_client)
            else:
                line.push(_EOF)
            return True  # keep the leg open: the other direction may still carry bytes
        if self.state == _CONNECTING:  # FIN before the upstream answered: pass it on later
            self.closer = True
            self._hold(_EOF)
            return True
        if self.state == _BLACKHOLED:
            if leg.is_client:
                # The phone gave up; the NAT had forgotten it: the FIN goes nowhere. Reset
                # the server leg (no TIME_WAIT left behind) and keep the client leg (no FIN
                # back) until linger.
                if self.server is not None:
                    self.server.reset()
                return True
            return False  # server FIN: close our server leg, tell the client nothing
        return False

    def deliver_eof(self, up: bool) -> None:
        dst = self.server if up else self.client
        if dst is not None and dst.usable():
            t = dst.transport
            if t.can_write_eof():
                t.write_eof()
            else:
                t.close()
            if not up and self.tconn is not None:
                self.relay.tap.tcp_close(self.tconn, False)
        if up:
            self.fin_up = True
        else:
            self.fin_down = True
        if self.fin_up and self.fin_down:
            self._end(self.closer)
            for lg in (self.client, self.server):
                if lg is not None and lg.usable():
                    lg.transport.close()  # flushes what is buffered, then closes

    # -- end of a leg
    def on_lost(self, leg: _Leg, exc) -> None:
        st = self.state
        if exc is not None and leg.is_client and self.tconn is not None:
            self.relay.tap.tcp_close(self.tconn, True, reset=True)  # the phone reset
        if st == _DONE:
            return
        if st == _BLACKHOLED:
            if leg.is_client:
                self.release()  # the phone's socket is gone: nothing left to hold
            elif self.client is None or self.client.lost:
                self.release()
            return
        # Live mapping (connecting or open): a leg we did not close went away (reset, write
        # error, or a close we did not cause): abort the other leg.
        self._end(leg.is_client if self.closer is None else self.closer)
        other = self.server if leg.is_client else self.client
        if other is not None:
            if exc is not None:
                other.reset()  # a reset crosses the NAT as a reset
            else:
                other.abort()

    # -- state changes
    def expire(self) -> None:
        """Forget the mapping silently: discard from now on, send nothing to anyone."""
        if self.state != _OPEN:
            return
        relay = self.relay
        self.state = _BLACKHOLED
        st = relay._stats
        st.mappings_expired += 1
        st.mappings_active -= 1
        st.mappings_blackholed += 1
        for line in (self.up, self.down):
            if line is not None:
                line.drop()
        # Keep reading both legs (to discard), whatever back-pressure was in force.
        for lg in (self.client, self.server):
            if lg is not None:
                lg.unpause(_P_PEER_FULL | _P_LINE_FULL | _P_CONNECTING)
        if self.timer is not None:
            self.timer.cancel()
        self._arm(relay.blackhole_linger_s)
        relay._event(NatEventKind.EXPIRE, self)

    def _end(self, by_client: Optional[bool]) -> None:
        """A live mapping ends (FINs both ways, reset, connect failure, relay close)."""
        relay = self.relay
        st = relay._stats
        if self.state in (_CONNECTING, _OPEN):
            st.mappings_active -= 1
            if by_client is True:
                st.closed_by_client += 1
            elif by_client is False:
                st.closed_by_server += 1
        elif self.state == _BLACKHOLED:
            st.mappings_blackholed -= 1
            st.mappings_released += 1
        self.state = _DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for line in (self.up, self.down):
            if line is not None:
                line.drop()
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.sender is not None:
            self.sender.close()
        for timer in self.fault_timers or ():
            timer.cancel()
        self.pending = None
        if self in relay._mappings:
            relay._mappings.discard(self)
            relay.address_cap.release(peer_address(self.peer))
        relay._event(NatEventKind.CLOSE, self)

    def release(self) -> None:
        """Free a mapping now: abort both legs (linger over, or the relay closes); a
        black-holed mapping's server leg with a reset."""
        if self.state == _DONE:
            return
        holed = self.state == _BLACKHOLED
        self._end(None)
        if self.client is not None:
            self.client.abort()
        if self.server is not None:
            (self.server.reset if holed else self.server.abort)()


class NatRelay:
    """A carrier NAT: TCP port mappings that black-hole after `idle_timeout_s` of silence.

    All durations are protocol seconds, read from and converted with `clock`.
    `idle_timeout_s=None` makes a pure relay whose mappings never expire.
    `on_event(NatEvent)` (optional, may be set at any time) is called when a mapping opens,
    expires and closes, with the client's address: a timeline for reports, NAT expiries per
    phone for studies.
    `tap` (optional) is told every connection, chunk, FIN and reset on the client side (see
    the module docstring); `testbed.capture.tap.Tap` renders them as packets.
    `local` (optional, `mocks.memory_transport.LocalServers`): the servers of this loop by
    address; an upstream leg to one of them is an in-memory connection, not a socket.
    """

    def __init__(self, clock: Clock, idle_timeout_s: Optional[float], latency_s: float = 0.0,
                 blackhole_linger_s: float = 7200.0, *,
                 on_event: Optional[Callable[[NatEvent], None]] = None,
                 tap=None, faults: Optional[Faults] = None,
                 max_connections_per_address: Optional[int] = None,
                 backlog: int = 4096, local: Optional[LocalServers] = None) -> None:
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s!r}")
        if latency_s < 0 or blackhole_linger_s < 0:
            raise ValueError("latency_s and blackhole_linger_s must not be negative")
        self.clock = clock
        self.idle_timeout_s = None if idle_timeout_s is None else float(idle_timeout_s)
        self.tap = GuardedTap(tap, "nat") if tap is not None else None
        self.latency_s = float(latency_s)
        self.blackhole_linger_s = float(blackhole_linger_s)
        self.on_event = on_event
        self.faults = faults              # frame and connection faults (`testbed.lab.faults`)
        # the relay faces the clients, so the lab's per-address cap is kept here (a mapping,
        # live or black-holed, holds one); the servers behind see only the relay
        self.address_cap = AddressCap(max_connections_per_address)
        self.backlog = backlog
        self.local = local   # the lab's servers in this loop: upstream legs in memory
        self._stats = NatStats()
        self._mappings: set[_Mapping] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._factories: list[Callable[[], asyncio.Protocol]] = []   # one per server
        self._clients_in: list[LocalServers] = []   # where clients may reach it in memory
        self._ports: dict[int, tuple[str, int]] = {}
        self._closing = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def stats(self) -> NatStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    @property
    def ports(self) -> dict[int, tuple[str, int]]:
        """Bound listening port -> (target host, target port)."""
        return dict(self._ports)

    def __len__(self) -> int:
        """Mappings currently held (live or black-holed)."""
        return len(self._mappings)

    async def add_mapping(self, listen_host: str, listen_port: int, target_host: str,
                          target_port: int, *, backlog: Optional[int] = None,
                          host: str = "") -> int:
        """Listen on listen_host:listen_port (0: any free port) and relay every accepted
        connection to target_host:target_port (the lab host `host`: the faults' connections
        are counted by it, and a long link's frames go through them). Returns the bound
        port."""
        if self._closing:
            raise RuntimeError("NatRelay is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        target = (target_host, target_port)
        box: list[int] = [listen_port]
        factory = lambda: _Leg(_Mapping(self, target, box[0], host), True)  # noqa: E731
        server = await loop.create_server(
            factory, listen_host, listen_port, backlog=backlog or self.backlog,
            reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        box[0] = port
        self._servers.append(server)
        self._factories.append(factory)
        for local in self._clients_in:
            local.add(server, factory)
        self._ports[port] = target
        return port

    def accept_in_memory(self, local: LocalServers) -> None:
        """Let clients in this loop reach every mapping's listener, now and to come, in
        memory through `local` (`LocalServers.connect`): the heartbeat study's phones when
        they share the lab's loop, whose long links then cost no loopback TCP. A memory
        client is a mapping like a socket's: its source address and port are the ones
        it passes to `connect`, and every rule of the NAT applies to it."""
        self._clients_in.append(local)
        for server, factory in zip(self._servers, self._factories):
            local.add(server, factory)

    def blackhole_all(self) -> int:
        """Forget every live mapping now (a NAT reboot, or the phone changing cell).
        Returns how many were black-holed."""
        n = 0
        for m in list(self._mappings):
            if m.state == _OPEN:
                m.expire()
                n += 1
        return n

    def buffered_bytes(self) -> int:
        """Bytes the relay holds in user space (write buffers and latency lines)."""
        total = 0
        for m in self._mappings:
            for lg in (m.client, m.server):
                if lg is not None and lg.transport is not None and not lg.lost:
                    total += lg.transport.get_write_buffer_size()
            for line in (m.up, m.down):
                if line is not None:
                    total += line.qbytes
            total += m.pending_n
        return total

    async def close(self) -> None:
        """Stop listening and abort every leg of every mapping."""
        self._closing = True
        for server in self._servers:
            server.close()
        tasks = []
        for m in list(self._mappings):
            if m.connect_task is not None:
                tasks.append(m.connect_task)
            m.release()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._ports.clear()
        # let the aborted transports run connection_lost
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _tap_open(self, peer: Optional[tuple[str, int]], transport):
        """Tell the tap about an accepted connection: the phone's address and ours."""
        here = transport.get_extra_info("sockname")
        if not peer or not here:   # already gone: nothing the tap could show
            return None
        return self.tap.tcp_open(peer, tuple(here[:2]))

    def _event(self, kind: NatEventKind, m: _Mapping) -> None:
        cb = self.on_event
        if cb is not None:
            try:
                cb(NatEvent(kind, m.peer, m.listen_port, self.clock.now()))
            except Exception:  # a broken observer must not break the relay
                log.exception("nat: on_event callback failed")
