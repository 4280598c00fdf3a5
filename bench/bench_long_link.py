"""Long-link NOOP round trips per second: our LongLinkServer against a bare asyncio echo.

100 connections (default), each pipelining 16 NOOP frames: one 256-byte write, wait until
all 16 replies (256 bytes) are in, write again. Four servers, each alone in its own process:
ours and the bare echo (bench/_common.py: BareEcho), each on the default asyncio loop and on
uvloop. The load comes from separate client process(es) on uvloop whose connections only
count reply bytes. All four servers are up at once and take turns in short slices, so a
drift in the machine's speed (it is shared) hits ours and bare alike. Prints frames/s and
ours/bare on the same loop (target >= 0.7).

    python bench/bench_long_link.py [--quick] [--duration S] [--rounds N] [--clients N]
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

HOST = "127.0.0.1"
DEPTH = 16
TARGET = 0.7


def make_blob(depth: int = DEPTH) -> bytes:
    return b"".join(c.HEADER.pack(16, 16, 1, c.NOOP_CMD, 1000 + i) for i in range(depth))


# ---------------------------------------------------------------------------- server process
def server_main(conn, kind: str, loop_kind: str, host: str) -> None:
    c.raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "ours":
            from mocks.long_link import LongLinkServer
            from mocks.service import Service
            from mocks.state import MemoryStore
            srv = LongLinkServer(Service(MemoryStore()))
            server = await srv.listen(host, 0)
            stats = lambda: {"frames_in": srv.frames_in, "links": len(srv.links)}  # noqa: E731
        else:
            srv = None
            server = await loop.create_server(c.BareEcho, host, 0, reuse_address=True)
            stats = lambda: {}  # noqa: E731
        conn.send(("ready", server.sockets[0].getsockname()[1]))
        await c.control_loop(conn, {"stats": stats})
        if srv is not None:
            await srv.close()
        else:
            server.close()

    c.run(main(), loop_kind)


# ---------------------------------------------------------------------------- client process
class NoopConn(asyncio.Protocol):
    """Keeps one precomputed blob of DEPTH NOOPs in flight; counts reply bytes only."""

    blob = b""
    size = 0

    def __init__(self) -> None:
        self.t = None
        self.pending = 0
        self.rounds = 0
        self.lost = False

    def connection_made(self, t) -> None:
        self.t = t

    def start(self) -> None:
        self.pending = self.size
        self.t.write(self.blob)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0:
            self.rounds += 1
            self.pending = self.size
            self.t.write(self.blob)

    def connection_lost(self, exc) -> None:
        self.lost = True


def client_main(conn, depth: int) -> None:
    """Runs slices on command: ("run", host, port, nconns) connects, acks, waits for
    ("go", warmup, duration), loads, reports and closes; ("stop",) ends the process."""
    c.raise_nofile()
    NoopConn.blob = make_blob(depth)
    NoopConn.size = 16 * depth

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
        conn.send(("ready", None))
        while True:
            msg = await inbox.get()
            if msg[0] == "stop":
                return
            _, host, port, nconns = msg
            conns = []
            for _ in range(nconns):
                _, p = await loop.create_connection(NoopConn, host, port)
                conns.append(p)
            conn.send(("ok", len(conns)))
            _, warmup, duration = await inbox.get()
            for p in conns:
                p.start()
            await asyncio.sleep(warmup)
            r0, t0 = sum(p.rounds for p in conns), time.perf_counter()
            await asyncio.sleep(duration)
            r1, t1 = sum(p.rounds for p in conns), time.perf_counter()
            lost = sum(p.lost for p in conns)
            for p in conns:
                p.t.abort()
            conn.send(("ok", {"frames": (r1 - r0) * depth, "seconds": t1 - t0, "lost": lost}))

    c.run(main())   # uvloop where installed


# ---------------------------------------------------------------------------- parent
def sanity_check(port: int, depth: int) -> None:
    """One pipelined burst by hand: every reply is cmd+1e9 with the request's seq, in order."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(make_blob(depth))
        want, data = 16 * depth, b""
        while len(data) < want:
            chunk = s.recv(want - len(data))
            if not chunk:
                raise RuntimeError("server closed during the sanity check")
            data += chunk
    for i in range(depth):
        plen, hlen, ver, cmd, seq = c.HEADER.unpack_from(data, 16 * i)
        if (plen, hlen, ver, cmd, seq) != (16, 16, 1, c.NOOP_CMD + c.REPLY_OFFSET, 1000 + i):
            raise RuntimeError(f"bad reply {i}: {(plen, hlen, ver, cmd, seq)}")


def run_slice(server: "c.Child", port: int, clients: list, args, seconds: float) -> dict:
    """Load one server for `seconds` (after the warm-up) from every client process."""
    shares = [args.conns // len(clients) + (i < args.conns % len(clients))
              for i in range(len(clients))]
    for cl, n in zip(clients, shares):
        cl.send("run", HOST, port, n)
    for cl in clients:
        cl.recv()
    for cl in clients:
        cl.send("go", args.warmup, seconds)
    time.sleep(args.warmup)
    window = c.CpuWindow([server.pid] + [cl.pid for cl in clients])
    time.sleep(seconds)
    cpu = window.stop()
    results = [cl.recv(seconds + 30) for cl in clients]
    lost = sum(r["lost"] for r in results)
    if lost:
        c.note(f"  warning: {lost} connections lost")
    fps = sum(r["frames"] for r in results) / max(r["seconds"] for r in results)
    return {"fps": fps, "server_cpu": cpu["per_pid"][0], "client_cpu": cpu["per_pid"][1:],
            "other_cpu": cpu["other"]}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    def extra(p):
        p.add_argument("--duration", type=float,
                       help="measured seconds per server in all (10; 1.5 quick)")
        p.add_argument("--rounds", type=int,
                       help="slices the duration is cut into, servers taking turns (5; 1 quick)")
        p.add_argument("--warmup", type=float, help="seconds of load before each slice")
        p.add_argument("--conns", type=int, default=100)
        p.add_argument("--depth", type=int, default=DEPTH, help="NOOPs pipelined per write")
        p.add_argument("--clients", type=int, default=1, help="client processes (2 cores here)")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    args.duration = args.duration or (1.5 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    loops = c.available_loops()
    configs = [(kind, lk) for lk in loops for kind in ("ours", "bare")]
    slice_s = args.duration / args.rounds
    c.note(f"long link: {args.conns} connections x {args.depth} pipelined NOOPs; "
           f"{args.duration:g} s per server in {args.rounds} slice(s) of {slice_s:g} s "
           f"(+{args.warmup:g} s warm-up each), servers taking turns; {args.clients} client "
           f"process(es) on {'uvloop' if c.have_uvloop() else 'asyncio'}; "
           f"{os.cpu_count()} CPUs")
    servers, ports, clients = {}, {}, []
    try:
        for key in configs:  # all up at once: an idle server costs no CPU
            servers[key] = c.Child(server_main, key[0], key[1], HOST,
                                   name=f"long-{key[0]}-{key[1]}")
        for key, srv in servers.items():
            ports[key] = srv.ready()
            sanity_check(ports[key], args.depth)
        clients = [c.Child(client_main, args.depth, name=f"long-client{i}")
                   for i in range(args.clients)]
        for cl in clients:
            cl.ready()
        slices: dict = {key: [] for key in configs}
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]  # cancel drift within a round
            for key in order:
                res = run_slice(servers[key], ports[key], clients, args, slice_s)
                slices[key].append(res)
                c.note(f"  round {r + 1} {key[0]:4} on {key[1]:7}: {res['fps']:>10,.0f} "
                       f"frames/s  server CPU {res['server_cpu']:.0%}, client CPU "
                       + ", ".join(f"{u:.0%}" for u in res["client_cpu"])
                       + f", everything else {res['other_cpu']:.0%} (of one core)")
        stats = {key: srv.call("stats") for key, srv in servers.items()}
    finally:
        for cl in clients:
            cl.stop()
        for srv in servers.values():
            srv.stop()
    for lk in loops:
        st = stats[("ours", lk)]
        if not st.get("frames_in"):
            raise RuntimeError(f"our server on {lk} counted no frames: {st}")
    rows = []
    for lk in loops:
        o, b = slices[("ours", lk)], slices[("bare", lk)]
        fps_o, fps_b = median([x["fps"] for x in o]), median([x["fps"] for x in b])
        ratio = median([x["fps"] / y["fps"] for x, y in zip(o, b)])
        cost_o = median([x["server_cpu"] / x["fps"] * 1e9 for x in o])
        cost_b = median([x["server_cpu"] / x["fps"] * 1e9 for x in b])
        rows.append([lk, f"{fps_o:,.0f}", f"{fps_b:,.0f}", f"{ratio:.2f}", f">= {TARGET}",
                     c.verdict(ratio, TARGET), f"{cost_o:.0f} / {cost_b:.0f}",
                     f"{cost_b / cost_o:.2f}"])
    c.print_table("long link: NOOP frames/s, medians over slices (same run, same client)",
                  ["server loop", "ours", "bare echo", "ours/bare", "target", "verdict",
                   "server CPU ns/frame ours / bare", "bare/ours CPU"], rows)
    c.note("ours/bare is the median of the per-round ratios (servers measured back to back). "
           "CPU ns/frame is server CPU time per frame: less sensitive than frames/s to other "
           "load on the machine; bare/ours CPU is the ratio a saturated server would show.")
    if len(loops) == 2:
        for kind in ("ours", "bare"):
            gain = median([x["fps"] for x in slices[(kind, "uvloop")]]) / \
                median([x["fps"] for x in slices[(kind, "asyncio")]])
            c.note(f"uvloop/asyncio for {kind}: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
