"""The long-link server's asyncio adapter (mocks/long_link.py) against its rule book: however
the bytes are split into reads, its NOOP fast path and its hand-over of partial frames to
`ServerConnection` answer exactly what the connection alone answers for the whole stream."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given
from hypothesis import strategies as st

from mocks.long_link import LongLinkProtocol, LongLinkServer
from mocks.service import Service
from mocks.state import MemoryStore
from testbed.lab.clock import ManualClock
from testbed.wire import ServerConnection

from ..fuzzing import budget

HEADER = struct.Struct(">IHHII")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0   # every write goes out at once

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


NOOP_LOOKALIKE = HEADER.pack(16, 16, 1, 6, 7)   # a body that reads as a NOOP if misaligned

# frames the connection answers by itself (no service involved): NOOPs, with a body too,
# unknown and push-only commands, requests before IDENTIFY, an IDENTIFY that does not decode,
# and bodies that look like NOOPs (the fast path must never read inside a frame)
KINDS = [(6, b""), (6, b""), (6, b""), (6, b"x"), (999, b"ab"), (24, b"\0\0\0\1"),
         (121, b"\xff"), (237, b""), (205, b"\xff\xff\xff"), (999, NOOP_LOOKALIKE * 2),
         (121, NOOP_LOOKALIKE)]


def _frame(kind: int, seq: int) -> bytes:
    cmd, body = KINDS[kind]
    return HEADER.pack(16 + len(body), 16, 1, cmd, seq) + body


streams = st.lists(st.tuples(st.integers(0, len(KINDS) - 1), st.integers(0, 0xFFFFFFFF)),
                   min_size=1, max_size=24)


def _expected(data: bytes) -> bytes:
    conn = ServerConnection()
    conn.receive_data(data, 0.0)
    return conn.data_to_send()


def _adapter_output(chunks) -> tuple[bytes, bool, int]:
    srv = LongLinkServer(Service(MemoryStore(), ManualClock()), ManualClock())
    link = LongLinkProtocol(srv)
    transport = FakeTransport()
    link.connection_made(transport)
    for chunk in chunks:
        link.data_received(chunk)
    return bytes(transport.out), transport.closing, srv.frames_in


@budget(4)
@given(streams, st.lists(st.integers(1, 400), max_size=8), st.booleans())
def test_any_split_answers_what_the_connection_answers(frames, cuts, bad_tail):
    data = b"".join(_frame(k, s) for k, s in frames)
    if bad_tail:   # a violation at the end: what came before is answered, then the close
        data += HEADER.pack(16, 20, 1, 6, 1)
    points = sorted({c % len(data) for c in cuts} - {0})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    want = _expected(data[:len(data) - 16] if bad_tail else data)
    out, closed, frames_in = _adapter_output(chunks)
    assert out == want
    assert closed == bad_tail
    assert frames_in == len(frames)


def test_byte_by_byte_and_whole_agree():
    data = b"".join(_frame(i % len(KINDS), i) for i in range(40))
    whole = _adapter_output([data])
    assert _adapter_output([data[i:i + 1] for i in range(len(data))]) == whole
    assert whole[0] == _expected(data) and whole[2] == 40
