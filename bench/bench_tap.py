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

    python bench/bench_tap.py [--quick] [--users N] [--duration S] [--clients P] [--json]
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
        p.add_argument("--json", action="store_true", help="the figures as JSON")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    users = args.users or (40 if args.quick else 200)
    duration = args.duration or (3.0 if args.quick else 10.0)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
        capture = Path(tmp) / "lab.pcapng"
        for name, lab_args in (("plain", []), ("relay", ["--nat-timeout", "1e9"]),
                               ("recording", ["--record", str(capture)])):
            print(f"tap: {name}: {users:,} phones in {args.clients} processes, "
                  f"{duration:g} s", file=sys.stderr, flush=True)
            runs[name] = c.run(_chat.run_chat(lab_args, users, duration, args.clients),
                               "asyncio")
        runs["recording"]["capture_bytes"] = capture.stat().st_size
    def cpu_per_msg(r):
        return r["lab_cpu"] / max(1, r["messages"])

    ratio = cpu_per_msg(runs["plain"]) / cpu_per_msg(runs["recording"])
    if args.json:
        print(_chat.dump(runs, verdict={"capacity_recording_over_plain": ratio,
                                        "target": TARGET}))
        return 0
    c.print_table(f"recording overhead: {users:,} phones chatting, {duration:g} s each",
                  _chat.COLUMNS, [_chat.row(n, r, None if n == "plain" else runs["plain"])
                                  for n, r in runs.items()])
    print(f"capacity, recording / plain (lab CPU per message) = {ratio:.2f} (target >= "
          f"{TARGET}): {c.verdict(ratio, TARGET)}; relay / plain = "
          f"{cpu_per_msg(runs['plain']) / cpu_per_msg(runs['relay']):.2f}; capture "
          f"{runs['recording']['capture_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
