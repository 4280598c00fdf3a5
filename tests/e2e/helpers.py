"""Small helpers for end-to-end tests over real sockets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from testbed.client.session import Session
from testbed.lab.addressing import LONG, AddressPlan
from testbed.lab.manifest import load_manifest
from testbed.wire.frames import HEADER, Frame, FrameDecoder


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


async def read_frame(reader, timeout=10.0) -> Frame:
    """One frame from a raw stream, checked by the wire's decoder."""
    head = await asyncio.wait_for(reader.readexactly(16), timeout)
    body = await asyncio.wait_for(reader.readexactly(HEADER.unpack(head)[0] - 16), timeout)
    [frame] = FrameDecoder().receive_data(head + body)
    return frame


async def wait_for(predicate, timeout=10.0, interval=0.005):
    """Poll `predicate` until true; fail after `timeout` wall seconds (only a guard)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def start_lab_up(tmp_path, *extra, users: int = 3, name: str = "m.json"):
    """`testbed lab up` as a subprocess on a random loopback /24: (process, manifest path)."""
    manifest = tmp_path / name
    plan = AddressPlan.random_loopback()
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "lab", "up", "--users",
                             str(users), "--manifest", str(manifest), "--subnet", plan.prefix,
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, manifest


def wait_manifest(proc, manifest, timeout=20.0):
    """The manifest of a `lab up` process, once it exists (the lab listens then)."""
    deadline = time.monotonic() + timeout
    while not manifest.exists():
        if proc.poll() is not None:
            raise AssertionError(f"lab exited early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("no manifest in time")
        time.sleep(0.02)
    return load_manifest(manifest)
