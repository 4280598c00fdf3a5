"""A chat through a whole lab (`testbed lab up` as a subprocess, full `Phone`s in client
processes): the shared driver of `bench_chat.py` and `bench_tap.py`.

Users are paired (user 1 with 2, 3 with 4...), each pair made friends, and every phone is
logged in with its long link identified before the clock starts. Then every pair chats for
`duration` seconds, taking turns: a phone sends over its long link and waits until the
other has the message (the server's NOTIFY, then the receiver's NEWSYNC) before it is the
other's turn; the delay of a message is that whole path, send to sync. Phones of one pair
are in the same client process, so one clock times both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import _common as c

from testbed.fleet import Fleet
from testbed.lab.addressing import AddressPlan, client_address


async def chat_worker(p: dict, channel) -> dict:
    """One client process: its pairs' phones, logged in; chats on "go"."""
    from testbed.client.phone import Phone
    from testbed.lab.manifest import load_manifest

    manifest = load_manifest(p["manifest"])
    users = manifest.users[p["first"]:p["first"] + p["count"]]
    local = client_address(manifest.dns_address, p["index"])
    waiting: dict[str, asyncio.Future] = {}

    def heard(msg, _now) -> None:
        fut = waiting.pop(msg.content, None)
        if fut is not None and not fut.done():
            fut.set_result(time.monotonic())

    phones = [Phone(manifest, u["username"], u["password"], local_addr=local,
                    on_message=heard) for u in users]
    sem = asyncio.Semaphore(20)   # logins at once: more time out on a busy machine

    async def start(ph):
        async with sem:
            await ph.start()

    await asyncio.gather(*(start(ph) for ph in phones))
    for a, b in zip(phones[::2], phones[1::2]):
        await a.add_friend(b.username)
    await asyncio.gather(*(ph.sync() for ph in phones))   # the new contacts
    channel.send("ready", len(phones))
    kind, duration = await channel.receive()
    assert kind == "go"
    delays: list[float] = []
    end = time.monotonic() + duration

    async def pair(k: int, a, b) -> None:
        n = 0
        while time.monotonic() < end:
            key = f"{p['index']}-{k}-{n}"
            fut = asyncio.get_running_loop().create_future()
            waiting[key] = fut
            t0 = time.monotonic()
            await a.send_text(b.username, key)
            delays.append(await asyncio.wait_for(fut, 60) - t0)
            a, b, n = b, a, n + 1

    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(pair(k, a, b) for k, (a, b) in
                           enumerate(zip(phones[::2], phones[1::2]))))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    await asyncio.gather(*(ph.stop() for ph in phones), return_exceptions=True)
    return {"delays": delays, "wall": wall, "cpu": cpu}


@contextlib.asynccontextmanager
async def lab_up(users: int, lab_args: list[str], ready_timeout: float = 300.0):
    """`testbed lab up --users N --friends none ARGS` on a random loopback /24, until the
    block ends: yields (process, manifest path); `ready_timeout` seconds for it to start
    and seed its users. Its stderr goes to a file (a pipe nobody
    reads would fill and block the lab); it is stopped by its pid."""
    plan = AddressPlan.random_loopback()
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        manifest = Path(tmp) / "lab.json"
        with open(Path(tmp) / "lab.log", "w+") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.cli", "lab", "up", "--users", str(users),
                 "--friends", "none", "--manifest", str(manifest), "--subnet", plan.prefix,
                 *lab_args], stdout=subprocess.DEVNULL, stderr=log)
            try:
                await asyncio.to_thread(_wait_manifest, proc, manifest, log, ready_timeout)
                yield proc, manifest
            finally:
                proc.send_signal(signal.SIGINT)     # our own lab, by its pid
                try:
                    await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_manifest(proc: subprocess.Popen, path: Path, log, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"lab up exited ({proc.returncode}): {log.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("lab up: no manifest in time")
        time.sleep(0.05)


def lab_processes(pid: int) -> list[int]:
    """`pid` and every process below it (a lab of processes: its hosts and workers)."""
    out, frontier = [pid], {pid}
    while frontier:
        nxt = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) in frontier:
                            nxt.add(int(entry))
                except (OSError, ValueError):
                    pass
        out += sorted(nxt)
        frontier = nxt
    return out


async def run_chat(lab_args: list[str], users: int, duration: float, clients: int,
                   client_loop: str = "asyncio") -> dict:
    """One lab (`testbed lab up` with `lab_args`), `users` phones in `clients` processes,
    `duration` seconds of chat. Returns messages/s, delays (s) sorted, CPU seconds of the
    lab's processes while chatting and how many there were."""
    if users % (2 * clients):
        raise ValueError("users must be a multiple of 2 x clients (whole pairs each)")
    async with lab_up(users, lab_args) as (proc, manifest):
        share = users // clients
        fleet = Fleet(chat_worker, [{"manifest": str(manifest), "index": i,
                                     "first": i * share, "count": share}
                                    for i in range(clients)],
                      loop=client_loop, name="chat-client")
        async with fleet:
            await fleet.collect("ready", timeout=600)
            lab = lab_processes(proc.pid)
            window = c.CpuWindow(lab)
            fleet.broadcast("go", duration)
            results = await fleet.run()
            cpu = window.stop()
    delays = sorted(d for r in results for d in r["delays"])
    wall = max(r["wall"] for r in results)
    client_cores = sum(r["cpu"] for r in results) / cpu["wall"]
    return {"messages": len(delays), "per_s": len(delays) / wall, "delays": delays,
            "lab_cpu": sum(cpu["per_pid"]) * cpu["wall"], "lab_processes": len(lab),
            "client_cores": client_cores,
            "other": max(0.0, cpu["total"] - sum(cpu["per_pid"]) - client_cores)}


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def row(name: str, r: dict, base: Optional[dict]) -> list:
    return [name, f"{r['messages']:,}", f"{r['per_s']:,.0f}",
            f"{pct(r['delays'], 0.5) * 1e3:.1f}", f"{pct(r['delays'], 0.99) * 1e3:.1f}",
            f"{r['lab_cpu'] / max(1, r['messages']) * 1e6:,.0f}",
            f"{r['client_cores']:.2f}", f"{r['other']:.2f}",
            "1" if base is None else f"{r['per_s'] / base['per_s']:.2f}"]


COLUMNS = ["lab", "messages", "msgs/s", "delay p50 ms", "delay p99 ms",
           "lab CPU us/msg", "client cores", "other cores busy", "x first"]


def summary(r: dict) -> dict:
    """What `--json` prints for one run."""
    return {k: v for k, v in r.items() if k != "delays"} | {
        "delay_p50_ms": pct(r["delays"], 0.5) * 1e3, "delay_p99_ms": pct(r["delays"], 0.99) * 1e3}


def dump(runs: dict, **extra) -> str:
    return json.dumps({"runs": {k: summary(v) for k, v in runs.items()}, **extra}, indent=2)
