"""A phone with its own source address cycles its long link's local port (no reuse while
the NAT may still hold the old mapping), and skips a port in use."""

from __future__ import annotations

import socket

from mocks.nat import NatEventKind
from testbed.client.session import Session
from testbed.lab.addressing import LONG
from testbed.client.source_ports import source_ports

from ..conftest import start_lab
from .helpers import wait_for


async def _session(lab, address: str) -> Session:
    u = lab.manifest.users[0]
    s = Session(lab.manifest, u["username"], u["password"], local_addr=address)
    await s.login()
    return s


def _long_links_from(lab, events, address: str) -> list[int]:
    """The phone ports of the long links the NAT accepted from `address`."""
    port = lab.manifest.hosts[LONG].port
    return [e.client[1] for e in events if e.kind is NatEventKind.OPEN
            and e.listen_port == port and e.client and e.client[0] == address]


async def test_reconnects_use_a_new_port_each_and_skip_one_in_use(tmp_path):
    lab = await start_lab(tmp_path, users=1, nat_timeout_s=300.0)
    events = []
    lab.relay.on_event = events.append      # what the NAT accepted: the phone's address
    try:
        address = "127.77.0.1"
        s = await _session(lab, address)
        n = 6
        for _ in range(n):
            link = await s.connect_long()
            await link.close()
        await wait_for(lambda: len(_long_links_from(lab, events, address)) == n)
        ports = _long_links_from(lab, events, address)
        assert len(set(ports)) == n, ports
        # a port held by another socket is skipped: the link takes the one after it
        busy = source_ports(address).next_port
        holder = socket.socket()
        try:
            holder.bind((address, busy))
            holder.listen(1)
            link = await s.connect_long()
            await wait_for(lambda: len(_long_links_from(lab, events, address)) == n + 1)
            assert _long_links_from(lab, events, address)[-1] == busy + 1
            assert link.sockname == (address, busy + 1)
            await link.close()
        finally:
            holder.close()
        await s.close()
    finally:
        await lab.stop()
