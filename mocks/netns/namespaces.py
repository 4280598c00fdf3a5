"""Network namespaces of a lab: named by their owner, made and removed by it, swept after a
crash, entered by a client.

Every namespace a lab makes is called `tblab-<PID>-<role>`, PID being the lab process's. A
lab removes its own when it stops; one that was killed cannot, so every lab sweeps first:
a namespace of that form whose PID is no longer running is stale, the processes still in it
are killed (by PID: only a lab puts processes there) and it is deleted, with its links, rules
and queues. Namespaces of a running lab, and any not of this form, are never touched.

Everything here runs `ip` (iproute2) and needs root.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from typing import Iterable, Optional, Sequence

PREFIX = "tblab"
NAME = re.compile(rf"^{PREFIX}-(\d+)-([a-z]+)$")
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_KILL_WAIT_S = 2.0


class NetnsError(Exception):
    """An `ip`, `nft`, `tc`, `ethtool` or `sysctl` command failed; one line for the user."""


def run(argv: Sequence[str], *, input: Optional[str] = None) -> str:
    """Run a command; its stdout, or NetnsError naming it and its last line of stderr.

    In a session of its own: a terminal's Ctrl-C reaches the lab's process group, and the
    lab, not the signal, decides when its network is built or removed."""
    try:
        p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=30,
                           start_new_session=True)
    except FileNotFoundError:
        raise NetnsError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)} did not finish in 30 s") from None
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        raise NetnsError(f"{' '.join(argv)}: {lines[-1] if lines else f'exit {p.returncode}'}")
    return p.stdout


def exec_in(namespace: str, *argv: str) -> list[str]:
    """The command line that runs `argv` in `namespace` (the same process: `ip netns exec`
    execs it, so its PID is the one we started)."""
    return ["ip", "netns", "exec", namespace, *argv]


def name_of(role: str, pid: Optional[int] = None) -> str:
    """The name of the namespace for `role` of the lab run by `pid` (default: this one)."""
    if not re.fullmatch(r"[a-z]+", role):
        raise ValueError(f"namespace role must be lowercase letters, not {role!r}")
    return f"{PREFIX}-{os.getpid() if pid is None else pid}-{role}"


def owner_of(namespace: str) -> Optional[int]:
    """The PID of the lab that made `namespace`, or None if it is not a lab's."""
    m = NAME.match(namespace)
    return int(m.group(1)) if m else None


def list_namespaces() -> list[str]:
    """The named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines()
            if line.strip()]


def pids_in(namespace: str) -> list[int]:
    """The processes in `namespace` (`ip netns pids`); none for one that does not exist."""
    try:
        return [int(x) for x in run(["ip", "netns", "pids", namespace]).split()]
    except NetnsError:
        return []


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_all(pids: Iterable[int]) -> None:
    """SIGTERM to each, SIGKILL to whatever still runs after a moment."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + _KILL_WAIT_S
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.02)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete(namespace: str) -> None:
    """Kill the processes left in `namespace` and delete it (its links, rules and queues go
    with it). Deleting one that is gone already is not an error."""
    kill_all(pids_in(namespace))
    try:
        run(["ip", "netns", "del", namespace])
    except NetnsError:
        if namespace in list_namespaces():
            raise


def is_stale(name: str) -> bool:
    """Whether `name` (a namespace, or a file named like one) is a lab's whose process is
    gone. This process's own count as stale too: a lab sweeps before it makes any, so
    those were left by an earlier process with the same PID."""
    pid = owner_of(name)
    return pid is not None and (pid == os.getpid() or not _running(pid))


def sweep_stale() -> list[str]:
    """Delete the namespaces of labs that are no longer running (see the module docstring);
    the names removed."""
    removed = []
    for namespace in list_namespaces():
        if is_stale(namespace):
            delete(namespace)
            removed.append(namespace)
    return removed


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def enter(namespace: str) -> None:
    """Move this thread into `namespace` (setns): sockets opened after it, and processes
    started from this thread after it, are there. FileNotFoundError if there is no such
    namespace, PermissionError without root."""
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {namespace}: "
                               f"{os.strerror(err)}")
    finally:
        os.close(fd)


class Namespaces:
    """The namespaces of one lab: `add(role)` makes one (with `lo` up), `remove_all()`
    deletes them all, whatever is left in them."""

    def __init__(self, pid: Optional[int] = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.made: dict[str, str] = {}     # role -> name

    def add(self, role: str) -> str:
        name = name_of(role, self.pid)
        self.made[role] = name      # before it exists: remove_all() tries it even if this fails
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def __getitem__(self, role: str) -> str:
        return self.made[role]

    def remove_all(self) -> None:
        """Delete every one (each tried even if another fails: the first error is raised
        after)."""
        failed: list[NetnsError] = []
        for role, name in reversed(list(self.made.items())):
            try:
                delete(name)
                del self.made[role]
            except NetnsError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
