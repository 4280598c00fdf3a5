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

from testbed.wire import (BY_PATH, Door, Hangup, RemoteProtocolError, Ret, ServiceError,
                          decode_request, error_body)

from testbed.lab.faults import Faults

from .faults import faulted_response
from .service import RequestContext, Service
from .stats import count_request

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20          # PROTOCOL 3: a body over 1 MiB gets 413
DRAIN_LIMIT = 16 << 20      # read and discard at most this much after deciding 413
DRAIN_TIMEOUT_S = 5.0       # wall seconds to spend draining before giving up
OCTET = "application/octet-stream"


class BodyTooLarge(Exception):
    pass


class ShortLinkServer:
    """One handler for the plain and the TLS port; `request.secure` tells them apart."""

    def __init__(self, service: Service, process: Optional[str] = None,
                 faults: Optional[Faults] = None) -> None:
        self.service = service
        self.process = process   # counted as the serving process (`mocks.stats`), if named
        self.faults = faults     # the lab's faults: the Nth response of a CGI
        self._stopping = asyncio.Event()
        self.errors: list[BaseException] = []
        self.status_counts: dict[int, int] = {}
        self.runners: list[web.ServerRunner] = []
        self._lowlevel = web.Server(self.handle, access_log=None)

    @staticmethod
    def _close(resp: web.StreamResponse) -> web.StreamResponse:
        resp.force_close()
        resp.headers["Connection"] = "close"
        return resp

    def _status(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> \
            web.Response:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        return self._close(web.Response(status=status, body=body, content_type=content_type))

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise BodyTooLarge(declared)
        content = request.content
        if content.is_eof():
            # The whole body is already buffered (the usual case: a small request that came
            # in one segment with its headers): take it at once. The chunk iterator below
            # costs ~9 us more per request here (bench/bench_short_link.py).
            body = content.read_nowait()
            if len(body) > MAX_BODY:
                raise BodyTooLarge(len(body))
            return body
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY:
                raise BodyTooLarge(size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _drain(self, request: web.BaseRequest) -> None:
        """Read and discard the rest of a refused body, so the client sees our status, not a
        reset from unread data; bounded in bytes and time."""
        async def drain() -> None:
            seen = 0
            async for chunk in request.content.iter_chunked(64 * 1024):
                seen += len(chunk)
                if seen > DRAIN_LIMIT:
                    return
        try:
            await asyncio.wait_for(drain(), DRAIN_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError, Exception):  # noqa: BLE001 - best effort
            pass

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        command = BY_PATH.get(request.path)
        if command is None:
            await self._drain(request)
            return self._status(404, b"not found\n")
        if request.method != "POST":
            await self._drain(request)
            return self._status(405, b"method not allowed\n")
        tls = request.secure
        if command.tls_only and not tls:
            # PROTOCOL 3: answered without looking at the body, which is only drained
            await self._drain(request)
            return self._status(403, error_body(Ret.NOT_ALLOWED, "manualauth needs TLS"), OCTET)
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            await self._drain(request)
            return self._status(413, b"body over 1 MiB\n")
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

    async def listen(self, host: str, port: int, ssl_context=None, *,
                     reuse_port: bool = False) -> int:
        """Serve on host:port (TLS if `ssl_context`; `reuse_port`: share the port with other
        worker processes, `SO_REUSEPORT`); returns the bound port."""
        runner = web.ServerRunner(self._lowlevel, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True,
                           reuse_port=reuse_port or None)
        await site.start()
        self.runners.append(runner)
        return runner.addresses[-1][1]

    async def close(self) -> None:
        self._stopping.set()         # held (faulted) responses let go
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
