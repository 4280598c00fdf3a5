"""The lab's timer pattern on the clock's exact timers and on its coarse ones (`Clock.coarse`).

3,000 deadlines (the mappings of a 3,000-phone NAT), each set again when it fires for about a
heartbeat later (300 protocol s, ±5 s), at time scale 2000: the NAT's idle timers and the
long link's idle timers in a 1,000-per-policy study. One process on uvloop, the two kinds in
turns (exact, coarse, exact, ...) so that a drift of the shared machine hits both; a round
runs the deadlines for `--seconds` of wall time. Prints the process CPU per fire, the
lateness in wall ms (never early: the minimum would be negative), and coarse/exact CPU
(target <= 0.5).
One process because what is measured is one loop's own work: nothing loads it from outside.

    python bench/bench_timers.py [--quick] [--seconds S] [--rounds N] [--json]
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

from testbed.lab.clock import WHEEL_RESOLUTION_WALL_S, Clock  # noqa: E402

DEADLINES = 3000
SCALE = 2000.0
INTERVAL_S = 300.0      # protocol seconds between a deadline's fires, ±JITTER_S
JITTER_S = 5.0
TARGET = 0.5


async def one_round(coarse: bool, seconds: float, seed: int) -> tuple[float, list[float]]:
    """(CPU seconds, each fire's lateness in wall seconds) of one round."""
    clock = Clock(scale=SCALE)
    set_at = clock.coarse.call_at if coarse else clock.call_at
    rng = random.Random(seed)
    late: list[float] = []
    stop_at = clock.now() + clock.to_protocol(seconds)
    done = asyncio.get_running_loop().create_future()

    def fired(when: float) -> None:
        now = clock.now()
        late.append(now - when)
        if now >= stop_at:
            if not done.done():
                done.set_result(None)
            return
        nxt = now + INTERVAL_S + rng.uniform(-JITTER_S, JITTER_S)
        set_at(nxt, fired, nxt)

    start = clock.now()
    for _ in range(DEADLINES):      # spread over one interval, as phones online at random
        when = start + rng.uniform(0.0, INTERVAL_S)
        set_at(when, fired, when)
    cpu0 = c.cpu_seconds()
    await done
    return c.cpu_seconds() - cpu0, [clock.to_wall(x) for x in late]


async def main(args) -> None:
    results: dict[bool, list[tuple[float, list[float]]]] = {False: [], True: []}
    for r in range(args.rounds):
        for coarse in (False, True):
            results[coarse].append(await one_round(coarse, args.seconds, seed=r))
            await asyncio.sleep(0.2)    # the last round's timers still set fire into nothing
    rows = []
    per_fire = {}
    for coarse, runs in results.items():
        per_fire[coarse] = statistics.median(cpu / len(late) for cpu, late in runs)
        late = sorted(x for _, one in runs for x in one)
        rows.append(["coarse" if coarse else "exact", len(late),
                     round(per_fire[coarse] * 1e6, 2), round(late[0] * 1e3, 3),
                     round(late[len(late) // 2] * 1e3, 2),
                     round(late[int(len(late) * 0.99)] * 1e3, 2), round(late[-1] * 1e3, 2)])
    ratio = per_fire[True] / per_fire[False]
    c.print_table(f"{DEADLINES} deadlines set again every ~{INTERVAL_S:g} protocol s at "
                  f"k = {SCALE:g}, {args.rounds} rounds of {args.seconds:g} s (coarse "
                  f"resolution {WHEEL_RESOLUTION_WALL_S * 1e3:g} ms)",
                  ["timers", "fires", "CPU µs / fire (median round)",
                   "late min, wall ms", "p50", "p99", "max"],
                  rows)
    c.print_table("coarse / exact CPU per fire",
                  ["ratio", "target", "verdict"],
                  [[round(ratio, 3), f"<= {TARGET}", c.verdict(ratio, TARGET, False)]])


def _extra(p) -> None:
    p.add_argument("--seconds", type=float, help="wall seconds a round (2; 0.5 quick)")
    p.add_argument("--rounds", type=int, help="rounds of each kind (3; 1 quick)")


if __name__ == "__main__":
    args = c.parse_args(__doc__.splitlines()[0], _extra)
    args.seconds = args.seconds or (0.5 if args.quick else 2.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    c.run(main(args), "uvloop")
