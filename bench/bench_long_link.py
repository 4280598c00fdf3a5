"""Long-link NOOP round trips per second: our LongLinkServer against a bare asyncio echo.

100 connections (default), each pipelining 16 NOOP frames: one 256-byte write, wait until
all 16 replies (256 bytes) are in, write again. Four servers, each alone in its own process:
ours and the bare echo (bench/_common.py: BareEcho), each on the default asyncio loop and on
uvloop. The load comes from separate client process(es) on uvloop whose connections only
count reply bytes. Prints frames/s and ours/bare on the same loop (target >= 0.7).

    python bench/bench_long_link.py [--quick] [--duration S] [--clients N] [--repeat N]
"""

from __future__ import annotations

import asyncio
import os
import socket
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

    c.run(loop_kind, main())


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


def client_main(conn, host: str, port: int, nconns: int, depth: int) -> None:
    c.raise_nofile()
    NoopConn.blob = make_blob(depth)
    NoopConn.size = 16 * depth

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(nconns):
            _, p = await loop.create_connection(NoopConn, host, port)
            conns.append(p)
        conn.send(("ready", len(conns)))
        got = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: got.done() or got.set_result(conn.recv()))
        _, warmup, duration = await got
        loop.remove_reader(conn.fileno())
        for p in conns:
            p.start()
        await asyncio.sleep(warmup)
        r0, c0, t0 = sum(p.rounds for p in conns), c.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(duration)
        r1, c1, t1 = sum(p.rounds for p in conns), c.cpu_seconds(), time.perf_counter()
        lost = sum(p.lost for p in conns)
        for p in conns:
            p.t.abort()
        conn.send(("ok", {"frames": (r1 - r0) * depth, "seconds": t1 - t0, "cpu": c1 - c0,
                          "lost": lost}))
        stop = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(None))
        await stop

    c.run("uvloop" if c.have_uvloop() else "asyncio", main())


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


def measure(kind: str, loop_kind: str, args) -> dict:
    with c.Child(server_main, kind, loop_kind, HOST, name=f"long-{kind}-{loop_kind}") as server:
        port = server.ready()
        sanity_check(port, args.depth)
        shares = [args.conns // args.clients + (i < args.conns % args.clients)
                  for i in range(args.clients)]
        clients = [c.Child(client_main, HOST, port, n, args.depth, name=f"long-client{i}")
                   for i, n in enumerate(shares)]
        try:
            for cl in clients:
                cl.ready()
            for cl in clients:
                cl.send("go", args.warmup, args.duration)
            time.sleep(args.warmup)
            window = c.CpuWindow([server.pid] + [cl.pid for cl in clients])
            time.sleep(args.duration)
            cpu = window.stop()
            results = [cl.recv(args.duration + 30) for cl in clients]
            stats = server.call("stats")
        finally:
            for cl in clients:
                cl.stop()
    frames = sum(r["frames"] for r in results)
    secs = max(r["seconds"] for r in results)
    lost = sum(r["lost"] for r in results)
    if lost:
        c.note(f"  warning: {lost} connections lost during the {kind}/{loop_kind} run")
    return {"fps": frames / secs, "server_cpu": cpu["per_pid"][0],
            "client_cpu": cpu["per_pid"][1:], "other_cpu": cpu["other"], "stats": stats}


def main() -> int:
    def extra(p):
        p.add_argument("--duration", type=float, help="measured seconds per server (10; 1.5 quick)")
        p.add_argument("--warmup", type=float, help="seconds of load before measuring")
        p.add_argument("--conns", type=int, default=100)
        p.add_argument("--depth", type=int, default=DEPTH, help="NOOPs pipelined per write")
        p.add_argument("--clients", type=int, default=1, help="client processes (2 cores here)")
        p.add_argument("--repeat", type=int, default=1, help="runs per server; best is kept")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    args.duration = args.duration or (1.5 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    loops = c.loops_available()
    c.note(f"long link: {args.conns} connections x {args.depth} pipelined NOOPs, "
           f"{args.duration:g} s per run (+{args.warmup:g} s warm-up), {args.clients} client "
           f"process(es) on {'uvloop' if c.have_uvloop() else 'asyncio'}, "
           f"{os.cpu_count()} CPUs, best of {args.repeat}")
    best: dict = {}
    for _ in range(args.repeat):
        for loop_kind in loops:
            for kind in ("ours", "bare"):
                r = measure(kind, loop_kind, args)
                c.note(f"  {kind:4} on {loop_kind:7}: {r['fps']:>10,.0f} frames/s   server CPU "
                       f"{r['server_cpu']:.0%}, client CPU "
                       + ", ".join(f"{u:.0%}" for u in r["client_cpu"])
                       + f", everything else {r['other_cpu']:.0%} (of one core)")
                key = (kind, loop_kind)
                if key not in best or r["fps"] > best[key]["fps"]:
                    best[key] = r
    rows = []
    for loop_kind in loops:
        ours, bare = best[("ours", loop_kind)], best[("bare", loop_kind)]
        ratio = ours["fps"] / bare["fps"]
        cost_o = ours["server_cpu"] / ours["fps"] * 1e9
        cost_b = bare["server_cpu"] / bare["fps"] * 1e9
        rows.append([loop_kind, f"{ours['fps']:,.0f}", f"{bare['fps']:,.0f}", f"{ratio:.2f}",
                     f">= {TARGET}", c.verdict(ratio, TARGET),
                     f"{cost_o:.0f} / {cost_b:.0f}", f"{cost_b / cost_o:.2f}"])
    c.print_table("long link: NOOP frames/s (same run, same client)",
                  ["server loop", "ours", "bare echo", "ours/bare", "target", "verdict",
                   "server CPU ns/frame ours / bare", "bare/ours CPU"], rows)
    c.note("CPU ns/frame is server CPU time per frame: less sensitive than frames/s to other "
           "load on the machine; bare/ours CPU is the frames/s ratio a saturated server "
           "would show.")
    if len(loops) == 2:
        for kind in ("ours", "bare"):
            gain = best[(kind, "uvloop")]["fps"] / best[(kind, "asyncio")]["fps"]
            c.note(f"uvloop/asyncio for {kind}: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
