"""Short-link requests/s, one new TCP connection per request: ours against a bare aiohttp app.

wrk (`-t1 -c50 -H 'Connection: close'`, a Lua script for the POST body) drives
(a) our ShortLinkServer answering POST /cgi-bin/micromsg-bin/newsync with a valid
NewSyncRequest for a real session (a user and a session are created in the server process
at start-up; one response is checked first: 200 and ret 0), and (b) a bare aiohttp
web.Application with one POST route that reads the body and returns a small fixed body with
Connection: close. Each server runs alone in its own process, on the default asyncio loop
and on uvloop. Prints req/s and ours/bare on the same loop (target >= 0.8), and checks with
a server-side counter of accepted connections that every request had its own connection.

Scale-out, on uvloop, in the same run: ours with two worker processes sharing the port with
SO_REUSEPORT against the single bare handler (target >= 1.5), two ways:
- `x2 redis`: `testbed serve short --workers 2 --uvloop` itself, on a Redis store (a
  redis-server started for the run, reached over a Unix socket), the session put there;
- `x2 memory`: two of (a) on one port, each with its own in-memory store holding the same
  session: the HTTP path's own scaling, without the shared store (not a usable lab).

    python bench/bench_short_link.py [--quick] [--duration S] [--conns N] [--rounds N]
                                     [--threads N] [--no-scale-out]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import shutil
import subprocess
import sys
import signal
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

from mocks.state.redis_server import RedisServer, redis_unavailable  # noqa: E402

PATH = "/cgi-bin/micromsg-bin/newsync"
TARGET = 0.8
SCALE_TARGET = 1.5
SCALE_OUT = ("x2 memory", "x2 redis")
BARE_BODY = b"\x0a\x02\x08\x00" + b"x" * 124  # 128 bytes, fixed
# one 127.x address per server, so TIME_WAIT sockets left by one run never meet the next
ADDRESSES = {("ours", "asyncio"): "127.0.0.21", ("bare", "asyncio"): "127.0.0.22",
             ("ours", "uvloop"): "127.0.0.23", ("bare", "uvloop"): "127.0.0.24",
             ("x2 memory", "uvloop"): "127.0.0.25", ("x2 redis", "uvloop"): "127.0.0.26"}


# ---------------------------------------------------------------------------- server process
def count_connections(runner) -> dict:
    """Count accepted connections on an aiohttp runner's low-level server (one per
    RequestHandler), by wrapping its `connection_made` on this instance only."""
    counter = {"connections": 0}
    server = runner.server
    original = server.connection_made

    def connection_made(handler, transport):
        counter["connections"] += 1
        return original(handler, transport)

    server.connection_made = connection_made
    return counter


def server_main(conn, kind: str, loop_kind: str, host: str, session_key: bytes,
                netns, port: int = 0, reuse_port: bool = False) -> None:
    c.enter_netns(netns)
    c.raise_nofile()

    async def main() -> None:
        from aiohttp import web
        if kind == "ours":
            from mocks.service import Service
            from mocks.short_link import ShortLinkServer
            from mocks.state import MemoryStore, SessionRecord
            service = Service(MemoryStore())
            user = (await service.seed_users(1))[0]
            await service.store.put_session(SessionRecord(session_key, user.uin, user.username))
            srv = ShortLinkServer(service)
            bound = await srv.listen(host, port, reuse_port=reuse_port)
            connections = lambda: srv.http.connections  # noqa: E731
            requests = lambda: sum(srv.status_counts.values())  # noqa: E731
            info = (bound, user.uin)
        else:
            srv = None
            count = {"requests": 0}

            async def handler(request: web.Request) -> web.Response:
                await request.read()
                count["requests"] += 1
                resp = web.Response(body=BARE_BODY, content_type="application/octet-stream")
                resp.force_close()
                resp.headers["Connection"] = "close"
                return resp

            app = web.Application()
            app.router.add_post(PATH, handler)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, host, 0, reuse_address=True)
            await site.start()
            counter = count_connections(runner)
            connections = lambda: counter["connections"]  # noqa: E731
            requests = lambda: count["requests"]  # noqa: E731
            info = (runner.addresses[-1][1], 0)
        conn.send(("ready", info))
        await c.control_loop(conn, {"stats": lambda: {"connections": connections(),
                                                      "requests": requests()}})
        if srv is not None:
            await srv.close()
        else:
            await runner.cleanup()

    c.run(main(), loop_kind)


# ---------------------------------------------------------------------------- parent
def lua_script(body: bytes) -> str:
    escaped = "".join(f"\\{b:03d}" for b in body)  # Lua decimal escapes: any byte is safe
    return ("wrk.method = \"POST\"\n"
            f"wrk.body = \"{escaped}\"\n"
            "wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n")


def check_once(url: str, body: bytes, kind: str) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        status, data, connection = resp.status, resp.read(), resp.headers.get("Connection")
    if status != 200:
        raise RuntimeError(f"{kind}: status {status}")
    if (connection or "").lower() != "close":
        raise RuntimeError(f"{kind}: Connection header is {connection!r}, not close")
    if kind == "ours":
        from testbed.wire import pb
        r = pb.NewSyncResponse.FromString(data)
        if r.base.ret != 0:
            raise RuntimeError(f"ours: newsync ret {r.base.ret} {r.base.errmsg!r}")
    return len(data)


def parse_wrk(out: str) -> dict:
    def num(pattern, default=0.0):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else default
    errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return {"rps": num(r"Requests/sec:\s+([\d.]+)"),
            "requests": int(num(r"(\d+) requests in")),
            "non2xx": int(num(r"Non-2xx or 3xx responses: (\d+)")),
            "errors": errors}


def measure(kind: str, loop_kind: str, args, lua_dir: str, redis=None) -> dict:
    host = ADDRESSES[(kind, loop_kind)]
    key = os.urandom(16)
    netns = None if args.no_netns else c.netns_create("bench-short")
    try:
        with contextlib.ExitStack() as stack:
            if kind == "x2 redis":
                servers = stack.enter_context(ServeShort(redis, host, key, netns, args))
            elif kind == "x2 memory":
                first = stack.enter_context(c.Child(server_main, "ours", loop_kind, host, key,
                                                    netns, 0, True, name="short-x2-1"))
                port, uin = first.ready()
                second = stack.enter_context(c.Child(server_main, "ours", loop_kind, host,
                                                     key, netns, port, True,
                                                     name="short-x2-2"))
                second.ready()
                servers = ChildServers([first, second], port, uin)
            else:
                child = stack.enter_context(c.Child(server_main, kind, loop_kind, host, key,
                                                    netns, name=f"short-{kind}-{loop_kind}"))
                servers = ChildServers([child], *child.ready())
            return _measure(kind, loop_kind, args, lua_dir, host, key, netns, servers)
    finally:
        if netns:
            c.netns_delete(netns)


class ChildServers:
    """Bench server processes (`server_main`): their PIDs, port, counters."""

    def __init__(self, children, port: int, uin: int) -> None:
        self.children, self.port, self.uin = children, port, uin
        self.pids = [ch.pid for ch in children]

    def stats(self) -> dict:
        got = [ch.call("stats") for ch in self.children]
        return {**{k: sum(g[k] for g in got) for k in ("connections", "requests")},
                "per_worker": [g["requests"] for g in got]}


class ServeShort:
    """`testbed serve short --workers 2 --uvloop` on the run's Redis, in the run's netns,
    with one user and a session put in its store namespace. Connections are counted from
    the store's served counters (one per request: each request is served once)."""

    def __init__(self, redis, host: str, key: bytes, netns, args) -> None:
        self.redis, self.host, self.key, self.netns = redis, host, key, netns
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.url = f"{redis.unix_url}&namespace={self.namespace}"
        self.dir = tempfile.TemporaryDirectory(prefix="bench-serve-")
        self.proc = None

    def __enter__(self) -> "ServeShort":
        self.uin = asyncio.run(self._store(self._seed))
        ready = Path(self.dir.name) / "ready.json"
        cmd = (["ip", "netns", "exec", self.netns] if self.netns else []) + [
            sys.executable, "-m", "testbed.cli", "serve", "short", "--listen",
            f"{self.host}:0", "--no-tls", "--workers", "2", "--uvloop", "--store", self.url,
            "--ready-file", str(ready)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=dict(os.environ, PYTHONPATH=str(c.REPO)))
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"testbed serve short did not start: "
                                   f"{self.proc.stderr.read() if self.proc.poll() else ''}")
            time.sleep(0.05)
        doc = json.loads(ready.read_text())
        self.port = doc["listen"][0][1]
        self.pids = [doc["pid"], *doc["workers"], self.redis.proc.pid]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)     # our own child, by PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        asyncio.run(self._store(lambda store: store.clear()))
        self.dir.cleanup()

    async def _store(self, fn):
        from mocks.state import make_store
        store = await make_store(self.url)
        try:
            return await fn(store)
        finally:
            await store.close()

    async def _seed(self, store) -> int:
        from mocks.service import Service
        from mocks.state import SessionRecord
        user = (await Service(store).seed_users(1))[0]
        await store.put_session(SessionRecord(self.key, user.uin, user.username))
        return user.uin

    def stats(self) -> dict:
        from mocks.stats import read_stats
        stats = asyncio.run(self._store(read_stats))
        served = sum(stats.served.values())
        return {"connections": served, "requests": served,
                "per_worker": [n for _, n in sorted(stats.served.items())]}


def _measure(kind, loop_kind, args, lua_dir, host, key, netns, servers) -> dict:
    url = f"http://{host}:{servers.port}{PATH}"
    if kind != "bare":
        from testbed.wire import pb
        body = pb.NewSyncRequest(base=pb.BaseRequest(session_key=key, uin=servers.uin),
                                 selector=7).SerializeToString()
    else:
        body = b"\x08\x07"
    with c.InNetns(netns):
        resp_len = check_once(url, body, "bare" if kind == "bare" else "ours")
    lua = os.path.join(lua_dir, f"post-{kind.replace(' ', '-')}.lua")
    with open(lua, "w") as f:
        f.write(lua_script(body))
    before = servers.stats()
    cmd = (["ip", "netns", "exec", netns] if netns else []) + [
        args.wrk, f"-t{args.threads}", f"-c{args.conns}", f"-d{args.duration:g}s", "-s", lua,
        "-H", "Connection: close", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        time.sleep(min(1.0, args.duration / 4))
        window = c.CpuWindow([*servers.pids, proc.pid])
        time.sleep(max(0.5, args.duration - 2 * min(1.0, args.duration / 4)))
        cpu = window.stop()
        out, _ = proc.communicate(timeout=args.duration + 30)
    finally:
        if proc.poll() is None:  # only the wrk we started, by its PID
            proc.kill()
            proc.wait()
    after = servers.stats()
    r = parse_wrk(out)
    if not r["rps"]:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    r.update(kind=kind, loop=loop_kind, netns=netns, server_cpu=sum(cpu["per_pid"][:-1]),
             wrk_cpu=cpu["per_pid"][-1], other_cpu=cpu["other"], resp_len=resp_len,
             body_len=len(body), conns=after["connections"] - before["connections"],
             served=after["requests"] - before["requests"],
             per_worker=[a - b for a, b in zip(after["per_worker"], before["per_worker"])]
             if len(after["per_worker"]) == len(before["per_worker"]) else after["per_worker"])
    return r


def main() -> int:
    def extra(p):
        p.add_argument("--duration", type=float, help="wrk seconds per server (10; 2 quick)")
        p.add_argument("--conns", type=int, default=50, help="wrk -c")
        p.add_argument("--rounds", type=int, default=1,
                       help="wrk runs per server, ours and bare back to back; medians kept")
        p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
        p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
        p.add_argument("--no-scale-out", action="store_true",
                       help="skip the two-worker runs (they need uvloop and redis-server)")
        p.add_argument("--no-netns", action="store_true",
                       help="stay in this network namespace (default: a fresh one per run, "
                            "so TIME_WAIT sockets of earlier runs do not weigh on the next)")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    if not os.path.exists(args.wrk):
        c.note(f"wrk not found at {args.wrk}: apt-get install wrk")
        return 0
    loops = c.available_loops()
    scale_out = not args.no_scale_out and "uvloop" in loops
    if not args.no_scale_out and not scale_out:
        c.note("scale-out runs skipped: they run on uvloop, which is not installed")
    if scale_out and redis_unavailable():
        c.note(f"scale-out runs skipped: {redis_unavailable()}")
        scale_out = False
    c.note(f"short link: wrk -t{args.threads} -c{args.conns} -d{args.duration:g}s, "
           f"Connection: close, {os.cpu_count()} CPUs, {args.rounds} round(s)")
    runs: dict = {}
    with contextlib.ExitStack() as stack:
        lua_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-short-"))
        redis = None
        if scale_out:
            redis = RedisServer(Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench-redis-")))).start()
            stack.callback(redis.stop)
        for rnd in range(args.rounds):
            for loop_kind in (loops if rnd % 2 == 0 else loops[::-1]):
                kinds = ["ours", "bare"]
                if scale_out and loop_kind == "uvloop":
                    kinds += list(SCALE_OUT) if rnd % 2 == 0 else list(SCALE_OUT)[::-1]
                for kind in kinds:
                    r = measure(kind, loop_kind, args, lua_dir, redis)
                    per = r["conns"] / r["served"] if r["served"] else float("nan")
                    errs = ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v) or "none"
                    where = f"netns {r['netns']}" if r["netns"] else "host netns"
                    if len(r["per_worker"]) > 1:   # SO_REUSEPORT's spread over the workers
                        where += ", per worker " + "/".join(f"{n:,}" for n in r["per_worker"])
                    c.note(f"  {kind:9} on {loop_kind:7}: {r['rps']:>8,.0f} req/s  [{where}] "
                           f"({r['requests']:,} by wrk, {r['served']:,} served on "
                           f"{r['conns']:,} connections = {per:.3f} conn/req; non-2xx "
                           f"{r['non2xx']}; socket errors: {errs})  server CPU "
                           f"{r['server_cpu']:.0%}, wrk CPU {r['wrk_cpu']:.0%}, everything "
                           f"else {r['other_cpu']:.0%}")
                    runs.setdefault((kind, loop_kind), []).append(r)
    med = statistics.median
    rows = []
    for loop_kind in loops:
        o, b = runs[("ours", loop_kind)], runs[("bare", loop_kind)]
        ratio = med([x["rps"] / y["rps"] for x, y in zip(o, b)])
        cost_o = med([x["server_cpu"] / x["rps"] * 1e6 for x in o])
        cost_b = med([x["server_cpu"] / x["rps"] * 1e6 for x in b])
        rows.append([loop_kind, f"{med([x['rps'] for x in o]):,.0f}",
                     f"{med([x['rps'] for x in b]):,.0f}", f"{ratio:.2f}",
                     f">= {TARGET}", c.verdict(ratio, TARGET),
                     f"{cost_o:.0f} / {cost_b:.0f}", f"{cost_b / cost_o:.2f}"])
    c.print_table("short link: requests/s, one connection per request (same run, medians)",
                  ["server loop", "ours (newsync)", "bare aiohttp", "ours/bare", "target",
                   "verdict", "server CPU us/req ours / bare", "bare/ours CPU"], rows)
    c.note("Medians over rounds; ours/bare is the median of per-round ratios (ours and bare "
           "run back to back). CPU us/req is server CPU time per request: less sensitive than "
           "req/s to other load on the machine; bare/ours CPU is the req/s ratio a saturated "
           "server would show.")
    if scale_out:
        b = runs[("bare", "uvloop")]
        rows = []
        for kind in ("ours", *SCALE_OUT):
            o = runs[(kind, "uvloop")]
            ratio = med([x["rps"] / y["rps"] for x, y in zip(o, b)])
            rows.append([kind, f"{med([x['rps'] for x in o]):,.0f}",
                         f"{med([x['rps'] for x in b]):,.0f}", f"{ratio:.2f}",
                         f">= {SCALE_TARGET}" if kind in SCALE_OUT else "",
                         c.verdict(ratio, SCALE_TARGET) if kind in SCALE_OUT else "",
                         f"{med([x['server_cpu'] / x['rps'] * 1e6 for x in o]):.0f}",
                         f"{med([x['server_cpu'] for x in o]):.2f}",
                         f"{med([x['wrk_cpu'] for x in o]):.2f}",
                         f"{med([x['other_cpu'] for x in o]):.2f}"])
        c.print_table("scale-out on uvloop: ours with 2 SO_REUSEPORT workers / the single bare "
                      "aiohttp handler (same run, medians)",
                      ["ours", "req/s", "bare req/s", "ours/bare", "target", "verdict",
                       "server CPU us/req", "server cores", "wrk cores", "other cores"], rows)
        c.note("server CPU us/req and cores: the server processes (x2 redis: the serve "
               "process, its two workers and redis-server). Two workers can only beat one "
               "process by the cores they get: 'server cores' + 'wrk cores' + 'other cores' "
               "near the machine's count means the machine, not the server, was the limit; "
               "CPU per request shows whether a worker costs more than the single process.")
    if len(loops) == 2:
        for kind in ("ours", "bare"):
            gain = med([x["rps"] for x in runs[(kind, "uvloop")]]) / \
                med([x["rps"] for x in runs[(kind, "asyncio")]])
            c.note(f"uvloop/asyncio for {kind}: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
