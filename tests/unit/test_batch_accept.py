"""mocks.accept: every queued connection accepted per readiness (uvloop's own server takes
one per loop iteration), close frees the port, and running out of descriptors is survived."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap

import pytest

from mocks.accept import start_batch_server

uvloop = pytest.importorskip("uvloop")
N = 500


class _Count(asyncio.Protocol):
    def __init__(self, made: list) -> None:
        self.made = made

    def connection_made(self, transport) -> None:
        self.made.append(transport)


async def _iterations_to_accept(start) -> int:
    """Loop iterations (a callback that re-schedules itself with call_soon) from the first
    run of the loop until N connections queued before it are all made."""
    made: list = []
    server = await start(lambda: _Count(made))
    port = server.sockets[0].getsockname()[1]
    clients = []
    for _ in range(N):     # blocking connects: all queued before the loop runs again
        c = socket.socket()
        c.connect(("127.0.0.1", port))
        clients.append(c)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    ticks = [0]

    def tick() -> None:
        ticks[0] += 1
        if len(made) >= N:
            done.set_result(ticks[0])
        else:
            loop.call_soon(tick)
    loop.call_soon(tick)
    try:
        return await asyncio.wait_for(done, 20)
    finally:
        for t in made:
            t.abort()
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()


def test_queued_connections_accepted_in_a_few_iterations_on_uvloop():
    async def main():
        batch = await _iterations_to_accept(
            lambda f: start_batch_server(f, "127.0.0.1", 0, backlog=4096))
        plain = await _iterations_to_accept(
            lambda f: asyncio.get_running_loop().create_server(f, "127.0.0.1", 0,
                                                               backlog=4096))
        return batch, plain
    batch, plain = uvloop.run(main())
    assert batch <= 5, batch
    assert plain > N // 4, plain       # what the batch accept is for: uvloop takes ~1 each


async def test_close_stops_accepting_and_frees_the_port():
    made: list = []
    server = await start_batch_server(lambda: _Count(made), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(200):
        if made:
            break
        await asyncio.sleep(0.01)
    assert len(made) == 1 and server.is_serving()
    server.close()
    await server.wait_closed()
    assert not server.is_serving() and server.sockets == ()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    again = socket.socket()     # the port is free to bind again
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind(("127.0.0.1", port))
    again.close()
    w.close()
    made[0].abort()


def test_out_of_descriptors_is_survived_and_accepting_resumes():
    """In a subprocess with 40 descriptors: the server's accept hits EMFILE, stops for a
    second, and accepts the waiting connection once descriptors are freed."""
    script = textwrap.dedent("""
        import asyncio, resource, socket
        from mocks import accept
        accept.RETRY_AFTER_S = 0.2
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

        async def main():
            made = []
            class P(asyncio.Protocol):
                def connection_made(self, t): made.append(t)
            server = await accept.start_batch_server(P, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            hog = []
            try:
                while True:
                    hog.append(open("/dev/null"))
            except OSError:
                pass
            hog.pop().close()          # one descriptor: the client's socket
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            await asyncio.sleep(0.5)   # EMFILE on accept: the server waits
            assert not made and server.is_serving()
            for f in hog[:5]:
                f.close()
            for _ in range(300):
                if made:
                    break
                await asyncio.sleep(0.01)
            assert len(made) == 1, made
            server.close()
            await server.wait_closed()
            print("ok")
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
