"""Small helpers for end-to-end tests over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time

from testbed.client.session import Session
from testbed.fleet import end_with_parent
from testbed.lab.addressing import LONG, SHORT, AddressPlan
from testbed.lab.manifest import load_manifest
from testbed.lab.profiles import load_profile
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


def start_lab_up(tmp_path, *extra, users: int = 3, name: str = "m.json", plan=None):
    """`testbed lab up` as a subprocess on a random loopback /24 (or `plan`'s): (process,
    manifest path). It gets SIGTERM if pytest dies first (a timeout's os._exit, a killed
    CI job), so no lab outlives the run that started it."""
    manifest = tmp_path / name
    plan = plan or AddressPlan.random_loopback()
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "lab", "up", "--users",
                             str(users), "--manifest", str(manifest), "--subnet", plan.prefix,
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=end_with_parent())
    return proc, manifest


def wait_manifest(proc, manifest, timeout=60.0):
    """The manifest of a `lab up` process, once it exists (the lab listens then). The timeout
    is only a guard: a lab of processes starts seven interpreters, slow on a busy machine."""
    deadline = time.monotonic() + timeout
    while not manifest.exists():
        if proc.poll() is not None:
            raise AssertionError(f"lab exited early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("no manifest in time")
        time.sleep(0.02)
    return load_manifest(manifest)


# ---------------------------------------------------------------------- `testbed serve`

def start_serve(role, ready_file, *args, env=None):
    """`testbed serve ROLE ... --ready-file READY` as a subprocess (stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "testbed.cli", "serve", role, *args,
                             "--ready-file", str(ready_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=end_with_parent())


def wait_ready(proc, ready_file, timeout=60.0, want=None):
    """A serve process's ready file as a dict, once it exists (and `want(doc)` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        if ready_file.exists():
            doc = json.loads(ready_file.read_text())
            if want is None or want(doc):
                return doc
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early ({proc.returncode}): "
                                 f"{proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{ready_file} not ready in time")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def process_group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (a command started in a session of its
    own, and what it started without one), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children...), from /proc."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier} - out
        out |= frontier
    return out


def _sockets(pid: int, table: str, state: str, column: int) -> set[tuple[str, int]]:
    """(address, port) in `column` (1 local, 2 remote) of the `table` ("tcp", "udp6"...)
    rows in `state` that are sockets process `pid` holds (Linux /proc: its socket inodes
    matched against its network namespace's table)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = set()
    with open(f"/proc/{pid}/net/{table}") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == state and fields[9] in inodes:
                addr, port = fields[column].split(":")
                # the kernel prints each 32-bit word of the address in host order
                raw = b"".join(struct.pack("<I", int(addr[i:i + 8], 16))
                               for i in range(0, len(addr), 8))
                ip = socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET,
                                      raw)
                out.add((ip, int(port, 16)))
    return out


def tcp_peers(pid: int) -> set[tuple[str, int]]:
    """The remote ends of the established TCP connections process `pid` holds."""
    return _sockets(pid, "tcp", "01", 2)


def bound_sockets(pid: int) -> set[tuple[str, str, int]]:
    """(table, address, port) of every listening TCP socket and every unconnected UDP
    socket process `pid` holds, IPv4 and IPv6 ("tcp", "udp", "tcp6", "udp6")."""
    return {(table, *a) for table, state in (("tcp", "0A"), ("udp", "07"), ("tcp6", "0A"),
                                             ("udp6", "07"))
            for a in _sockets(pid, table, state, 1)}


def still_alive(pids, within: float = 2.0) -> list[int]:
    """Which of `pids` are alive after waiting up to `within` seconds for them to end."""
    deadline = time.monotonic() + within
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


async def chat_round(phones, plan, timeout=30.0):
    """Phone i sends "i:k" to phones plan[i][k], in order, the k-th through the long door
    when i + k is even, else the short; then waits until every receiver has them all and
    asserts each arrived exactly once and in its sender's order."""
    from collections import defaultdict

    async def sender(i):
        for k, j in enumerate(plan[i]):
            await phones[i].send_text(phones[j].username, f"{i}:{k}",
                                      door=("long", "short")[(i + k) % 2])

    await asyncio.gather(*(sender(i) for i in plan))
    expected = defaultdict(list)          # receiver -> [(sender, k)] in the order sent
    for i in plan:
        for k, j in enumerate(plan[i]):
            expected[j].append((i, k))

    def inbox(j):
        me = phones[j].username
        return [m for m in phones[j].session.sync_state.messages
                if m.to_user == me and m.from_user != me]

    deadline = time.monotonic() + timeout
    while any(len(inbox(j)) < len(want) for j, want in expected.items()):
        assert time.monotonic() < deadline, "not every message arrived"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)              # a duplicate would come by now
    for j, want in expected.items():
        got = [tuple(map(int, m.content.split(":"))) for m in inbox(j)]
        assert sorted(got) == sorted(want)                      # each exactly once
        for i in {s for s, _ in got}:                           # in each sender's order
            assert [k for s, k in got if s == i] == sorted(k for s, k in got if s == i)
        assert phones[j].metrics.duplicates == 0


def limits_profile(tmp_path, name: str = "limits.json", base: str = "lab-report-2013",
                   **limits) -> str:
    """A profile file: `base` with some of its `limits` changed (small deadlines, caps and
    quotas that a test can cross in a second); its path, for `LabConfig.profile` or
    `lab up --profile`."""
    doc = dataclasses.asdict(load_profile(base))
    doc.update(doc.pop("extra"))
    doc["name"] = f"{base}+limits"
    doc["limits"].update(limits)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def tls_request_by_hand(sock: socket.socket, ctx: ssl.SSLContext, request: bytes):
    """A TLS client over `sock` by hand (`ssl.MemoryBIO`), so that a test decides what it
    never sends (a close_notify): the handshake with the short link, then `request` sent.
    Returns (the TLS object, its incoming BIO) for the caller to read the response with."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=SHORT)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())
    tls.write(request)
    sock.sendall(outgoing.read())
    return tls, incoming
