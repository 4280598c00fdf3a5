"""The carrier-NAT relay (mocks/nat.py) over real loopback sockets, its upstream leg a
socket or, as in the lab, an in-memory pair (`mocks.memory_transport`): the same tests, the
same answers.

Time is a `ManualClock`: a test moves it (`await clock.advance(40)`) and the relay's timers
(idle expiry, linger, latency) fire then and only then, so nothing here depends on how fast
or how loaded the machine is. "Nothing came back" is asserted after a barrier: an echo
round trip through a fresh mapping of the same relay.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from mocks.memory_transport import LocalServers, MemoryTransport
from mocks.nat import NatRelay, NatStats
from testbed.lab.addressing import LONG
from testbed.lab.clock import Clock, ManualClock
from testbed.wire.frames import HEADER

from ..conftest import start_lab

HOST = "127.0.0.1"


class HandSetClock(Clock):
    """Protocol time set by hand, whose timers never fire (they are set on the real loop at
    scale 1, hours away): to check the exact idleness rule on the arrival of bytes alone,
    with no expiry timer racing it."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        super().__init__(scale=1.0)
        self.t = 0.0

    def now(self) -> float:
        return self.t


class Target:
    """The server behind the NAT: echo (default) or hold (accept and never read)."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.writers: list[asyncio.StreamWriter] = []
        self.received = 0
        self.ended = 0      # handler finished (EOF, reset or local close)
        self.eofs = 0
        self.resets = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._hold = asyncio.Event()

    async def start(self) -> "Target":
        self.server = await asyncio.get_running_loop().create_server(self.factory, HOST, 0,
                                                                     backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def factory(self) -> asyncio.StreamReaderProtocol:
        """What `asyncio.start_server` makes per connection (here, to be registered in a
        `LocalServers` too)."""
        loop = asyncio.get_running_loop()
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), self.handle,
                                            loop=loop)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            if not self.echo:
                await self._hold.wait()
                return
            while True:
                data = await reader.read(65536)
                if not data:
                    self.eofs += 1
                    break
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            self.resets += 1
        finally:
            self.ended += 1
            writer.close()

    async def stop(self) -> None:
        self._hold.set()
        for w in self.writers:
            w.transport.abort()
        self.server.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.01)


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def read_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> str:
    """Read until the connection ends; 'eof' or 'reset'. Fails on timeout."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return "eof"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"


async def barrier() -> None:
    """Round trips on loopback to an echo server of their own, as many hops as a relayed
    round trip (client, relay, target, relay, client) and begun after it: whatever the
    relay or the target sent back before the barrier ends has been read by then."""
    server = await asyncio.start_server(_echo_once, HOST, 0)
    try:
        r, w = await asyncio.open_connection(HOST, server.sockets[0].getsockname()[1])
        for _ in range(2):
            assert await echo(r, w, b"barrier") == b"barrier"
        w.close()
    finally:
        server.close()


async def _echo_once(reader, writer) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


async def assert_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Nothing came back (no data, no EOF, no reset) after a `barrier()`, and the writer
    is still open."""
    await barrier()
    pending = asyncio.ensure_future(reader.read(65536))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not pending.done(), f"something came back: {pending.result()!r}"
    pending.cancel()
    assert not reader.at_eof()
    assert reader.exception() is None
    assert not writer.is_closing()


def rst_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:   # an in-memory transport's abort is a reset already
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def target():
    t = await Target().start()
    yield t
    await t.stop()


@pytest.fixture(params=["socket", "memory"])
async def make_relay(request):
    """A relay in front of a target; every test runs twice: the upstream leg a socket, and
    in memory (`mocks.memory_transport`, the target registered as a server of this loop)."""
    relays: list[NatRelay] = []

    async def make(target: Target, *, clock: Clock | None = None, idle_timeout_s: float = 30.0,
                   **kwargs) -> tuple[NatRelay, int]:
        local = None
        if request.param == "memory" and target.server is not None:
            local = LocalServers()
            local.add(target.server, target.factory)
        relay = NatRelay(clock or ManualClock(), idle_timeout_s, local=local, **kwargs)
        relays.append(relay)
        port = await relay.add_mapping(HOST, 0, HOST, target.port)
        return relay, port

    yield make
    for relay in relays:
        await relay.close()


async def connect(port: int):
    return await asyncio.open_connection(HOST, port)


async def echo(reader, writer, data: bytes, timeout: float = 10.0) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


# -- relaying


async def test_relays_both_ways_byte_exact(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"hello") == b"hello"
    garbage = bytes(range(256)) * 3 + b"\x00\xff\r\n"  # never parsed: just bytes
    assert await echo(reader, writer, garbage) == garbage

    big = os.urandom(1 << 20)
    writer.write(big)
    got = await asyncio.wait_for(reader.readexactly(len(big)), 5)
    await writer.drain()
    assert got == big

    total = 5 + len(garbage) + len(big)
    st = relay.stats
    assert isinstance(st, NatStats)
    assert st.bytes_up == total and st.bytes_down == total
    assert st.mappings_opened == 1 and st.mappings_active == 1
    assert st.mappings_expired == 0 and st.bytes_blackholed == 0
    assert target.received == total
    writer.close()


async def test_200_concurrent_mappings(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000)

    async def one(i: int) -> None:
        reader, writer = await connect(port)
        payload = i.to_bytes(4, "big") * 256
        assert await echo(reader, writer, payload, timeout=5) == payload
        writer.close()
        assert await read_closed(reader) == "eof"

    await asyncio.gather(*(one(i) for i in range(200)))
    await wait_until(lambda: relay.stats.mappings_active == 0)
    st = relay.stats
    assert st.mappings_opened == 200
    assert st.closed_by_client == 200
    assert st.bytes_up == st.bytes_down == 200 * 1024
    assert len(relay) == 0


# -- idle expiry


async def test_idle_mapping_blackholes_silently(target, make_relay):
    events = []
    relay, port = await make_relay(target, idle_timeout_s=30,
                                   on_event=lambda e: events.append((e.kind, e.listen_port, e.at)))
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"ping") == b"ping"

    await relay.clock.advance(29.0)
    assert relay.stats.mappings_expired == 0
    await relay.clock.advance(11.0)   # 40 protocol seconds of silence > 30
    st = relay.stats
    assert st.mappings_expired == 1  # marked by the timer, with no traffic at all
    assert st.mappings_active == 0 and st.mappings_blackholed == 1

    writer.write(b"hello")  # the client's kernel accepts it ...
    await writer.drain()
    await wait_until(lambda: relay.stats.bytes_blackholed == 5)
    await assert_silent(reader, writer)  # ... but nothing ever comes back
    assert target.received == 4  # the server never saw it

    target.writers[0].write(b"push")  # the server's bytes go nowhere either
    await target.writers[0].drain()
    await wait_until(lambda: relay.stats.bytes_blackholed == 9)
    await assert_silent(reader, writer)

    st = relay.stats
    assert st.bytes_blackholed == 5 + 4
    assert st.bytes_up == 4 and st.bytes_down == 4
    assert st.mappings_expired == 1
    assert target.ended == 0  # the server was not told either
    assert [e[0] for e in events] == ["open", "expire"]
    assert events[0][1] == port
    assert events[1][2] - events[0][2] == pytest.approx(30, abs=1e-3)  # expired on time
    writer.close()


async def test_busy_mapping_never_expires(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=30)
    reader, writer = await connect(port)
    for i in range(10):  # a ping every 29 protocol s for 290 s: ~10x the timeout
        msg = b"ping %d" % i
        assert await echo(reader, writer, msg) == msg
        await relay.clock.advance(29.0)
    st = relay.stats
    assert st.mappings_expired == 0 and st.mappings_active == 1
    assert st.bytes_blackholed == 0
    writer.close()


async def test_one_way_traffic_keeps_mapping(target, make_relay):
    """Bytes in either direction count: server pushes alone keep the mapping alive."""
    relay, port = await make_relay(target, idle_timeout_s=30)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"x") == b"x"
    server = target.writers[0]
    for _ in range(5):  # 125 s > the 30 s timeout, a push every 25 s
        await relay.clock.advance(25.0)
        server.write(b"push")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"push"
    assert relay.stats.mappings_expired == 0
    writer.close()


async def test_idleness_is_exact_on_arrival(target, make_relay):
    clock = HandSetClock()  # protocol time moves only by hand; the lazy timer never fires
    relay, port = await make_relay(target, clock=clock, idle_timeout_s=30)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"a") == b"a"
    clock.t = 30.0  # exactly the timeout: still alive
    assert await echo(reader, writer, b"b") == b"b"
    clock.t = 60.0
    assert await echo(reader, writer, b"c") == b"c"
    clock.t = 90.001  # just over: dead before these bytes are relayed
    writer.write(b"late")
    await writer.drain()
    await wait_until(lambda: relay.stats.bytes_blackholed == 4)
    await assert_silent(reader, writer)
    st = relay.stats
    assert st.mappings_expired == 1
    assert st.bytes_blackholed == 4
    assert st.bytes_up == 3 and st.bytes_down == 3
    writer.close()


# -- FIN and reset


async def test_server_fin_relayed_before_expiry(make_relay):
    async def hello_bye(reader, writer):
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello_bye, HOST, 0)
    try:
        relay = NatRelay(ManualClock(), 3000)
        port = await relay.add_mapping(HOST, 0, HOST, server.sockets[0].getsockname()[1])
        reader, writer = await connect(port)
        assert await asyncio.wait_for(reader.readexactly(3), 2) == b"bye"
        assert await asyncio.wait_for(reader.read(10), 2) == b""  # the FIN came through
        # half-close: the client can still send (the server is gone, so it goes nowhere)
        writer.close()
        await wait_until(lambda: relay.stats.mappings_active == 0)
        st = relay.stats
        assert st.closed_by_server == 1 and st.closed_by_client == 0
        assert len(relay) == 0
        await relay.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_client_half_close_relayed(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000)
    reader, writer = await connect(port)
    writer.write(b"last words")
    writer.write_eof()  # client FIN -> server FIN; the echo server answers, then closes
    assert await asyncio.wait_for(reader.read(100), 2) == b"last words"
    assert await read_closed(reader) == "eof"
    await wait_until(lambda: relay.stats.mappings_active == 0)
    assert target.eofs == 1
    assert relay.stats.closed_by_client == 1
    writer.close()


async def test_client_reset_aborts_server_leg(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"x") == b"x"
    rst_close(writer)
    await wait_until(lambda: target.ended == 1)
    await wait_until(lambda: relay.stats.mappings_active == 0)
    assert relay.stats.closed_by_client == 1
    assert len(relay) == 0


async def test_server_reset_aborts_client_leg(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"x") == b"x"
    rst_close(target.writers[0])
    assert await read_closed(reader) in ("eof", "reset")
    await wait_until(lambda: relay.stats.mappings_active == 0)
    assert relay.stats.closed_by_server == 1


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_server_close_after_expiry_not_relayed(target, make_relay, how):
    relay, port = await make_relay(target, idle_timeout_s=30)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"x") == b"x"
    await relay.clock.advance(31.0)
    assert relay.stats.mappings_expired == 1
    if how == "fin":
        target.writers[0].close()
    else:
        rst_close(target.writers[0])
    await wait_until(lambda: target.ended == 1)
    await assert_silent(reader, writer)  # the phone never hears of it
    writer.write(b"anyone?")
    await writer.drain()
    await wait_until(lambda: relay.stats.bytes_blackholed == 7)
    await assert_silent(reader, writer)
    st = relay.stats
    assert st.mappings_blackholed == 1  # the client leg is held until the linger ends
    assert st.closed_by_server == 0 and st.closed_by_client == 0
    writer.close()


async def test_client_close_after_expiry_closes_server_quietly(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=30)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"x") == b"x"
    await relay.clock.advance(31.0)
    assert relay.stats.mappings_expired == 1
    assert target.ended == 0
    writer.close()
    await wait_until(lambda: target.ended == 1)  # the server leg is closed by the NAT
    # with a reset, not the phone's FIN (which went into the hole), and none of it is
    # relayed: the server has nothing to answer, and no TIME_WAIT is left on the relay
    assert (target.resets, target.eofs) == (1, 0)
    assert relay.stats.mappings_blackholed == 1  # the phone's leg waits for the linger


# -- linger, close, connect failure


async def test_blackhole_linger_release(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=30, blackhole_linger_s=40)
    reader, writer = await connect(port)
    assert await echo(reader, writer, b"x") == b"x"
    await relay.clock.advance(31.0)
    st = relay.stats
    assert st.mappings_expired == 1
    assert st.mappings_blackholed == 1 and st.mappings_released == 0 and len(relay) == 1
    assert target.ended == 0
    await relay.clock.advance(39.0)
    assert relay.stats.mappings_released == 0
    # 40 protocol seconds after the expiry both legs are aborted and the mapping is gone
    await relay.clock.advance(1.0)
    assert relay.stats.mappings_released == 1
    assert await read_closed(reader) in ("eof", "reset")
    await wait_until(lambda: target.ended == 1)
    assert (target.resets, target.eofs) == (1, 0)   # the forgotten mapping's server leg
    st = relay.stats
    assert st.mappings_blackholed == 0 and st.mappings_released == 1
    assert st.mappings_expired == 1 and len(relay) == 0
    writer.close()


async def test_close_releases_everything(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000)
    conns = [await connect(port) for _ in range(3)]
    for r, w in conns:
        assert await echo(r, w, b"hi") == b"hi"
    assert relay.blackhole_all() == 3
    conns += [await connect(port) for _ in range(2)]
    for r, w in conns[3:]:
        assert await echo(r, w, b"hi") == b"hi"
    st = relay.stats
    assert st.mappings_active == 2 and st.mappings_blackholed == 3 and st.mappings_expired == 3

    await relay.close()
    for r, w in conns:
        assert await read_closed(r) in ("eof", "reset")
        w.close()
    await wait_until(lambda: target.ended == 5)
    st = relay.stats
    assert st.mappings_active == 0 and st.mappings_blackholed == 0
    assert st.mappings_released == 3 and len(relay) == 0
    assert relay.ports == {}
    with pytest.raises(OSError):
        await connect(port)


async def test_upstream_connect_failure_aborts_client(make_relay):
    with socket.socket() as s:  # a port with nobody listening
        s.bind((HOST, 0))
        dead_port = s.getsockname()[1]
    relay = NatRelay(ManualClock(), 30)
    try:
        port = await relay.add_mapping(HOST, 0, HOST, dead_port)
        reader, writer = await connect(port)
        assert await read_closed(reader) in ("eof", "reset")
        st = relay.stats
        assert st.connect_failures == 1 and st.mappings_active == 0 and len(relay) == 0
        writer.close()
    finally:
        await relay.close()


# -- latency and back-pressure


async def test_latency_delays_each_direction(target, make_relay):
    relay, port = await make_relay(target, idle_timeout_s=3000, latency_s=10)
    clock = relay.clock
    reader, writer = await connect(port)
    for i in range(3):
        writer.write(b"ping")
        await writer.drain()
        await barrier()
        assert target.received == 4 * i          # held in the line towards the server
        await clock.advance(9.999)
        await barrier()
        assert target.received == 4 * i
        await clock.advance(0.001)               # 10 s after it was sent
        await wait_until(lambda: target.received == 4 * (i + 1))
        await clock.advance(9.999)               # the echo waits in the line back
        await assert_silent(reader, writer)
        await clock.advance(0.001)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    # order is kept across many chunks, and a FIN follows the bytes sent before it
    chunks = [b"%05d|" % i for i in range(300)]
    for c in chunks:
        writer.write(c)
        await asyncio.sleep(0)
    writer.write_eof()
    want = b"".join(chunks)
    await barrier()
    await clock.advance(10.0)
    await wait_until(lambda: target.received == 12 + len(want))
    await clock.advance(10.0)
    got = b""
    while len(got) < len(want):
        more = await asyncio.wait_for(reader.read(1 << 20), 5)
        assert more
        got += more
    assert got == want
    await clock.advance(10.0)          # the target's FIN, after the echo, is 10 s behind
    assert await read_closed(reader) == "eof"
    await wait_until(lambda: relay.stats.mappings_active == 0)
    writer.close()


@pytest.mark.parametrize("latency_s", [0.0, 1.0])
async def test_backpressure_bounds_relay_memory(make_relay, latency_s):
    hold = await Target(echo=False).start()  # accepts, never reads
    try:
        relay, port = await make_relay(hold, idle_timeout_s=3000, latency_s=latency_s)
        reader, writer = await connect(port)
        chunk = b"\xab" * (256 * 1024)
        sent = 0
        blocked = False
        while sent < (256 << 20):
            writer.write(chunk)
            sent += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.25)
            except asyncio.TimeoutError:
                blocked = True
                break
        assert blocked, "the client was never pushed back"
        assert relay.buffered_bytes() < (1 << 20)
        st = relay.stats
        assert st.bytes_up < sent  # the rest sits in kernel buffers, not in the relay
        assert st.mappings_expired == 0
        writer.transport.abort()
    finally:
        await hold.stop()


# -- the lab: its NAT reaches its own servers by socket, or in memory when asked

@pytest.mark.parametrize("upstream", [None, "memory"])
async def test_the_labs_nat_reaches_its_long_link_as_configured_counted_as_a_socket(
        tmp_path, upstream):
    """By default (`LabConfig.nat_upstream` "socket") the relay connects to the long link by
    loopback socket; with "memory" the link is a `MemoryTransport`, and the server sees what
    a socket from the relay would show."""
    kwargs = {} if upstream is None else {"nat_upstream": upstream}
    lab = await start_lab(tmp_path, users=1, nat_timeout_s=300.0, **kwargs)
    try:
        assert lab.manifest.extra["nat"]["upstream"] == (upstream or "socket")
        entry = lab.manifest.hosts[LONG]
        reader, writer = await asyncio.open_connection(entry.addresses[0], entry.port)
        writer.write(HEADER.pack(16, 16, 1, 6, 7))                      # a NOOP, seq 7
        assert await asyncio.wait_for(reader.readexactly(16), 10) == \
            HEADER.pack(16, 16, 1, 1000000006, 7)
        (link,) = lab.long.links
        if upstream == "memory":
            assert isinstance(link.transport, MemoryTransport)
            assert link.transport.get_extra_info("socket") is None
        else:
            assert not isinstance(link.transport, MemoryTransport)
            assert link.transport.get_extra_info("socket") is not None
        # the kernel's source address for the lab's block, an ephemeral port, counted as
        # any connection
        assert link.peer[0] == "127.0.0.1" and 32768 <= link.peer[1] < 61000
        assert lab.long.connections_total == 1
        writer.close()
        await wait_until(lambda: not lab.long.links and lab.nat.stats.mappings_active == 0)
        assert lab.nat.stats.closed_by_client == 1
    finally:
        await lab.stop()


def test_a_lab_refuses_an_unknown_nat_upstream():
    from mocks.runner import Lab, LabConfig

    with pytest.raises(ValueError, match="socket, memory"):
        Lab(LabConfig(nat_timeout_s=300.0, nat_upstream="pipe"))


@pytest.mark.parametrize("argv, said", [
    (["--nat-upstream", "memory"], "give --nat-timeout S"),
    (["--nat-upstream", "memory", "--nat-timeout", "300", "--store", "redis://127.0.0.1:1/0"],
     "needs the one-process lab")])
def test_lab_up_refuses_a_memory_upstream_it_cannot_have(tmp_path, capsys, argv, said):
    """`lab up --nat-upstream memory` without a relay in the lab's process: exit 2, said."""
    from testbed.cli.parser import build_parser

    args = build_parser().parse_args(["lab", "up", "--manifest", str(tmp_path / "m.json"),
                                      *argv])
    assert args.handler(args) == 2
    assert said in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "m.json").exists()


# -- clients in memory (the heartbeat study's shards)


async def test_clients_reach_the_relay_in_memory_under_its_rules(target, make_relay):
    """`accept_in_memory`: a client of this loop reaches a mapping's listener through
    `LocalServers.connect` with no socket, the relay sees the source it gave, and idle
    expiry black-holes it as it would a socket client; mappings added later are reachable
    too, and a socket client is served as before."""
    events = []
    relay, port = await make_relay(target, idle_timeout_s=30,
                                   on_event=lambda e: events.append((e.kind, e.client)))
    local = LocalServers()
    relay.accept_in_memory(local)
    later = await relay.add_mapping(HOST, 0, HOST, target.port)
    loop = asyncio.get_running_loop()
    clients = []
    for i, p in enumerate((port, later)):
        reader = asyncio.StreamReader()
        transport, proto = await local.connect(
            lambda: asyncio.StreamReaderProtocol(reader), HOST, p,
            source=("127.0.0.9", 40000 + i))
        assert isinstance(transport, MemoryTransport)
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        clients.append(writer)
        assert await echo(reader, writer, b"ping %d" % i) == b"ping %d" % i
    assert [c for kind, c in events if kind == "open"] == [("127.0.0.9", 40000),
                                                           ("127.0.0.9", 40001)]
    await relay.clock.advance(40.0)   # 40 protocol seconds of silence > 30
    assert relay.stats.mappings_expired == 2
    holed = relay.stats.bytes_blackholed
    writer.write(b"into the hole")
    await wait_until(lambda: relay.stats.bytes_blackholed == holed + 13)
    await assert_silent(reader, writer)                # nothing comes back
    sock_r, sock_w = await connect(port)               # a socket client, as before
    assert await echo(sock_r, sock_w, b"socket") == b"socket"
    sock_w.close()
    for w in clients:
        w.transport.abort()
