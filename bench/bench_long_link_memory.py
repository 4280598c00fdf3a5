"""Memory per idle *identified* long link: our LongLinkServer against a bare asyncio server.

A server process (ours: a MemoryStore holding 1 user and N sessions made directly through the
store, keys handed to the client through a temp file) reports its RSS (VmRSS after
gc.collect) before any connection and after a client process has opened N connections and
had every IDENTIFY answered (ret 0 for ours). The baseline is the bare asyncio.Protocol server
of bench_long_link.py holding N connections, each having sent the same frame and received a
reply. Both on the default loop and on uvloop. Prints KB per link over the process baseline
(target <= 4 KB for ours).

    python bench/bench_long_link_memory.py [--quick] [--links N]
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

HOST = "127.0.0.1"
TARGET_KB = 4.0
IDENTIFY_CMD = 205
CONNECT_CONCURRENCY = 100  # below the listen backlog (100), so no SYN is dropped


# ---------------------------------------------------------------------------- server process
def server_main(conn, kind: str, loop_kind: str, host: str, n: int, keyfile: str) -> None:
    c.raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "ours":
            from mocks.long_link import LongLinkServer
            from mocks.service import Service
            from mocks.state import MemoryStore, SessionRecord
            store = MemoryStore()
            user = await store.create_user("user0001", "pass0001", "user0001", 1, "Beijing",
                                           "", "avatar0001")
            with open(keyfile, "wb") as f:
                f.write(struct.pack(">I", user.uin))
                for _ in range(n):
                    key = os.urandom(16)
                    await store.put_session(SessionRecord(key, user.uin, user.username))
                    f.write(key)
            srv = LongLinkServer(Service(store))
            server = await srv.listen(host, 0)
            stats = lambda: {"links": len(srv.links),  # noqa: E731
                             "identified": srv.identified_count(),
                             "errors": len(srv.errors)}
        else:
            srv = None
            count = [0]

            class Counted(c.BareEcho):
                __slots__ = ()

                def connection_made(self, transport) -> None:
                    count[0] += 1
                    self.transport = transport

                def connection_lost(self, exc) -> None:
                    count[0] -= 1

            with open(keyfile, "wb") as f:  # random keys: the bare server reads no bodies
                f.write(struct.pack(">I", 1) + os.urandom(16 * n))
            server = await loop.create_server(Counted, host, 0, reuse_address=True)
            stats = lambda: {"links": count[0], "identified": 0, "errors": 0}  # noqa: E731
        conn.send(("ready", server.sockets[0].getsockname()[1]))
        await c.control_loop(conn, {"rss": c.rss_kb, "stats": stats})
        if srv is not None:
            await srv.close()
        else:
            server.close()

    c.run(main(), loop_kind)


# ---------------------------------------------------------------------------- client process
class IdentifyConn(asyncio.Protocol):
    def __init__(self, frame: bytes, done: asyncio.Future) -> None:
        self.frame = frame
        self.done = done
        self.buf = b""
        self.t = None

    def connection_made(self, t) -> None:
        self.t = t
        t.write(self.frame)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 16:
            plen = struct.unpack_from(">I", self.buf)[0]
            if len(self.buf) >= plen and not self.done.done():
                self.done.set_result(self.buf[:plen])
                self.buf = b""

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before the reply: {exc}"))


def client_main(conn, host: str, port: int, n: int, keyfile: str, check_ret: bool) -> None:
    c.raise_nofile()

    async def main() -> None:
        from testbed.wire import pb
        loop = asyncio.get_running_loop()
        with open(keyfile, "rb") as f:
            raw = f.read()
        uin = struct.unpack_from(">I", raw)[0]
        keys = [raw[4 + 16 * i:20 + 16 * i] for i in range(n)]
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        conns, bad = [], []
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            body = pb.IdentifyRequest(base=pb.BaseRequest(session_key=keys[i], uin=uin)) \
                .SerializeToString()
            frame = c.HEADER.pack(16 + len(body), 16, 1, IDENTIFY_CMD, i + 1) + body
            async with sem:
                done = loop.create_future()
                t, _ = await loop.create_connection(lambda: IdentifyConn(frame, done), host, port)
                conns.append(t)
                reply = await asyncio.wait_for(done, 30)
            _, _, _, cmd, seq = c.HEADER.unpack_from(reply)
            ok = cmd == IDENTIFY_CMD + c.REPLY_OFFSET and seq == i + 1
            if ok and check_ret:
                ok = pb.IdentifyResponse.FromString(reply[16:]).base.ret == 0
            if not ok:
                bad.append(i)

        await asyncio.gather(*(one(i) for i in range(n)))
        conn.send(("ready", {"opened": len(conns), "bad": len(bad),
                             "seconds": time.perf_counter() - t0}))
        stop = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(None))
        await stop
        for t in conns:
            t.abort()

    c.run(main())   # uvloop where installed


# ---------------------------------------------------------------------------- parent
def measure(kind: str, loop_kind: str, n: int, tmp: str) -> dict:
    keyfile = os.path.join(tmp, f"keys-{kind}-{loop_kind}")
    with c.Child(server_main, kind, loop_kind, HOST, n, keyfile,
                 name=f"mem-{kind}-{loop_kind}") as server:
        port = server.ready()
        time.sleep(0.2)
        base = server.call("rss")
        with c.Child(client_main, HOST, port, n, keyfile, kind == "ours",
                     name="mem-client") as client:
            got = client.ready(timeout=300)
            stats = server.call("stats")
            loaded = server.call("rss")
        os.unlink(keyfile)
    if got["opened"] != n or got["bad"] or stats["links"] != n:
        raise RuntimeError(f"{kind}/{loop_kind}: opened {got['opened']}, bad replies "
                           f"{got['bad']}, server holds {stats['links']} links of {n}")
    if kind == "ours" and stats["identified"] != n:
        raise RuntimeError(f"ours/{loop_kind}: {stats['identified']} identified of {n}")
    return {"base": base, "loaded": loaded, "kb_per_link": (loaded - base) / n,
            "seconds": got["seconds"]}


def main() -> int:
    def extra(p):
        p.add_argument("--links", type=int, help="connections (10,000; 2,000 quick)")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    n = args.links or (2000 if args.quick else 10000)
    limit = c.raise_nofile()
    if n + 100 > limit:
        print(f"{n} links need more than the open-file limit {limit} in one process")
        return 0
    loops = c.available_loops()
    c.note(f"long link memory: {n:,} idle links per server, RSS after gc.collect()")
    rows, res = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        for loop_kind in loops:
            for kind in ("ours", "bare"):
                r = res[(kind, loop_kind)] = measure(kind, loop_kind, n, tmp)
                c.note(f"  {kind:4} on {loop_kind:7}: RSS {r['base']:,} KB -> {r['loaded']:,} KB"
                       f" = {r['kb_per_link']:.2f} KB/link (connect + identify "
                       f"{r['seconds']:.1f} s)")
    for loop_kind in loops:
        for kind in ("ours", "bare"):
            r = res[(kind, loop_kind)]
            target = f"<= {TARGET_KB:g}" if kind == "ours" else "-"
            verdict = c.verdict(r["kb_per_link"], TARGET_KB, higher_is_better=False) \
                if kind == "ours" else ""
            ratio = r["kb_per_link"] / res[("bare", loop_kind)]["kb_per_link"]
            rows.append([f"{kind} ({'identified' if kind == 'ours' else 'idle echo'})",
                         loop_kind, f"{r['base']:,}", f"{r['loaded']:,}",
                         f"{r['kb_per_link']:.2f}", f"{ratio:.2f}", target, verdict])
    c.print_table(f"long link: KB per idle link at {n:,} links (over the process baseline)",
                  ["server", "loop", "RSS before KB", "RSS after KB", "KB/link", "x bare",
                   "target", "verdict"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
