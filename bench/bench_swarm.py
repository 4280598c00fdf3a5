"""Many clients (issue 3): 20,000 concurrent identified long links with heartbeats, 2 cores.

One process may hold at most 20,000 open files here, so the server side is split the way the
real long link is: `long.weixin.qq.com` has two A records, and each address gets its own
server process (`Service(MemoryStore())` + `LongLinkServer` on the default asyncio loop, as
the lab runs it), both on the same port. Both stores are seeded identically and
deterministically before listening: one user per client (`store.create_user`, so the sync logs
are empty and IDENTIFY triggers no NOTIFY) and one session per client
(`SessionRecord(sha256("bench-swarm:<i>")[:16], uin, username)` put straight into the store),
so any client can IDENTIFY on either address.

The clients are lightweight, not the full `Phone`: several processes (default 4 x 5,000, on
uvloop), run by the testbed's fleet runner (`testbed.fleet.Fleet`, as `testbed
emulate` and the heartbeat study run theirs), each bound to its own source address
(`client_address`: 127.99.0.1+i); client i connects to server
address i mod 2 with the testbed's `LongLink`, sends `IDENTIFY` with its own session, checks
ret 0, then runs a heartbeat loop: a NOOP every `interval()` protocol seconds of the policy
(default `fixed:300`, converted with the lab `Clock` at the time scale, default 100: a NOOP per
link every 3 s, ~6,700/s for 20,000 links), the first one at a random phase within the first
interval so that the population is spread the way phones coming online at different times
are. Each reply is classified against the policy's NOOP timeout (20 protocol s = 0.2 s wall):
answered in time, late, or failed (the link closed with the NOOP pending, or still no reply
when the next NOOP is due).

Phases: servers seed and listen; clients connect and identify all links at once (at most
`--connect-concurrency` in flight per client process) -> time to open and identify N links;
one interval to settle; then the steady-state window (default 30 s; --quick: 2,000 links
over 2 client processes, 5 s), during which each server process is asked over its control pipe for
`LongLinkServer.identified_count()` every few seconds. Reported: links/s of the ramp,
identified links per server (minimum over the window), NOOPs answered per second, p50/p99/max
NOOP round trip, late and failed NOOPs, server RSS per process and per link (over the process
after seeding, before listening; `gc.collect()` first), CPU of servers vs clients in the ramp
and in the window (per process, user and system), and what else used the machine.

Verdict "OK" when every link was identified, the servers held all N identified throughout
the window, no NOOP failed and no link was lost or idle-closed, at most 0.1 % of the NOOPs
were late, and NOOPs were answered at >= 95 % of the nominal rate; otherwise "BELOW TARGET"
with the reasons. The machine is shared: when other processes took CPU during the window the
verdict says so (late NOOPs then mostly mean our 7 processes waited for a core).

As root the whole run happens in a fresh network namespace (`ip netns add`, `lo` up,
ephemeral ports 1024-65535, `ip netns exec` this script, namespace deleted at the end); without
root, or with --no-netns, in the host namespace on a free port. The open-file soft limit is
raised to the hard limit in every process. Only the processes this script started are stopped,
by PID, also on Ctrl-C. Prints a table and a verdict line; exits 0 whether or not the target
is met.

    python bench/bench_swarm.py [--quick] [--links N] [--clients P] [--duration S]
                                [--heartbeat fixed:300] [--time-scale 100]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import functools
import hashlib
import os
import random
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

SERVER_ADDRS = ("127.77.0.11", "127.77.0.12")   # the long link's two A records
NETNS_PORT = 8080                                # the long link's port, in our own namespace
MIN_WALL_TIMEOUT = 0.05                          # as testbed.client.phone: timer jitter floor
SAMPLE_EVERY_S = 5.0                             # identified_count() polls in the window


def session_key(i: int) -> bytes:
    """Client i's session key: the same in both servers and in the client, no file needed."""
    return hashlib.sha256(b"bench-swarm:%d" % i).digest()[:16]


def user_of(i: int, users: int) -> tuple[int, str]:
    """(uin, username) of client i: users are created in order, uins from 1."""
    u = i % users
    return u + 1, f"swarm{u + 1:06d}"


def _child_setup() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops us by pipe,
    # then by PID. If the parent dies, the control pipe's EOF stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    c.raise_nofile()


# ---------------------------------------------------------------------------- server process
def server_main(conn, host: str, port: int, n: int, users: int, scale: float,
                loop_kind: str) -> None:
    _child_setup()

    async def main() -> None:
        from mocks.long_link import LongLinkServer
        from mocks.service import Service
        from mocks.state import MemoryStore, SessionRecord
        from testbed.lab.clock import Clock

        store = MemoryStore()
        for u in range(users):
            uin, name = user_of(u, users)
            rec = await store.create_user(name, f"pass{uin:06d}", name, 1 + u % 2, "Beijing",
                                          "", f"avatar{uin:06d}")
            assert rec.uin == uin
        for i in range(n):
            uin, name = user_of(i, users)
            await store.put_session(SessionRecord(session_key(i), uin, name))
        clock = Clock(scale)
        srv = LongLinkServer(Service(store, clock), clock)
        base = c.rss_kb()
        server = await srv.listen(host, port)   # the accept backlog: the limits' 4,096
        conn.send(("ready", {"port": server.sockets[0].getsockname()[1], "rss_base": base,
                             "pid": os.getpid()}))

        def stats() -> dict:
            return {"links": len(srv.links), "identified": srv.identified_count(),
                    "connections_total": srv.connections_total, "frames_in": srv.frames_in,
                    "errors": len(srv.errors), "violations": srv.violations,
                    "idle_closed": srv.idle_closed}

        await c.control_loop(conn, {"stats": stats, "rss": c.rss_kb})
        await srv.close()

    c.run(main(), loop_kind)


# ---------------------------------------------------------------------------- client process
class Counters:
    """Cumulative per client process; the parent takes differences between snapshots."""

    __slots__ = ("answered", "failed", "late", "lost", "rtts", "sent", "slipped")

    def __init__(self) -> None:
        self.sent = self.answered = self.late = self.failed = self.lost = self.slipped = 0
        self.rtts = array.array("d")   # wall seconds, since the last mark

    def snapshot(self, path: str) -> dict:
        """Counters, and the round trips since the last snapshot written to `path`: the
        control pipe carries small replies only (under uvloop, `add_reader` leaves it
        non-blocking, so a reply larger than the socket buffer would fail half-sent)."""
        out = {k: getattr(self, k) for k in self.__slots__ if k != "rtts"}
        with open(path, "wb") as f:
            self.rtts.tofile(f)
        out["rtts"] = path
        self.rtts = array.array("d")
        return out


async def client_worker(p: dict, channel) -> None:
    """A client process (a fleet worker): `p` holds its share of the links; the parent asks
    "connect" (answered "ramp" when every link is identified), "mark", "rss" and "stop"."""
    c.raise_nofile()
    await _clients(channel, **p)


async def _clients(channel, index: int, src: str, servers: tuple, port: int, first: int,
                   count: int, users: int, scale: float, policy_spec: str,
                   noop_timeout_s: float, concurrency: int, tmpdir: str) -> None:
    from testbed.client.heartbeat import parse_policy
    from testbed.client.longlink import LinkClosed, LongLink
    from testbed.lab.clock import Clock
    from testbed.wire import pb
    from testbed.wire.commands import NOOP_CMD

    loop = asyncio.get_running_loop()
    perf_counter = time.perf_counter   # uvloop's loop.time() has 1 ms resolution
    clock = Clock(scale)
    st = Counters()
    rng = random.Random(index)
    links: list = []
    sem = asyncio.Semaphore(concurrency)
    phase = {"done": 0, "ok": 0, "connect_failed": 0, "identify_failed": 0,
             "first_error": ""}
    all_done = loop.create_future()
    stopping = [False]
    tasks: list = []
    ramp_times = array.array("d")   # (connect s, IDENTIFY round trip s) per link

    def wall(protocol_s: float) -> float:
        return max(clock.to_wall(protocol_s), MIN_WALL_TIMEOUT)

    def on_reply(t0: float, timeout_w: float, policy, interval: float, fut) -> None:
        if fut.cancelled():          # no reply when the next NOOP was due
            st.failed += 1
            policy.on_failure(interval)
            return
        if fut.exception() is not None:   # the link closed with the NOOP pending
            st.failed += 1
            policy.on_failure(interval)
            return
        rtt = perf_counter() - t0
        st.rtts.append(rtt)
        if rtt <= timeout_w:
            st.answered += 1
            policy.on_success(interval)
        else:
            st.late += 1
            policy.on_failure(interval)

    def finished_one() -> None:
        phase["done"] += 1
        if phase["done"] == count and not all_done.done():
            all_done.set_result(None)

    async def life(i: int) -> None:
        uin, _ = user_of(i, users)
        host = servers[i % len(servers)]
        try:
            async with sem:
                t0 = perf_counter()
                link = await LongLink.connect(host, port, local_addr=src, timeout=30.0)
                t1 = perf_counter()
                try:
                    resp = await link.call("IDENTIFY", pb.IdentifyRequest(
                        base=pb.BaseRequest(session_key=session_key(i), uin=uin)),
                        timeout=30.0)
                except BaseException:
                    link.abort()
                    raise
                ramp_times.append(t1 - t0)
                ramp_times.append(perf_counter() - t1)
        except Exception as exc:  # noqa: BLE001 - refused, timed out, closed, bad reply
            phase["connect_failed"] += 1
            phase["first_error"] = phase["first_error"] or f"client {i}: {exc!r}"
            finished_one()
            return
        if resp.base.ret != 0:
            phase["identify_failed"] += 1
            phase["first_error"] = phase["first_error"] or \
                f"client {i}: IDENTIFY ret {resp.base.ret}"
            link.abort()
            finished_one()
            return
        links.append(link)
        phase["ok"] += 1
        finished_one()
        # the heartbeat loop: a NOOP every interval(), at a fixed cadence
        policy = parse_policy(policy_spec, noop_timeout_s)
        timeout_w = wall(policy.noop_timeout_s)
        due = loop.time() + clock.to_wall(policy.interval()) * rng.random()
        prev = None
        while not stopping[0]:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if stopping[0]:
                return
            if not link.is_open:
                st.lost += 1
                return
            if prev is not None and not prev.done():
                prev.cancel()        # counted failed by on_reply
            interval = policy.interval()
            try:
                prev = link.request_frame(NOOP_CMD)
            except LinkClosed:
                st.lost += 1
                return
            st.sent += 1
            prev.add_done_callback(functools.partial(on_reply, perf_counter(), timeout_w,
                                                     policy, interval))
            now = loop.time()
            due += clock.to_wall(interval)
            if due < now:            # this process fell a whole interval behind
                st.slipped += 1
                due = now

    async def connect_all() -> None:
        t_start = time.monotonic()
        for i in range(first, first + count):
            tasks.append(loop.create_task(life(i)))
        try:
            if count:
                await all_done
        except asyncio.CancelledError:   # stopped mid-ramp: nobody waits for a reply
            return
        t_done = time.monotonic()
        path = os.path.join(tmpdir, f"ramp-{index}")
        with open(path, "wb") as f:
            ramp_times.tofile(f)
        channel.send("ramp", {**phase, "t_start": t_start, "t_done": t_done, "times": path})

    marks = iter(range(1 << 30))

    def mark() -> dict:
        out = st.snapshot(os.path.join(tmpdir, f"rtts-{index}-{next(marks)}"))
        out["open"] = sum(1 for link in links if link.is_open)
        return out

    channel.send("ready", {"pid": os.getpid(), "src": src, "rss_base": c.rss_kb()})
    while (kind := (await channel.receive())[0]) != "stop":
        if kind == "connect":   # the ramp's result follows when every link is identified
            tasks.append(loop.create_task(connect_all()))
        elif kind == "mark":
            channel.send("mark", mark())
        elif kind == "rss":
            channel.send("rss", c.rss_kb())
    stopping[0] = True
    for link in links:
        link.abort()
    for t in tasks:
        t.cancel()
    await asyncio.sleep(0)



async def ask(clients, kind: str, timeout: float = 120.0) -> list:
    """Ask every client process `kind` and return their answers, in order."""
    clients.broadcast(kind)
    return await clients.collect(kind, timeout=timeout)


# ---------------------------------------------------------------------------- measuring
def _sum_counters(marks: list[dict]) -> dict:
    keys = ("sent", "answered", "late", "failed", "lost", "slipped", "open")
    return {k: sum(m[k] for m in marks) for k in keys}


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a if k != "open"}


def _rtts(marks: list[dict]) -> array.array:
    out = array.array("d")
    for m in marks:
        with open(m["rtts"], "rb") as f:
            out.frombytes(f.read())
    return out


def _pct(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def print_table(title: str, columns: list, rows: list) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        c.print_table(title, columns, rows)
        return
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in (columns[0], "note") else "right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console(width=140).print(t)


KERNEL_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


def kernel_memory() -> dict:
    """Kernel memory behind sockets, whole machine: bytes in the slab caches a TCP socket
    uses (the socket, its inode, its file, its dentry, its epoll entry) and TCP buffer
    memory (sockstat `mem`, pages). Deltas over a run are dominated by our links."""
    out = {"slab": 0, "buffers": 0}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in KERNEL_CACHES:
                    out["slab"] += int(parts[1]) * int(parts[3])   # active objects x size
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    kv = line.split()[1:]
                    out["buffers"] = int(dict(zip(kv[0::2], kv[1::2]))["mem"]) * 4096
    except (OSError, ValueError, KeyError, IndexError):
        return {}
    return out


def tcp_diff(a: dict, b: dict, key: str) -> str:
    return f"{b[key] - a[key]:,}" if key in a and key in b else "?"


def tcp_counters() -> dict:
    """Kernel TCP counters of this network namespace (the whole host's without one)."""
    out = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[0::2], lines[1::2]):
            prefix = names.split(":")[0]
            for k, v in zip(names.split()[1:], values.split()[1:]):
                out[f"{prefix}.{k}"] = int(v)
    return out


class UserSys:
    """User and system CPU seconds per PID over a window (system: syscalls and, on
    loopback, most of the TCP work of both ends of a segment, charged to the sender)."""

    def __init__(self, pids: list) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.a = [self._read(p) for p in pids]

    @staticmethod
    def _read(pid: int) -> tuple:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(rest[11]) / tick, int(rest[12]) / tick

    def stop(self) -> list:
        wall = time.perf_counter() - self.t0
        return [((u1 - u0) / wall, (s1 - s0) / wall)
                for (u0, s0), (u1, s1) in zip(self.a, (self._read(p) for p in self.pids))]


def _softirq_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[5] + v[6]) / os.sysconf("SC_CLK_TCK")     # irq + softirq, all cores


def _process_seconds(exclude: set) -> dict:
    """utime + stime of every other process now, keyed by (pid, start time)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[(int(name), rest[19])] = (int(rest[11]) + int(rest[12])) / tick
    return out


class Elsewhere:
    """Over a window: CPU of other processes alive at both ends of it (sessions sharing the
    machine; those that came and went are the remainder), and irq + softirq time. With tick
    accounting (this kernel) a softirq tick is also charged to the process it interrupted,
    so irq + softirq is part of the per-process figures, mostly of ours (loopback TCP)."""

    def __init__(self, ours: list) -> None:
        self.ours = set(ours) | {os.getpid()}
        self.t0 = time.perf_counter()
        self.irq0 = _softirq_seconds()
        self.p0 = _process_seconds(self.ours)

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        p1 = _process_seconds(self.ours)
        others = sum(v - self.p0[k] for k, v in p1.items() if k in self.p0)
        return {"softirq": (_softirq_seconds() - self.irq0) / wall, "processes": others / wall}


def free_port(hosts: tuple) -> int:
    """A port free on every host address (host namespace only; in our own namespace the
    long link's 8080 is free by construction)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts:
                with socket.socket() as s2:
                    s2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s2.bind((h, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every server address")


async def run_bench(args, netns: str | None) -> int:
    n, nproc = args.links, args.clients
    users = args.users or n
    from testbed.fleet import Fleet
    from testbed.client.heartbeat import parse_policy
    from testbed.lab.addressing import client_address
    from testbed.lab.clock import Clock
    policy = parse_policy(args.heartbeat, args.noop_timeout)
    clock = Clock(args.time_scale)
    interval_w = clock.to_wall(policy.interval())
    timeout_w = max(clock.to_wall(policy.noop_timeout_s), MIN_WALL_TIMEOUT)
    nominal = n / interval_w
    limit = c.raise_nofile()
    per_server = -(-n // len(SERVER_ADDRS))
    per_client = -(-n // nproc)
    if max(per_server, per_client) + 64 > limit:
        print(f"{max(per_server, per_client):,} links in one process exceed the open-file "
              f"limit {limit:,}: use more --clients (servers are fixed at 2)")
        print(f"{n:,} concurrent identified links with heartbeats: BELOW TARGET "
              f"(not run: open-file limit)")
        return 0
    port = NETNS_PORT if netns else free_port(SERVER_ADDRS)
    where = f"network namespace {netns}" if netns else "host network namespace"
    c.note(f"many clients: {n:,} links = {len(SERVER_ADDRS)} servers "
           f"({', '.join(SERVER_ADDRS)}:{port}, {args.server_loop}) x {nproc} client processes "
           f"({client_address(SERVER_ADDRS[0], 0)}+, {args.client_loop}); {users:,} users; "
           f"{policy.describe()} at time scale {args.time_scale:g} = a NOOP every "
           f"{interval_w:.2f} s per link (~{nominal:,.0f}/s), NOOP timeout "
           f"{timeout_w * 1000:.0f} ms; {where}; open files {limit:,} per process")

    servers, clients = [], None
    tmp = tempfile.TemporaryDirectory(prefix="bench-swarm-")
    tmpdir = tmp.name
    try:
        t = time.monotonic()
        for i, addr in enumerate(SERVER_ADDRS):
            servers.append(c.Child(server_main, addr, port, n, users, args.time_scale,
                                   args.server_loop, name=f"swarm-server-{i}"))
        for s in servers:
            s.ready(timeout=300)
        c.note(f"  servers seeded ({users:,} users, {n:,} sessions each) and listening in "
               f"{time.monotonic() - t:.1f} s; RSS "
               + ", ".join(f"{s.info['rss_base'] / 1024:.0f} MB" for s in servers))
        shares = [n // nproc + (i < n % nproc) for i in range(nproc)]
        clients = Fleet(client_worker, [
            {"index": i, "src": client_address(SERVER_ADDRS[0], i), "servers": SERVER_ADDRS,
             "port": port, "first": sum(shares[:i]), "count": shares[i], "users": users,
             "scale": args.time_scale, "policy_spec": args.heartbeat,
             "noop_timeout_s": args.noop_timeout, "concurrency": args.connect_concurrency,
             "tmpdir": tmpdir} for i in range(nproc)],
            loop=args.client_loop, name="swarm-client")
        clients.start()
        ready = await clients.collect("ready", timeout=120)
        tcp0 = tcp_counters()
        kmem0 = kernel_memory()
        spids = [s.pid for s in servers]
        cpids = clients.pids

        # ---- ramp: open and identify every link
        c.note(f"  opening and identifying {n:,} links ...")
        cpu_ramp = c.CpuWindow(spids + cpids)
        clients.broadcast("connect")
        ramps = await clients.collect("ramp", timeout=900)
        ramp_cpu = cpu_ramp.stop()
        t0 = min(r["t_start"] for r in ramps)
        ramp_s = max(1e-6, max(r["t_done"] for r in ramps) - t0)
        ok = sum(r["ok"] for r in ramps)
        conn_fail = sum(r["connect_failed"] for r in ramps)
        id_fail = sum(r["identify_failed"] for r in ramps)
        first_error = next((r["first_error"] for r in ramps if r["first_error"]), "")
        times = array.array("d")
        for r in ramps:
            with open(r["times"], "rb") as f:
                times.frombytes(f.read())
        t_connect, t_identify = sorted(times[0::2]), sorted(times[1::2])
        tcp_ramp = tcp_counters()
        after_ramp = [s.call("stats") for s in servers]
        c.note(f"  {ok:,} identified in {ramp_s:.2f} s ({ok / ramp_s:,.0f} links/s); "
               f"servers report {' + '.join(format(x['identified'], ',') for x in after_ramp)}"
               + (f"; {conn_fail} connect and {id_fail} identify failures ({first_error})"
                  if conn_fail or id_fail else ""))
        ramp_marks = await ask(clients, "mark")   # NOOPs sent during the ramp

        # ---- settle one interval, then the steady-state window
        settle = max(1.0, interval_w)
        c.note(f"  settling {settle:.1f} s, then {args.duration:g} s of steady state ...")
        await asyncio.sleep(settle)
        m0 = await ask(clients, "mark")
        s0 = [s.call("stats") for s in servers]
        cpu = c.CpuWindow(spids + cpids)
        split = UserSys(spids + cpids)
        elsewhere = Elsewhere(spids + cpids)
        t_end = time.monotonic() + args.duration
        samples = [[x["identified"]] for x in s0]
        while True:
            left = t_end - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(SAMPLE_EVERY_S, left))
            if time.monotonic() < t_end - 0.5:
                for k, s in enumerate(servers):
                    samples[k].append(s.call("stats")["identified"])
        win_cpu = cpu.stop()
        win_split = split.stop()
        win_else = elsewhere.stop()
        tcp_end = tcp_counters()
        kmem1 = kernel_memory()
        m1 = await ask(clients, "mark")
        s1 = [s.call("stats") for s in servers]
        for k, x in enumerate(s1):
            samples[k].append(x["identified"])
        rss_servers = [s.call("rss") for s in servers]
        rss_clients = await ask(clients, "rss")
        rtts = sorted(_rtts(m1))
        clients.broadcast("stop")
        await asyncio.wait_for(clients.run(), 10)
    finally:
        if clients is not None:
            await clients.close()   # SIGTERM to any still running, by PID
        for s in servers:
            s.stop()
        tmp.cleanup()

    # ---- figures
    wall = win_cpu["wall"]
    d = _delta(_sum_counters(m0), _sum_counters(m1))
    ramp_d = _sum_counters(ramp_marks)
    p50, p99 = _pct(rtts, 0.50) * 1000, _pct(rtts, 0.99) * 1000
    pmax = (rtts[-1] * 1000) if rtts else float("nan")
    answered_rate = d["answered"] / wall
    server_noops = sum(b["frames_in"] - a["frames_in"] for a, b in zip(s0, s1)) / wall
    min_ident = [min(v) for v in samples]
    total_min_ident = sum(min_ident)   # a lower bound: each server's own minimum
    end_ident = sum(x["identified"] for x in s1)
    open_end = sum(m["open"] for m in m1)
    srv_err = sum(x["errors"] + x["violations"] for x in s1)
    idle_closed = sum(x["idle_closed"] for x in s1)
    ns = len(servers)
    s_cpu_ramp = sum(ramp_cpu["per_pid"][:ns])
    c_cpu_ramp = sum(ramp_cpu["per_pid"][ns:])
    s_cpu = sum(win_cpu["per_pid"][:ns])
    c_cpu = sum(win_cpu["per_pid"][ns:])
    per_link_kb = [(r - s.info["rss_base"]) / max(1, x["links"])
                   for r, s, x in zip(rss_servers, servers, s1)]
    client_kb = [(r - info["rss_base"]) / max(1, m["open"])
                 for r, info, m in zip(rss_clients, ready, m1)]
    server_ns_per_noop = s_cpu * wall / max(1, d["answered"] + d["late"]) * 1e9
    client_us_per_noop = c_cpu * wall / max(1, d["answered"] + d["late"]) * 1e6

    pct = lambda x: f"{x * 100:.0f} %"  # noqa: E731
    ms = lambda v, q: f"{_pct(v, q) * 1000:.1f}"  # noqa: E731
    retrans = tcp_diff(tcp0, tcp_end, "Tcp.RetransSegs")
    rows = [
        ["links opened + identified", f"{ok:,} of {n:,}",
         f"{conn_fail} connect / {id_fail} identify failures"],
        ["time to open + identify all", f"{ramp_s:.2f} s", f"{ok / ramp_s:,.0f} links/s"],
        ["per link: connect / IDENTIFY p50, p99",
         (f"{ms(t_connect, .5)}, {ms(t_connect, .99)} / {ms(t_identify, .5)}, "
         f"{ms(t_identify, .99)} ms"),
         (f"{args.connect_concurrency} in flight per client process; SYN queue overflows "
         f"{tcp_diff(tcp0, tcp_ramp, 'TcpExt.ListenOverflows')}")],
        ["identified at the servers (min in window)",
         " + ".join(f"{v:,}" for v in min_ident) + f" = {total_min_ident:,}",
         f"{end_ident:,} at the end; client side open {open_end:,}"],
        ["NOOPs answered in time", f"{answered_rate:,.0f} /s",
         f"nominal {nominal:,.0f}/s; servers saw {server_noops:,.0f} frames/s"],
        ["NOOPs in window: sent / answered / late / failed",
         f"{d['sent']:,} / {d['answered']:,} / {d['late']:,} / {d['failed']:,}",
         (f"links lost {d['lost']}, schedule slips {d['slipped']}, TCP retransmits "
         f"{retrans}")],
        ["NOOP round trip p50 / p99 / max", f"{p50:.2f} / {p99:.2f} / {pmax:.1f} ms",
         f"timeout {timeout_w * 1000:.0f} ms; {len(rtts):,} samples"],
        ["during the ramp: NOOPs sent / answered / late / failed",
         (f"{ramp_d['sent']:,} / {ramp_d['answered']:,} / {ramp_d['late']:,} / "
         f"{ramp_d['failed']:,}"), ""],
        ["server RSS per process", " + ".join(f"{r / 1024:.1f}" for r in rss_servers) + " MB",
         "of which seeded store " + " + ".join(f"{s.info['rss_base'] / 1024:.1f}"
                                               for s in servers) + " MB"],
        ["server RSS per link (over seeded)", " / ".join(f"{k:.2f}" for k in per_link_kb)
         + " KB", "after gc.collect(); socket buffers are kernel memory"],
        ["kernel memory per link (both sockets)",
         f"{(kmem1['slab'] - kmem0['slab']) / max(1, ok) / 1024:.1f} KB slab + "
         f"{max(0, kmem1['buffers'] - kmem0['buffers']) / max(1, ok) / 1024:.1f} KB buffers"
         if kmem0 and kmem1 else "?",
         "slab: socket, inode, file, dentry, epoll entry; whole machine"],
        ["client RSS per link (over start-up)", " / ".join(f"{k:.2f}" for k in client_kb)
         + " KB", "LongLink + heartbeat task + policy + its pending NOOP"],
        ["CPU in ramp: servers / clients / elsewhere",
         f"{pct(s_cpu_ramp)} / {pct(c_cpu_ramp)} / {pct(ramp_cpu['other'])}",
         "% of one core (2 cores = 200 %); elsewhere = other sessions' processes"],
        ["CPU in window: servers / clients / elsewhere",
         f"{pct(s_cpu)} / {pct(c_cpu)} / {pct(win_cpu['other'])}",
         (f"per NOOP: server {server_ns_per_noop / 1000:.1f} µs, client "
         f"{client_us_per_noop:.0f} µs (process time)")],
        ["elsewhere in window: other processes / short-lived",
         (f"{pct(win_else['processes'])} / "
         f"{pct(max(0.0, win_cpu['other'] - win_else['processes']))}"),
         (f"irq+softirq {pct(win_else['softirq'])}: charged to the process it interrupted, "
         f"mostly ours (loopback TCP)")],
    ]
    print_table(f"many clients: {n:,} long links, {policy.describe()} at x"
                  f"{args.time_scale:g}, {wall:.0f} s steady state", ["", "value", "note"], rows)
    prow = []
    for k, s in enumerate(servers):
        prow.append([f"server {SERVER_ADDRS[k]}", f"{s1[k]['links']:,}",
                     pct(ramp_cpu["per_pid"][k]), pct(win_cpu["per_pid"][k]),
                     f"{pct(win_split[k][0])} / {pct(win_split[k][1])}",
                     f"{rss_servers[k] / 1024:.1f}", f"{per_link_kb[k]:.2f}"])
    for k, info in enumerate(ready):
        prow.append([f"client {info['src']}", f"{m1[k]['open']:,}",
                     pct(ramp_cpu["per_pid"][ns + k]), pct(win_cpu["per_pid"][ns + k]),
                     f"{pct(win_split[ns + k][0])} / {pct(win_split[ns + k][1])}",
                     f"{rss_clients[k] / 1024:.1f}", f"{client_kb[k]:.2f}"])
    print_table("per process", ["process", "links", "CPU ramp", "CPU window",
                                "window user / sys", "RSS MB",
                                  "KB/link"], prow)

    problems = []
    if ok < n:
        problems.append(f"{n - ok:,} links not identified")
    if total_min_ident < n:
        problems.append(f"servers held {total_min_ident:,} identified")
    if d["failed"] or d["lost"]:
        problems.append(f"{d['failed']:,} NOOPs failed, {d['lost']} links lost")
    if d["late"] > 0.001 * max(1, d["answered"]):
        problems.append(f"{d['late']:,} NOOPs late (> {timeout_w * 1000:.0f} ms)")
    if answered_rate < 0.95 * nominal:
        problems.append(f"{answered_rate:,.0f} NOOPs/s answered of {nominal:,.0f} nominal")
    if srv_err or idle_closed:
        problems.append(f"server errors {srv_err}, idle-closed links {idle_closed}")
    busy = win_cpu["other"]
    if problems and busy > 0.5:
        problems.append(f"the machine was busy elsewhere during the window: {pct(busy)} of a "
                        f"core besides ours; rerun when it is quieter")
    head = f"{n:,} concurrent identified links with heartbeats"
    print(f"{head}: OK" if not problems else f"{head}: BELOW TARGET ({'; '.join(problems)})",
          flush=True)
    return 0


# ---------------------------------------------------------------------------- entry
def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--links", type=int, help="links in all (20,000; --quick 2,000)")
        p.add_argument("--clients", type=int, help="client processes (4; --quick 2)")
        p.add_argument("--duration", type=float, help="steady-state seconds (30; --quick 5)")
        p.add_argument("--heartbeat", default="fixed:300", help="policy (default fixed:300)")
        p.add_argument("--time-scale", type=float, default=100.0,
                       help="protocol seconds per wall second (100)")
        p.add_argument("--noop-timeout", type=float, default=20.0,
                       help="NOOP timeout, protocol seconds (20)")
        p.add_argument("--users", type=int, help="users the sessions belong to "
                       "(default: one per link)")
        p.add_argument("--connect-concurrency", type=int, default=100,
                       help="connects + IDENTIFYs in flight per client process (100)")
        p.add_argument("--server-loop", choices=c.LOOPS, default="asyncio",
                       help="servers' event loop (asyncio, as the lab runs)")
        p.add_argument("--client-loop", choices=c.LOOPS,
                       default="uvloop" if c.have_uvloop() else "asyncio")
        c.add_netns_options(p)

    args = c.parse_args(__doc__.splitlines()[0], extra)
    args.links = args.links or (2000 if args.quick else 20000)
    args.clients = args.clients or (2 if args.quick else 4)
    args.duration = args.duration if args.duration is not None else (5.0 if args.quick else 30.0)
    if args.links < 1 or args.clients < 1 or args.duration <= 0:
        print("--links, --clients and --duration must be positive")
        return 2
    if "uvloop" in (args.server_loop, args.client_loop) and not c.have_uvloop():
        print("uvloop is not installed")
        return 2
    return c.run_isolated("bench-swarm", __file__, args,
                          lambda: asyncio.run(run_bench(args, args.netns_inner)))


if __name__ == "__main__":
    sys.exit(main())
