"""In-memory TCP connections between a relay and a server in the same event loop.

In a lab with a relay (the carrier NAT, or the faults' pass-through: `mocks/nat.py`), every
byte crosses loopback twice in the lab's own process: phone -> relay, then relay -> server and
back. The relay's upstream leg needs no socket when the server is in the same loop, so the
lab registers its in-process servers by address in a `LocalServers`, and the relay connects
through it: a registered address gets a `MemoryTransport` pair, any other address a socket
(`loop.create_connection`). The phone's side stays a socket, so what a capture or the tap
shows is unchanged.

A pair keeps the asyncio transport/protocol contract of a socket connection:

* `connection_made` on both sides (the server's first, as its accept), then data in order,
  each chunk delivered by `loop.call_soon` (never re-entrantly from `write`), the chunks
  written in one loop iteration joined as a socket read would join them;
* `write_eof()` is a half-close: after what was written, the peer's `eof_received()`, whose
  return value decides, as on a socket, whether the peer's transport closes;
* `close()` stops reading, flushes what was written, then sends the FIN and ends with
  `connection_lost(None)`; bytes that reach a closed end reset the writer (a closed socket's
  kernel answers them with an RST), and so do bytes left unread when an end closes;
* `abort()` is a reset: its own `connection_lost(None)`, the peer's
  `connection_lost(ConnectionResetError)`, buffered bytes both ways dropped;
* back-pressure: bytes written stay in the writer's buffer until the reader reads them, so a
  reader that pauses reading (or closes) makes the writer's buffer pass its high-water mark
  and the writer's protocol gets `pause_writing()` (`resume_writing()` below the low mark,
  `set_write_buffer_limits` as asyncio's: 64 KiB / 16 KiB by default): a writer that honours
  it holds at most about the high-water mark, and nothing is buffered anywhere else;
* `connection_lost` exactly once on each side; `is_closing()`; `get_extra_info` gives the
  `peername` and `sockname` a socket would (the client's address is the source address the
  kernel would pick to reach the server, with a port from the ephemeral range) and `socket`
  None.

Counted like a socket connection: the server's protocol is made by the same factory, so its
per-address cap, idle timer and statistics see a memory connection as any other; a server
that stopped serving (`Server.close()`) refuses new ones (ConnectionRefusedError). There is no
accept backlog: a memory connection is accepted at once.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
from typing import Callable, Optional

__all__ = ["LocalServers", "MemoryTransport"]

HIGH_WATER = 64 * 1024   # asyncio's defaults for a socket transport
# the ephemeral port range (Linux's default): a memory connection's client port
_PORTS = range(32768, 61000)


def _reset_error() -> ConnectionResetError:
    return ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory connection (made in pairs by `LocalServers.connect`)."""

    __slots__ = ("_loop", "_protocol", "_peer", "_buf", "_size", "_eof", "_fin_sent",
                 "_closing", "_reading", "_dead", "_lost", "_flush_handle", "_high", "_low",
                 "_writing_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, sockname: tuple, peername: tuple,
                 protocol: asyncio.BaseProtocol) -> None:
        super().__init__({"peername": peername, "sockname": sockname, "socket": None})
        self._loop = loop
        self._protocol = protocol
        self._peer: Optional[MemoryTransport] = None
        self._buf: list[bytes] = []       # written, not yet read by the peer
        self._size = 0
        self._eof = False                 # write_eof() called
        self._fin_sent = False            # our FIN reached the peer's protocol
        self._closing = False             # close() or abort() called, or the end is gone
        self._reading = True
        self._dead = False                # gone: connection_lost is scheduled or done
        self._lost = False                # connection_lost called
        self._flush_handle: Optional[asyncio.Handle] = None
        self._high = HIGH_WATER
        self._low = HIGH_WATER // 4
        self._writing_paused = False

    @staticmethod
    def pair(loop: asyncio.AbstractEventLoop, client_protocol: asyncio.BaseProtocol,
             client_address: tuple, server_protocol: asyncio.BaseProtocol,
             server_address: tuple) -> tuple["MemoryTransport", "MemoryTransport"]:
        """Two connected ends (client's, server's); `connection_made` is not called yet
        (`start` does)."""
        client = MemoryTransport(loop, client_address, server_address, client_protocol)
        server = MemoryTransport(loop, server_address, client_address, server_protocol)
        client._peer, server._peer = server, client
        return client, server

    # -- BaseTransport
    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; once what was written has been read, `connection_lost(None)`, and
        the FIN for the peer to read."""
        if self._closing:
            return
        self._closing = True
        if not self._buf:
            self._finish()
        else:
            self._schedule_flush()

    def abort(self) -> None:
        """Reset the connection: buffered bytes dropped, the peer gets
        `connection_lost(ConnectionResetError)`."""
        self._force_close(None)

    # -- ReadTransport
    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        if self.is_reading():
            self._reading = False

    def resume_reading(self) -> None:
        if self._closing or self._reading:
            return
        self._reading = True
        peer = self._peer
        if peer is not None:
            peer._schedule_flush()   # what waited for us

    # -- WriteTransport
    def write(self, data) -> None:
        if type(data) is not bytes:   # kept as written: a bytearray may change after
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, "
                                f"not {type(data).__name__!r}")
            data = bytes(data)
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._dead:   # a lost connection's writes go nowhere, as asyncio's
            return
        self._buf.append(data)
        self._size += len(data)
        if self._flush_handle is None:   # `_schedule_flush`, inline: once per NOOP each way
            self._flush_handle = self._loop.call_soon(self._flush)
        if self._size > self._high and not self._writing_paused:
            self._writing_paused = True
            self._call("pause_writing")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._schedule_flush()

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: Optional[int] = None,
                                low: Optional[int] = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        if self._size > high and not self._writing_paused:
            self._writing_paused = True
            self._call("pause_writing")

    # -- the connection
    def start(self, waiter: Optional[asyncio.Future] = None) -> None:
        """`connection_made` (then `waiter`'s result, if it still waits)."""
        self._invoke("connection_made", self)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._peer is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Our bytes, then our FIN, to the peer's protocol, when it reads (a closed end's
        FIN is still delivered after its own `connection_lost`, as a kernel's would be)."""
        self._flush_handle = None
        peer = self._peer
        if peer is None:
            return
        if peer._dead:
            if not self._dead:
                if self._buf:      # bytes to a closed end: its kernel answers with an RST
                    self._force_close(_reset_error(), reset_peer=False)
                elif self._closing:
                    self._finish()
            return
        if not peer.is_reading():  # paused or closing: it calls us when it reads again
            return
        if self._buf:
            buf = self._buf
            data = buf[0] if len(buf) == 1 else b"".join(buf)
            self._buf = []
            self._size = 0
            peer._invoke("data_received", data)
            if self._writing_paused and self._size <= self._low and not self._dead:
                self._writing_paused = False
                self._call("resume_writing")
            if self._buf or peer._dead:     # more written meanwhile, or a reset
                self._schedule_flush()
                return
            if not peer.is_reading():
                return
        if (self._eof or self._closing) and not self._fin_sent:
            self._fin_sent = True
            keep_open = peer._invoke("eof_received")
            if not keep_open:        # (a failed callback has reset it: close is a no-op)
                peer.close()
        if self._closing and not self._dead:
            self._finish()

    def _finish(self) -> None:
        """Our close is done (nothing of ours left unread): `connection_lost(None)` next;
        our FIN waits for the peer to read it, unless the peer had sent us bytes we never
        read: those reset it, as a socket closed with unread data does."""
        self._dead = True
        self._loop.call_soon(self._connection_lost, None)
        peer = self._peer
        if peer._dead:
            return
        if peer._buf:
            self._fin_sent = True
            peer._force_close(_reset_error(), reset_peer=False)
            return
        peer._schedule_flush()        # a close of its own that waited for us can end
        if not self._fin_sent:
            self._schedule_flush()

    def _force_close(self, exc: Optional[BaseException], reset_peer: bool = True) -> None:
        if self._dead:
            return
        self._dead = self._closing = True
        self._fin_sent = True         # a reset: no FIN follows
        self._buf = []
        self._size = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._loop.call_soon(self._connection_lost, exc)
        peer = self._peer
        if reset_peer and peer is not None and not peer._dead:
            peer._force_close(_reset_error(), reset_peer=False)

    def _invoke(self, callback: str, *args):
        """Our protocol's `callback(*args)`; one that raises is reported and the connection
        reset (asyncio's transports end with `connection_lost(exc)` too)."""
        try:
            return getattr(self._protocol, callback)(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"Fatal error: protocol.{callback}() call failed.",
                "exception": exc, "transport": self, "protocol": self._protocol})
            self._force_close(exc)
            return None

    def _connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._lost:
            return
        self._lost = True
        protocol, self._protocol = self._protocol, None
        peer = self._peer
        if peer is not None and peer._lost:   # both ends gone: no cycle left behind
            self._peer = peer._peer = None
        protocol.connection_lost(exc)

    def _call(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed.", "exception": exc,
                "transport": self, "protocol": self._protocol})

    def __repr__(self) -> str:
        state = "closed" if self._dead else "closing" if self._closing else "open"
        return (f"<MemoryTransport {state} {self._extra['sockname']}->"
                f"{self._extra['peername']} buffered={self._size}>")


class LocalServers:
    """The lab's servers in this process, by the address they listen on: a connection to
    one from the same loop is a `MemoryTransport` pair, to any other address a socket."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, int], tuple[Callable, asyncio.AbstractServer]] = {}
        self._sources: dict[str, str] = {}
        self._ports = itertools.cycle(_PORTS)

    def add(self, server: asyncio.AbstractServer,
            protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        """Register `server` (listening, made with `protocol_factory`) at every address it
        is bound to."""
        for sock in server.sockets:
            name = sock.getsockname()
            self._servers[(name[0], name[1])] = (protocol_factory, server)

    def __contains__(self, address: tuple[str, int]) -> bool:
        return tuple(address) in self._servers

    async def connect(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                      host: str, port: int, source: Optional[tuple[str, int]] = None
                      ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """As `loop.create_connection(protocol_factory, host, port, local_addr=source)`: in
        memory when a server of this loop listens there (from `source`, the client's
        address and port as the server sees them; default: the address the kernel would
        pick and a port of the ephemeral range)."""
        loop = asyncio.get_running_loop()
        entry = self._servers.get((host, port))
        if entry is None or entry[1].get_loop() is not loop:
            return await loop.create_connection(protocol_factory, host, port,
                                                local_addr=source)
        factory, server = entry
        if not server.is_serving():
            raise ConnectionRefusedError(errno.ECONNREFUSED,
                                         f"Connect call failed {(host, port)}")
        if source is None:
            source = (self._source(host), next(self._ports))
        protocol = protocol_factory()
        client, accepted = MemoryTransport.pair(loop, protocol, source, factory(),
                                                (host, port))
        waiter = loop.create_future()
        loop.call_soon(accepted.start)          # the accept first, as a listener's
        loop.call_soon(client.start, waiter)
        try:
            await waiter
        except BaseException:
            client.close()
            raise
        return client, protocol

    def _source(self, host: str) -> str:
        """The source address the kernel picks to reach `host` (127.0.0.1 for all of
        127.0.0.0/8 on Linux): a UDP socket's connect sends nothing."""
        src = self._sources.get(host)
        if src is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, 9))
                src = s.getsockname()[0]
            self._sources[host] = src
        return src
