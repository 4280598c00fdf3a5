"""aiohttp servers on listening sockets of our own: the accept backlog, the TLS deadlines, the
per-address cap, the request-head deadline, and one log line per malformed request.

aiohttp's `TCPSite` takes a backlog but neither of asyncio's TLS deadlines
(`ssl_handshake_timeout`, `ssl_shutdown_timeout`: without them a client that stops halfway
through a handshake holds a socket for 60 s, and one that never sends close_notify holds it
for 30 s after our response), and it has no per-address cap. `GuardedSite` is a `BaseSite`
that listens with all of them and puts `CappedProtocol` in front of aiohttp's protocol (and,
in a recording lab, `mocks.transport_tap` in front of both).
`server_options` are the listening socket's options (the short link's own server,
`mocks.one_shot_http`, listens with them too); `handler_options(limits)` are the options
every aiohttp server of the lab is made with: the head deadline (aiohttp's keep-alive
timeout, which it arms when a connection opens and only a complete request head stops), no
lingering after a response, and `QuietLog`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Callable, Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from testbed.lab.profiles import Limits

from .limits import AddressCap, peer_address

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 1.0   # a stopping server gives requests in progress this long, then cancels


class QuietLog(logging.LoggerAdapter):
    """What aiohttp's request handler logs, with a malformed request (a parse error) or a
    client gone mid-request as one INFO line without a traceback; anything else (a bug)
    goes through as aiohttp logged it."""

    def __init__(self, logger: logging.Logger = log) -> None:
        super().__init__(logger, {})
        self.quieted = 0   # lines made one-line

    def log(self, level, msg, *args, exc_info=None, **kwargs) -> None:
        exc = exc_info
        if exc is True:
            exc = sys.exc_info()[1]
        elif isinstance(exc, tuple):
            exc = exc[1]
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            self.quieted += 1
            text = msg % args if args else str(msg)
            detail = " ".join(str(exc).split())   # aiohttp's messages span several lines
            self.logger.info("%s: %s", text, detail)
            return
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)


def server_options(factory: Callable[[], asyncio.BaseProtocol], limits: Limits,
                   ssl_context=None, transport_tap=None
                   ) -> tuple[Callable[[], asyncio.BaseProtocol], dict[str, Any]]:
    """The protocol factory and keyword arguments for `loop.create_server` of a lab HTTP
    server: the backlog, on a TLS port the handshake and close_notify deadlines, and in a
    recording lab `transport_tap` (`mocks.transport_tap`) in front, TLS made under it."""
    kwargs: dict[str, Any] = {"backlog": limits.listen_backlog, "reuse_address": True}
    tls: dict[str, Any] = {}
    if ssl_context is not None:
        tls = {"ssl_handshake_timeout": limits.tls_handshake_wall_s,
               "ssl_shutdown_timeout": limits.tls_close_wall_s}
    if transport_tap is not None:     # TLS under the tap: it sees the records
        factory = transport_tap.wrap(factory, ssl_context=ssl_context, **tls)
    elif ssl_context is not None:
        kwargs.update(ssl=ssl_context, **tls)
    return factory, kwargs


def handler_options(limits: Limits) -> dict[str, Any]:
    """Keyword arguments for `web.Server` / `web.AppRunner` (they reach aiohttp's
    `RequestHandler`): the head deadline, no lingering close, the quiet log."""
    return {"keepalive_timeout": limits.request_head_wall_s, "lingering_time": 0,
            "logger": QuietLog()}


class CappedProtocol(asyncio.Protocol):
    """In front of one connection's aiohttp protocol: a connection from an address over
    `cap` is aborted before aiohttp sees it; else every callback is handed on."""

    __slots__ = ("_factory", "_cap", "_inner", "_address")

    def __init__(self, factory, cap: AddressCap) -> None:
        self._factory = factory
        self._cap = cap
        self._inner: Optional[asyncio.Protocol] = None
        self._address: Optional[str] = None

    def connection_made(self, transport) -> None:
        address = peer_address(transport.get_extra_info("peername"))
        if not self._cap.admit(address):
            transport.abort()
            return
        self._address = address
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self._address is not None:
            self._cap.release(self._address)
            self._address = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP (or TLS) site of `runner` on host:port with the lab's limits: the backlog, the
    TLS handshake and close_notify deadlines, and `cap` per client address."""

    __slots__ = ("_host", "_port", "_limits", "_cap", "_reuse_port", "_transport_tap")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limits: Limits,
                 cap: AddressCap, ssl_context=None, reuse_port: bool = False,
                 transport_tap=None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=limits.listen_backlog)
        self._host, self._port = host, port
        self._limits = limits
        self._cap = cap
        self._reuse_port = reuse_port
        self._transport_tap = transport_tap   # a recording lab's `TransportTap`, if any

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        factory, kwargs = server_options(lambda: CappedProtocol(server, self._cap), self._limits,
                                         self._ssl_context, self._transport_tap)
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, reuse_port=self._reuse_port or None, **kwargs)
