"""The short link (PROTOCOL.md section 3): CGI over HTTP/1.1, one request per connection.

Served by `mocks.one_shot_http` (httptools, one `transport.write` per answer) rather than
aiohttp: every request is a new connection, where aiohttp's per-connection machinery cost
as much as the rest of the server (docs/benchmarks.md). Every path goes through `head`,
which applies the contract's checks in order (404, 405, 403 for a password login outside
TLS; 413 is the HTTP layer's), then `handle` with the whole body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from testbed.lab.faults import Faults
from testbed.lab.profiles import Limits
from testbed.wire import (BY_PATH, Door, Hangup, RemoteProtocolError, Ret, ServiceError,
                          decode_request, error_body)

from .faults import faulted_response
from .memory_transport import LocalServers
from .one_shot_http import Exchange, OneShotServer, Reply
from .service import RequestContext, Service
from .stats import count_request

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20          # PROTOCOL 3: a body over 1 MiB gets 413
OCTET = "application/octet-stream"
_NOT_FOUND: Reply = (404, b"not found\n", "text/plain")
_NOT_ALLOWED: Reply = (405, b"method not allowed\n", "text/plain")
# PROTOCOL 3: answered without looking at the body, which is only drained
_NEEDS_TLS: Reply = (403, error_body(Ret.NOT_ALLOWED, "manualauth needs TLS"), OCTET)


class ShortLinkServer:
    """One handler for the plain and the TLS port; `Exchange.secure` tells them apart.

    The profile's `limits` bound what a client can hold (docs/robustness.md; enforced by
    `OneShotServer`): the head deadline, the body's minimum rate (408), the bounded drain
    of a refused body, the TLS port's handshake and close_notify deadlines, and the cap of
    connections per address.
    """

    def __init__(self, service: Service, process: Optional[str] = None,
                 faults: Optional[Faults] = None, *, limits: Limits = Limits()) -> None:
        self.service = service
        self.process = process   # counted as the serving process (`mocks.stats`), if named
        self.faults = faults     # the lab's faults: the Nth response of a CGI
        self.limits = limits
        self._stopping = asyncio.Event()
        self.errors: list[BaseException] = []
        self.http = OneShotServer(self, limits, max_body=MAX_BODY, name="short link")
        # what it answered, the clients gone mid-body, the bytes of refused bodies drained
        self.status_counts = self.http.status_counts
        self.address_cap = self.http.address_cap
        self.transport_tap = None   # a recording lab's `TransportTap`: connections reported

    @property
    def disconnects(self) -> int:
        return self.http.disconnects

    @property
    def drained_bytes(self) -> int:
        return self.http.drained_bytes

    def head(self, ex: Exchange) -> Optional[Reply]:
        command = BY_PATH.get(ex.path)
        if command is None:
            return _NOT_FOUND
        if ex.method != "POST":
            return _NOT_ALLOWED
        if command.tls_only and not ex.secure:
            return _NEEDS_TLS
        return None

    async def handle(self, ex: Exchange) -> None:
        command = BY_PATH[ex.path]
        door = Door.TLS if ex.secure else Door.SHORT
        ctx = RequestContext(peer=ex.peer or "", door=door)
        try:
            await count_request(self.service.store, door, command.name, self.process)
            req = decode_request(command, ex.body)
            out = (await self.service.handle(command, req, ctx)).SerializeToString()
        except RemoteProtocolError as exc:
            out = error_body(Ret.BAD_ARGUMENT, str(exc))
        except ServiceError as exc:
            out = error_body(exc.code, exc.message)
        except Hangup:            # no answer at all: the connection goes
            ex.abort()
            return
        except Exception as exc:  # a server fault: answer -1 and surface it to tests
            log.exception("short link handler failed")
            self.errors.append(exc)
            out = error_body(Ret.SERVER_FAULT, "server fault")
        fault = self.faults.frame("short", command.name, len(out)) if self.faults else None
        if fault is not None:
            await faulted_response(ex, fault, out, OCTET, self.service.clock, self._stopping)
            return
        ex.respond(200, out, OCTET)

    async def listen(self, host: str, port: int, ssl_context=None, *,
                     reuse_port: bool = False, local: Optional[LocalServers] = None) -> int:
        """Serve on host:port (TLS if `ssl_context`; `reuse_port`: share the port with other
        worker processes, `SO_REUSEPORT`; `local`: the lab's `LocalServers`, for a relay in
        this loop to reach the plain port in memory); returns the bound port."""
        return await self.http.listen(host, port, ssl_context, reuse_port=reuse_port,
                                      transport_tap=self.transport_tap, local=local)

    async def close(self) -> None:
        self._stopping.set()         # held (faulted) responses let go
        await self.http.close()
