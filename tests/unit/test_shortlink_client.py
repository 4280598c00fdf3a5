"""The client ShortLink against servers that answer in every way HTTP/1.1 allows (and some it
does not): what comes back, or which error, and that no connection is left open."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from testbed.client import shortlink
from testbed.client.shortlink import ShortLink


async def serve(answer):
    """A loopback server that reads one request head and then runs `answer(reader, writer)`:
    (server, its port)."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await answer(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def until_closed(reader) -> None:
    """Hold the connection until the client closes or resets it."""
    try:
        await reader.read()
    except ConnectionError:
        pass


async def post_to(*pieces: bytes, close: bool = True):
    """What `ShortLink.post` gives for a server that answers `pieces` (each sent on its
    own) and then closes (or, `close` False, holds the connection until the client ends
    it)."""
    async def answer(reader, writer):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        if close:
            writer.close()
        else:
            await until_closed(reader)

    server, port = await serve(answer)
    async with server:
        return await asyncio.wait_for(short(port).post("/x", b"q"), 2)


def short(port: int, timeout: float = 2.0) -> ShortLink:
    return ShortLink("127.0.0.1", port, timeout=timeout)


async def test_a_close_delimited_answer_is_the_bytes_up_to_the_close():
    reply = await post_to(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Connection: close\r\n\r\nhello, ", b"world")
    assert reply == (200, "application/octet-stream", b"hello, world")


async def test_an_answer_in_another_coding_than_chunked_ends_at_the_close():
    reply = await post_to(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped")
    assert (reply.status, reply.body) == (200, b"zipped")


async def test_a_close_delimited_answer_cut_by_a_reset_is_lost():
    async def answer(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        writer.transport.abort()   # RST, not FIN

    server, port = await serve(answer)
    async with server:
        with pytest.raises(ConnectionError):
            await short(port).post("/x", b"q")


async def test_a_chunked_answer_is_joined():
    # held open: the client must not wait for the server's close
    reply = await post_to(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabc\r\n", b"2\r\nde\r\n0\r\n\r\n", close=False)
    assert reply.status == 200 and reply.body == b"abcde"


async def test_a_body_short_of_its_content_length_is_a_connection_error():
    with pytest.raises(ConnectionError, match="before the whole answer"):
        await post_to(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")


async def test_an_interim_100_is_skipped_for_the_final_answer():
    reply = await post_to(b"HTTP/1.1 100 Continue\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (reply.status, reply.body) == (200, b"ok")


async def test_no_answer_is_a_timeout_and_the_connection_is_closed():
    gone = asyncio.Event()

    async def answer(reader, writer):
        await until_closed(reader)
        gone.set()

    server, port = await serve(answer)
    async with server:
        with pytest.raises(TimeoutError, match=rf"/x \(127\.0\.0\.1:{port}\): no answer "
                                               r"within 0\.2 s"):
            await short(port, timeout=0.2).post("/x", b"q")
        await asyncio.wait_for(gone.wait(), 1)


async def test_what_is_not_http_is_a_connection_error():
    with pytest.raises(ConnectionError, match="not an HTTP answer"):
        await post_to(b"SSH-2.0-OpenSSH\r\n\r\n", close=False)


async def test_a_tls_failure_names_the_tls_error():
    async def plain(reader, writer):   # answers the ClientHello in clear
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = ShortLink("127.0.0.1", port, tls_port=port, ssl_context=ssl.create_default_context())
    async with server:
        with pytest.raises(ConnectionError, match="SSL"):
            await asyncio.wait_for(link.post("/x", b"q", tls=True), 2)


async def test_an_answer_over_the_bound_says_so(monkeypatch):
    monkeypatch.setattr(shortlink, "MAX_REPLY", 10)
    with pytest.raises(ConnectionError, match="over 10 bytes"):
        await post_to(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
                      close=False)


async def test_requests_at_once_leave_the_address_that_answers_first():
    """Two requests fall back from a refusing address at once: the one that answers is
    first for the next (each used to move whatever sat at its index then, the refusing
    one back in front)."""
    async def answer(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    server, port = await serve(answer)
    link = ShortLink(["127.0.0.2", "127.0.0.1"], port, timeout=2)   # .2: nothing listens
    async with server:
        replies = await asyncio.gather(*(link.post("/x", b"q") for _ in range(2)))
    assert [r.body for r in replies] == [b"ok", b"ok"]
    assert link.addresses == ["127.0.0.1", "127.0.0.2"]


async def test_a_request_tries_every_address_while_another_reorders_them(tmp_path):
    """A request whose first try is slow to fail goes on to the next address it had, not
    to the next index of a list another request has reordered meanwhile (it tried the
    failing address twice and never the good one)."""
    from mocks.tls import CA_PEM, LabCA

    async def good(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    async def slow_not_tls(reader, writer):   # the handshake fails 0.3 s in
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        writer.close()

    ca = LabCA.in_dir(tmp_path)
    tls = await asyncio.start_server(good, "127.0.0.1", 0, ssl=ca.server_context())
    port = tls.sockets[0].getsockname()[1]
    bad = await asyncio.start_server(slow_not_tls, "127.0.0.2", port)
    link = ShortLink(["127.0.0.2", "127.0.0.1"], port, tls_port=port, timeout=5,
                     ssl_context=ssl.create_default_context(cafile=str(tmp_path / CA_PEM)))

    async def later():
        await asyncio.sleep(0.1)
        return await link.post("/x", b"q", tls=True)

    async with tls, bad:
        replies = await asyncio.gather(link.post("/x", b"q", tls=True), later())
    assert [r.body for r in replies] == [b"ok", b"ok"]


class BlackHole:
    """A loopback address:port that never accepts: a listener with backlog 0 whose accept
    queue one connection fills, so Linux drops the SYNs of every connect after it (which
    then hangs, as one to a black-holed address does)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.listener = socket.create_server((host, port), backlog=0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection((host, self.port), timeout=2)

    def __enter__(self) -> "BlackHole":
        return self

    def __exit__(self, *exc) -> None:
        self.filler.close()
        self.listener.close()


async def test_a_black_holed_first_address_costs_its_share_and_the_next_answers():
    """A connect that hangs on the first address gives up after its share of the request's
    time and the next address answers (it used the whole timeout and raised)."""
    async def answer(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    server, port = await serve(answer)
    link = ShortLink(["127.0.0.2", "127.0.0.1"], port, timeout=0.6)
    with BlackHole("127.0.0.2", port):
        async with server:
            reply = await link.post("/x", b"q")
    assert reply.body == b"ok"
    assert link.addresses == ["127.0.0.1", "127.0.0.2"]


async def test_every_address_black_holed_is_a_timeout_naming_them_all():
    with BlackHole("127.0.0.2") as first, BlackHole("127.0.0.3", first.port):
        link = ShortLink(["127.0.0.2", "127.0.0.3"], first.port, timeout=0.2)
        with pytest.raises(TimeoutError, match=rf"/x \(127\.0\.0\.2:{first.port}, "
                                               rf"127\.0\.0\.3:{first.port}\): no answer "
                                               r"within 0\.2 s"):
            await link.post("/x", b"q")
