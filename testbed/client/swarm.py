"""Many phones: a scenario spread over several processes and source addresses.

One process holds at most 20,000 open files here, and one source address has ~28,000
ephemeral ports, so `--clients N` above a few thousand runs in several processes, each with
its own loopback source address and its own slice of the lab's users.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
from typing import Optional

from testbed.lab.addressing import lab_host_address
from testbed.lab.manifest import Manifest, load_manifest

from .scenarios import ProgressFn, ScenarioResult, Step, run_scenario

CLIENTS_PER_PROCESS = 5000


def source_address(manifest: Manifest, index: int) -> Optional[str]:
    """A loopback source address for process `index`, in the lab's own /24 (.100 up)."""
    return lab_host_address(manifest.dns_address, 100 + index % 150)


def _child(name, manifest_path, clients, duration, seed, index, user_offset, q) -> None:
    manifest = load_manifest(manifest_path)

    def progress(frac: float, text: str) -> None:
        q.put(("progress", index, frac, text))

    result = asyncio.run(run_scenario(name, manifest, clients=clients, duration=duration,
                                      progress=progress,
                                      local_addr=source_address(manifest, index),
                                      seed=None if seed is None else seed + index,
                                      user_offset=user_offset))
    q.put(("result", index, result.to_dict(), ""))


def merge(results: list[ScenarioResult]) -> ScenarioResult:
    """One result for the whole swarm: a step holds if it held in every process."""
    out = ScenarioResult(results[0].scenario, sum(r.clients for r in results))
    order: list[str] = []
    by_name: dict[str, list[Step]] = {}
    for r in results:
        for s in r.steps:
            if s.name not in by_name:
                order.append(s.name)
            by_name.setdefault(s.name, []).append(s)
        for k, v in r.metrics.items():
            out.metrics[k] = out.metrics.get(k, 0) + v
        out.errors.extend(r.errors)
        out.wall_s = max(out.wall_s, r.wall_s)
    for name in order:
        steps = by_name[name]
        out.steps.append(Step(name, all(s.ok for s in steps),
                              "; ".join(s.detail for s in steps if s.detail)[:300],
                              max(s.at for s in steps)))
    return out


def run_swarm(name: str, manifest_path: str, clients: int, *, processes: Optional[int] = None,
              duration: Optional[float] = None, seed: Optional[int] = None,
              progress: Optional[ProgressFn] = None) -> ScenarioResult:
    """Run `clients` phones of one scenario over `processes` processes (default: as many as
    the per-process cap needs)."""
    manifest = load_manifest(manifest_path)
    if processes is None:
        processes = max(1, -(-clients // CLIENTS_PER_PROCESS))
    processes = max(1, min(processes, clients))
    if processes == 1:
        return asyncio.run(run_scenario(name, manifest, clients=clients, duration=duration,
                                        progress=progress, seed=seed,
                                        local_addr=source_address(manifest, 0)))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    offsets = [sum(shares[:i]) for i in range(processes)]
    procs = [ctx.Process(target=_child, args=(name, str(manifest_path), shares[i], duration,
                                              seed, i, offsets[i], q), daemon=True)
             for i in range(processes)]
    for p in procs:
        p.start()
    fractions = [0.0] * processes
    results: dict[int, ScenarioResult] = {}
    try:
        while len(results) < processes:
            try:
                kind, index, payload, text = q.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if not p.is_alive() and i not in results]
                if dead:
                    for i in dead:
                        r = ScenarioResult(name, shares[i])
                        r.errors.append(f"process {i} died (exit code {procs[i].exitcode})")
                        results[i] = r
                continue
            if kind == "progress":
                fractions[index] = payload
                if progress:
                    progress(sum(fractions) / processes, text)
            else:
                steps = [Step(**s) for s in payload.pop("steps")]
                payload.pop("ok", None)
                results[index] = ScenarioResult(steps=steps, **payload)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()   # only the processes this call started, by handle
    return merge([results[i] for i in range(processes)])
