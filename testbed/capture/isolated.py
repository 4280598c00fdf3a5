"""Sniff a command's traffic without privileges: `testbed record --run -- COMMAND`.

An unprivileged user may create a user namespace and, inside it, a network namespace of its
own (where the kernel allows: `unshare -Urn`). There the user holds CAP_NET_RAW over that
namespace's `lo`, so the AF_PACKET sniffer works, and every packet on it belongs to the
command: the capture is real (the kernel's TCP, not the tap's rendering), private, and needs
no root. As root, only a network namespace is made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from .sniffer import SnifferError, sniff

INSIDE_FLAG = "TESTBED_RECORD_INSIDE"


def record_command(out: str | os.PathLike, command: Sequence[str], *, bpf: Optional[str] = None,
                   comment: Optional[dict] = None, userns: Optional[bool] = None) -> int:
    """Run `command` in a fresh network namespace while sniffing its `lo` into `out`.

    `userns`: make a user namespace too (default: only when not root). Returns the
    command's exit status (2 if the namespace cannot be made)."""
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
    inner = [sys.executable, "-m", "testbed.capture.isolated", str(Path(out).resolve()),
             bpf or "", repr(comment or {}), "--", *command]
    p = subprocess.run([unshare, *flags, "--", *inner], env=env)
    if p.returncode == 125:
        print("error: could not make a namespace here (the kernel may forbid unprivileged "
              "user namespaces); run as root or use the tap: testbed lab up --record FILE",
              file=sys.stderr)
        return 2
    return p.returncode


def _inside(out: str, bpf: str, comment: dict, command: list[str]) -> int:
    """In the new namespace: `lo` up, sniffer on, the command, sniffer off."""
    up = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if up.returncode != 0:
        print(f"error: cannot bring lo up in the namespace: {up.stderr.strip()}",
              file=sys.stderr)
        return 125
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
    print(f"recording lo of a private network namespace to {out}", file=sys.stderr, flush=True)
    try:
        rc = subprocess.run(command).returncode
    finally:
        stop.set()
        t.join(10)
    st = box.get("stats")
    if st is not None:
        print(f"{st.packets} packets captured ({st.bytes} bytes), {st.kernel_drops} dropped "
              f"by kernel", file=sys.stderr)
    return rc


if __name__ == "__main__":
    import ast
    args = sys.argv[1:]
    sep = args.index("--")
    out_path, filter_expr, comment_text = args[:3]
    sys.exit(_inside(out_path, filter_expr, ast.literal_eval(comment_text), args[sep + 1:]))
