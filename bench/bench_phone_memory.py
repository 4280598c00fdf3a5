"""Client memory per full emulated phone, against a bare identified long link, in the same
run.

A one-process lab (`testbed lab up --friends none`) serves `--phones` users (2,000; 300 with
--quick). One client process starts that many `Phone`s (TLS login, init sync, long link with
IDENTIFY, sync: everything a phone holds while idle between heartbeats); another logs the
same users in and keeps only a bare identified `LongLink` each (the lightweight client of
`bench_swarm.py`). Each reports its RSS over its own baseline taken just before, after a
full collection, and the largest Python allocations of a phone (tracemalloc, on a sample).
Prints KB per client and phone / bare link.

    python bench/bench_phone_memory.py [--quick] [--phones N] [--json]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402
import _chat  # noqa: E402

from testbed.fleet import Fleet  # noqa: E402
from testbed.lab.addressing import client_address  # noqa: E402

TRACE_SAMPLE = 100


async def memory_worker(p: dict, channel) -> dict:
    import gc
    import tracemalloc

    from testbed.client.phone import Phone
    from testbed.client.longlink import LongLink
    from testbed.client.session import Session
    from testbed.lab.addressing import LONG
    from testbed.lab.manifest import load_manifest
    from testbed.wire import pb

    manifest = load_manifest(p["manifest"])
    users = manifest.users[:p["count"]]
    local = client_address(manifest.dns_address, p["index"])
    sem = asyncio.Semaphore(50)
    held = []

    async def phone(u):
        async with sem:
            ph = Phone(manifest, u["username"], u["password"], local_addr=local)
            await ph.start()
            held.append(ph)

    async def bare(u):
        async with sem:
            s = Session(manifest, u["username"], u["password"], local_addr=local)
            await s.login()
            [addr, *_] = await s.resolve(LONG)
            link = await LongLink.connect(addr, manifest.hosts[LONG].port, local_addr=local)
            await link.call("IDENTIFY", pb.IdentifyRequest(base=s.base()))
            held.append(link)      # the session is dropped: only the link is held

    make = phone if p["kind"] == "phone" else bare
    await asyncio.gather(*(make(u) for u in users[:10]))   # imports, first-use caches
    held.clear()
    gc.collect()
    base = c.rss_kb()
    await asyncio.gather(*(make(u) for u in users[10:]))
    gc.collect()
    loaded = c.rss_kb()
    n = len(held)
    top = []
    if p["kind"] == "phone":   # where a phone's Python memory goes, on a sample
        tracemalloc.start(1)
        snap0 = tracemalloc.take_snapshot()
        sample = []
        for u in users[:TRACE_SAMPLE]:
            ph = Phone(manifest, u["username"], u["password"], local_addr=local)
            await ph.start()
            sample.append(ph)
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(snap0, "filename")
        tracemalloc.stop()
        top = [(str(s.traceback[0].filename).rsplit("site-packages/", 1)[-1]
                .replace(str(c.REPO) + "/", ""), s.size_diff / len(sample))
               for s in stats[:8]]
        held += sample
    return {"kind": p["kind"], "n": n, "base_kb": base, "loaded_kb": loaded,
            "kb_each": (loaded - base) / n, "top": top}


async def bench(phones: int) -> dict:
    out = {}
    async with _chat.lab_up(phones + 10, []) as (_, manifest):
        for i, kind in enumerate(("bare", "phone")):   # one at a time: the lab is shared
            t = time.monotonic()
            async with Fleet(memory_worker, [{"manifest": str(manifest), "index": i,
                                              "count": phones + 10, "kind": kind}],
                             name=f"memory-{kind}") as fleet:
                [out[kind]] = await fleet.run()
            out[kind]["wall_s"] = time.monotonic() - t
    return out


def main() -> int:
    def extra(p):
        p.add_argument("--phones", type=int, help="clients of each kind (2,000; 300 quick)")
        p.add_argument("--json", action="store_true", help="the figures as JSON")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    phones = args.phones or (300 if args.quick else 2000)
    c.raise_nofile()
    out = c.run(bench(phones), "asyncio")
    ratio = out["phone"]["kb_each"] / out["bare"]["kb_each"]
    if args.json:
        print(json.dumps(out | {"phone_over_bare": ratio}, indent=2))
        return 0
    c.print_table(f"client memory: {phones:,} idle identified clients of each kind",
                  ["client", "RSS before KB", "RSS after KB", "KB each", "x bare", "wall s"],
                  [[k, f"{r['base_kb']:,}", f"{r['loaded_kb']:,}", f"{r['kb_each']:.1f}",
                    "1" if k == "bare" else f"{ratio:.2f}", f"{r['wall_s']:.1f}"]
                   for k, r in out.items()])
    c.print_table(f"a phone's Python memory by file (tracemalloc, {TRACE_SAMPLE} phones)",
                  ["file", "bytes per phone"],
                  [[f, f"{b:,.0f}"] for f, b in out["phone"]["top"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
