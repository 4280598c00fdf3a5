"""DNS over TCP: the messages of a stream, each after its two-byte length (RFC 1035 4.2.2,
RFC 7766), reassembled across segments and handed on whole.

Memory is bounded: a direction holds at most one message in progress (at most 65,537
bytes with its length prefix).
"""

from __future__ import annotations

from typing import Callable

OnMessage = Callable[[str, float, bytes], None]


class DnsOverTcp:
    """Feed in-order stream bytes per direction; `on_message(direction, ts, message)` is
    called for each whole message, with the time of the segment that completed it."""

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.buf = {"c2s": bytearray(), "s2c": bytearray()}
        self.requests = 0        # messages from the client

    def data(self, direction: str, ts: float, data: bytes) -> None:
        buf = self.buf[direction]
        buf += data
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                return
            message = bytes(buf[2:2 + n])
            del buf[:2 + n]
            if direction == "c2s":
                self.requests += 1
            self.on_message(direction, ts, message)
