"""An aiohttp `Application` served on any number of addresses (mapabc and the two CDNs)."""

from __future__ import annotations

from typing import Optional

from aiohttp import web

from .request_log import RequestObserver, observing_middleware


class AppServer:
    """`await listen(addr, port)` for each address, `await close()` once.

    With a `host` name, every request is told to `observer` (if set: `mocks.request_log`)."""

    def __init__(self, app: web.Application, host: str = "") -> None:
        self.app = app
        self._runner: Optional[web.AppRunner] = None
        self.observer: Optional[RequestObserver] = None
        if host:
            app.middlewares.insert(0, observing_middleware(host, lambda: self.observer))

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Serve on host:port (0: any free port; `reuse_port`: share it with other
        processes' sockets, `SO_REUSEPORT`); returns the bound port."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True,
                           reuse_port=reuse_port or None)
        await site.start()
        return self._runner.addresses[-1][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
