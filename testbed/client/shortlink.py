"""CGI calls over the short link: one TCP connection per request, as the report saw."""

from __future__ import annotations

import ssl
from typing import NamedTuple, Optional

import aiohttp
from google.protobuf.message import Message

from testbed.lab.addressing import SHORT
from testbed.wire import BY_CGI, CGI_PREFIX
from testbed.wire.commands import decode_response


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class ShortReply(NamedTuple):
    """What a POST got back."""

    status: int
    content_type: str
    body: bytes


class ShortLink:
    """Posts CGI requests to `short.weixin.qq.com`: the first address that accepts, falling
    back to the next A record when a connect fails."""

    def __init__(self, address: str | list[str], port: int, tls_port: Optional[int] = None,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 local_addr: Optional[str] = None, timeout: float = 10.0) -> None:
        self.addresses = [address] if isinstance(address, str) else list(address)
        self.port, self.tls_port = port, tls_port
        self.bytes_sent = self.bytes_received = self.requests = 0
        self.ssl_context = ssl_context
        self.local_addr = local_addr
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(force_close=True, limit=0,
                                    local_addr=(self.local_addr, 0) if self.local_addr else None)

    @property
    def address(self) -> str:
        return self.addresses[0]

    async def post(self, path: str, body: bytes, *, tls: bool = False) -> ShortReply:
        """Raw POST; returns its status, content type and body. Each call is its own
        connection. `ConnectionError` when no address accepts it, or the answer does not
        come whole; `asyncio.TimeoutError` when it does not come in time."""
        if tls and (self.tls_port is None or self.ssl_context is None):
            raise ValueError("no TLS port or CA for this short link")
        port = self.tls_port if tls else self.port
        headers = {"Host": f"{SHORT}:{port}", "Content-Type": "application/octet-stream",
                   "Connection": "close"}
        last: Optional[Exception] = None
        for i, addr in enumerate(self.addresses):
            url = f"{'https' if tls else 'http'}://{addr}:{port}{path}"
            try:
                async with aiohttp.ClientSession(connector=self._connector(),
                                                 timeout=self.timeout,
                                                 auto_decompress=False) as http:
                    async with http.post(url, data=body, headers=headers,
                                         ssl=self.ssl_context if tls else None,
                                         server_hostname=SHORT if tls else None) as resp:
                        data = await resp.read()
                        ctype = resp.headers.get("Content-Type", "")
            except aiohttp.ClientConnectorError as exc:
                last = exc
                continue
            except aiohttp.ClientError as exc:
                # connected, then the answer did not come whole (the server closed the
                # connection first, or cut the body short): the request is lost, as a
                # broken long link loses one, and a caller retries it the same way
                raise ConnectionError(f"{SHORT} {path}: {exc}") from exc
            if i:  # remember the address that works
                self.addresses.insert(0, self.addresses.pop(i))
            self.requests += 1
            self.bytes_sent += len(body)
            self.bytes_received += len(data)
            return ShortReply(resp.status, ctype, data)
        raise ConnectionError(f"no address of {SHORT} answered: {last!r}")

    async def call(self, cgi: str, request: Message, *, tls: bool = False) -> Message:
        command = BY_CGI[cgi]
        status, _, body = await self.post(CGI_PREFIX + cgi, request.SerializeToString(),
                                          tls=tls)
        if status != 200:
            raise HTTPStatusError(status, body)
        return decode_response(command, body)
