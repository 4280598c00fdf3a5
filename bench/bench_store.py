"""The Redis store's cost per chat message against the in-memory store's, in the same run.

A chat through the service itself (`Service.handle`, no transport, so the difference is the
store's): pairs of users, friends and logged in, each pair taking turns; each message is one
NEWSENDMSG from its sender and the NEWSYNC its receiver makes after the push, and a message
counts once its two PushEvents (receiver's and sender's copy) have reached a listener (on the
Redis store, through pub/sub from a redis-server started for the run). Sequential (one chat at a time: the latency of a
message) and with C chats at once (throughput). The stores take turns, round after round, so
a drift in the machine's speed hits both. Prints microseconds of wall time and of CPU (this
process, and redis-server) per message and Redis/memory as the median of per-round ratios.

    python bench/bench_store.py [--quick] [--messages N] [--rounds N] [--concurrency C]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

from mocks.service import RequestContext, Service  # noqa: E402
from mocks.state import MemoryStore, PushEvent, make_store  # noqa: E402
from mocks.state.redis_server import RedisServer, redis_unavailable  # noqa: E402
from testbed.wire import BY_NAME, pb  # noqa: E402



class Chat:
    """Logged-in users of one service and their sync keys."""

    def __init__(self, service: Service, users: int) -> None:
        self.service = service
        self.users = users
        self.bases: list[pb.BaseRequest] = []
        self.keys: list[dict[int, int]] = []
        self.names: list[str] = []
        self.pushes = 0
        self.unsubscribe = service.store.subscribe(self._heard)

    def _heard(self, event) -> None:
        if isinstance(event, PushEvent):
            self.pushes += 1

    async def setup(self) -> None:
        users = await self.service.seed_users(self.users)
        for u in users:
            r = await self.service.handle(BY_NAME["MANUALAUTH"], pb.ManualAuthRequest(
                username=u.username, password=u.password), RequestContext())
            self.bases.append(pb.BaseRequest(session_key=r.session_key, uin=r.uin))
            self.names.append(u.username)
            self.keys.append({1: 0, 2: 0, 3: 0})
        for i in range(self.users):
            await self.sync(i)

    async def sync(self, i: int) -> int:
        req = pb.NewSyncRequest(base=self.bases[i], selector=7, key_buf=pb.SyncKey(keys=[
            pb.KeyVal(key=k, val=v) for k, v in self.keys[i].items()]))
        resp = await self.service.handle(BY_NAME["NEWSYNC"], req, RequestContext())
        for kv in resp.key_buf.keys:
            self.keys[i][kv.key] = kv.val
        return len(resp.cmd_list)

    async def message(self, a: int, b: int, cid: str) -> None:
        req = pb.NewSendMsgRequest(base=self.bases[a], msgs=[pb.MicroMsgRequest(
            to_user=self.names[b], content=f"message {cid}", client_msg_id=cid)])
        resp = await self.service.handle(BY_NAME["NEWSENDMSG"], req, RequestContext())
        if resp.msgs[0].ret != 0:
            raise RuntimeError(f"send failed: {resp.msgs[0].ret}")
        if await self.sync(b) < 1:
            raise RuntimeError("the receiver's sync found no message")


async def one_round(store, redis_pid, messages: int, concurrency: int) -> dict:
    await store.clear()
    chat = Chat(Service(store), 2 * concurrency)   # a pair of users per conversation
    await chat.setup()
    pushes0 = chat.pushes
    window = c.CpuWindow([redis_pid] if redis_pid else [])
    cpu0 = time.process_time()    # this process: finer than /proc's clock ticks
    per_chat = messages // concurrency

    async def conversation(k: int) -> None:   # the two take turns
        for n in range(per_chat):
            a = 2 * k + n % 2
            await chat.message(a, a ^ 1, f"{k}-{n}")

    await asyncio.gather(*(conversation(k) for k in range(concurrency)))
    want = pushes0 + 2 * per_chat * concurrency
    deadline = time.monotonic() + 30
    while chat.pushes < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{want - chat.pushes} pushes never arrived")
        await asyncio.sleep(0.0005)
    mine = time.process_time() - cpu0
    cpu = window.stop()
    chat.unsubscribe()
    done = per_chat * concurrency
    return {"us": cpu["wall"] / done * 1e6, "cpu_us": mine / done * 1e6,
            "redis_cpu_us": (cpu["per_pid"][0] * cpu["wall"] / done * 1e6
                             if redis_pid else 0.0),
            "other": max(0.0, cpu["total"] - sum(cpu["per_pid"]) - mine / cpu["wall"])}


async def bench(url: str, redis_pid: int, messages: int, rounds: int,
                concurrencies: list[int]) -> dict:
    memory = MemoryStore()
    redis = await make_store(url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    results = {}
    try:
        for conc in concurrencies:
            runs = {"memory": [], "redis": []}
            for r in range(rounds):
                order = (("memory", memory, 0), ("redis", redis, redis_pid))
                for name, store, pid in (order if r % 2 == 0 else order[::-1]):
                    runs[name].append(await one_round(store, pid, messages, conc))
            results[conc] = runs
    finally:
        await redis.clear()
        await redis.close()
    return results


def main() -> int:
    def extra(p):
        p.add_argument("--messages", type=int, help="messages per round (3,000; 400 quick)")
        p.add_argument("--rounds", type=int, help="rounds per store (5; 2 quick)")
        p.add_argument("--concurrency", type=int, default=16,
                       help="chats at once in the concurrent run (default 16)")
        p.add_argument("--loop", choices=c.LOOPS, default="asyncio")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    reason = redis_unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    messages = args.messages or (400 if args.quick else 3000)
    rounds = args.rounds or (2 if args.quick else 5)
    concurrencies = [1, args.concurrency]
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            c.note(f"store: {messages:,} messages a round, {rounds} rounds per store, "
                   f"redis-server pid {server.proc.pid} on {server.url}")
            results = c.run(bench(server.url, server.proc.pid, messages, rounds,
                                  concurrencies), args.loop)
        finally:
            server.stop()
    rows = []
    for conc, runs in results.items():
        ratios = [r["us"] / m["us"] for m, r in zip(runs["memory"], runs["redis"])]
        for name in ("memory", "redis"):
            rs = runs[name]
            rows.append([name, conc, f"{statistics.median(x['us'] for x in rs):.0f}",
                         f"{statistics.median(x['cpu_us'] for x in rs):.0f}",
                         f"{statistics.median(x['redis_cpu_us'] for x in rs):.0f}"
                         if name == "redis" else "-",
                         f"{max(x['other'] for x in rs):.2f}",
                         f"{statistics.median(ratios):.2f}" if name == "redis" else "1"])
    c.print_table(f"chat through the service: microseconds per message ({args.loop})",
                  ["store", "chats at once", "wall us/msg", "service CPU us/msg",
                   "redis-server CPU us/msg", "other cores busy (max)", "x memory"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
