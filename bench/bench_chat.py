"""Chat throughput through a whole lab, in-memory and on Redis, with full phones.

`users` phones (1,000; 100 with --quick) in client processes chat in pairs through `testbed
lab up`, each pair taking turns, every message sent over the long link and taken by the
receiver's NEWSYNC after the server's NOTIFY (`_chat.py`). Two labs, in the same run: the
one-process lab on the in-memory store, and the lab of processes on Redis (`--store`, a
redis-server started for the run, `--workers` long- and short-link workers). Prints
messages per second, the send-to-sync delay p50/p99 and the lab's CPU per message; the
Redis lab's throughput as a ratio of the in-memory lab's.

    python bench/bench_chat.py [--quick] [--users N] [--duration S] [--clients P]
                               [--workers W] [--json]
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402
import _chat  # noqa: E402

from mocks.state.redis_server import RedisServer, redis_unavailable  # noqa: E402


def main() -> int:
    def extra(p):
        p.add_argument("--users", type=int, help="phones (1,000; 100 quick)")
        p.add_argument("--duration", type=float, help="seconds of chat per lab (10; 3 quick)")
        p.add_argument("--clients", type=int, default=2, help="client processes (2)")
        p.add_argument("--workers", type=int, default=2,
                       help="long- and short-link workers of the Redis lab (2)")
        p.add_argument("--json", action="store_true", help="the figures as JSON")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    reason = redis_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    users = args.users or (100 if args.quick else 1000)
    duration = args.duration or (3.0 if args.quick else 10.0)
    c.raise_nofile()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-chat-redis-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            url = f"{server.url}?namespace=bench-{uuid.uuid4().hex[:8]}"
            for name, lab_args in (("memory (one process)", []),
                                   (f"redis ({args.workers} workers)",
                                    ["--store", url, "--workers", str(args.workers)])):
                print(f"chat: {name}: {users:,} phones in {args.clients} processes, "
                      f"{duration:g} s", file=sys.stderr, flush=True)
                runs[name] = c.run(_chat.run_chat(lab_args, users, duration, args.clients),
                                   "asyncio")
        finally:
            server.stop()
    if args.json:
        print(_chat.dump(runs))
        return 0
    first = next(iter(runs.values()))
    c.print_table(f"chat through the lab: {users:,} phones, pairs taking turns, "
                  f"{duration:g} s each", _chat.COLUMNS,
                  [_chat.row(name, r, None if r is first else first)
                   for name, r in runs.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
