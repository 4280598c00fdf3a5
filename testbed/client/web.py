"""Plain HTTP GETs as the phone made them: to the location service and the image CDNs.

URLs carry no port (PROTOCOL.md section 5): the host is resolved through the lab's DNS and
the port comes from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import aiohttp

from testbed.lab.manifest import Manifest

from .resolver import Resolver


@dataclass
class WebResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    address: str


class WebClient:
    """GETs through the lab: one TCP connection per request, as the report's captures show."""

    def __init__(self, manifest: Manifest, resolver: Optional[Resolver], *,
                 local_addr: Optional[str] = None, timeout: float = 10.0) -> None:
        self.manifest = manifest
        self.resolver = resolver
        self.local_addr = local_addr
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.bytes_received = 0

    async def get(self, url: str, headers: Optional[dict[str, str]] = None, *,
                  addresses: Optional[list[str]] = None) -> WebResponse:
        """GET `url` from the lab host it names, at `addresses` (default: what the lab's
        DNS answers for the host), trying the next when a connect fails."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host not in self.manifest.hosts:
            raise ValueError(f"{host!r} is not a lab host; refusing to fetch {url}")
        port = self.manifest.hosts[host].port
        if addresses is None:
            addresses = await self.resolver.resolve(host)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        last: Optional[Exception] = None
        for addr in addresses:   # the next A record when a connect fails
            connector = aiohttp.TCPConnector(
                force_close=True, local_addr=(self.local_addr, 0) if self.local_addr else None)
            try:
                async with aiohttp.ClientSession(connector=connector, timeout=self.timeout,
                                                 auto_decompress=False) as http:
                    async with http.get(f"http://{addr}:{port}{path}",
                                        headers={"Host": host, **(headers or {})}) as resp:
                        body = await resp.read()
                        self.bytes_received += len(body)
                        return WebResponse(resp.status, dict(resp.headers), body, addr)
            except aiohttp.ClientConnectorError as exc:
                last = exc
        raise ConnectionError(f"no address of {host} answered: {last!r}")
