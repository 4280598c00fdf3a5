"""The short link (PROTOCOL.md section 3): CGI over HTTP/1.1, one request per connection.

A low-level `aiohttp.web.Server` rather than an `Application`: every path goes through one
handler that applies the contract's checks in order (404, 405, 403 for a password login
outside TLS, 413), so no router is needed and nothing aiohttp adds answers for us.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11

from testbed.lab.faults import Faults
from testbed.lab.profiles import Limits
from testbed.wire import (BY_PATH, Door, Hangup, RemoteProtocolError, Ret, ServiceError,
                          decode_request, error_body)

from .faults import faulted_response
from .http_site import SHUTDOWN_GRACE_S, GuardedSite, handler_options
from .limits import AddressCap
from .service import RequestContext, Service
from .stats import count_request

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20          # PROTOCOL 3: a body over 1 MiB gets 413
OCTET = "application/octet-stream"
_CLOSE_OCTET = {"Content-Type": OCTET, "Connection": "close"}   # every CGI answer's headers
# aiohttp answers in the request's version: "HTTP/0.9 400" to a request line without one,
# "HTTP/2.0 200" to one that says 2.0; what we answer those with instead, in HTTP/1.1
_BAD_VERSION = {
    400: b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
         b"Connection: close\r\n\r\nthe request line has no version\r\n",
    505: b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 23\r\nConnection: close\r\n\r\nHTTP/1.0 and 1.1 only\r\n",
}


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass



class ShortLinkServer:
    """One handler for the plain and the TLS port; `request.secure` tells them apart.

    The profile's `limits` bound what a client can hold (docs/robustness.md): the head must
    arrive within `request_head_wall_s` of the accept (else the connection is closed), the
    body at `body_min_rate` bytes/s on average once `body_grace_wall_s` have passed (else
    408), a refused body is drained at most `drain_max_bytes` for `drain_wall_s`, the TLS
    port's handshake and close_notify have their deadlines, and one address holds at most
    `max_connections_per_address` connections.
    """

    def __init__(self, service: Service, process: Optional[str] = None,
                 faults: Optional[Faults] = None, *, limits: Limits = Limits()) -> None:
        self.service = service
        self.process = process   # counted as the serving process (`mocks.stats`), if named
        self.faults = faults     # the lab's faults: the Nth response of a CGI
        self.limits = limits
        self._stopping = asyncio.Event()
        self.errors: list[BaseException] = []
        self.status_counts: dict[int, int] = {}
        self.disconnects = 0        # clients gone before the whole body came
        self.drained_bytes = 0      # bytes of refused bodies read and discarded
        self.address_cap = AddressCap(limits.max_connections_per_address)
        self.runners: list[web.ServerRunner] = []
        self.transport_tap = None   # a recording lab's `TransportTap`: connections reported
        self._lowlevel = web.Server(self.handle, access_log=None, **handler_options(limits))

    @staticmethod
    def _close(resp: web.StreamResponse) -> web.StreamResponse:
        resp.force_close()
        resp.headers["Connection"] = "close"
        return resp

    def _status(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> \
            web.Response:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        resp = web.Response(status=status, body=body,
                            headers=_CLOSE_OCTET if content_type is OCTET else
                            {"Content-Type": content_type, "Connection": "close"})
        resp.force_close()
        return resp

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """The rest of a body not all buffered yet (`handle` takes one that is itself)."""
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise BodyTooLarge(declared)
        content = request.content
        # the rest must come at the minimum rate on average, counted from the grace period
        # (a client trickling a chunked body for ever gets its 408 too)
        rate, loop = self.limits.body_min_rate, asyncio.get_running_loop()
        start = loop.time() + self.limits.body_grace_wall_s
        chunks, size = [], 0
        while True:
            if rate:
                left = start + size / rate - loop.time()
                if left <= 0:
                    raise BodyTooSlow(size)
                try:
                    async with asyncio.timeout(left):
                        chunk = await content.readany()
                except TimeoutError:
                    raise BodyTooSlow(size) from None
            else:
                chunk = await content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY:
                raise BodyTooLarge(size)
            chunks.append(chunk)

    async def _refuse(self, request: web.BaseRequest, resp: web.StreamResponse) -> \
            web.StreamResponse:
        """Send a refusal at once, then read and discard the rest of the body so that the
        client reads our status rather than a reset from unread data: at most
        `drain_max_bytes`, for at most `drain_wall_s` (a client sending gigabytes costs us a
        bounded read, not a bounded time of reading), then aiohttp closes."""
        await resp.prepare(request)
        await resp.write_eof()
        content, limit = request.content, self.limits.drain_max_bytes
        seen = 0
        try:
            async with asyncio.timeout(self.limits.drain_wall_s):
                while seen < limit and not content.is_eof():
                    chunk = await content.readany()
                    if not chunk:
                        break
                    seen += len(chunk)
        except (TimeoutError, ConnectionError, web.RequestPayloadError):
            pass   # slow, gone or garbled: we stop reading either way
        self.drained_bytes += seen
        return resp

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.version < HttpVersion10 or request.version > HttpVersion11:
            return self._bad_version(request)
        command = BY_PATH.get(request.path)
        if command is None:
            return await self._refuse(request, self._status(404, b"not found\n"))
        if request.method != "POST":
            return await self._refuse(request, self._status(405, b"method not allowed\n"))
        tls = request.secure
        if command.tls_only and not tls:
            # PROTOCOL 3: answered without looking at the body, which is only drained
            return await self._refuse(request, self._status(
                403, error_body(Ret.NOT_ALLOWED, "manualauth needs TLS"), OCTET))
        content = request.content
        try:
            if content.is_eof():
                # The whole body is already buffered (the usual case: a small request that
                # came in one segment with its headers): take it at once, without a
                # coroutine. Reading chunk by chunk costs ~9 us more per request
                # (bench/bench_short_link.py).
                body = content.read_nowait()
                if len(body) > MAX_BODY:
                    raise BodyTooLarge(len(body))
            else:
                body = await self._read_body(request)
        except BodyTooLarge:
            return await self._refuse(request, self._status(413, b"body over 1 MiB\n"))
        except BodyTooSlow as exc:
            log.info("short link %s: body too slow (%d bytes), 408", request.remote, exc.args[0])
            return await self._refuse(request, self._status(408, b"body too slow\n"))
        except web.RequestPayloadError as exc:   # a chunked body that breaks its framing
            log.info("short link %s: bad body: %s", request.remote, " ".join(str(exc).split()))
            return await self._refuse(request, self._status(400, b"bad body\n"))
        except ConnectionError:
            # the client went away mid-body: nobody to answer (aiohttp's write of this
            # response fails quietly as a premature disconnection)
            self.disconnects += 1
            log.debug("short link %s: client gone mid-body", request.remote)
            return self._status(400)
        ctx = RequestContext(peer=request.transport.get_extra_info("peername")
                             if request.transport is not None else request.remote or "",
                             door=Door.TLS if tls else Door.SHORT)
        try:
            await count_request(self.service.store, Door.TLS if tls else Door.SHORT,
                                command.name, self.process)
            req = decode_request(command, body)
            out = (await self.service.handle(command, req, ctx)).SerializeToString()
        except RemoteProtocolError as exc:
            out = error_body(Ret.BAD_ARGUMENT, str(exc))
        except ServiceError as exc:
            out = error_body(exc.code, exc.message)
        except Hangup:            # no answer at all: the connection goes
            request.transport.abort()
            return web.Response()
        except Exception as exc:  # a server fault: answer -1 and surface it to tests
            log.exception("short link handler failed")
            self.errors.append(exc)
            out = error_body(Ret.SERVER_FAULT, "server fault")
        fault = self.faults.frame("short", command.name, len(out)) if self.faults else None
        if fault is not None:
            self.status_counts[200] = self.status_counts.get(200, 0) + 1
            return await faulted_response(request, fault, out, OCTET, self.service.clock,
                                          self._stopping)
        return self._status(200, out, OCTET)

    def _bad_version(self, request: web.BaseRequest) -> web.StreamResponse:
        """A request line without "HTTP/x.y" (HTTP/0.9 style): 400; one with a version
        past 1.1: 505. Written raw in HTTP/1.1, since aiohttp answers in the request's."""
        status = 400 if request.version < HttpVersion10 else 505
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        log.info("short link %s: request line version %s, %d", request.remote,
                 "none" if status == 400 else "%d.%d" % tuple(request.version), status)
        transport = request.transport
        if transport is not None and not transport.is_closing():
            transport.write(_BAD_VERSION[status])
            transport.close()
        return self._close(web.Response(status=status))   # its write finds the socket closed

    async def listen(self, host: str, port: int, ssl_context=None, *,
                     reuse_port: bool = False) -> int:
        """Serve on host:port (TLS if `ssl_context`; `reuse_port`: share the port with other
        worker processes, `SO_REUSEPORT`); returns the bound port."""
        runner = web.ServerRunner(self._lowlevel, handle_signals=False,
                                  shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        site = GuardedSite(runner, host, port, limits=self.limits, cap=self.address_cap,
                           ssl_context=ssl_context, reuse_port=reuse_port,
                           transport_tap=self.transport_tap)
        await site.start()
        self.runners.append(runner)
        return runner.addresses[-1][1]

    async def close(self) -> None:
        self._stopping.set()         # held (faulted) responses let go
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
