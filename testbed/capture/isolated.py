"""Sniff a command's traffic without privileges: `testbed record --run -- COMMAND`.

An unprivileged user may create a user namespace and, inside it, a network namespace of its
own (where the kernel allows: `unshare -Urn`). There the user holds CAP_NET_RAW over that
namespace's `lo`, so the AF_PACKET sniffer works, and every packet on it belongs to the
command: the capture is real (the kernel's TCP, not the tap's rendering), private, and needs
no root. As root, only a network namespace is made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from .sniffer import SnifferError, sniff

INSIDE_FLAG = "TESTBED_RECORD_INSIDE"
STOP_GRACE_S = 5.0   # after a signal, how long the command has to stop before SIGKILL
NOT_RUN = 127        # the command could not be started (as a shell says)


def _forward_signals(proc: subprocess.Popen, got: list[int]) -> dict:
    """SIGINT and SIGTERM go on to `proc` (the first of them; a terminal's Ctrl-C reaches it
    anyway, and a second one could cut its clean-up short). Returns the handlers replaced."""
    def forward(signum: int, _frame) -> None:
        if got:
            return
        got.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}


def _wait(proc: subprocess.Popen, got: list[int], grace_s: float = STOP_GRACE_S) -> int:
    """`proc`'s exit status; once a signal was forwarded, SIGKILL after `grace_s`."""
    signalled_at = None
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            if got and signalled_at is None:
                signalled_at = time.monotonic()
            if signalled_at is not None and time.monotonic() - signalled_at > grace_s:
                proc.kill()


def record_command(out: str | os.PathLike, command: Sequence[str], *, bpf: Optional[str] = None,
                   comment: Optional[dict] = None, userns: Optional[bool] = None,
                   as_json: bool = False) -> int:
    """Run `command` in a fresh network namespace while sniffing its `lo` into `out`.

    `userns`: make a user namespace too (default: only when not root). Returns the
    command's exit status: 127 if it could not be started, 2 if the namespace cannot be
    made, 128 + the signal's number if SIGINT or SIGTERM stopped it (they are passed on to
    the command; the capture is closed cleanly once it has exited). `as_json`: the
    capture's counts as JSON on stdout at the end."""
    if not command:
        print("error: --run needs a command after --", file=sys.stderr)
        return 2
    unshare = shutil.which("unshare")
    if unshare is None:
        print("error: `unshare` (util-linux) is not installed", file=sys.stderr)
        return 2
    if userns is None:
        userns = os.geteuid() != 0
    flags = ["--user", "--map-root-user", "--net"] if userns else ["--net"]
    env = dict(os.environ, **{INSIDE_FLAG: "1"})
    with tempfile.TemporaryDirectory(prefix="testbed-record-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        inner = [sys.executable, "-m", "testbed.capture.isolated", str(Path(out).resolve()),
                 bpf or "", repr(comment or {}), str(stats_path), "--", *command]
        got: list[int] = []
        # unshare execs the inner Python (no --fork): its PID is the one signals go to
        proc = subprocess.Popen([unshare, *flags, "--", *inner], env=env)
        previous = _forward_signals(proc, got)
        try:
            rc = _wait(proc, got)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
    if rc == 125:
        print("error: could not make a namespace here (the kernel may forbid unprivileged "
              "user namespaces); run as root or use the tap: testbed lab up --record FILE",
              file=sys.stderr)
        return 2
    if as_json and stats is not None:
        print(json.dumps({"capture": str(out), **stats, "exit_status": rc}, indent=2),
              flush=True)
    if got:
        return 128 + got[0]
    return rc


def _inside(out: str, bpf: str, comment: dict, stats_path: str, command: list[str]) -> int:
    """In the new namespace: `lo` up, sniffer on, the command, sniffer off."""
    up = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if up.returncode != 0:
        print(f"error: cannot bring lo up in the namespace: {up.stderr.strip()}",
              file=sys.stderr)
        return 125
    got: list[int] = []
    # until the command runs, a signal only stops the capture
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _f: got.append(signum))
    stop, ready = threading.Event(), threading.Event()
    box: dict = {}

    def run() -> None:
        try:
            box["stats"] = sniff("lo", out, bpf or None, stop=stop, ready=ready,
                                 comment=comment)
        except (SnifferError, PermissionError) as exc:
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(10)
    if "error" in box:
        print(f"error: {box['error']}", file=sys.stderr)
        return 125
    rc = None
    try:
        if not got:
            try:
                proc = subprocess.Popen(command)
            except OSError as exc:
                print(f"error: cannot run {command[0]}: {exc.strerror or exc}",
                      file=sys.stderr)
                rc = NOT_RUN
            else:
                print(f"recording lo of a private network namespace to {out}",
                      file=sys.stderr, flush=True)
                _forward_signals(proc, got)
                rc = _wait(proc, got)
    finally:
        stop.set()
        t.join(10)
    st = box.get("stats")
    if rc == NOT_RUN:
        Path(out).unlink(missing_ok=True)   # nothing ran: nothing to keep
        return rc
    if st is not None:
        print(f"{st.packets} packets captured ({st.bytes} bytes), {st.kernel_drops} dropped "
              f"by kernel", file=sys.stderr)
        if stats_path:
            Path(stats_path).write_text(json.dumps(dataclasses.asdict(st)))
    return 128 + got[0] if got else rc


if __name__ == "__main__":
    import ast
    args = sys.argv[1:]
    sep = args.index("--")
    out_path, filter_expr, comment_text, stats_file = args[:4]
    sys.exit(_inside(out_path, filter_expr, ast.literal_eval(comment_text), stats_file,
                     args[sep + 1:]))
