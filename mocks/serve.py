"""`testbed serve ROLE`: one lab host as one process, with N worker processes for the roles
that take them.

With one worker the host serves in this process. With N > 1 this process is a supervisor:
it reserves the listening ports (`mocks.endpoints`), starts N workers on the fleet runner
(`testbed.fleet`, so they die with it however it ends), each binding the same ports
with `SO_REUSEPORT` and opening its own connection to the shared store, and serves nothing
itself.

- **Ready.** Once every worker listens (and the users are seeded, `seed_users`), the host
  prints one `ready` line on stderr and writes the ready file if asked (JSON, atomically:
  role, pid, worker pids, what it bound, the CA, the store with any password hidden), which
  scripts, `lab up` and container healthchecks wait for. It is removed when the host stops.
- **A worker that dies** (killed, crashed) is reported on stderr and restarted, on the same
  ports; the ready file then names the new pid. A worker that dies more than
  `RESTARTS_ALLOWED` times within `RESTART_WINDOW_S` makes the host stop and exit 1, as does
  a worker that cannot start (a port taken, the store unreachable): a crash loop is a fault
  to report, not to hide.
- **Stopping.** SIGINT (Ctrl-C) or SIGTERM: the workers are asked to close their servers,
  and whatever is left after `STOP_GRACE_S` gets SIGTERM, then SIGKILL: all is gone within
  2 s. The exit code is 130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from testbed.fleet import Channel, Fleet, WorkerFailed

from .endpoints import Endpoint, reserve, reserved_endpoint
from .hosts import start_host
from .hostspec import STORE_ROLES, WORKER_ROLES, HostSpec
from .service import Service
from .state import make_store, redact_url

RESTARTS_ALLOWED = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 0.2
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 1.0
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM


class HostError(Exception):
    """A host that cannot start or keep running; the message is one line for the user."""


@dataclass
class ServeOptions:
    spec: HostSpec
    workers: int = 1
    ready_file: Optional[Path] = None
    loop: str = "asyncio"               # the workers' event loop: asyncio or uvloop
    seed_users: int = 0                 # seed this many users (idempotent) before ready
    friends: str = "all"
    handle_sigint: bool = True          # False under a supervisor that stops us itself


def check_options(opts: ServeOptions) -> None:
    """`ValueError` for options that cannot work together (the user's mistake)."""
    spec = opts.spec
    if not spec.listen and not spec.tls_listen and not spec.maps:
        raise ValueError(f"{spec.role}: nothing to listen on")
    if opts.workers > 1:
        if spec.role not in WORKER_ROLES:
            raise ValueError(f"{spec.role} runs in one process: --workers must be 1")
        if spec.role in STORE_ROLES and not spec.store.startswith(("redis", "unix")):
            raise ValueError(f"--workers {opts.workers} needs a store they share: "
                             f"--store redis://HOST:PORT/DB")
    if opts.seed_users and spec.role not in STORE_ROLES:
        raise ValueError(f"{spec.role} keeps no users: --seed-users is for long, short, "
                         f"qlogo or qpic")


def first_line(detail: str) -> str:
    """The last line of a traceback: the exception, which is what a user needs to read."""
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else detail


def write_ready(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ready-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def describe_ready(doc: dict) -> str:
    """The ready line: what the host bound, in a form a person reads."""
    role = doc["role"]
    parts = []
    if doc.get("listen"):
        label = {"dns": "UDP+TCP", "nat": "relay"}.get(role, "TCP")
        parts.append(f"{label} " + " ".join(f"{h}:{p}" for h, p in doc["listen"]))
    if doc.get("tls"):
        parts.append("TLS " + " ".join(f"{h}:{p}" for h, p in doc["tls"]))
    if role == "nat":
        parts = ["relay " + ", ".join(f"{a} -> {b}" for a, b in doc["maps"])]
    workers = doc["workers"]
    who = (f"{len(workers)} workers (pids {' '.join(map(str, workers))})"
           if len(workers) > 1 or workers[0] != doc["pid"] else f"pid {doc['pid']}")
    return f"serve {role}: ready, {'; '.join(parts)}; {who}"


async def worker_main(spec: HostSpec, channel: Channel) -> None:
    """One worker: its own store connection and servers, until the supervisor says stop."""
    store = await make_store(spec.store) if spec.role in STORE_ROLES else None
    try:
        host = await start_host(spec, store)
        try:
            channel.send("ready", host.describe())
            while (await channel.receive())[0] != "stop":
                pass
        finally:
            await host.close()
    finally:
        if store is not None:
            await store.close()


class _Stopped(Exception):
    pass


class HostProcess:
    """`await HostProcess(opts, say).run()` -> exit code; `say(line)` prints diagnostics."""

    def __init__(self, opts: ServeOptions, say: Callable[[str], None]) -> None:
        check_options(opts)
        spec = opts.spec
        if spec.epoch is None:   # one time line for every worker
            spec = dataclasses.replace(spec, epoch=time.time())
        self.opts = dataclasses.replace(opts, spec=spec)
        self.spec = spec
        self.say = say
        self.stop = asyncio.Event()
        self.code = 0
        self.fleet: Optional[Fleet] = None
        self.ready: dict = {}
        self._held = []
        self._host = None
        self._store = None

    def _signal(self, code: int) -> None:
        if not self.stop.is_set():
            self.code = code
            self.stop.set()

    async def _or_stop(self, aw):
        """Await `aw` unless a stop comes first (then raise _Stopped)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stopper.cancel()
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise _Stopped

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = [(signal.SIGTERM, EXIT_SIGTERM)]
        if self.opts.handle_sigint:
            signals.append((signal.SIGINT, EXIT_SIGINT))
        for sig, code in signals:
            loop.add_signal_handler(sig, self._signal, code)
        supervisor = None
        try:
            try:
                await self._or_stop(self._start())
            except _Stopped:
                return self.code
            if self.fleet is not None:
                supervisor = asyncio.ensure_future(self._supervise())
            await self.stop.wait()
            return self.code
        finally:
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.gather(supervisor, return_exceptions=True)
            await self._close()
            for sig, _ in signals:
                loop.remove_signal_handler(sig)

    # ------------------------------------------------------------------ start
    async def _start(self) -> None:
        spec, opts = self.spec, self.opts
        # the workers open their own connections; this process needs one only to serve
        # (one worker) or to seed
        if (spec.role in STORE_ROLES and opts.workers == 1) or opts.seed_users:
            try:
                self._store = await make_store(spec.store)
            except ConnectionError as exc:
                raise HostError(str(exc)) from None
        if opts.workers == 1:
            self._host = await start_host(spec, self._store)
            bound = self._host.describe()
            pids = [os.getpid()]
        else:
            bound, pids = await self._start_workers()
        if opts.seed_users:
            try:
                await Service(self._store).seed_users(opts.seed_users, opts.friends)
            except ValueError as exc:
                raise HostError(str(exc)) from None
        self.ready = {"role": spec.role, "pid": os.getpid(), "workers": pids,
                      "hostname": os.uname().nodename, **bound,
                      "store": redact_url(spec.store) if spec.role in STORE_ROLES else None,
                      "profile": spec.profile, "time_scale": spec.time_scale,
                      "epoch": spec.epoch}
        self._write_ready()
        self.say(describe_ready(self.ready))

    async def _start_workers(self) -> tuple[dict, list[int]]:
        spec, opts = self.spec, self.opts

        def hold(endpoints) -> tuple[Endpoint, ...]:
            out = []
            for e in endpoints:
                held = reserve(e)
                self._held.append(held)
                out.append(reserved_endpoint(held))
            return tuple(out)

        spec = dataclasses.replace(spec, listen=hold(spec.listen),
                                   tls_listen=hold(spec.tls_listen), reuse_port=True)
        self.fleet = Fleet(worker_main, [spec] * opts.workers, loop=opts.loop,
                           name=f"{spec.role}-worker")
        self.fleet.start()
        try:
            described = await self.fleet.collect("ready", timeout=START_TIMEOUT_S)
        except WorkerFailed as failed:
            raise HostError(f"worker {failed.worker + 1} could not start: "
                            f"{first_line(failed.detail)}") from None
        except TimeoutError as exc:
            raise HostError(f"workers did not start: {exc}") from None
        return described[0], self.fleet.pids

    def _write_ready(self) -> None:
        if self.opts.ready_file is not None:
            write_ready(self.opts.ready_file, self.ready)

    # ------------------------------------------------------------------ run
    async def _supervise(self) -> None:
        fleet, role = self.fleet, self.spec.role
        deaths = collections.defaultdict(collections.deque)
        while True:
            try:
                m = await fleet.receive()
            except WorkerFailed as failed:
                i = failed.worker
                self.say(f"serve {role}: worker {i + 1} (pid {fleet.pids[i]}) died: "
                         f"{first_line(failed.detail)}")
            else:
                if m.kind == "ready":
                    self.ready["workers"] = fleet.pids
                    self._write_ready()
                    self.say(f"serve {role}: worker {m.worker + 1} ready again "
                             f"(pid {fleet.pids[m.worker]})")
                    continue
                if m.kind != "result":
                    continue
                i = m.worker
                self.say(f"serve {role}: worker {i + 1} (pid {fleet.pids[i]}) stopped "
                         f"on its own")
            now = time.monotonic()
            recent = deaths[i]
            while recent and now - recent[0] > RESTART_WINDOW_S:
                recent.popleft()
            if len(recent) >= RESTARTS_ALLOWED:
                self.say(f"serve {role}: worker {i + 1} died {len(recent) + 1} times in "
                         f"{RESTART_WINDOW_S:g} s: stopping the host")
                self._signal(1)
                return
            recent.append(now)
            await asyncio.sleep(RESTART_DELAY_S)
            fleet.restart(i)
            self.say(f"serve {role}: worker {i + 1} restarting (pid {fleet.pids[i]})")

    # ------------------------------------------------------------------ stop
    async def _close(self) -> None:
        if self.fleet is not None:
            fleet, self.fleet = self.fleet, None
            try:
                fleet.broadcast("stop")
                deadline = time.monotonic() + STOP_GRACE_S
                while not fleet.done() and time.monotonic() < deadline:
                    try:
                        await fleet.receive(timeout=max(0.0, deadline - time.monotonic()))
                    except (WorkerFailed, TimeoutError):
                        pass
            except OSError:   # a worker's pipe already closed: close() ends it
                pass
            await fleet.close()
        if self._host is not None:
            await self._host.close()
            self._host = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        for held in self._held:
            held.close()
        self._held.clear()
        if self.opts.ready_file is not None and self.ready:
            try:
                os.unlink(self.opts.ready_file)
            except FileNotFoundError:
                pass
