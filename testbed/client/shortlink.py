"""CGI calls over the short link: one TCP connection per request, as the report saw."""

from __future__ import annotations

import ssl
from typing import Optional

import aiohttp
from google.protobuf.message import Message

from testbed.lab.addressing import SHORT
from testbed.wire import BY_CGI, CGI_PREFIX, RemoteProtocolError
from testbed.wire.commands import decode_response


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class ShortLink:
    """Posts CGI requests to one address of `short.weixin.qq.com`."""

    def __init__(self, address: str, port: int, tls_port: Optional[int] = None,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 local_addr: Optional[str] = None, timeout: float = 10.0) -> None:
        self.address, self.port, self.tls_port = address, port, tls_port
        self.ssl_context = ssl_context
        self.local_addr = local_addr
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(force_close=True, limit=0,
                                    local_addr=(self.local_addr, 0) if self.local_addr else None)

    async def post(self, path: str, body: bytes, *, tls: bool = False) -> tuple[int, bytes]:
        """Raw POST; returns (status, body). Each call is its own connection."""
        if tls:
            if self.tls_port is None or self.ssl_context is None:
                raise ValueError("no TLS port or CA for this short link")
            url = f"https://{self.address}:{self.tls_port}{path}"
        else:
            url = f"http://{self.address}:{self.port}{path}"
        port = self.tls_port if tls else self.port
        headers = {"Host": f"{SHORT}:{port}", "Content-Type": "application/octet-stream",
                   "Connection": "close"}
        async with aiohttp.ClientSession(connector=self._connector(), timeout=self.timeout,
                                         auto_decompress=False) as http:
            async with http.post(url, data=body, headers=headers,
                                 ssl=self.ssl_context if tls else None,
                                 server_hostname=SHORT if tls else None) as resp:
                return resp.status, await resp.read()

    async def call(self, cgi: str, request: Message, *, tls: bool = False) -> Message:
        command = BY_CGI[cgi]
        status, body = await self.post(CGI_PREFIX + cgi, request.SerializeToString(), tls=tls)
        if status != 200:
            raise HTTPStatusError(status, body)
        try:
            return decode_response(command, body)
        except RemoteProtocolError:
            raise
