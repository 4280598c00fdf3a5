"""Many phones: a scenario spread over several processes and source addresses.

One process holds at most 20,000 open files here, and one source address has ~28,000
ephemeral ports, so `--clients N` above a few thousand runs in several processes, each with
its own loopback source address and its own slice of the lab's users.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from testbed.lab.addressing import client_address
from testbed.lab.manifest import load_manifest

from testbed.fleet import Channel, Fleet, Message, WorkerFailed
from .scenarios import ProgressFn, ScenarioResult, Step, run_scenario

CLIENTS_PER_PROCESS = 5000


async def _run_share(share: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """One process's share of the phones (a fleet worker): its own source address and its
    own slice of the lab's users."""
    manifest = load_manifest(share["manifest_path"])
    if share["users"] is not None:
        manifest.users = share["users"]
    index, seed = share["index"], share["seed"]
    result = await run_scenario(
        share["name"], manifest, clients=share["clients"], duration=share["duration"],
        progress=lambda frac, text: channel.send("progress", frac, text),
        local_addr=client_address(manifest.dns_address, index),
        seed=None if seed is None else seed + index, user_offset=share["user_offset"],
        views=share["views"])
    return result.to_dict()


def merge(results: list[ScenarioResult]) -> ScenarioResult:
    """One result for the whole swarm: a step holds if it held in every process."""
    if len(results) == 1:
        return results[0]
    out = ScenarioResult(results[0].scenario, sum(r.clients for r in results))
    order: list[str] = []
    by_name: dict[str, list[Step]] = {}
    medians: dict[str, list[float]] = {}
    for r in results:
        for s in r.steps:
            if s.name not in by_name:
                order.append(s.name)
            by_name.setdefault(s.name, []).append(s)
        for k, v in r.metrics.items():
            if "median" in k:   # a median of each process's: not a sum
                medians.setdefault(k, []).append(v)
            else:
                out.metrics[k] = out.metrics.get(k, 0) + v
        out.errors.extend(r.errors)
        out.views.extend(r.views)
        out.wall_s = max(out.wall_s, r.wall_s)
    for k, values in medians.items():   # the median of the medians (of equal shares)
        out.metrics[k] = statistics.median(values)
    for name in order:
        steps = by_name[name]
        out.steps.append(Step(name, all(s.ok for s in steps),
                              "; ".join(s.detail for s in steps if s.detail)[:300],
                              max(s.at for s in steps)))
    return out


async def swarm(name: str, manifest_path: str, clients: int, *,
                processes: Optional[int] = None, duration: Optional[float] = None,
                seed: Optional[int] = None, progress: Optional[ProgressFn] = None,
                users: Optional[list[dict]] = None,
                views: bool = False) -> ScenarioResult:
    """Run `clients` phones of one scenario over `processes` processes (default: as many as
    the per-process cap needs; one runs in this event loop), as the manifest's users or as
    `users` (its entries, for a phone that claimed some). A process that dies counts as an
    error of its share of the phones; the others' results still come back. Cancelling it
    stops every process. `views`: each phone's view at the end (`Phone.view`) in the
    result."""
    if processes is None:
        processes = max(1, -(-clients // CLIENTS_PER_PROCESS))
    processes = max(1, min(processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    payloads = [{"name": name, "manifest_path": str(manifest_path), "clients": shares[i],
                 "duration": duration, "seed": seed, "index": i, "users": users,
                 "user_offset": sum(shares[:i]), "views": views} for i in range(processes)]
    fractions = [0.0] * processes

    def on_message(m: Message) -> None:
        if m.kind == "progress" and progress is not None:
            fractions[m.worker] = m.args[0]
            progress(sum(fractions) / processes, m.args[1])

    def on_failure(failed: WorkerFailed) -> dict[str, Any]:
        r = ScenarioResult(name, shares[failed.worker])
        r.errors.append(f"process {failed.worker}: {failed.detail}"[:2000])
        return r.to_dict()

    async with Fleet(_run_share, payloads, spawn=processes > 1, loop="asyncio",
                     name="emulate") as fleet:
        results = await fleet.run(on_message, on_failure)
    return merge([ScenarioResult.from_dict(d) for d in results])
