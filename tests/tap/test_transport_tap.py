"""The recording lab's transport wrapper (`mocks.transport_tap`), on real sockets."""

from __future__ import annotations

import asyncio
import socket
import struct

from mocks.transport_tap import TransportTap
from testbed.capture.packets import Segment, decode, read_capture
from testbed.capture.tap import Tap

HOST = "127.0.0.1"


class _Holder(asyncio.Protocol):
    """A server protocol that keeps its transport for the test to close."""

    made: list[asyncio.Transport] = []

    def connection_made(self, transport) -> None:
        _Holder.made.append(transport)


async def test_closing_a_connection_the_phone_has_reset_raises_nothing(tmp_path):
    """A server closes a connection whose phone has just sent a RST the loop has not read
    yet: the FIN cannot be sent (ENOTCONN), and close() must still not raise (it did, as an
    aiohttp handler's "Task exception was never retrieved" in a recording lab's Ctrl-C)."""
    _Holder.made = []
    tap = Tap(tmp_path / "c.pcapng", comment="transport tap test")
    tt = TransportTap(tap)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(tt.wrap(_Holder), HOST, 0)
    port = server.sockets[0].getsockname()[1]
    phone = socket.create_connection((HOST, port))
    try:
        for _ in range(200):
            if _Holder.made:
                break
            await asyncio.sleep(0.01)
        [transport] = _Holder.made
        phone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        phone.close()                 # a RST, which the kernel has before the loop runs again
        transport.close()             # no await in between: the loop has not seen the RST
        await asyncio.sleep(0.05)
        assert transport.is_closing()
        assert tt.lingering == 0      # nothing waits for a FIN that will never come
    finally:
        server.close()
        await server.wait_closed()
        tt.close()
        tap.close()
    # the capture is whole and shows the connection: its handshake, then the phone's RST
    segments = [decode(p) for p in read_capture(tmp_path / "c.pcapng")]
    flags = [s.flags for s in segments if isinstance(s, Segment)]
    assert flags[:3] == [0x02, 0x12, 0x10] and flags[-1] & 0x04, flags
