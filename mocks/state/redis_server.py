"""A private redis-server for tests, benchmarks and the namespace lab: a free loopback port
and a Unix socket, a temp dir, no persistence, stopped by its own PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

def redis_unavailable() -> Optional[str]:
    """Why the Redis tests cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pong(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`RedisServer(dir).start()` ... `.stop()`; `.url` names it, `.proc.pid` is its PID.

    `place` is a command line prefix that runs it elsewhere (`ip netns exec NS`: then only
    its Unix socket, `unix_url`, is reachable from here); `preexec_fn` is run in the child
    before it starts (`testbed.fleet.end_with_parent`). Readiness is checked on the socket."""

    def __init__(self, workdir: Path, *, place: Sequence[str] = (),
                 preexec_fn: Optional[Callable[[], None]] = None) -> None:
        self.workdir = workdir
        self.place = list(place)
        self.preexec_fn = preexec_fn
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        """It listens on this Unix socket too: reachable from any network namespace."""
        return self.workdir / f"redis-{self.port}.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        last = ""
        for _ in range(5):   # the free port may be taken between probing and binding
            self.port = _free_port()
            log = self.workdir / f"redis-{self.port}.log"
            self.proc = subprocess.Popen(
                [*self.place, "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                 "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                 "--daemonize", "no", "--logfile", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=self.preexec_fn, start_new_session=True)   # Ctrl-C is its owner's
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _pong(self.socket_path):
                    return self
                time.sleep(0.02)
            last = log.read_text(errors="replace")[-500:] if log.exists() else ""
            self.stop()
        raise RuntimeError(f"redis-server did not start: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()   # SIGTERM to our own child: redis shuts down (nothing to save)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
