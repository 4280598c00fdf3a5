"""The reconnect path alone: CPU per reconnect in the lab and in the phones' process, and
as a ratio of a NOOP's round trip measured on the same links in the same run.

What the heartbeat study's `fixed:1680` phones do at every beat (tens of thousands of times
a run), without the heartbeats around it: a lab as the study starts it (a carrier NAT in
front of the long link, its upstream leg the study's unless `--nat-upstream` says, k =
2000; its idle timeout 3,000 s, so that no link of the NOOP baseline expires between two of
its rounds) in this process, `--phones` phones in a spawned process of their own, each
from its own source address, logged in and online.

* The baseline: after a round of reconnects (unmeasured: the NAT forgot the early phones'
  links while the last ones logged in), `--rounds` rounds in which every phone sends a
  NOOP on its link and waits for the answer (phone -> NAT -> long link and back),
  `--concurrency` phones at a time.
* The reconnects: `--rounds` rounds in which the NAT black-holes every mapping (what an
  idle expiry does) and every phone reconnects (`Phone.reconnect`: abort the dead link, a
  new TCP connection from its own address through the NAT, IDENTIFY, newsync). After the
  last round the run waits out the NAT's linger, so every black-holed mapping is released
  (both legs aborted) inside the measured window.

Prints the CPU seconds of each process over each window (`/proc/<pid>/stat`), per event,
and a reconnect's cost in NOOPs (the ratio holds better than the µs on a shared machine),
with the machine's other load in the window. The cyclic GC is paused in both processes for
the windows, as the study pauses it (`StudyConfig.pause_gc`).

    python bench/bench_reconnect.py [--quick] [--phones N] [--rounds R] [--concurrency C]
                                    [--nat-upstream socket|memory] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

from testbed.lab import NAT_UPSTREAMS  # noqa: E402
from testbed.study.heartbeat.config import StudyConfig  # noqa: E402

STUDY_UPSTREAM = StudyConfig.nat_upstream

TIME_SCALE = 2000.0
# 1.5 s of wall time: no link expires between two rounds of the NOOP baseline (300 s would
# be 150 ms, less than a loaded machine may take between them); the reconnects' mappings
# are expired by the bench (`blackhole_all`: the same `expire` as an idle timeout's)
NAT_TIMEOUT_S = 3000.0
COUNTS = ("reconnects", "reconnect_failures")
NOOP_TIMEOUT_S = 20.0   # the phone's (protocol seconds, floored at 50 ms of wall time)


# ---------------------------------------------------------------------------- phone process
def phones_main(conn, manifest: dict, origin: float, count: int, concurrency: int,
                loop_kind: str) -> None:
    c.raise_nofile()

    async def main() -> None:
        from testbed.client.longlink import LinkClosed
        from testbed.client.phone import Phone
        from testbed.lab.addressing import client_address
        from testbed.lab.clock import Clock
        from testbed.lab.manifest import Manifest

        m = Manifest.from_dict(manifest)
        clock = Clock(m.time_scale, origin=origin)   # the lab clock's time line
        phones = [Phone(m, u["username"], u["password"], clock=clock,
                        local_addr=client_address(m.dns_address, i))
                  for i, u in enumerate(m.users[:count])]
        sem = asyncio.Semaphore(concurrency)
        failed: list[Phone] = []

        async def each(fn) -> None:
            async def one(phone: Phone) -> None:
                async with sem:
                    await fn(phone)
            await asyncio.gather(*(one(p) for p in phones))

        await each(lambda p: p.start())
        gc.collect()     # paused for the windows, as in the study's phone processes
        gc.disable()

        async def noop(p: Phone) -> None:
            try:
                await p.session.link.noop(timeout=p.timeout(NOOP_TIMEOUT_S))
            except (asyncio.TimeoutError, LinkClosed):   # the NAT forgot it: a new one
                failed.append(p)
                await p.reconnect()

        async def noops() -> int:
            failed.clear()
            await each(noop)
            return len(failed)

        async def reconnects() -> dict:
            before = [sum(getattr(p.metrics, k) for p in phones) for k in COUNTS]
            await each(lambda p: p.reconnect())
            return {k: sum(getattr(p.metrics, k) for p in phones) - n
                    for k, n in zip(COUNTS, before)}

        conn.send(("ready", os.getpid()))
        await c.control_loop(conn, {"noops": noops, "reconnects": reconnects})
        await asyncio.gather(*(p.stop() for p in phones))

    c.run(main(), loop_kind)


async def _call(child: c.Child, *msg):
    """`child.call` without blocking the lab's loop: the reply is awaited on the pipe."""
    loop = asyncio.get_running_loop()
    fd = child.conn.fileno()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        if msg:
            child.send(*msg)
        await ready
    finally:
        loop.remove_reader(fd)
    return child.recv(5.0)


def _ratio(a: float, b: float) -> str:
    # a short window (--quick) may show no CPU tick at all (they are 10 ms)
    return f"{a / b:.1f}" if b else "-"


def _window(cpu: c.CpuWindow) -> dict:
    got = cpu.stop()
    return {"wall_s": got["wall"], "lab_s": got["per_pid"][0] * got["wall"],
            "phones_s": got["per_pid"][1] * got["wall"], "other_cores": got["other"]}


# ---------------------------------------------------------------------------- lab process
def main() -> int:
    def extra(p):
        p.add_argument("--phones", type=int, help="phones (500; 100 quick)")
        p.add_argument("--rounds", type=int,
                       help="NOOPs and reconnects per phone (60; 3 quick)")
        p.add_argument("--concurrency", type=int, default=32,
                       help="phones under way at once (32)")
        p.add_argument("--nat-upstream", choices=NAT_UPSTREAMS, default=STUDY_UPSTREAM,
                       help="how the NAT reaches the long link (as `study heartbeat "
                            f"--nat-upstream`; default {STUDY_UPSTREAM}, the study's)")
        p.add_argument("--loop", default="uvloop" if c.have_uvloop() else "asyncio",
                       help="event loop of both processes")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    phones = args.phones or (100 if args.quick else 500)
    rounds = args.rounds or (3 if args.quick else 60)
    c.raise_nofile()
    out: dict = {}

    async def lab_main() -> None:
        from mocks.runner import LabConfig, start_lab

        with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
            lab = await start_lab(LabConfig(
                users=phones, friends="none", time_scale=TIME_SCALE,
                nat_timeout_s=NAT_TIMEOUT_S, nat_upstream=args.nat_upstream,
                manifest_path=Path(tmp) / "manifest.json"))
            child = c.Child(phones_main, lab.manifest.to_dict(), lab.clock.origin, phones,
                            args.concurrency, args.loop, name="bench-reconnect-phones")
            try:
                await _call(child)            # its "ready": every phone online
                # the early phones' mappings expired while the last logged in: fresh links
                # for all, unmeasured
                lab.nat.blackhole_all()
                await _call(child, "reconnects")
                gc.collect()     # paused for the windows, as in the study's lab process
                gc.disable()
                pids = [os.getpid(), child.pid]
                cpu = c.CpuWindow(pids)
                noop_failures = 0
                for _ in range(rounds):
                    noop_failures += await _call(child, "noops")
                out["noop_window"] = _window(cpu)
                c.note(f"reconnects start: lab pid {pids[0]}, phones pid {pids[1]}")
                cpu = c.CpuWindow(pids)
                t0 = time.perf_counter()
                done = dict.fromkeys(COUNTS, 0)
                for _ in range(rounds):
                    lab.nat.blackhole_all()
                    for k, n in (await _call(child, "reconnects")).items():
                        done[k] += n
                rounds_s = time.perf_counter() - t0
                # the last round's black-holed mappings are released after the linger
                await asyncio.sleep(lab.clock.to_wall(lab.nat.blackhole_linger_s) + 0.5)
                out["reconnect_window"] = _window(cpu)
                out.update(done, rounds_s=rounds_s, nat=lab.nat.stats,
                           noop_failures=noop_failures)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, child.stop)
                await lab.stop()

    c.run(lab_main(), args.loop)
    n = phones * rounds
    got = out["reconnects"]
    if got != n:
        c.note(f"{n - got} reconnects missing (failed attempts: {out['reconnect_failures']})")
    rec, noop = out["reconnect_window"], out["noop_window"]
    rows = []
    for name, key in (("lab", "lab_s"), ("phones", "phones_s")):
        per_rec, per_noop = rec[key] / got, noop[key] / n
        rows.append([name, f"{rec[key]:.2f}", f"{1e6 * per_rec:.0f}", f"{noop[key]:.2f}",
                     f"{1e6 * per_noop:.1f}", _ratio(per_rec, per_noop)])
    both_rec = (rec["lab_s"] + rec["phones_s"]) / got
    both_noop = (noop["lab_s"] + noop["phones_s"]) / n
    rows.append(["both", f"{rec['lab_s'] + rec['phones_s']:.2f}", f"{1e6 * both_rec:.0f}",
                 f"{noop['lab_s'] + noop['phones_s']:.2f}", f"{1e6 * both_noop:.1f}",
                 _ratio(both_rec, both_noop)])
    c.print_table(
        f"reconnects: {phones:,} phones x {rounds} rounds, k = {TIME_SCALE:g}, NAT "
        f"{NAT_TIMEOUT_S:g} s, upstream {args.nat_upstream}, {args.loop}",
        ["process", "reconnects CPU s", "µs per reconnect", "NOOPs CPU s", "µs per NOOP",
         "a reconnect in NOOPs"], rows)
    c.note(f"reconnect rounds {out['rounds_s']:.1f} s, window {rec['wall_s']:.1f} s; NOOP "
           f"window {noop['wall_s']:.1f} s; other load {rec['other_cores']:.2f} / "
           f"{noop['other_cores']:.2f} cores; {out['reconnect_failures']} failed reconnect "
           f"attempts, {out['noop_failures']} NOOPs unanswered; "
           f"NAT {out['nat']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
