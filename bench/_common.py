"""Shared plumbing for the benchmarks in this directory.

Every benchmark runs each server under test in its own process (multiprocessing, spawn) and
its load generator in another, so the two never share a GIL. Servers bind 127.x addresses
only. A benchmark stops exactly the processes it started, by PID, and reports ratios against
baselines measured in the same run: absolute figures depend on the machine and on whatever
else runs on it, ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import multiprocessing as mp
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/X.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from testbed.wire.commands import NOOP_CMD  # noqa: E402,F401 (re-exported to the benches)
from testbed.wire.frames import HEADER, REPLY_OFFSET  # noqa: E402,F401
from testbed.eventloop import LOOPS, available_loops, have_uvloop, run  # noqa: E402,F401

_SPAWN = mp.get_context("spawn")
_STARTED: list = []  # every child process we started, for the atexit sweep


# ---------------------------------------------------------------------------- process set-up
def raise_nofile() -> int:
    """Soft open-file limit up to the hard limit (20,000 on these machines)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: Optional[int] = None) -> int:
    """VmRSS in KiB of this process, after a full collection, or of process `pid`."""
    if pid is None:
        gc.collect()
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: Optional[int] = None) -> float:
    """User + system CPU seconds of a process (this one by default)."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK  # fields 14 and 15: utime, stime


def system_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _TICK


def _cpu_or(pid: int, default: float) -> float:
    """CPU seconds of `pid`, or `default` if it has ended (a lab worker that was restarted)."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return default


class CpuWindow:
    """CPU used during a window: by given PIDs, and by everything else on the machine.

    The figures are noisy on a shared machine; `other` (cores busy with processes we did not
    start) says how much, so a run that competed with something else can be told apart.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.sys0 = system_busy_seconds()
        self.p0 = [cpu_seconds(p) for p in pids]

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        per = [(_cpu_or(p, a) - a) / wall for p, a in zip(self.pids, self.p0)]
        total = (system_busy_seconds() - self.sys0) / wall
        return {"wall": wall, "per_pid": per, "total": total,
                "other": max(0.0, total - sum(per))}


# ---------------------------------------------------------------------------- child control
async def control_loop(conn, handlers: dict[str, Callable[..., Any]]) -> None:
    """Answer `(name, *args)` requests from the parent on `conn` until it sends ("stop",).

    The pipe is watched with `add_reader`, so the event loop under test runs alone in the
    process: no thread, no polling.
    """
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def readable() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone: stop
            msg = ("stop",)
        name, args = msg[0], msg[1:]
        if name == "stop":
            loop.remove_reader(conn.fileno())
            if not stop.done():
                stop.set_result(None)
            return
        try:
            result = handlers[name](*args)
            if asyncio.iscoroutine(result):
                task = loop.create_task(result)

                def reply(t: asyncio.Task) -> None:
                    if t.cancelled():        # the child is being stopped: nobody waits
                        return
                    exc = t.exception()
                    conn.send(("error", repr(exc)) if exc else ("ok", t.result()))
                task.add_done_callback(reply)
                return
            conn.send(("ok", result))
        except Exception as exc:  # noqa: BLE001 - report to the parent, keep serving
            conn.send(("error", repr(exc)))

    loop.add_reader(conn.fileno(), readable)
    # uvloop's add_reader makes the pipe non-blocking: a reply larger than the pipe buffer
    # would then be sent in part and leave the parent waiting for the rest forever
    os.set_blocking(conn.fileno(), True)
    await stop


class Child:
    """A spawned child process with a duplex pipe; the child sends ("ready", info) first."""

    def __init__(self, target: Callable, *args, name: str = "bench-child") -> None:
        self.conn, child_conn = _SPAWN.Pipe()
        self.proc = _SPAWN.Process(target=target, args=(child_conn, *args), name=name,
                                   daemon=True)
        self.proc.start()
        child_conn.close()
        _STARTED.append(self)
        self.info = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def recv(self, timeout: float = 60.0):
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.proc.name} (pid {self.pid}) sent nothing in {timeout} s")
        msg = self.conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"{self.proc.name} (pid {self.pid}): {msg[1]}")
        return msg[1]

    def ready(self, timeout: float = 60.0):
        self.info = self.recv(timeout)
        return self.info

    def call(self, name: str, *args, timeout: float = 120.0):
        self.conn.send((name, *args))
        return self.recv(timeout)

    def send(self, *msg) -> None:
        self.conn.send(msg)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask politely, then SIGTERM, then SIGKILL: only this child's PID."""
        if self.proc.is_alive():
            try:
                self.conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout)
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGTERM)
            self.proc.join(2)
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
            self.proc.join(2)
        self.conn.close()
        if self in _STARTED:
            _STARTED.remove(self)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _sweep() -> None:
    for child in list(_STARTED):
        try:
            child.stop(timeout=1.0)
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------------- network namespaces
_NETNS: list[str] = []  # namespaces we created, for the atexit sweep
_NETNS_SEQ = iter(range(1 << 30))
CLONE_NEWNET = 0x40000000


def netns_create(prefix: str) -> Optional[str]:
    """A fresh network namespace with `lo` up and a wide ephemeral port range, or None if
    that is not possible here (not root, no `ip`). A load test that opens a connection per
    request leaves tens of thousands of TIME_WAIT sockets; a fresh namespace per run starts
    clean and sees no other traffic. Its `lo` serves all of 127.0.0.0/8."""
    import subprocess
    name = f"{prefix}-{os.getpid()}-{next(_NETNS_SEQ)}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    _NETNS.append(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv4.ip_local_port_range=1024 65535"], capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        netns_delete(name)
        return None
    return name


def netns_delete(name: str) -> None:
    import subprocess
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    if name in _NETNS:
        _NETNS.remove(name)


def enter_netns(name: Optional[str]) -> None:
    """Move the calling thread (a fresh child process: its only thread) into `name`."""
    if not name:
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class InNetns:
    """`with InNetns(name):` runs a block of the parent in `name`, then returns it home."""

    def __init__(self, name: Optional[str]) -> None:
        self.name = name
        self.home = None

    def __enter__(self) -> "InNetns":
        if self.name:
            self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
            enter_netns(self.name)
        return self

    def __exit__(self, *exc) -> None:
        if self.home is not None:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                if libc.setns(self.home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original namespace")
            finally:
                os.close(self.home)
                self.home = None


def run_in_netns(name: str, script: str) -> int:
    """`ip netns exec` the benchmark `script` with this run's arguments and `--netns-inner
    NAME`, and wait; delete the namespace afterwards. The inner run stops its own children;
    we stop only the inner process (Ctrl-C reaches it too; SIGINT, SIGTERM, then SIGKILL)."""
    import subprocess
    cmd = ["ip", "netns", "exec", name, sys.executable, os.path.abspath(script),
           *sys.argv[1:], "--netns-inner", name]
    proc = subprocess.Popen(cmd)
    try:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # the inner run got the same SIGINT from the terminal; make sure it did
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return 130
    finally:
        netns_delete(name)


def add_netns_options(p: argparse.ArgumentParser) -> None:
    """--no-netns, and the hidden --netns-inner of the run re-executed in a namespace."""
    p.add_argument("--no-netns", action="store_true", help="stay in the host network namespace")
    p.add_argument("--netns-inner", help=argparse.SUPPRESS)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def run_isolated(prefix: str, script: str, args: argparse.Namespace,
                 body: Callable[[], int]) -> int:
    """`body()`, as root in a fresh network namespace (`script` re-executed there by
    `run_in_netns`, unless --no-netns), else in the host's. Ctrl-C and SIGTERM stop it and
    every process it started (even when started with SIGINT ignored, as a background job)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.netns_inner is None and not args.no_netns and os.geteuid() == 0:
        name = netns_create(prefix)
        if name:
            return run_in_netns(name, script)
        print("could not create a network namespace: running in the host namespace",
              file=sys.stderr, flush=True)
    try:
        return body()
    except KeyboardInterrupt:
        print("interrupted: stopped every process this benchmark started", flush=True)
        return 130


@atexit.register
def _sweep_netns() -> None:
    _sweep()  # the processes first, then their namespaces
    for name in list(_NETNS):
        netns_delete(name)


# ---------------------------------------------------------------------------- baseline server
class BareEcho(asyncio.Protocol):
    """The baseline long-link server: parse 16-byte headers with struct, answer each frame
    with a bare header (cmd + 1000000000, same seq), one `transport.write` per
    `data_received`. Bodies are skipped; partial frames are buffered."""

    __slots__ = ("transport", "buf")

    def __init__(self) -> None:
        self.transport = None
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        unpack, pack = HEADER.unpack_from, HEADER.pack
        pos, end, out = 0, len(data), []
        while end - pos >= 16:
            plen, _, _, cmd, seq = unpack(data, pos)
            if plen < 16:  # garbage: drop the connection
                self.transport.close()
                return
            if end - pos < plen:
                break
            out.append(pack(16, 16, 1, cmd + REPLY_OFFSET, seq))
            pos += plen
        self.buf = data[pos:] if pos < end else b""
        if out:
            self.transport.write(b"".join(out))


# ---------------------------------------------------------------------------- output
# the tables printed so far, when they go out as JSON (`--json` of a bench whose own code
# prints no JSON): one document on stdout at exit, the tables themselves on stderr
_json_tables: Optional[list[dict]] = None


def parse_args(description: str, extra: Optional[Callable[[argparse.ArgumentParser], None]]
               = None) -> argparse.Namespace:
    """The bench's arguments: `--quick`, what `extra` adds, and `--json` (unless `extra`
    adds its own): every table `print_table` prints, as one JSON document on stdout."""
    global _json_tables
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few seconds, for a smoke run")
    if extra:
        extra(p)
    own_json = p.get_default("json") is not None
    if not own_json:
        p.add_argument("--json", action="store_true",
                       help="the tables as one JSON document on stdout (then on stderr)")
    args = p.parse_args()
    if args.json and not own_json:
        _json_tables = []
        atexit.register(_print_json_tables)
    return args


def _print_json_tables() -> None:
    import json
    print(json.dumps({"tables": _json_tables}, indent=2), flush=True)


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return "ok" if ok else "BELOW TARGET"


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stdout (on stderr, and kept for the JSON document, under `--json`)."""
    out = sys.stdout
    if _json_tables is not None:
        _json_tables.append({"title": title, "columns": columns,
                             "rows": [[x if isinstance(x, (int, float)) or x is None
                                       else str(x) for x in r] for r in rows]})
        out = sys.stderr
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain lines
        print(title, file=out)
        print("  " + " | ".join(columns), file=out)
        for r in rows:
            print("  " + " | ".join(str(x) for x in r), file=out)
        return
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console(width=max(100, 20 * len(columns)), file=out).print(t)


def note(msg: str) -> None:
    """A diagnostic line: on stderr, so that stdout holds the tables (or the JSON) only."""
    print(msg, file=sys.stderr, flush=True)


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
