"""Small helpers for end-to-end tests over real sockets."""

from __future__ import annotations

import asyncio
import struct

from testbed.client.session import Session
from testbed.lab.addressing import LONG

HEADER = struct.Struct(">IHHII")


async def logged_in(lab, i: int, *, long: bool = True, **kwargs) -> Session:
    u = lab.manifest.users[i]
    s = Session(lab.manifest, u["username"], u["password"], **kwargs)
    await s.login()
    if long:
        await s.connect_long()
    return s


async def raw_long(lab):
    h = lab.manifest.hosts[LONG]
    return await asyncio.open_connection(h.addresses[0], h.port)


async def read_frame(reader, timeout=5.0):
    head = await asyncio.wait_for(reader.readexactly(16), timeout)
    plen, hlen, ver, cmd, seq = HEADER.unpack(head)
    body = await asyncio.wait_for(reader.readexactly(plen - 16), timeout)
    return cmd, seq, body


async def wait_for(predicate, timeout=5.0, interval=0.01):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
