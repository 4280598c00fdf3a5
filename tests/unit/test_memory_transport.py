"""The in-memory connection pair (mocks/memory_transport.py): the asyncio transport contract
a socket connection keeps, and `LocalServers` choosing memory or a socket."""

from __future__ import annotations

import asyncio

import pytest

from mocks.memory_transport import LocalServers, MemoryTransport


class Recorder(asyncio.Protocol):
    """Records every callback in order; `keep_open` is what eof_received returns."""

    def __init__(self, keep_open: bool = False, on_data=None) -> None:
        self.events: list = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.on_data = on_data
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.events.append(("data", bytes(data)))
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(exc)


async def pair(client_kw=None, server_kw=None):
    loop = asyncio.get_running_loop()
    c, s = Recorder(**(client_kw or {})), Recorder(**(server_kw or {}))
    ct, st = MemoryTransport.pair(loop, c, ("127.0.0.1", 40000), s, ("127.0.0.11", 8080))
    st.start()
    ct.start()
    return c, s, ct, st


async def settle(n: int = 6) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def lost_count(p: Recorder) -> int:
    return sum(1 for e in p.events if isinstance(e, tuple) and e[0] == "lost")


async def test_data_is_delivered_later_in_order_never_inside_write():
    c, s, ct, st = await pair()
    ct.write(b"ab")
    later = bytearray(b"cd")
    ct.write(later)
    later[:] = b"XX"                          # what was written, not what it became
    with pytest.raises(TypeError):
        ct.write("text")
    assert s.data == b""                      # no re-entrancy: nothing until the loop runs
    assert ct.get_write_buffer_size() == 4
    await settle()
    assert s.data == b"abcd" and ct.get_write_buffer_size() == 0
    assert st.get_extra_info("peername") == ("127.0.0.1", 40000)
    assert ct.get_extra_info("peername") == ("127.0.0.11", 8080)
    assert ct.get_extra_info("socket") is None


async def test_write_eof_is_a_half_close_and_the_other_way_still_carries_bytes():
    c, s, ct, st = await pair(server_kw={"keep_open": True})
    ct.write(b"req")
    ct.write_eof()
    with pytest.raises(RuntimeError):
        ct.write(b"more")
    await settle()
    assert s.events == ["made", ("data", b"req"), "eof"]
    assert not st.is_closing()                # eof_received returned True: kept open
    st.write(b"reply")
    st.close()
    await settle()
    # the client read the reply, then the FIN; its eof_received returned False: it closes
    assert c.events == ["made", ("data", b"reply"), "eof", ("lost", None)]
    assert s.events[-1] == ("lost", None)


async def test_eof_received_false_closes_the_reader():
    c, s, ct, st = await pair()
    ct.write_eof()
    await settle()
    assert s.events == ["made", "eof", ("lost", None)]
    assert c.events == ["made", "eof", ("lost", None)]   # the server's close sent its FIN


async def test_close_flushes_then_closes_and_connection_lost_comes_once():
    c, s, ct, st = await pair()
    st.pause_reading()
    ct.write(b"x" * 1000)
    ct.close()
    assert ct.is_closing()
    await settle()
    assert c.events == ["made"]               # not lost while its bytes are unread
    st.resume_reading()
    await settle()
    assert s.events == ["made", ("data", b"x" * 1000), "eof", ("lost", None)]
    assert c.events == ["made", ("lost", None)]
    ct.close()
    ct.abort()
    await settle()
    assert lost_count(c) == 1 and lost_count(s) == 1


async def test_abort_is_a_reset_for_the_peer():
    c, s, ct, st = await pair()
    st.write(b"unsent")
    ct.abort()
    await settle()
    assert c.events == ["made", ("lost", None)]
    assert s.events == ["made", ("lost", "ConnectionResetError")]
    assert st.is_closing() and st.get_write_buffer_size() == 0
    st.write(b"after")                        # a lost connection's writes go nowhere
    await settle()
    assert lost_count(s) == 1 and c.data == b""


async def test_bytes_to_a_closed_end_reset_the_writer():
    c, s, ct, st = await pair(server_kw={"keep_open": True})
    ct.close()
    await settle()
    assert s.events == ["made", "eof"]
    st.write(b"too late")
    await settle()
    assert s.events[-1] == ("lost", "ConnectionResetError")
    assert c.events == ["made", ("lost", None)]


async def test_closing_with_unread_bytes_resets_the_sender():
    c, s, ct, st = await pair()
    ct.pause_reading()
    st.write(b"never read")
    ct.close()
    await settle()
    assert c.events == ["made", ("lost", None)]
    assert s.events == ["made", ("lost", "ConnectionResetError")]


async def test_a_reader_that_never_reads_bounds_the_writer():
    """The writer is told to pause at the high-water mark and, honouring it, holds no more
    than that; reading again drains it and resumes it."""
    written = 0

    def pump(proto: Recorder) -> None:
        nonlocal written
        while "pause_writing" not in proto.events[-1:]:
            proto.transport.write(b"z" * 4096)
            written += 4096

    c, s, ct, st = await pair()
    ct.set_write_buffer_limits(high=32 * 1024)
    assert ct.get_write_buffer_limits() == (8 * 1024, 32 * 1024)
    st.pause_reading()
    for _ in range(20):
        pump(c)
        await settle(2)
    assert c.events.count("pause_writing") == 1
    assert ct.get_write_buffer_size() == written <= 32 * 1024 + 4096
    st.resume_reading()
    await settle()
    assert c.events[-1] == "resume_writing" and ct.get_write_buffer_size() == 0
    assert len(s.data) == written


async def test_a_failing_protocol_is_reported_and_its_connection_reset():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx["message"]))
    try:
        def boom(_proto, _data):
            raise ValueError("bad")
        c, s, ct, st = await pair(server_kw={"on_data": boom})
        ct.write(b"x")
        await settle()
    finally:
        loop.set_exception_handler(None)
    assert errors == ["Fatal error: protocol.data_received() call failed."]
    assert s.events[-1] == ("lost", "ValueError")
    assert c.events[-1] == ("lost", "ConnectionResetError")


async def test_local_servers_connect_in_memory_and_refuse_once_closed():
    loop = asyncio.get_running_loop()
    accepted: list[Recorder] = []

    def factory():
        accepted.append(Recorder(keep_open=True))
        return accepted[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    local = LocalServers()
    local.add(server, factory)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, proto = await local.connect(Recorder, "127.0.0.1", port)
        assert isinstance(transport, MemoryTransport) and proto.events == ["made"]
        assert accepted[0].transport.get_extra_info("peername") == \
            transport.get_extra_info("sockname")
        assert accepted[0].transport.get_extra_info("sockname") == ("127.0.0.1", port)
        transport.write(b"hi")
        await settle()
        assert accepted[0].data == b"hi"
        transport.abort()
        # from a source of the caller's: what the server sees as its peer
        given, _ = await local.connect(Recorder, "127.0.0.1", port, source=("127.0.0.9", 40001))
        assert given.get_extra_info("sockname") == ("127.0.0.9", 40001)
        assert accepted[1].transport.get_extra_info("peername") == ("127.0.0.9", 40001)
        given.abort()
        # an address nobody registered: a socket, as loop.create_connection
        other = await loop.create_server(Recorder, "127.0.0.1", 0)
        sock_t, _ = await local.connect(Recorder, "127.0.0.1",
                                        other.sockets[0].getsockname()[1])
        assert not isinstance(sock_t, MemoryTransport)
        sock_t.close()
        bound, _ = await local.connect(Recorder, "127.0.0.1", other.sockets[0].getsockname()[1],
                                       source=("127.0.0.9", 0))   # bound there, as local_addr
        assert not isinstance(bound, MemoryTransport)
        assert bound.get_extra_info("sockname")[0] == "127.0.0.9"
        bound.close()
        other.close()
    finally:
        server.close()
    with pytest.raises(ConnectionRefusedError):
        await local.connect(Recorder, "127.0.0.1", port)
