"""An aiohttp `Application` served on any number of addresses (mapabc and the two CDNs), and
the middleware that tells a request observer (`mocks.served`) about each request."""

from __future__ import annotations

import time
from typing import Callable, Optional

from aiohttp import web

from testbed.lab.profiles import Limits

from .http_site import SHUTDOWN_GRACE_S, GuardedSite, handler_options
from .limits import AddressCap
from .served import RequestObserver, Served, endpoint, tell


class AppServer:
    """`await listen(addr, port)` for each address, `await close()` once; with the
    profile's `limits` (the head deadline, the backlog, the per-address cap over all its
    addresses).

    With a `host` name, every request is told to `observer` (if set: `mocks.served`)."""

    def __init__(self, app: web.Application, host: str = "", *,
                 limits: Limits = Limits()) -> None:
        self.app = app
        self.limits = limits
        self.address_cap = AddressCap(limits.max_connections_per_address)
        self._runner: Optional[web.AppRunner] = None
        self.observer: Optional[RequestObserver] = None
        self.transport_tap = None   # a recording lab's `TransportTap`: connections reported
        if host:
            app.middlewares.insert(0, observing_middleware(host, lambda: self.observer))

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Serve on host:port (0: any free port; `reuse_port`: share it with other
        processes' sockets, `SO_REUSEPORT`); returns the bound port."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                         shutdown_timeout=SHUTDOWN_GRACE_S,
                                         **handler_options(self.limits))
            await self._runner.setup()
        site = GuardedSite(self._runner, host, port, limits=self.limits, cap=self.address_cap,
                           reuse_port=reuse_port, transport_tap=self.transport_tap)
        await site.start()
        return self._runner.addresses[-1][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def observing_middleware(host: str, observer: Callable[[], Optional[RequestObserver]]):
    """An aiohttp middleware that tells `observer()` (looked up per request, None: nobody
    listens) about every request to `host`, by path and status."""
    @web.middleware
    async def observe(request: web.Request, handler):
        obs = observer()
        if obs is None:
            return await handler(request)
        t0 = time.perf_counter()
        status = "fault"
        try:
            response = await handler(request)
            status = str(response.status)
            return response
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        finally:
            peer = request.transport.get_extra_info("peername") \
                if request.transport is not None else request.remote
            tell(obs, Served(host, endpoint(peer), request.path, status,
                             (time.perf_counter() - t0) * 1000))
    return observe
