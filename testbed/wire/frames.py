"""Long-link framing (PROTOCOL.md section 2): a 16-byte big-endian header, then the body.

Sans-I/O: `FrameDecoder.receive_data(bytes)` returns the complete frames it now holds and
keeps the rest. The header is checked as soon as 16 bytes are there, so a hostile
`packet_len` is refused before any of its body is buffered.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">IHHII")
HEADER_LEN = 16
VERSION = 1
REPLY_OFFSET = 1_000_000_000
DEFAULT_MAX_PACKET_LEN = 1 << 20  # 1 MiB


class Frame(NamedTuple):
    """One long-link frame. A NamedTuple because the decoder builds millions of them."""

    cmd: int
    seq: int
    body: bytes = b""


def encode_frame(cmd: int, seq: int, body: bytes = b"",
                 max_packet_len: int = DEFAULT_MAX_PACKET_LEN) -> bytes:
    """Serialise one frame; refuses what the receiver would have to reject."""
    total = HEADER_LEN + len(body)
    if total > max_packet_len:
        raise LocalProtocolError(f"frame of {total} bytes exceeds the maximum {max_packet_len}")
    if not (0 <= cmd < 1 << 32 and 0 <= seq < 1 << 32):
        raise LocalProtocolError(f"cmd {cmd} or seq {seq} does not fit 32 bits")
    return HEADER.pack(total, HEADER_LEN, VERSION, cmd, seq) + body


def is_reply(cmd: int) -> bool:
    """A reply carries its request's cmd + 1000000000."""
    return cmd >= REPLY_OFFSET


def reply_cmd(cmd: int) -> int:
    """The cmd of the reply to request `cmd`."""
    return cmd + REPLY_OFFSET


def request_cmd(cmd: int) -> int:
    """The request command a frame's `cmd` is, or answers."""
    return cmd - REPLY_OFFSET if cmd >= REPLY_OFFSET else cmd


def check_header(packet_len: int, header_len: int, version: int, max_packet_len: int) -> None:
    """Raise `RemoteProtocolError` for a header the contract forbids."""
    if header_len != HEADER_LEN:
        raise RemoteProtocolError(f"header_len {header_len} != 16")
    if version != VERSION:
        raise RemoteProtocolError(f"version {version} != 1")
    if packet_len < HEADER_LEN:
        raise RemoteProtocolError(f"packet_len {packet_len} < 16")
    if packet_len > max_packet_len:
        raise FrameTooLarge(f"packet_len {packet_len} exceeds the maximum {max_packet_len}")


class FrameDecoder:
    """Incremental frame decoder for one direction of one connection.

    A violation raises `RemoteProtocolError`; if whole frames came before it in the same
    call, those are returned first and `error` is set. After a violation the decoder is
    poisoned: the stream cannot be resynchronised, so every later call raises.
    """

    __slots__ = ("_buf", "max_packet_len", "_error")

    def __init__(self, max_packet_len: int = DEFAULT_MAX_PACKET_LEN) -> None:
        self._buf = bytearray()
        self.max_packet_len = max_packet_len
        self._error: RemoteProtocolError | None = None

    @property
    def error(self) -> RemoteProtocolError | None:
        """The violation that poisoned this decoder, once one has been seen."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf)

    @property
    def needed(self) -> int:
        """Bytes that would complete what is held: the rest of the header while fewer than
        16 bytes are held (the frame's length is not known yet), else the rest of the
        frame; 0 when nothing is held."""
        held = len(self._buf)
        if held < HEADER_LEN:
            return HEADER_LEN - held if held else 0
        return HEADER.unpack_from(self._buf)[0] - held   # a held header was checked

    def whole_frame(self, data: bytes):
        """The command of `data` when it is one whole frame with a good header and nothing is
        held (then it is taken: `receive_data` would have returned just it); else None and
        nothing changed. For a reader that wants only the commands of the frames a phone
        sends one to a segment, without a copy of each body."""
        if self._buf or self._error is not None or len(data) < HEADER_LEN:
            return None
        packet_len, header_len, version, cmd, _seq = HEADER.unpack_from(data)
        if packet_len != len(data) or header_len != HEADER_LEN or version != VERSION \
                or packet_len > self.max_packet_len:
            return None
        return cmd

    def receive_data(self, data: bytes) -> list[Frame]:
        """Feed bytes; return every frame now complete, in order."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if buf:
            buf += data
            view = buf
        else:
            view = data
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        unpack = HEADER.unpack_from
        maxlen = self.max_packet_len
        new = tuple.__new__          # a NamedTuple's own __new__ is Python code: skipped
        while end - pos >= HEADER_LEN:
            packet_len, header_len, version, cmd, seq = unpack(view, pos)
            if header_len != HEADER_LEN or version != VERSION or not HEADER_LEN <= packet_len <= maxlen:
                try:
                    check_header(packet_len, header_len, version, maxlen)
                except RemoteProtocolError as exc:
                    self._error = exc
                    self._buf = bytearray()
                    if not frames:
                        raise
                    # hand over the good frames before the bad header; the next call raises
                    return frames
            if end - pos < packet_len:
                break
            body = bytes(view[pos + HEADER_LEN:pos + packet_len])
            frames.append(new(Frame, (cmd, seq, body)))
            pos += packet_len
        if buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(view[pos:])
        return frames
