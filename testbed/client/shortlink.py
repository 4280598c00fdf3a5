"""CGI calls over the short link: one TCP connection per request, as the report saw.

Each request is its own connection (PROTOCOL.md section 3: the server closes after its
answer), so the client is one `asyncio.Protocol` per request with the `httptools` response
parser, the request written with one `transport.write`: what the server side does too
(`mocks.one_shot_http`). aiohttp's client made a session, a connector and its happy-eyeballs
machinery for every request, which was about a third of a phone's login CPU (a TLS login
2.6 against 1.8 ms of both sides' CPU, a plain one 0.66 against 0.34 ms; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import NamedTuple, Optional

import httptools
from google.protobuf.message import Message

from testbed.lab.addressing import SHORT
from testbed.wire import BY_CGI, CGI_PREFIX
from testbed.wire.commands import decode_response

MAX_REPLY = 64 << 20   # an answer larger than this is not a short-link answer


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


class _Exchange(asyncio.Protocol):
    """One request on its own connection: written when connected, its answer parsed as it
    comes; `answer` resolves to the `ShortReply`, or to `ConnectionError` when the
    connection ends before the whole answer came (or what came is not HTTP). An answer with
    neither Content-Length nor chunked coding ends at the server's close (RFC 9112 6.3);
    interim 1xx answers are skipped."""

    __slots__ = ("request", "answer", "transport", "parser", "content_type", "chunks",
                 "size", "headed", "framed")

    def __init__(self, request: bytes, answer: asyncio.Future) -> None:
        self.request = request
        self.answer = answer
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.content_type = ""
        self.chunks: list[bytes] = []
        self.size = 0
        self.headed = False   # the answer's head is in
        self.framed = False   # it has a Content-Length or is chunked

    def _fail(self, why: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"not an HTTP answer: {exc}")

    def eof_received(self):
        # httptools has no call for "the stream ended", so the close that ends an unframed
        # body is read here; for a framed one, an EOF before its end is a loss
        if self.headed and not self.framed and not self.answer.done():
            self.on_message_complete()
        return None

    def connection_lost(self, exc) -> None:
        self.transport = None
        if not self.answer.done():
            self.answer.set_exception(ConnectionError(
                "the server closed the connection before the whole answer"
                + (f" ({exc!r})" if exc else "")))

    # -- httptools
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 12 and name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")
        else:
            name = name.lower()
            # a coding other than chunked last leaves the body to the close (RFC 9112 6.3)
            if name == b"content-length" or (name == b"transfer-encoding"
                                             and value.rstrip().lower().endswith(b"chunked")):
                self.framed = True

    def on_headers_complete(self) -> None:
        self.headed = True

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_REPLY:
            # said here: raised, it would surface as httptools' "`on_body` callback error"
            self._fail(f"an answer over {MAX_REPLY} bytes is not a short-link answer")
            return
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:   # interim: the final answer follows
            self.content_type, self.headed, self.framed = "", False, False
            return
        if not self.answer.done():
            chunks = self.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.answer.set_result(ShortReply(status, self.content_type, body))
        if self.transport is not None:
            self.transport.close()


class ShortLink:
    """Posts CGI requests to `short.weixin.qq.com`: the first address that accepts, falling
    back to the next A record when a connect fails or takes more than its share of the time
    (the time left split evenly among the addresses left). `timeout`: wall seconds for one
    request, connect to answer, over all the addresses it tries."""

    def __init__(self, address: str | list[str], port: int, tls_port: Optional[int] = None,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 local_addr: Optional[str] = None, timeout: float = 10.0) -> None:
        self.addresses = [address] if isinstance(address, str) else list(address)
        self.port, self.tls_port = port, tls_port
        self.bytes_sent = self.bytes_received = self.requests = 0
        self.ssl_context = ssl_context
        self.local_addr = local_addr
        self.timeout = timeout

    @property
    def address(self) -> str:
        return self.addresses[0]

    async def post(self, path: str, body: bytes, *, tls: bool = False) -> ShortReply:
        """Raw POST; returns its status, content type and body. Each call is its own
        connection. `ConnectionError` when no address accepts it, or the answer does not
        come whole; `TimeoutError` (naming the request, the addresses tried and the timeout)
        when it does not come in time."""
        if tls and (self.tls_port is None or self.ssl_context is None):
            raise ValueError("no TLS port or CA for this short link")
        port = self.tls_port if tls else self.port
        request = (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/octet-stream"
                   b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                   % (path.encode(), SHORT.encode(), port, len(body))) + body
        loop = asyncio.get_running_loop()
        local = (self.local_addr, 0) if self.local_addr else None
        deadline = loop.time() + self.timeout
        addrs = tuple(self.addresses)   # others may reorder the list
        tried: list[str] = []
        last: Optional[Exception] = None
        for i, addr in enumerate(addrs):
            tried.append(addr)
            # each address left gets an equal share of the time left, so one that never
            # accepts (a black hole: its SYNs dropped) costs its share and the next is
            # tried; the last has all that is left, the request's total still the bound
            share = (deadline - loop.time()) / (len(addrs) - i)
            answer = loop.create_future()
            transport = None
            try:
                try:
                    async with asyncio.timeout(share):
                        transport, _ = await loop.create_connection(
                            lambda: _Exchange(request, answer), addr, port,
                            ssl=self.ssl_context if tls else None,
                            server_hostname=SHORT if tls else None, local_addr=local)
                except TimeoutError:   # before OSError: it is one
                    last = TimeoutError(f"{addr}:{port} did not connect within {share:.3g} s")
                    if i + 1 < len(addrs):
                        continue
                    raise self._timed_out(path, tried, port) from None
                except OSError as exc:   # refused, unreachable, a failed handshake
                    last = exc
                    continue
                # connected, then the answer did not come whole (the server closed the
                # connection first, or cut the body short): the request is lost, as a
                # broken long link loses one, and a caller retries it the same way
                try:
                    async with asyncio.timeout_at(deadline):
                        reply = await answer
                except ConnectionError as exc:
                    raise ConnectionError(f"{SHORT} {path}: {exc}") from None
                except TimeoutError:
                    raise self._timed_out(path, tried, port) from None
            finally:
                if transport is not None and not transport.is_closing():
                    transport.abort()   # given up on (a timeout): nothing more is read
            # remember the address that works: by value, as requests at once reorder the
            # list while each waits (its index may hold another address by now)
            if i and self.addresses[0] != addr:
                self.addresses.remove(addr)
                self.addresses.insert(0, addr)
            self.requests += 1
            self.bytes_sent += len(body)
            self.bytes_received += len(reply.body)
            return reply
        raise ConnectionError(f"no address of {SHORT} answered: {last!r}")

    def _timed_out(self, path: str, tried: list[str], port: int) -> TimeoutError:
        # asyncio's own says nothing: a user needs to know which request and where
        where = ", ".join(f"{addr}:{port}" for addr in tried)
        return TimeoutError(f"{SHORT} {path} ({where}): no answer within {self.timeout:g} s")

    async def call(self, cgi: str, request: Message, *, tls: bool = False) -> Message:
        command = BY_CGI[cgi]
        status, _, body = await self.post(CGI_PREFIX + cgi, request.SerializeToString(),
                                          tls=tls)
        if status != 200:
            raise HTTPStatusError(status, body)
        return decode_response(command, body)
