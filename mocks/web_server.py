"""An aiohttp `Application` served on any number of addresses (mapabc and the two CDNs)."""

from __future__ import annotations

from typing import Optional

from aiohttp import web

from testbed.lab.profiles import Limits

from .http_site import SHUTDOWN_GRACE_S, GuardedSite, handler_options
from .limits import AddressCap


class AppServer:
    """`await listen(addr, port)` for each address, `await close()` once; with the
    profile's `limits` (the head deadline, the backlog, the per-address cap over all its
    addresses)."""

    def __init__(self, app: web.Application, *, limits: Limits = Limits()) -> None:
        self.app = app
        self.limits = limits
        self.address_cap = AddressCap(limits.max_connections_per_address)
        self._runner: Optional[web.AppRunner] = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Serve on host:port (0: any free port; `reuse_port`: share it with other
        processes' sockets, `SO_REUSEPORT`); returns the bound port."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                         shutdown_timeout=SHUTDOWN_GRACE_S,
                                         **handler_options(self.limits))
            await self._runner.setup()
        site = GuardedSite(self._runner, host, port, limits=self.limits, cap=self.address_cap,
                           reuse_port=reuse_port)
        await site.start()
        return self._runner.addresses[-1][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
