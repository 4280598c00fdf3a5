"""The relay as the tap's vantage point: a pure relay (never expires), the carrier NAT's
black hole, resets and refused upstreams, as the phone's side of the wire shows them."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from mocks.nat import NatRelay
from testbed.capture.tap import Tap
from testbed.lab.clock import Clock, ManualClock

from .tshark import CHECKSUMS, conversations, fields, needs_tshark, tshark

HOST = "127.0.0.1"


async def echo_server(ended: list | None = None):
    """Echo every chunk; answer a FIN with a FIN. Each connection's end goes in `ended`."""
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()
        except ConnectionError:
            writer.close()
        finally:
            if ended is not None:
                ended.append(writer.get_extra_info("peername"))
    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


async def until(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


@needs_tshark
async def test_pure_relay_reports_the_phone_side(tmp_path):
    path = tmp_path / "relay.pcapng"
    tap = Tap(path, comment={"how": "tap"})
    server, target = await echo_server()
    clock = ManualClock()
    relay = NatRelay(clock, None, tap=tap)        # a pure relay: nothing ever expires
    port = await relay.add_mapping(HOST, 0, HOST, target)
    reader, writer = await asyncio.open_connection(HOST, port)
    me = writer.get_extra_info("sockname")
    sent = b""
    for i in range(3):
        chunk = bytes([65 + i]) * (1000 * (i + 1))
        writer.write(chunk)
        sent += chunk
        assert await reader.readexactly(len(chunk)) == chunk
        await clock.advance(86400.0)             # a day of silence between chunks
    assert relay.stats.mappings_expired == 0 and len(relay) == 1
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await until(lambda: len(relay) == 0)
    await relay.close()
    server.close()
    tap.close()

    # the capture shows the phone and the relay's public port, never the inner target
    assert conversations(path) == [(f"{me[0]}:{me[1]}", f"{HOST}:{port}")]
    assert tshark(path, "-Y", "tcp.analysis.flags") == ""
    assert tshark(path, *CHECKSUMS, "-Y", "tcp.checksum.status==2") == ""
    rows = fields(path, "tcp.srcport", "tcp.len", "tcp.flags", "tcp.payload")
    up = b"".join(bytes.fromhex(r[3].replace(":", "")) for r in rows
                  if r[0] == str(me[1]) and r[3])
    down = b"".join(bytes.fromhex(r[3].replace(":", "")) for r in rows
                    if r[0] == str(port) and r[3])
    assert up == sent and down == sent
    fins = [r[0] for r in rows if int(r[2], 16) & 0x01]
    assert fins == [str(me[1]), str(port)]          # the phone's FIN first, then ours
    assert not [r for r in rows if int(r[2], 16) & 0x04]


@needs_tshark
async def test_blackholed_bytes_go_unanswered(tmp_path):
    path = tmp_path / "hole.pcapng"
    tap = Tap(path, comment={"how": "tap"})
    ended: list = []
    server, target = await echo_server(ended)
    relay = NatRelay(ManualClock(), 3600.0, tap=tap)
    port = await relay.add_mapping(HOST, 0, HOST, target)
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    assert relay.blackhole_all() == 1            # the carrier forgets the mapping
    writer.write(b"heartbeat")
    await until(lambda: relay.stats.bytes_blackholed == 9)   # read, and dropped
    writer.write_eof()
    await until(lambda: ended)                # the FIN reached the relay: it let the
    await relay.close()                       # server leg go; then the linger ends
    writer.close()
    server.close()
    tap.close()

    rows = fields(path, "tcp.srcport", "tcp.seq", "tcp.ack", "tcp.len", "tcp.flags")
    phone = rows[0][0]
    hb = next(i for i, r in enumerate(rows) if r[0] == phone and r[3] == "9")
    after = rows[hb + 1:]
    # nothing from the server side acknowledges the heartbeat or the phone's FIN
    hb_end = int(rows[hb][1]) + 9
    assert all(int(r[2]) < hb_end for r in after if r[0] != phone)
    assert not [r for r in after if r[0] != phone and r[3] != "0"]
    assert [r for r in after if r[0] == phone and int(r[4], 16) & 0x01]   # the FIN went out


@needs_tshark
async def test_resets_on_both_sides(tmp_path):
    path = tmp_path / "rst.pcapng"
    tap = Tap(path, comment={"how": "tap"})
    server, target = await echo_server()
    relay = NatRelay(Clock(1.0), None, tap=tap)
    port = await relay.add_mapping(HOST, 0, HOST, target)
    # 1. the phone resets its connection
    reader, writer = await asyncio.open_connection(HOST, port)
    me1 = writer.get_extra_info("sockname")[1]
    writer.write(b"x")
    await reader.readexactly(1)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.transport.abort()
    await until(lambda: len(relay) == 0)
    # 2. the upstream refuses: the phone gets a reset from the relay
    dead = socket.socket()
    dead.bind((HOST, 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    port2 = await relay.add_mapping(HOST, 0, HOST, dead_port)
    reader, writer = await asyncio.open_connection(HOST, port2)
    me2 = writer.get_extra_info("sockname")[1]
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()
    await relay.close()
    server.close()
    tap.close()

    rows = fields(path, "tcp.srcport", "tcp.dstport", "tcp.flags")
    rst = [(r[0], r[1]) for r in rows if int(r[2], 16) & 0x04]
    assert rst == [(str(me1), str(port)), (str(port2), str(me2))]
    assert tshark(path, "-Y", "tcp.analysis.flags") == ""


@needs_tshark
async def test_latency_shows_in_the_capture(tmp_path):
    path = tmp_path / "latency.pcapng"
    tap = Tap(path, comment={"how": "tap"})
    server, target = await echo_server()
    relay = NatRelay(Clock(1.0), None, latency_s=0.05, tap=tap)
    port = await relay.add_mapping(HOST, 0, HOST, target)
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    await relay.close()
    server.close()
    tap.close()
    rows = fields(path, "frame.time_epoch", "tcp.srcport", "tcp.len")
    t_up = next(float(r[0]) for r in rows if r[1] != str(port) and r[2] == "4")
    t_down = next(float(r[0]) for r in rows if r[1] == str(port) and r[2] == "4")
    assert t_down - t_up >= 0.1 - 0.005   # one latency each way, shown when delivered


class BrokenTap:
    """Takes connections, then fails every report, as a tap on a full disk would."""

    def __init__(self) -> None:
        self.calls = 0

    def tcp_open(self, client, server):
        return object()

    def _fail(self, *args, **kwargs):
        self.calls += 1
        raise OSError(28, "No space left on device")

    tcp_data = tcp_close = udp = _fail


async def test_a_broken_tap_breaks_neither_the_relay_nor_the_resolver(caplog):
    import logging

    from mocks.dns import LabDNS
    from testbed.wire.dns import build_query, parse_response

    caplog.set_level(logging.ERROR)
    server, target = await echo_server()
    relay_tap, dns_tap = BrokenTap(), BrokenTap()
    relay = NatRelay(ManualClock(), None, tap=relay_tap)
    port = await relay.add_mapping(HOST, 0, HOST, target)
    for i in range(3):                     # every connection, chunk and FIN is reported
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"still relayed %d" % i)
        assert await reader.readexactly(15) == b"still relayed %d" % i
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    await until(lambda: len(relay) == 0)

    resolver = LabDNS({"long.weixin.qq.com": ["127.0.0.11"]}, tap=dns_tap)
    await resolver.listen(HOST, 0)
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Ask(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done():
                got.set_result(data)
    transport, _ = await loop.create_datagram_endpoint(Ask, remote_addr=resolver.address,
                                                       family=socket.AF_INET)
    transport.sendto(build_query("long.weixin.qq.com", 5))
    answer = parse_response(await asyncio.wait_for(got, 5))
    transport.close()
    resolver.close()
    await relay.close()
    server.close()

    assert list(answer.addresses) == ["127.0.0.11"]
    # each broken tap was called every time, and each failure counted ...
    assert relay.tap.failures == relay_tap.calls >= 3 * 4     # 2 chunks and 2 FINs each
    assert resolver.tap.failures == dns_tap.calls == 2         # the query and the answer
    # ... but logged only once per tap, with its traceback
    logged = [r for r in caplog.records if r.name == "testbed.capture.tap"]
    assert len(logged) == 2 and all(r.exc_info for r in logged)
