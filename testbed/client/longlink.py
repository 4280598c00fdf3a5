"""A long-link connection from the phone's side: requests matched to replies by seq,
NOTIFY pushes handed to a callback, a protocol violation from the server closes the link."""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable, Optional

from google.protobuf.message import Message

from testbed.wire import (BY_NAME, FrameDecoder, RemoteProtocolError, encode_frame,
                          parse_notify)
from testbed.wire.commands import NOOP_CMD, NOTIFY_CMD, decode_response
from testbed.wire.frames import REPLY_OFFSET


class LinkClosed(ConnectionError):
    pass


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, link: "LongLink") -> None:
        self.link = link

    def connection_made(self, transport) -> None:
        self.link._transport = transport

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc) -> None:
        self.link._lost(exc)


class LongLink:
    """One TCP connection to `long.weixin.qq.com`."""

    def __init__(self, on_notify: Optional[Callable[[int], None]] = None,
                 max_packet_len: int = 1 << 20, first_seq: int = 1) -> None:
        self.on_notify = on_notify
        self.decoder = FrameDecoder(max_packet_len)
        self._seq = itertools.count(first_seq)
        self._pending: dict[int, tuple[int, asyncio.Future]] = {}
        self._transport: Optional[asyncio.Transport] = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.notifies: list[int] = []
        self.address: Optional[tuple[str, int]] = None
        self.bytes_sent = self.bytes_received = 0
        self.frames_sent = self.frames_received = 0
        self.last_rx = self.last_tx = asyncio.get_running_loop().time()

    @classmethod
    async def connect(cls, host: str, port: int, *, local_addr: Optional[str] = None,
                      timeout: float = 5.0, **kwargs) -> "LongLink":
        link = cls(**kwargs)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(
            lambda: _LinkProtocol(link), host, port,
            local_addr=(local_addr, 0) if local_addr else None), timeout)
        link.address = (host, port)
        return link

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    def next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF

    def send_raw(self, data: bytes) -> None:
        if not self.is_open:
            raise LinkClosed("long link is closed")
        self._transport.write(data)
        self.bytes_sent += len(data)
        self.last_tx = asyncio.get_running_loop().time()

    def request_frame(self, cmd: int, body: bytes = b"", seq: Optional[int] = None) -> \
            asyncio.Future:
        """Send one request frame; the future resolves to the reply's body."""
        seq = self.next_seq() if seq is None else seq
        fut = asyncio.get_running_loop().create_future()
        self._pending[seq] = (cmd + REPLY_OFFSET, fut)
        self.send_raw(encode_frame(cmd, seq, body))
        self.frames_sent += 1
        return fut

    async def request(self, cmd: int, body: bytes = b"", timeout: float = 10.0) -> bytes:
        """Send a request frame and wait for its reply body; a timeout forgets the seq."""
        seq = self.next_seq()
        fut = self.request_frame(cmd, body, seq)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(seq, None)

    async def call(self, name: str, request: Optional[Message] = None,
                   timeout: float = 10.0) -> Message:
        """Send a table command by name and decode its reply."""
        command = BY_NAME[name]
        body = request.SerializeToString() if request is not None else b""
        return decode_response(command, await self.request(command.cmd, body, timeout))

    async def noop(self, timeout: float = 10.0) -> None:
        await self.request(NOOP_CMD, b"", timeout)

    def _received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.last_rx = asyncio.get_running_loop().time()
        try:
            frames = self.decoder.receive_data(data)
        except RemoteProtocolError as exc:
            self.abort(exc)
            return
        self.frames_received += len(frames)
        for cmd, seq, body in frames:
            if cmd == NOTIFY_CMD and seq == 0:
                try:
                    selector = parse_notify(body)
                except RemoteProtocolError:
                    continue
                self.notifies.append(selector)
                if self.on_notify is not None:
                    self.on_notify(selector)
                continue
            entry = self._pending.pop(seq, None)
            if entry is None:
                continue
            expected, fut = entry
            if fut.done():
                continue
            if cmd != expected:
                fut.set_exception(RemoteProtocolError(
                    f"reply cmd {cmd} for seq {seq}, expected {expected}"))
            else:
                fut.set_result(body)
        if self.decoder.error is not None:
            self.abort(self.decoder.error)

    def _lost(self, exc) -> None:
        err = LinkClosed(f"long link closed: {exc!r}" if exc else "long link closed by peer")
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(exc)

    def abort(self, exc: Optional[BaseException] = None) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 2.0)
        except asyncio.TimeoutError:
            self._transport.abort()
