"""A lean HTTP/1.1 server for one request per connection (the short link, PROTOCOL 3): an
`asyncio.Protocol` per connection with the `httptools` parser, the answer written with one
`transport.write`, then the close.

Why not aiohttp: on the short link every request is a new connection, and aiohttp's Python
machinery per connection and request (its `RequestHandler`, the request and response
objects, a socket object for `tcp_nodelay`) cost as much as everything else the server does
(docs/benchmarks.md, "Scale-out"). What a connection may hold is bounded here as it was
there (docs/robustness.md): the head must come within `request_head_wall_s` of the accept,
the body at `body_min_rate` bytes/s on average once `body_grace_wall_s` have passed (408),
a body over `max_body` is refused (413), a refused body is drained at most `drain_max_bytes`
for `drain_wall_s` so that the client reads our status rather than a reset, the TLS port
has its handshake and close_notify deadlines, and one address holds at most
`max_connections_per_address` connections. A malformed request is answered 400 with one log
line; a request line without a version 400, one past HTTP/1.1 505, both in HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Optional, Protocol
from urllib.parse import unquote

import httptools

from testbed.lab.profiles import Limits

from .http_site import SHUTDOWN_GRACE_S, server_options
from .limits import AddressCap, peer_address
from .memory_transport import LocalServers

log = logging.getLogger(__name__)

MAX_LINE = 8190          # the request line, or one header field (aiohttp's limit too)
MAX_HEAD = 64 * 1024     # the whole head
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large",
           505: "HTTP Version Not Supported"}
# a request line without "HTTP/x.y" (HTTP/0.9 style) and one with a version past 1.1
BAD_VERSION = {
    400: b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
         b"Connection: close\r\n\r\nthe request line has no version\r\n",
    505: b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 23\r\nConnection: close\r\n\r\nHTTP/1.0 and 1.1 only\r\n",
}

_HEAD, _BODY, _HANDLING, _DRAIN, _CLOSED = range(5)
_heads: dict[tuple, bytes] = {}   # (status, content type, HTTP/1.0?) -> status line + headers


def response_head(status: int, content_type: str, length: int, http10: bool = False) -> bytes:
    """The status line and headers of an answer that closes its connection."""
    key = (status, content_type, http10)
    head = _heads.get(key)
    if head is None:
        head = _heads[key] = (f"HTTP/1.{0 if http10 else 1} {status} "
                              f"{REASONS.get(status, 'Unknown')}\r\n"
                              f"Content-Type: {content_type}\r\nConnection: close\r\n"
                              f"Content-Length: ").encode()
    return b"%s%d\r\n\r\n" % (head, length)


Reply = tuple[int, bytes, str]   # status, body, content type


class App(Protocol):
    """What a `OneShotServer` serves."""

    def head(self, exchange: "Exchange") -> Optional[Reply]:
        """Called once the head is in: a reply refuses the request at once (its body is
        drained, not read); None reads the body, then calls `handle`."""

    def handle(self, exchange: "Exchange") -> Awaitable[None]:
        """Answer the request (`Exchange.respond`, or `abort`) with its whole body."""


class _TooLarge(Exception):
    pass


class Exchange(asyncio.Protocol):
    """One connection and its one request: what was asked (`method`, `path`, `http10`,
    `body`, `peer`, `secure`) and how to answer it."""

    __slots__ = ("server", "secure", "transport", "peer", "method", "path", "http10",
                 "body", "_address", "_parser", "_state", "_url", "_length", "_chunks",
                 "_size", "_head_bytes", "_parsed", "_timer", "_start", "_drained", "_task")

    def __init__(self, server: "OneShotServer", secure: bool) -> None:
        self.server = server
        self.secure = secure
        self.transport: Optional[asyncio.Transport] = None
        self.peer = None
        self.method = self.path = ""
        self.http10 = False
        self.body = b""
        self._address: Optional[str] = None
        self._parser = None
        self._state = _HEAD
        self._url = b""
        self._length: Optional[int] = None
        self._chunks: list[bytes] = []
        self._size = self._head_bytes = self._parsed = self._drained = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._start = 0.0
        self._task: Optional[asyncio.Task] = None

    # ------------------------------------------------------------------ the answer
    def respond(self, status: int, body: bytes = b"", content_type: str = "text/plain", *,
                cut: Optional[int] = None, close: bool = True) -> None:
        """Send the answer and close (with `cut`, only the body's first `cut` bytes after
        headers that promise all of it: a truncated answer; without `close`, the connection
        stays open for a drain)."""
        counts = self.server.status_counts
        counts[status] = counts.get(status, 0) + 1
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(response_head(status, content_type, len(body), self.http10)
                            + (body if cut is None else body[:cut]))
            if close:
                transport.close()

    def abort(self) -> None:
        """Drop the connection without an answer."""
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ the connection
    def connection_made(self, transport) -> None:
        server = self.server
        server.connections += 1
        self.peer = transport.get_extra_info("peername")
        address = peer_address(self.peer)
        if not server.address_cap.admit(address):
            transport.abort()
            self._state = _CLOSED
            return
        self._address = address
        self.transport = transport
        self._parser = httptools.HttpRequestParser(self)
        self._timer = server.loop.call_later(server.limits.request_head_wall_s,
                                             self._head_late)
        server.open.add(self)

    def connection_lost(self, exc) -> None:
        server = self.server
        if self._address is not None:
            server.address_cap.release(self._address)
            self._address = None
        server.open.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state == _BODY:
            server.disconnects += 1
            log.debug("%s %s: client gone mid-body", server.name, self.peer)
        if self._state != _HANDLING:
            self._state = _CLOSED
        self.transport = None

    def eof_received(self):
        # a client that ends its side after a whole request still gets the answer (TLS
        # cannot stay half-open: asyncio closes it whatever we return)
        return True if self._state == _HANDLING and not self.secure else None

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state >= _HANDLING and state != _DRAIN:
            return   # one request per connection: what follows it is not read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or Upgrade: the parser stops at the head, which is all we take
            if self._state == _BODY or self._state == _DRAIN:
                self.on_message_complete()
        except (httptools.HttpParserError, _TooLarge) as exc:
            # httptools raises its own error for one a callback raised, chained to it
            cause = exc.__cause__ or exc.__context__
            self._malformed(cause if isinstance(cause, _TooLarge) else exc)
        else:
            if self._state == _HEAD:   # a head still coming (a field not ended yet)
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self._malformed(_TooLarge(431, "request head too large"))
            elif self._state == _BODY:
                if self._timer is None and self.server.limits.body_min_rate:
                    self._timer = self.server.loop.call_at(self._start, self._rate_check)
            elif self._state == _DRAIN and \
                    self._drained >= self.server.limits.drain_max_bytes:
                self._drain_over()   # read in whole segments, as they came

    # ------------------------------------------------------------------ parser callbacks
    def on_url(self, url: bytes) -> None:
        if self._state == _HEAD:
            self._url += url
            if len(self._url) > MAX_LINE:
                raise _TooLarge(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state != _HEAD:
            return
        size = len(name) + len(value)
        if size > MAX_LINE:
            raise _TooLarge(431, "header field too long")
        # counted as parsed too: a whole head that came in one segment is bounded as well
        self._parsed += size + 4
        if self._parsed > MAX_HEAD:
            raise _TooLarge(431, "request head too large")
        if len(name) == 14 and name.lower() == b"content-length":
            self._length = int(value)   # the parser has checked it is one decimal number

    def on_headers_complete(self) -> None:
        if self._state != _HEAD:
            return
        server = self.server
        self._timer.cancel()
        self._timer = None
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            return self._bad_version(version)
        self.http10 = version == "1.0"
        url = self._url
        if url[:1] == b"/":
            path = url.split(b"?", 1)[0].split(b"#", 1)[0]
        else:
            path = httptools.parse_url(url).path or b"/"   # an absolute URL
        path = path.decode("utf-8", "surrogateescape")
        self.path = unquote(path) if "%" in path else path
        self.method = parser.get_method().decode("ascii", "replace")
        refusal = server.app.head(self)
        if refusal is None and self._length is not None and self._length > server.max_body:
            refusal = (413, b"body over 1 MiB\n", "text/plain")
        if refusal is not None:
            return self._refuse(*refusal)
        self._state = _BODY
        self._start = server.loop.time() + server.limits.body_grace_wall_s

    def on_body(self, data: bytes) -> None:
        state = self._state
        if state == _BODY:
            self._size += len(data)
            if self._size > self.server.max_body:
                self._refuse(413, b"body over 1 MiB\n", "text/plain")
            else:
                self._chunks.append(data)
        elif state == _DRAIN:
            self._drained += len(data)   # past the limit, `data_received` stops the drain

    def on_message_complete(self) -> None:
        if self._state == _BODY:
            self._state = _HANDLING
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            chunks = self._chunks
            self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
            self._task = self.server.loop.create_task(self._run())
        elif self._state == _DRAIN:
            self._drain_over()

    # ------------------------------------------------------------------ the rest
    async def _run(self) -> None:
        server = self.server
        try:
            await server.app.handle(self)
        except Exception:  # noqa: BLE001 - the app's own bug: logged, the connection goes
            log.exception("%s handler failed", server.name)
            self.abort()
        finally:
            self._task = None
            self._state = _CLOSED
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    def _head_late(self) -> None:
        self._timer = None
        if self._state == _HEAD and self.transport is not None:
            self._state = _CLOSED
            self.transport.close()

    def _rate_check(self) -> None:
        self._timer = None
        if self._state != _BODY:
            return
        loop = self.server.loop
        due = self._start + self._size / self.server.limits.body_min_rate
        if loop.time() < due:
            self._timer = loop.call_at(due, self._rate_check)
            return
        log.info("%s %s: body too slow (%d bytes), 408", self.server.name, self.peer,
                 self._size)
        self._refuse(408, b"body too slow\n", "text/plain")

    def _refuse(self, status: int, body: bytes, content_type: str) -> None:
        """Answer at once, then read and discard the rest of the body: at most
        `drain_max_bytes`, for at most `drain_wall_s` (a client sending gigabytes costs a
        bounded read, not a bounded time of reading), then close."""
        self.respond(status, body, content_type, close=False)
        self._chunks = []
        self._state = _DRAIN
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.server.loop.call_later(self.server.limits.drain_wall_s,
                                                  self._drain_over)

    def _drain_over(self) -> None:
        if self._state != _DRAIN:
            return
        self._state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.drained_bytes += self._drained
        if self.transport is not None:
            self.transport.close()

    def _bad_version(self, version: str) -> None:
        status = 400 if version < "1.0" else 505
        counts = self.server.status_counts
        counts[status] = counts.get(status, 0) + 1
        log.info("%s %s: request line version %s, %d", self.server.name, self.peer,
                 "none" if status == 400 else version, status)
        self._state = _CLOSED
        self.transport.write(BAD_VERSION[status])
        self.transport.close()

    def _malformed(self, exc: Exception) -> None:
        if self._state == _DRAIN:   # the refusal is sent: stop reading
            return self._drain_over()
        if self._state not in (_HEAD, _BODY):
            return
        status, why = exc.args if isinstance(exc, _TooLarge) else (400, str(exc))
        log.info("%s %s: bad request: %s", self.server.name, self.peer, " ".join(why.split()))
        self._state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.respond(status, f"bad request: {why}\n".encode(), "text/plain")


class OneShotServer:
    """Serves `app` one request per connection on any number of ports (`listen`), with the
    profile's `limits`; counts what it answered (`status_counts`), the clients gone
    mid-body (`disconnects`), the bytes of refused bodies drained (`drained_bytes`) and the
    connections accepted (`connections`)."""

    def __init__(self, app: App, limits: Limits, *, max_body: int,
                 name: str = "http") -> None:
        self.app = app
        self.limits = limits
        self.max_body = max_body
        self.name = name   # what log lines start with
        self.status_counts: dict[int, int] = {}
        self.disconnects = 0
        self.drained_bytes = 0
        self.connections = 0
        self.address_cap = AddressCap(limits.max_connections_per_address)
        self.open: set[Exchange] = set()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._servers: list[asyncio.base_events.Server] = []

    async def listen(self, host: str, port: int, ssl_context=None, *,
                     reuse_port: bool = False, transport_tap=None,
                     local: Optional[LocalServers] = None) -> int:
        """Serve on host:port (TLS if `ssl_context`; `reuse_port`: share the port with other
        processes, `SO_REUSEPORT`; `transport_tap`: a recording lab's, `mocks.transport_tap`;
        `local`: the lab's `LocalServers`, where a plain, untapped port is added so that a
        relay in this loop reaches it in memory); returns the bound port."""
        self.loop = asyncio.get_running_loop()
        secure = ssl_context is not None
        factory, kwargs = server_options(lambda: Exchange(self, secure), self.limits,
                                         ssl_context, transport_tap)
        server = await self.loop.create_server(factory, host, port,
                                               reuse_port=reuse_port or None, **kwargs)
        self._servers.append(server)
        if local is not None and not secure and transport_tap is None:
            local.add(server, factory)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, give requests being handled `SHUTDOWN_GRACE_S`, then cancel
        them; connections not answered are dropped."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        tasks = [ex._task for ex in self.open if ex._task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
        for ex in list(self.open):
            if ex.transport is not None and not ex.transport.is_closing():
                ex.transport.abort()
