"""Full emulated phones at scale (issue 12): up to 50,000 concurrent `Phone`s with heartbeats,
over several client processes, against a lab of processes on Redis.

A redis-server is started for the run and `testbed lab up --store redis://... --workers W`
on it (W long-link and W short-link workers, SO_REUSEPORT; one process holds at most 20,000
open files here, so 50,000 links need W >= 3), seeded with one user per phone. `--clients P`
client processes (the testbed's fleet runner, `testbed.fleet.Fleet`) each bind their own
source addresses (`--addresses` of them, `client_address`: 127.99.0.1+, phone by phone,
each with its own ephemeral ports and under the lab's per-address connection cap) and hold
their share of the phones. Every phone is the full `Phone`: DNS, login over TLS, init sync over the
short link, long link with IDENTIFY, sync, then its heartbeat loop (`Phone.run`: a NOOP when
the link has been quiet for the profile's interval, 300 protocol s).

The phones come up in steps (default 5,000, 10,000, 20,000, 50,000; at most
`--concurrency` logins in flight per client process). Every 500 phones up and after each
step the clients call `gc.freeze()` (the phones that are up are not walked by the collector
again: without it, collections paused a client for up to 4 s while phones logged in),
then comes a window of `--window` seconds in which nothing but heartbeats happens. Per
step: phones up, login rate and per-phone login time, client RSS per phone (over each client process's RSS before its
first phone), lab RSS per phone (every process of the lab summed, over the lab before the
first phone), Redis memory per phone (`used_memory` over the seeded store), the heartbeat
reply round trip p50/p99 in the window and during the logins (NOOP written -> its reply read,
timed by a `LinkObserver` on every phone's link), heartbeat failures (silent deaths,
closed links, reconnects), failed logins, and the CPU of the lab, the clients, Redis and
everything else, with the load average. The time scale (default 10) makes the 300 s
heartbeat one every 30 wall seconds per phone (1,667 NOOPs/s at 50,000) and the 20 s NOOP
timeout 2 wall seconds; a NOOP answered later counts as a silent death and the phone
reconnects, as a real one would. The clients' GC pauses are reported too.

It stops at the first step that did not bring every phone up, or when `--max-seconds` runs
out (the step under way then stops logging in phones, and its window is still measured);
the last line says whether the target was reached or where the ceiling was. As root the
whole run happens in a fresh network namespace (ephemeral ports 1024-65535 per source
address); Ctrl-C stops every process it started, by PID (the lab, its workers, Redis, the
client processes).

    python bench/bench_phones.py [--quick] [--steps 5000,10000,20000,50000] [--clients P]
                                 [--workers W] [--time-scale K] [--window S]
                                 [--max-seconds S] [--json]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402
import _chat  # noqa: E402

from mocks.state.redis_server import RedisServer, redis_unavailable  # noqa: E402
from testbed.client.linkobserver import LinkObserver  # noqa: E402
from testbed.fleet import Fleet  # noqa: E402
from testbed.lab.addressing import client_address  # noqa: E402

STEPS = (5000, 10000, 20000, 50000)
QUICK_STEPS = (100, 200)
WINDOW_MARGIN_S = 20.0
FREEZE_EVERY = 500         # phones up between two gc.freeze() in a client process     # kept back from --max-seconds for the last window and the stop


class HeartbeatTimer(LinkObserver):
    """Times a phone's heartbeats on its long link: a 16-byte write (a NOOP: a bare header)
    to the next 16-byte read (its reply). An idle phone's link carries nothing else."""

    __slots__ = ("t0", "out")

    def __init__(self, out: array.array) -> None:
        self.t0 = 0.0
        self.out = out

    def sent(self, nbytes: int) -> None:
        self.t0 = time.perf_counter() if nbytes == c.HEADER.size else 0.0

    def received(self, nbytes: int) -> None:
        if self.t0 and nbytes == c.HEADER.size:
            self.out.append(time.perf_counter() - self.t0)
        self.t0 = 0.0


def say(line: str) -> None:
    """Progress on stderr: stdout is the table, or the JSON."""
    print(line, file=sys.stderr, flush=True)


class GcPauses:
    """The cyclic garbage collector's pauses in this process (`gc.callbacks`): with 12,500
    phones in one process a full collection walks millions of objects while every phone's
    event loop waits, which shows up as heartbeat latency."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.total = self.longest = 0.0
        self.count = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
            return
        took = time.perf_counter() - self.t0
        self.total += took
        self.longest = max(self.longest, took)
        self.count += 1

    def take(self) -> dict:
        out = {"gc_s": self.total, "gc_max_s": self.longest, "gcs": self.count}
        self.total = self.longest = 0.0
        self.count = 0
        return out


# ---------------------------------------------------------------------------- client process
async def phones_worker(p: dict, channel) -> dict:
    """A client process (a fleet worker): its slice of the lab's users, started as phones on
    "grow" (up to a count, until a deadline); "mark", "rss", "stop"."""
    c.raise_nofile()
    from testbed.client.phone import Phone
    from testbed.client.session import ssl_context_for
    from testbed.lab.clock import Clock
    from testbed.lab.manifest import load_manifest

    manifest = load_manifest(p["manifest"])
    users = manifest.users[p["first"]:p["first"] + p["count"]]
    manifest.users = []              # each phone holds the manifest: not 50,000 users
    # each phone binds one of the process's source addresses: phones come from many
    # addresses, as real ones do (each with its own ports, under the lab's per-address cap)
    k = p["addresses"]
    sources = [client_address(manifest.dns_address, p["index"] * k + j) for j in range(k)]
    clock = Clock(manifest.time_scale)
    ssl_context_for(manifest)        # the one TLS context, before the baseline
    rtts = array.array("d")
    pauses = GcPauses()
    phones: list = []
    runs: list = []
    stop = asyncio.Event()
    failures: collections.Counter = collections.Counter()

    async def grow(target: int, deadline: float) -> dict:
        t0, cpu0 = time.monotonic(), time.process_time()
        sem = asyncio.Semaphore(p["concurrency"])
        times = array.array("d")
        before = len(phones)
        mark_rtts = take_rtts()       # heartbeats of the phones already up, during the logins

        async def one(i: int, u: dict) -> None:
            async with sem:
                if time.time() > deadline:
                    failures["not started: --max-seconds"] += 1
                    return
                ph = Phone(manifest, u["username"], u["password"],
                           local_addr=sources[i % k],
                           clock=clock, link_observer=HeartbeatTimer(rtts))
                t = time.monotonic()
                try:
                    await ph.start()
                except Exception as exc:  # noqa: BLE001 - counted, by kind and message
                    failures[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                    if ph.session.link is not None:
                        ph.session.link.abort()
                    return
                times.append(time.monotonic() - t)
                phones.append(ph)
                runs.append(asyncio.ensure_future(ph.run(stop)))
                if p["gc_freeze"] and len(phones) % FREEZE_EVERY == 0:
                    freeze()

        start = len(phones) + sum(failures.values())
        await asyncio.gather(*(one(i, users[i]) for i in range(start, min(target, len(users)))))
        if p["gc_freeze"]:
            freeze()
        return {"up": len(phones), "added": len(phones) - before,
                "wall": time.monotonic() - t0, "cpu": time.process_time() - cpu0,
                "login_times": times.tobytes(), "rtts": mark_rtts + take_rtts(),
                "failures": dict(failures), **pauses.take()}

    def freeze() -> None:
        """What is up stays up: later collections need not walk it. Collected first, so
        that no garbage is frozen; that collection walks only what came since the last."""
        gc.collect()
        gc.freeze()

    def take_rtts() -> bytes:
        out = rtts.tobytes()
        del rtts[:]
        return out

    def mark() -> dict:
        out = collections.Counter()
        for ph in phones:
            m = ph.metrics
            out["heartbeats_sent"] += m.heartbeats_sent
            out["heartbeats_answered"] += m.heartbeats_answered
            out["silent_deaths"] += m.silent_deaths
            out["links_closed"] += m.links_closed
            out["reconnects"] += m.reconnects
            out["reconnect_failures"] += m.reconnect_failures
            link = ph.session.link
            out["open"] += link is not None and link.is_open
        out["run_errors"] = sum(1 for t in runs if t.done() and not t.cancelled()
                                and t.exception() is not None)
        return dict(out) | {"rtts": take_rtts()} | pauses.take()

    channel.send("ready", {"pid": os.getpid(), "sources": sources, "rss_base": c.rss_kb(),
                           "users": len(users)})
    while True:
        kind, *args = await channel.receive()
        if kind == "grow":
            channel.send("grown", await grow(*args))
        elif kind == "mark":
            channel.send("mark", mark())
        elif kind == "rss":
            channel.send("rss", c.rss_kb())
        elif kind == "stop":
            break
    stop.set()
    for t in runs:
        t.cancel()
    for ph in phones:                # 17,000 polite closes would take a while: abort
        if ph.session.link is not None:
            ph.session.link.abort()
    await asyncio.gather(*runs, return_exceptions=True)
    return {"phones": len(phones)}


# ---------------------------------------------------------------------------- the lab side
def lab_roles(root: int) -> dict[int, str]:
    """Every process of the lab `root` (`testbed lab up`) with its role: the `serve ROLE`
    it is or that started it (its workers), "lab" for the parent."""
    roles: dict[int, str] = {}
    for pid in _chat.lab_processes(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if b"serve" in argv and argv.index(b"serve") + 1 < len(argv):
            roles[pid] = argv[argv.index(b"serve") + 1].decode()
        else:
            roles[pid] = roles.get(ppid, "lab")
    return roles


def rss_by_role(roles: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = collections.Counter()
    for pid, role in roles.items():
        try:
            out[role] += c.rss_kb(pid)
        except (OSError, ValueError):
            pass              # ended: a worker being restarted
    return dict(out)


def redis_memory(server: RedisServer) -> dict:
    import redis
    r = redis.Redis(unix_socket_path=str(server.socket_path))
    try:
        info = r.info("memory")
        return {"used": info["used_memory"], "rss": info["used_memory_rss"],
                "keys": r.dbsize()}
    finally:
        r.close()


# ---------------------------------------------------------------------------- the run
def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _merge(marks: list[dict]) -> dict:
    """Counts summed over the client processes; round trips pooled; the longest GC pause."""
    out = collections.Counter()
    rtts = array.array("d")
    for m in marks:
        rtts.frombytes(m["rtts"])
        out.update({k: v for k, v in m.items() if k not in ("rtts", "gc_max_s")})
    return dict(out) | {"rtts": sorted(rtts),
                        "gc_max_s": max((m["gc_max_s"] for m in marks), default=0.0)}


async def run_bench(args) -> dict:
    deadline = time.monotonic() + args.max_seconds
    n = args.steps[-1]
    from testbed.lab.profiles import load_profile
    hb_s = load_profile().heartbeat_s   # the phones' interval: the lab's default profile
    interval_w = hb_s / args.time_scale
    say(f"phones: up to {n:,} in steps {', '.join(f'{s:,}' for s in args.steps)}; "
           f"{args.clients} client processes ({args.client_loop}), lab of processes on Redis "
           f"with {args.workers} long + {args.workers} short workers"
           f"{' (uvloop)' if args.lab_uvloop else ''}; heartbeat {hb_s:g} s at x"
           f"{args.time_scale:g} = every {interval_w:.1f} s per phone; window "
           f"{args.window:g} s; at most {args.max_seconds:g} s")
    result = {"config": {"steps": args.steps, "clients": args.clients,
                         "workers": args.workers, "time_scale": args.time_scale,
                         "heartbeat_s": hb_s, "window_s": args.window,
                         "concurrency": args.concurrency, "addresses": args.addresses, "client_loop": args.client_loop,
                         "lab_uvloop": args.lab_uvloop,
                         "gc_freeze": not args.no_gc_freeze, "max_seconds": args.max_seconds,
                         "netns": args.netns_inner},
              "steps": [], "stopped": ""}
    with tempfile.TemporaryDirectory(prefix="bench-phones-") as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            url = f"{redis.url}?namespace=bench-phones-{uuid.uuid4().hex[:8]}"
            lab_args = ["--store", url, "--workers", str(args.workers),
                        "--time-scale", repr(args.time_scale)]
            lab_args += ["--uvloop"] if args.lab_uvloop else []
            t = time.monotonic()
            async with _chat.lab_up(n, lab_args, ready_timeout=args.max_seconds) as (
                    proc, manifest):
                result["lab_up_s"] = time.monotonic() - t
                await _steps(args, proc, manifest, redis, deadline, result)
        finally:
            redis.stop()
    return result


async def _steps(args, proc, manifest, redis: RedisServer, deadline: float,
                 result: dict) -> None:
    n = args.steps[-1]
    roles = lab_roles(proc.pid)
    lab_rss0 = rss_by_role(roles)
    redis0 = redis_memory(redis)
    say(f"  lab up in {result['lab_up_s']:.1f} s: {len(roles)} processes, "
           f"{sum(lab_rss0.values()) / 1024:.0f} MB; Redis {redis0['used'] / 2**20:.0f} MB "
           f"for {n:,} users ({redis0['keys']:,} keys)")
    result["seeded"] = {"lab_rss_kb": lab_rss0, "redis": redis0}
    shares = _shares(n, args.clients)
    payloads = [{"manifest": str(manifest), "index": i, "first": sum(shares[:i]),
                 "count": shares[i], "concurrency": args.concurrency,
                 "addresses": args.addresses, "gc_freeze": not args.no_gc_freeze}
                for i in range(args.clients)]
    async with Fleet(phones_worker, payloads, loop=args.client_loop,
                     name="phone-client") as fleet:
        ready = await fleet.collect("ready", timeout=120)
        cpids = fleet.pids
        totals: dict = {}     # the phones' heartbeat counts at the end of the last window
        for target in args.steps:
            left = deadline - time.monotonic()
            if left < args.window + WINDOW_MARGIN_S:
                result["stopped"] = f"--max-seconds: no time left for the {target:,} step"
                break
            step, totals = await _step(args, fleet, target, deadline, proc, redis, cpids,
                                       ready, lab_rss0, redis0, totals)
            result["steps"].append(step)
            _progress(step)
            if step["up"] < target:
                result["stopped"] = (f"{target - step['up']:,} of {target:,} phones did "
                                     f"not come up")
                break
        fleet.broadcast("stop")
        await asyncio.wait_for(fleet.run(), 60)


HEARTBEAT_COUNTS = ("heartbeats_sent", "heartbeats_answered", "silent_deaths", "links_closed",
                    "reconnects", "reconnect_failures")


async def _step(args, fleet, target: int, deadline: float, proc, redis, cpids, ready,
                lab_rss0, redis0, before: dict) -> tuple[dict, dict]:
    """One step: grow to `target` phones, then the window. Returns its figures and the
    phones' heartbeat counts at its end (`before` of the next step)."""
    roles = ramp_roles = lab_roles(proc.pid)          # a restarted worker has a new pid
    pids = list(roles) + [redis.proc.pid] + cpids
    grow_until = time.time() + (deadline - time.monotonic()) - args.window - WINDOW_MARGIN_S
    cpu = c.CpuWindow(pids)
    for i, share in enumerate(_shares(target, len(fleet))):
        fleet.send(i, "grow", share, grow_until)
    grown = await fleet.collect("grown", timeout=max(60.0, deadline - time.monotonic()))
    ramp = cpu.stop()
    ramp_rtts = sorted(x for g in grown for x in array.array("d", g["rtts"]))
    login = sorted(x for g in grown for x in array.array("d", g["login_times"]))
    failures = collections.Counter()
    for g in grown:
        failures.update(g["failures"])
    up = sum(g["up"] for g in grown)
    added = sum(g["added"] for g in grown)

    m0 = _merge(await _ask(fleet, "mark"))
    roles = lab_roles(proc.pid)
    pids = list(roles) + [redis.proc.pid] + cpids
    win = c.CpuWindow(pids)
    load0 = os.getloadavg()
    await asyncio.sleep(args.window)
    w = win.stop()
    load1 = os.getloadavg()
    m1 = _merge(await _ask(fleet, "mark"))
    rss_clients = await _ask(fleet, "rss")
    lab_rss = rss_by_role(lab_roles(proc.pid))
    mem = redis_memory(redis)

    delta = {k: m1.get(k, 0) - m0.get(k, 0) for k in HEARTBEAT_COUNTS}
    in_logins = {k: m0.get(k, 0) - before.get(k, 0) for k in HEARTBEAT_COUNTS}
    rtts = m1["rtts"]

    def share(cpu_win: dict, roles: dict) -> dict:
        """Cores busy: the lab's processes, Redis, the clients (in `pids` order), others."""
        per, nl = cpu_win["per_pid"], len(roles)
        by_role = collections.Counter()
        for role, x in zip(roles.values(), per):
            by_role[role] += x
        return {"lab": sum(per[:nl]), "redis": per[nl], "clients": sum(per[nl + 1:]),
                "other": cpu_win["other"], "lab_by_role": dict(by_role)}

    per_phone = max(1, up)
    return {
        "target": target, "up": up, "added": added, "open": m1.get("open", 0),
        "login_wall_s": ramp["wall"], "login_rate": added / ramp["wall"],
        "login_p50_s": _chat.pct(login, 0.5), "login_p99_s": _chat.pct(login, 0.99),
        "failures": dict(failures),
        "client_kb_per_phone": sum(r - info["rss_base"] for r, info in
                                   zip(rss_clients, ready)) / per_phone,
        "client_rss_kb": rss_clients,
        "lab_kb_per_phone": (sum(lab_rss.values()) - sum(lab_rss0.values())) / per_phone,
        "lab_kb_per_phone_by_role": {r: (v - lab_rss0.get(r, 0)) / per_phone
                                     for r, v in lab_rss.items()},
        "lab_rss_kb": lab_rss,
        "redis_kb_per_phone": (mem["used"] - redis0["used"]) / 1024 / per_phone,
        "redis_used_mb": mem["used"] / 2**20,
        "noop_p50_ms": _chat.pct(rtts, 0.5) * 1e3, "noop_p99_ms": _chat.pct(rtts, 0.99) * 1e3,
        "noop_max_ms": (rtts[-1] * 1e3) if rtts else float("nan"), "noops": len(rtts),
        "noops_per_s": len(rtts) / w["wall"],
        "ramp_noop_p50_ms": _chat.pct(ramp_rtts, 0.5) * 1e3,
        "ramp_noop_p99_ms": _chat.pct(ramp_rtts, 0.99) * 1e3, "ramp_noops": len(ramp_rtts),
        "window": delta, "during_logins": in_logins, "run_errors": m1.get("run_errors", 0),
        "client_gc_window_s": m1["gc_s"], "client_gc_max_ms": m1["gc_max_s"] * 1e3,
        "client_gc_logins_s": sum(g["gc_s"] for g in grown),
        "client_gc_logins_max_ms": max(g["gc_max_s"] for g in grown) * 1e3,
        "cpu_ramp": share(ramp, ramp_roles), "cpu_window": share(w, roles),
        "load_before": load0, "load_after": load1,
        "lab_us_per_login": sum(ramp["per_pid"][:len(ramp_roles)]) * ramp["wall"]
        / max(1, added) * 1e6,
        "client_us_per_login": sum(g["cpu"] for g in grown) / max(1, added) * 1e6,
    }, {k: m1.get(k, 0) for k in HEARTBEAT_COUNTS}


async def _ask(fleet, kind: str) -> list:
    fleet.broadcast(kind)
    return await fleet.collect(kind, timeout=120)


def _failed(step: dict) -> int:
    return sum(step["failures"].values())


def _hb_errors(step: dict, when: str = "window") -> int:
    """Heartbeats that failed (silent deaths, closed links) in the window or in the logins;
    heartbeat loops that raised count in the window."""
    d = step[when]
    return d["silent_deaths"] + d["links_closed"] + (step["run_errors"] if when == "window"
                                                     else 0)


def _progress(s: dict) -> None:
    roles = ", ".join(f"{k} {v * 100:.0f}%" for k, v in s["cpu_ramp"]["lab_by_role"].items())
    say(f"  {s['up']:,}/{s['target']:,} up (+{s['added']:,} in {s['login_wall_s']:.0f} s, "
        f"{s['login_rate']:,.0f}/s); NOOP p50/p99 {s['noop_p50_ms']:.1f}/"
        f"{s['noop_p99_ms']:.1f} ms ({s['noops']:,}); client {s['client_kb_per_phone']:.1f}"
        f" KB, lab {s['lab_kb_per_phone']:.1f} KB, Redis {s['redis_kb_per_phone']:.2f} KB "
        f"per phone; {_failed(s)} failed logins, {_hb_errors(s)} heartbeat failures in the "
        f"window, {_hb_errors(s, 'during_logins')} during the logins; CPU "
        f"per login: lab {s['lab_us_per_login'] / 1e3:.1f} ms, client "
        f"{s['client_us_per_login'] / 1e3:.1f} ms; lab cores in logins: {roles}; client "
        f"GC pauses: longest {s['client_gc_max_ms']:.0f} ms in the window, "
        f"{s['client_gc_logins_max_ms']:.0f} ms in the logins; "
        f"load {s['load_after'][0]:.1f}")


def print_report(r: dict) -> None:
    pc = lambda x: f"{x * 100:.0f}"  # noqa: E731
    rows = []
    for s in r["steps"]:
        cr, cw = s["cpu_ramp"], s["cpu_window"]
        rows.append([
            f"{s['target']:,}", f"{s['up']:,}", f"{s['login_rate']:,.0f}",
            f"{s['login_p50_s']:.2f} / {s['login_p99_s']:.2f}",
            f"{s['client_kb_per_phone']:.1f}", f"{s['lab_kb_per_phone']:.1f}",
            f"{s['redis_kb_per_phone']:.2f}",
            f"{s['noop_p50_ms']:.1f} / {s['noop_p99_ms']:.1f}",
            f"{s['ramp_noop_p99_ms']:.0f}", f"{s['noops']:,}",
            f"{_failed(s)} / {_hb_errors(s)} / {_hb_errors(s, 'during_logins')}",
            f"{pc(cr['lab'])}/{pc(cr['clients'])}/{pc(cr['redis'])}/{pc(cr['other'])}",
            f"{pc(cw['lab'])}/{pc(cw['clients'])}/{pc(cw['redis'])}/{pc(cw['other'])}",
            f"{s['load_after'][0]:.1f}"])
    cfg = r["config"]
    c.print_table(
        f"full phones on a Redis lab: {cfg['clients']} client processes, {cfg['workers']} + "
        f"{cfg['workers']} workers, heartbeat every {cfg['heartbeat_s'] / cfg['time_scale']:g}"
        f" s (x{cfg['time_scale']:g}), {cfg['window_s']:g} s window",
        ["step", "phones up", "logins/s", "login p50/p99 s", "client KB/phone",
         "lab KB/phone", "Redis KB/phone", "NOOP p50/p99 ms", "p99 in logins ms",
         "NOOPs in window", "failed logins / hb fails window / in logins",
         "CPU % logins lab/cli/redis/other", "CPU % window lab/cli/redis/other", "load 1m"],
        rows)
    for s in r["steps"]:
        for what, k in sorted(s["failures"].items(), key=lambda kv: -kv[1])[:3]:
            say(f"  step {s['target']:,}: {k:,} x {what}")
    print(verdict(r), flush=True)


def verdict(r: dict) -> str:
    goal = r["config"]["steps"][-1]
    steps = r["steps"]
    best = max((s["up"] for s in steps), default=0)
    last = steps[-1] if steps else None
    if last and last["target"] == goal and last["up"] == goal and not _failed(last) \
            and not _hb_errors(last):
        return f"{goal:,} full phones with heartbeats: OK"
    why = r["stopped"] or (f"{_hb_errors(last)} heartbeat failures" if last else "no step")
    return f"{goal:,} full phones with heartbeats: BELOW TARGET ({best:,} up; {why})"


# ---------------------------------------------------------------------------- entry
def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", help="phones at each step, comma-separated "
                       "(5000,10000,20000,50000; --quick 100,200)")
        p.add_argument("--clients", type=int, help="client processes (4; --quick 2)")
        p.add_argument("--workers", type=int, help="long- and short-link workers each "
                       "(4; --quick 2)")
        p.add_argument("--time-scale", type=float,
                       help="protocol seconds per wall second (10; --quick 100)")
        p.add_argument("--window", type=float, help="seconds of heartbeats only, after "
                       "each step (15; --quick 4)")
        p.add_argument("--concurrency", type=int, default=16,
                       help="logins in flight per client process (16)")
        p.add_argument("--max-seconds", type=float, help="the whole run at most "
                       "(1200; --quick 120)")
        p.add_argument("--addresses", type=int, default=8,
                       help="source addresses per client process (8), phone by phone")
        p.add_argument("--no-gc-freeze", action="store_true",
                       help="leave the phones up to the clients' garbage collector (by "
                       "default gc.freeze() every 500 phones and after each step)")
        p.add_argument("--client-loop", choices=c.LOOPS,
                       default="uvloop" if c.have_uvloop() else "asyncio")
        p.add_argument("--lab-uvloop", action="store_true", help="run the lab on uvloop")
        p.add_argument("--json", action="store_true", help="the figures as JSON")
        c.add_netns_options(p)

    args = c.parse_args(__doc__.splitlines()[0], extra)
    args.steps = ([int(x) for x in args.steps.split(",")] if args.steps
                  else list(QUICK_STEPS if args.quick else STEPS))
    args.clients = args.clients or (2 if args.quick else 4)
    args.workers = args.workers or (2 if args.quick else 4)
    args.time_scale = args.time_scale or (100.0 if args.quick else 10.0)
    args.window = args.window if args.window is not None else (4.0 if args.quick else 15.0)
    args.max_seconds = args.max_seconds or (120.0 if args.quick else 1200.0)
    if args.steps != sorted(args.steps) or args.steps[0] < args.clients or \
            min(args.clients, args.workers, args.concurrency, args.addresses) < 1 or args.window <= 0:
        print("--steps must grow, from at least one phone per client process; --clients, "
              "--workers, --concurrency and --window must be positive", file=sys.stderr)
        return 2
    limit = c.raise_nofile()
    worst = max(-(-args.steps[-1] // args.clients), -(-args.steps[-1] // args.workers))
    if worst + 200 > limit:
        print(f"{worst:,} links in one process exceed the open-file limit {limit:,}: use "
              f"more --clients / --workers", file=sys.stderr)
        return 2
    reason = redis_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1

    def body() -> int:
        r = c.run(run_bench(args), "asyncio")
        if args.json:
            print(json.dumps(r, indent=2), flush=True)
        else:
            print_report(r)
        return 0
    return c.run_isolated("bench-phones", __file__, args, body)

if __name__ == "__main__":
    sys.exit(main())
