"""Recording with no relay: the lab's servers report their own connections to the tap.

A lab that records but has neither a carrier NAT nor faults needs nothing between a phone and
a server, and a pass-through relay costs a recording lab every byte read and written once
more (bench/bench_tap.py: the relay alone took ~a third of the plain lab's capacity). So the
servers' listeners take their protocols through `TransportTap.wrap`: each accepted connection
gets a `_Tapped` protocol in front of the server's own, and the server writes through a
`_TapTransport` in front of the socket's transport. For TLS the wrapper sits *under* the TLS
layer (an asyncio `SSLProtocol` made here, as `loop.create_server(ssl=...)` makes one), so
the capture holds the TLS records as they crossed the wire.

What is reported, and when, is what the relay (`mocks/nat.py`) reports on its client side,
so the captures mean the same:

* `tcp_open(phone, our address)` at the accept;
* every chunk read, before the server sees it, and every chunk the server writes, at the
  write;
* the phone's FIN (`eof_received`) and reset (`connection_lost` with an error);
* the server's FIN: `close()`, `write_eof()`, `abort()`, or the transport closing itself
  after the phone's FIN when the server's protocol does not keep it half-open.

A server that closes first would stop reading, and the phone's FIN that a real kernel still
carries (and the relay showed) would be lost. So `close()` is a half-close underneath: the
FIN goes out once the write buffer is flushed (`write_eof`), the server's protocol is told the
connection is lost when it would have been (the buffer flushed), and the socket is read on for
the phone's FIN or reset, `LINGER_S` at most; bytes the phone sends after that FIN are
answered with a reset, as a closed socket's kernel does (and as the relay rendered it).

Everything runs in the event loop's thread; the tap is held through `GuardedTap`, so a broken
tap never breaks a server.
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto
from typing import Any, Callable, Optional

from testbed.capture.tap import GuardedTap

__all__ = ["TransportTap", "LINGER_S"]

#: wall seconds a connection the server closed is read on for the phone's FIN
LINGER_S = 30.0
_FLUSH_POLL_S = 0.005   # how often a half-closed connection looks whether it is flushed


class TransportTap:
    """Wraps servers' protocol factories so that their connections are reported to `tap`
    (a `testbed.capture.tap.Tap`). `close()` ends the connections still lingering."""

    def __init__(self, tap: Any) -> None:
        self.tap = GuardedTap(tap, "lab transports")
        self._lingering: set["_TapBase"] = set()

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol], *, ssl_context=None,
             ssl_handshake_timeout: Optional[float] = None,
             ssl_shutdown_timeout: Optional[float] = None
             ) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory for `loop.create_server` (without its `ssl=`: with
        `ssl_context` the TLS layer is made here, under the tap's view of the wire)."""
        if ssl_context is None:
            return lambda: _Tapped(self, factory())

        def tls() -> asyncio.BaseProtocol:
            inner = sslproto.SSLProtocol(
                asyncio.get_running_loop(), factory(), ssl_context, None, server_side=True,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
            return _TappedBuffered(self, inner)
        return tls

    @property
    def lingering(self) -> int:
        """Connections the server closed that wait for the phone's FIN."""
        return len(self._lingering)

    def close(self) -> None:
        """Abort what still lingers (the lab stops; the server side said its FIN already)."""
        for t in list(self._lingering):
            t.end_linger()


class _TapBase(asyncio.BaseProtocol):
    """In front of one accepted connection's server protocol: all but how bytes arrive."""

    __slots__ = ("owner", "inner", "conn", "raw", "half_closed", "phone_fin", "inner_lost",
                 "timer")

    def __init__(self, owner: TransportTap, inner: asyncio.BaseProtocol) -> None:
        self.owner = owner
        self.inner = inner
        self.conn = None                 # the tap's connection, once accepted
        self.raw: Optional[asyncio.Transport] = None
        self.half_closed = False         # the server closed; reading on for the phone's FIN
        self.phone_fin = False
        self.inner_lost = False          # the server's protocol was told connection_lost
        self.timer: Optional[asyncio.TimerHandle] = None

    # -- from the socket's transport
    def connection_made(self, transport) -> None:
        self.raw = transport
        peer = transport.get_extra_info("peername")
        here = transport.get_extra_info("sockname")
        if peer and here:
            self.conn = self.owner.tap.tcp_open(tuple(peer[:2]), tuple(here[:2]))
        self.inner.connection_made(_TapTransport(transport, self))

    def _read(self, data) -> bool:
        """Report what the phone sent; False if the server had closed (a reset answers)."""
        if self.conn is not None:
            self.owner.tap.tcp_data(self.conn, True, data)
        if not self.half_closed:
            return True
        if self.conn is not None:
            self.owner.tap.tcp_close(self.conn, False, reset=True)
        self.raw.abort()
        return False

    def eof_received(self):
        self.phone_fin = True
        if self.conn is not None:
            self.owner.tap.tcp_close(self.conn, True)
        if self.half_closed:
            return False            # our FIN went out before: the transport closes now
        keep = self.inner.eof_received()
        if not keep:
            self.server_fin()       # the transport closes itself: our FIN
        return keep

    def connection_lost(self, exc) -> None:
        if exc is not None and self.conn is not None:
            self.owner.tap.tcp_close(self.conn, True, reset=True)    # the phone reset
        self._stop_linger()
        self.lose_inner(exc)

    def pause_writing(self) -> None:
        if not self.inner_lost:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.inner_lost:
            self.inner.resume_writing()

    # -- from the server, through _TapTransport
    def server_fin(self) -> None:
        if self.conn is not None:
            self.owner.tap.tcp_close(self.conn, False)

    def server_close(self) -> None:
        """The server's `close()`: the FIN after what is buffered, then read on."""
        raw = self.raw
        if self.phone_fin or raw.is_closing() or not raw.can_write_eof():
            self.server_fin()
            raw.close()
            return
        try:
            raw.write_eof()
        except OSError:
            # the phone reset the connection and this loop has not read that yet: no FIN
            # can go out, and a transport's close() must not raise; the capture shows the
            # reset, as the socket's end does
            if self.conn is not None:
                self.owner.tap.tcp_close(self.conn, True, reset=True)
            raw.abort()
            return
        self.server_fin()
        self.half_closed = True
        self.owner._lingering.add(self)
        self.timer = asyncio.get_running_loop().call_later(LINGER_S, self.end_linger)
        self._lose_when_flushed()

    def _lose_when_flushed(self) -> None:
        if self.inner_lost:
            return
        if self.raw.get_write_buffer_size() == 0 or self.raw.is_closing():
            asyncio.get_running_loop().call_soon(self.lose_inner, None)
        else:
            asyncio.get_running_loop().call_later(_FLUSH_POLL_S, self._lose_when_flushed)

    def lose_inner(self, exc) -> None:
        if not self.inner_lost:
            self.inner_lost = True
            self.inner.connection_lost(exc)

    def end_linger(self) -> None:
        """No FIN from the phone in time (or the lab stops): let the socket go."""
        self._stop_linger()
        self.raw.abort()

    def _stop_linger(self) -> None:
        self.owner._lingering.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Tapped(_TapBase, asyncio.Protocol):
    """In front of a server protocol that takes its bytes by `data_received`."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if self._read(data):
            self.inner.data_received(data)


class _TappedBuffered(_TapBase, asyncio.BufferedProtocol):
    """In front of a buffered protocol (asyncio's `SSLProtocol` is one): the bytes read are
    reported from the protocol's own buffer. Not an `asyncio.Protocol`, which uvloop would
    take for a reason to call `data_received` instead."""

    __slots__ = ("buf",)

    def __init__(self, owner: TransportTap, inner: asyncio.BufferedProtocol) -> None:
        super().__init__(owner, inner)
        self.buf = None

    def get_buffer(self, sizehint: int):
        self.buf = self.inner.get_buffer(sizehint)
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        if self._read(bytes(memoryview(self.buf)[:nbytes])):
            self.inner.buffer_updated(nbytes)


class _TapTransport(asyncio.Transport):
    """The socket's transport as the server's protocol holds it: what it writes, and how it
    closes, reported first; everything else handed on."""

    __slots__ = ("_raw", "_p", "_closing")

    def __init__(self, raw: asyncio.Transport, p: _TapBase) -> None:
        super().__init__()
        self._raw = raw
        self._p = p
        self._closing = False

    def write(self, data) -> None:
        if self._closing:
            return
        p = self._p
        if p.conn is not None and data:
            p.owner.tap.tcp_data(p.conn, False, data)
        self._raw.write(data)

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._p.server_fin()
        self._raw.write_eof()

    def can_write_eof(self) -> bool:
        return self._raw.can_write_eof()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._p.server_close()

    def abort(self) -> None:
        self._end()
        self._raw.abort()

    def _force_close(self, exc) -> None:
        """What asyncio's `SSLProtocol` calls on a fatal error."""
        self._end()
        force = getattr(self._raw, "_force_close", None)
        if force is not None:
            force(exc)
        else:
            self._raw.abort()

    def _end(self) -> None:
        if not self._closing:
            self._closing = True
            self._p.server_fin()
        self._p._stop_linger()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def get_extra_info(self, name, default=None):
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self):
        return self._raw.get_write_buffer_limits()

    def set_protocol(self, protocol) -> None:
        self._p.inner = protocol

    def get_protocol(self):
        return self._p.inner
