"""Recording overhead: a lab's chat throughput with and without the tap (target: the tap
costs under 30%).

The same chat as `bench_chat.py` (full phones in pairs through `testbed lab up`, in-memory
store, one process), three labs in the same run: plain; with a relay in front of every TCP
server (`--nat-timeout` far beyond the run: the relay the tap sits in, nothing expires); and
recording (`--record`: the relay and the tap writing pcapng). Prints each lab's messages/s
and delays, and each as a ratio of the plain lab. The pairs wait for each other, so the
throughput moves with the machine's load; the verdict is on capacity: the one-process lab
is bound by one core, so what it can carry is 1 / (its CPU per message), and recording /
plain capacity is the plain lab's CPU per message over the recording lab's.

On a shared machine the CPU a message costs moves with what the other cores do (caches, a
busy sibling hyperthread), so the three labs run in turn, `--rounds` times (plain, relay,
recording, plain, ...), and each lab's figure is its CPU over its messages summed over the
rounds; the verdict of every round is printed too, to show the spread.

    python bench/bench_tap.py [--quick] [--users N] [--duration S] [--clients P]
                              [--rounds R] [--json]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402
import _chat  # noqa: E402

TARGET = 0.7   # recording keeps at least 70% of the plain lab's throughput


def main() -> int:
    def extra(p):
        p.add_argument("--users", type=int, help="phones (200; 40 quick)")
        p.add_argument("--duration", type=float, help="seconds of chat per lab (10; 3 quick)")
        p.add_argument("--clients", type=int, default=2, help="client processes (2)")
        p.add_argument("--rounds", type=int, help="times each lab runs, in turn (3; 2 quick)")
        p.add_argument("--json", action="store_true", help="the figures as JSON")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    users = args.users or (40 if args.quick else 200)
    duration = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (2 if args.quick else 3)
    labs = {"plain": [], "relay": ["--nat-timeout", "1e9"], "recording": ["--record"]}
    per_round: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
        for k in range(rounds):
            this = {}
            for name, lab_args in labs.items():
                if name == "recording":
                    capture = Path(tmp) / f"lab-{k}.pcapng"
                    lab_args = lab_args + [str(capture)]
                print(f"tap: round {k + 1}/{rounds}, {name}: {users:,} phones in "
                      f"{args.clients} processes, {duration:g} s", file=sys.stderr, flush=True)
                this[name] = c.run(_chat.run_chat(lab_args, users, duration, args.clients),
                                   "asyncio")
            this["recording"]["capture_bytes"] = capture.stat().st_size
            per_round.append(this)
    runs = {name: pooled([r[name] for r in per_round]) for name in labs}

    def cpu_per_msg(r):
        return r["lab_cpu"] / max(1, r["messages"])

    def capacity(r, name):
        return cpu_per_msg(r["plain"]) / cpu_per_msg(r[name])

    ratio = capacity(runs, "recording")
    spread = [capacity(r, "recording") for r in per_round]
    if args.json:
        print(_chat.dump(runs, verdict={"capacity_recording_over_plain": ratio,
                                        "capacity_relay_over_plain": capacity(runs, "relay"),
                                        "per_round": spread, "target": TARGET}))
        return 0
    c.print_table(f"recording overhead: {users:,} phones chatting, {duration:g} s each, "
                  f"{rounds} rounds", _chat.COLUMNS,
                  [_chat.row(n, r, None if n == "plain" else runs["plain"])
                   for n, r in runs.items()])
    print(f"capacity, recording / plain (lab CPU per message) = {ratio:.2f} (target >= "
          f"{TARGET}): {c.verdict(ratio, TARGET)}; per round "
          f"{', '.join(f'{x:.2f}' for x in spread)}; relay / plain = "
          f"{capacity(runs, 'relay'):.2f}; capture {runs['recording']['capture_bytes']:,} "
          f"bytes")
    return 0


def pooled(rs: list[dict]) -> dict:
    """One lab's rounds as one run: messages, CPU and delays summed, rates over the whole."""
    out = dict(rs[0])
    out["messages"] = sum(r["messages"] for r in rs)
    out["lab_cpu"] = sum(r["lab_cpu"] for r in rs)
    out["delays"] = sorted(d for r in rs for d in r["delays"])
    for key in ("per_s", "client_cores", "other"):
        out[key] = sum(r[key] for r in rs) / len(rs)
    if "capture_bytes" in rs[0]:
        out["capture_bytes"] = sum(r["capture_bytes"] for r in rs)
    return out


if __name__ == "__main__":
    sys.exit(main())
