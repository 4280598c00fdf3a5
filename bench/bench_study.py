"""The heartbeat study at scale: 1,000 phones per policy over 24 protocol hours (target:
under a minute of wall time, with no event-loop stalls).

Runs `testbed study heartbeat` (its three default policies behind the 300 s NAT, k = 2000)
twice in the same run: the baseline at 100 phones per policy, then at `--clients` (1,000),
both in the study's default layout (two shards on 2 CPUs or more), or with `--shards N` or
`--processes P` (one lab, its phones in P processes) as given. Prints each run's wall time; when every window
was open, counted from the command's start (imports and the lab's start included); when
the last phone had logged in and when the last was online, counted from the lab's start;
CPU, peak RSS, loop lag and stalls, messages lost or duplicated, the CPU per heartbeat event
(CPU seconds of every process over the NOOPs and reconnects of the windows: set-up included,
so the 100-phone baseline carries more of it), and the large run's wall time per phone as a
ratio of the baseline's (1 means it scales linearly).

    python bench/bench_study.py [--quick] [--clients N] [--hours H] [--shards N | --processes P]
                                [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

TARGET_WALL_S = 60.0


def study(clients: int, hours: float, layout: list[str], out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "study", "heartbeat",
                           "--clients", str(clients), "--hours", repr(hours), *layout,
                           "--json", str(out), "--quiet"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"study failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(out.read_text())


def main() -> int:
    def extra(p):
        p.add_argument("--clients", type=int, help="phones per policy (1,000; 200 quick)")
        p.add_argument("--hours", type=float, help="protocol hours (24; 2 quick)")
        p.add_argument("--shards", type=int, help="labs (the study's default: 2 on 2 CPUs)")
        p.add_argument("--processes", type=int,
                       help="one lab, its phones in this many processes")
        p.add_argument("--json", action="store_true", help="the figures as JSON")
    args = c.parse_args(__doc__.splitlines()[0], extra)
    clients = args.clients or (200 if args.quick else 1000)
    hours = args.hours or (2.0 if args.quick else 24.0)
    base_clients = max(1, clients // 10)
    layout = [*(["--shards", str(args.shards)] if args.shards is not None else []),
              *(["--processes", str(args.processes)] if args.processes is not None else [])]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        for n in (base_clients, clients):
            print(f"study: {n:,} phones per policy, {hours:g} h", file=sys.stderr, flush=True)
            runs[n] = study(n, hours, layout, Path(tmp) / f"{n}.json")
    rows, out = [], {}
    for n, d in runs.items():
        pol = d["policies"].values() if isinstance(d["policies"], dict) else d["policies"]
        lost = sum(p["messages_lost"] for p in pol)
        dup = sum(p["duplicates"] for p in pol)
        run_s = d["wall_s"] - d["setup_wall_s"]
        events = sum(p["heartbeats_sent"] + p["reconnects"] for p in pol)
        per_event_us = 1e6 * d["cpu_s"] / events if events else float("nan")
        # from the command's start until every window is open: imports and lab start too
        open_s = d["setup_wall_s"] + (d.get("startup_wall_s") or 0.0)
        out[n] = {"clients_per_policy": n, "wall_s": d["wall_s"], "setup_s": d["setup_wall_s"],
                  "login_s": d["login_wall_s"], "windows_open_s": open_s,
                  "login_retries": d.get("login_retries", 0),
                  "run_s": run_s, "cpu_s": d["cpu_s"], "max_rss_mb": d["max_rss_mb"],
                  "stalls": d["stalls"], "timing_ok": d["timing_ok"],
                  "p99_loop_lag_s": d["p99_loop_lag_s"], "lost": lost, "duplicates": dup,
                  "heartbeat_events": events, "cpu_us_per_event": per_event_us,
                  "shards": d["config"].get("shards"), "processes": d["processes"]}
        rows.append([f"{n:,}", f"{d['wall_s']:.1f}", f"{open_s:.1f}",
                     f"{d['login_wall_s']:.1f}", f"{d['setup_wall_s']:.1f}",
                     f"{d['cpu_s']:.0f}", f"{events:,}", f"{per_event_us:.0f}",
                     f"{d['max_rss_mb']:.0f}",
                     f"{d['p99_loop_lag_s']:.1f}", d["stalls"], lost, dup])
    big, base = out[clients], out[base_clients]
    ratio = (big["wall_s"] / clients) / (base["wall_s"] / base_clients)
    if args.json:
        print(json.dumps({"runs": list(out.values()), "wall_per_phone_vs_baseline": ratio,
                          "target_wall_s": TARGET_WALL_S}, indent=2))
        return 0
    d = runs[clients]
    shape = (f"{d['config']['shards']} shards" if d["config"].get("shards")
             else f"one lab, {d['processes']} phone processes")
    c.print_table(f"heartbeat study: 3 policies, {hours:g} protocol h, k = 2000, {shape}",
                  ["phones/policy", "wall s", "windows open s", "logins done s",
                   "online s", "CPU s", "NOOPs + reconnects", "CPU µs per event",
                   "peak RSS MB",
                   "loop lag p99 (protocol s)", "stalls", "lost", "duplicates"], rows)
    ok = big["wall_s"] < TARGET_WALL_S and big["stalls"] == 0
    print(f"{clients:,} phones per policy: {big['wall_s']:.1f} s wall (target < "
          f"{TARGET_WALL_S:g} s, no stalls): {'ok' if ok else 'NOT MET'}; wall per phone "
          f"{ratio:.2f} x the {base_clients:,}-phone run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
