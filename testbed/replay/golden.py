"""The golden captures: one per scenario, recorded by the project's own tools, replayed by
the tests against a fresh lab with zero differences expected.

`python -m testbed.replay.golden [--out captures/golden] [SCENARIO ...]` makes them again:
for each, `testbed lab up --record FILE` (the tap) on a free block of loopback, `testbed
emulate SCENARIO` against it, then Ctrl-C to the lab, which closes the capture. Each
golden's lab, time scale and seed are in `GOLDENS` (and in captures/README.md); a golden
is replayed against a lab like the one that recorded it (`lab_options`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from testbed.lab.addressing import AddressPlan

DEFAULT_DIR = Path("captures") / "golden"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Golden:
    scenario: str
    time_scale: float        # protocol seconds per wall second of the recording lab
    seed: int
    what: str                # the line of captures/README.md
    users: int = 2
    clients: int = 2

    @property
    def file(self) -> str:
        return f"{self.scenario}.pcapng"


GOLDENS: dict[str, Golden] = {g.scenario: g for g in (
    Golden("login", 100, 1, "two phones log in over TLS, take the initial sync over HTTP, "
                            "open and identify their long links"),
    Golden("chat", 100, 1, "login, then a text each way: over the long link with the "
                           "receiver's NOTIFY and newsync, and the answer over the short link"),
    # seed 283: small images (131 and 132 pixels square), so the file stays small
    Golden("media", 100, 283, "login, then an image, a voice note and a video each way: "
                              "uploaded in chunks over the long link, downloaded, the image "
                              "fetched from mmsns.qpic.cn too"),
    Golden("nearby", 100, 1, "login, then people nearby: mapi.mapabc.com (cell and "
                             "regeo), lbsfind twice, avatars from wx.qlogo.cn"),
    Golden("heartbeat", 1000, 1, "login, then three heartbeats (NOOP every 300 s) on each "
                                 "long link: 0.9 s of wall time at k = 1000"),
    Golden("storyboard", 200, 283, "the lab report's whole session: DNS, TLS login, sync, "
                                   "contacts and avatars, a friend added, chat, a sync over the "
                                   "short link, image, voice and video, nearby, heartbeats, "
                                   "behaviour logs, logout"),
)}


def lab_options(g: Golden) -> dict:
    """The `LabConfig` fields of a lab a golden replays against (the recording lab's)."""
    return {"users": g.users, "time_scale": g.time_scale}


def _testbed(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", *args]


def record(g: Golden, out_dir: Path, *, how: str = "tap") -> Path:
    """Record one golden into `out_dir` with the lab's tap (`how="tap"`), or with the
    sniffer on a private network namespace's `lo` (`how="sniffer"`: `testbed record --run`,
    real kernel packets); RuntimeError saying what failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / g.file
    with tempfile.TemporaryDirectory(prefix="testbed-golden-") as tmp:
        capture = Path(tmp) / g.file
        if how == "tap":
            run_session(g, Path(tmp), record_to=capture)
        elif how == "sniffer":
            run = subprocess.run(_testbed(
                "record", "--out", str(capture), "--time-scale", f"{g.time_scale:g}",
                "--run", "--", sys.executable, "-m", "testbed.replay.golden", "--inside",
                g.scenario),
                capture_output=True, text=True, timeout=300)
            if run.returncode != 0:
                raise RuntimeError(f"record --run failed: {(run.stdout + run.stderr)[-600:]}")
        else:
            raise ValueError(f"how is 'tap' or 'sniffer', not {how!r}")
        os.replace(capture, target)
    return target


@dataclass
class Session:
    """A golden's session run again: what `testbed emulate --json` printed, and the log
    (stdout and stderr) of the lab it ran against, complete once the lab has stopped."""

    result: dict
    lab_log: Path


def run_session(g: Golden, workdir: Path, *, record_to: Optional[Path] = None,
                lab_args: Sequence[str] = (), emulate_args: Sequence[str] = (),
                tries: int = 4) -> Session:
    """`testbed lab up` (recording to `record_to` if given; `lab_args` added) on a free block
    of loopback, `testbed emulate` of the golden's scenario against it (seeded as the
    golden; `emulate_args` added), Ctrl-C to the lab."""
    for attempt in range(tries):
        manifest = workdir / f"manifest-{attempt}.json"
        log_path = workdir / f"lab-{attempt}.log"
        extra = ["--record", str(record_to)] if record_to is not None else []
        with open(log_path, "wb") as log:
            lab = subprocess.Popen(_testbed(
                "lab", "up", "--users", str(g.users), "--time-scale", f"{g.time_scale:g}",
                "--manifest", str(manifest), "--subnet", AddressPlan.random_loopback().prefix,
                *extra, *lab_args), stdout=log, stderr=subprocess.STDOUT)
        try:
            if not _wait_for(manifest, lab):
                if attempt + 1 < tries:
                    continue            # that block of loopback was taken: another one
                raise RuntimeError(f"the lab did not start: {log_path.read_text()[-400:]}")
            run = subprocess.run(_testbed(
                "emulate", g.scenario, "--manifest", str(manifest), "--clients",
                str(g.clients), "--seed", str(g.seed), "--json", *emulate_args),
                capture_output=True, text=True, timeout=300)
            if run.returncode != 0:
                raise RuntimeError(f"emulate {g.scenario} failed: "
                                   f"{(run.stdout + run.stderr)[-600:]}")
            result = json.loads(run.stdout)
            if not result.get("ok"):
                raise RuntimeError(f"emulate {g.scenario}: {result}")
        finally:
            _stop(lab)
        return Session(result, log_path)
    raise AssertionError("unreachable: the last try returns or raises")


def _wait_for(manifest: Path, lab: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if manifest.exists():
            return True
        if lab.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _stop(lab: subprocess.Popen) -> None:
    if lab.poll() is None:
        lab.send_signal(signal.SIGINT)     # the lab closes its capture, then exits
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.replay.golden",
                                description="Record the golden captures again.")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"which (default: all of {', '.join(GOLDENS)})")
    p.add_argument("--out", type=Path, default=DEFAULT_DIR,
                   help=f"where they go (default {DEFAULT_DIR})")
    p.add_argument("--sniffer", action="store_true",
                   help="record real kernel packets with the sniffer in a private network "
                        "namespace (testbed record --run) instead of the lab's tap")
    p.add_argument("--inside", metavar="SCENARIO", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inside:             # in record --run's namespace: the session, unrecorded
        with tempfile.TemporaryDirectory(prefix="testbed-golden-") as tmp:
            run_session(GOLDENS[args.inside], Path(tmp))
        return 0
    unknown = [n for n in args.scenarios if n not in GOLDENS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; one of {', '.join(GOLDENS)}")
    for name in args.scenarios or list(GOLDENS):
        t0 = time.monotonic()
        try:
            path = record(GOLDENS[name], args.out, how="sniffer" if args.sniffer else "tap")
        except RuntimeError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 1
        print(f"{path}  {path.stat().st_size:,} bytes  {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
