"""`NatRelay.on_event`: every event names its mapping's client, so observers need no patching."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from mocks.nat import NatEvent, NatEventKind, NatRelay
from testbed.lab.clock import Clock

CLIENTS = ("127.0.0.1", "127.0.0.2")   # two phones, told apart by source address


async def _echo_server() -> asyncio.AbstractServer:
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_events_carry_the_client_address_and_kind():
    server = await _echo_server()
    events: list[NatEvent] = []
    relay = NatRelay(Clock(100.0), idle_timeout_s=3600.0)
    relay.on_event = events.append        # set after construction, as a study does
    port = await relay.add_mapping("127.0.0.1", 0, "127.0.0.1",
                                   server.sockets[0].getsockname()[1])
    phones = []
    try:
        for source in CLIENTS:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(source, 0))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"   # the mapping is open both ways
            phones.append((writer.get_extra_info("sockname")[:2], writer))
        assert relay.blackhole_all() == 2                    # expire both now
        await relay.close()                                  # releases both: close events
    finally:
        for _, w in phones:
            w.close()
        server.close()
        await server.wait_closed()

    addrs = [tuple(a) for a, _ in phones]
    assert [(e.kind, e.client) for e in events if e.kind == "open"] == \
        [(NatEventKind.OPEN, a) for a in addrs]
    for kind in (NatEventKind.EXPIRE, NatEventKind.CLOSE):
        assert sorted(e.client for e in events if e.kind is kind) == sorted(addrs), events
    assert {e.client[0] for e in events} == set(CLIENTS)
    assert all(e.listen_port == port for e in events)
    times = [e.at for e in events]
    assert times == sorted(times)                              # protocol time, in order
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].client = None


async def test_a_failing_observer_does_not_break_the_relay():
    server = await _echo_server()

    def broken(event: NatEvent) -> None:
        raise RuntimeError("observer bug")

    relay = NatRelay(Clock(100.0), idle_timeout_s=None, on_event=broken)
    port = await relay.add_mapping("127.0.0.1", 0, "127.0.0.1",
                                   server.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"still relayed")
        assert await reader.readexactly(13) == b"still relayed"
        writer.close()
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()
    assert relay.stats.mappings_opened == 1
