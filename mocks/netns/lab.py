"""`NetnsLab`: the lab of processes (`mocks.process_lab`) with every host in a network
namespace of its own, the phone's namespace behind the hotspot (the carrier NAT), the state in
a redis-server of the lab's own, and a recorder on the phone's link.

Start: sweep what killed labs left (`namespaces.sweep_stale`), build the network
(`network.LabNetwork`), start redis-server in the `store` namespace (reached by everyone,
the lab included, through its Unix socket: the store is the lab's back room, not a link
under study), start every host as `ip netns exec tblab-PID-ROLE testbed serve ROLE` on the
servers' network, seed the users, make the manifest (the hosts' 198.19.0.x addresses and the
profile's real ports: a host is alone in its namespace, and the lab runs as root), start the
recorder if asked (`testbed record --iface hotspot0` in the gateway's namespace, the manifest
and so the time scale in its section comment) and only then write the manifest. The manifest
says where the phone is (`netns.namespaces.phone`): `testbed emulate` enters it.

Stop: the hosts (SIGTERM by PID, SIGKILL after 2 s), then the recorder (SIGINT, so it closes
its file), then redis-server; then every namespace is deleted with its links, rules and
queues, and whatever process is still in one is killed. Every child is told to end with the
lab (`PR_SET_PDEATHSIG`), so a lab that is killed leaves only its namespaces and its
temporary directory, which the next lab's sweep removes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from testbed.fleet import end_with_parent
from testbed.lab.addressing import HOST_NAMES, NetworkPlan
from testbed.lab.manifest import Manifest

from ..process_lab import HostFailed, ProcessLab
from ..runner import LabConfig
from ..state import Store, make_store
from ..state.redis_server import RedisServer
from .namespaces import PREFIX, Namespaces, exec_in, is_stale, name_of, sweep_stale
from .network import GATEWAY, HOTSPOT_IF, STORE, Impairment, LabNetwork

RECORDER_READY_S = 30.0
RECORDER_STOP_S = 5.0


def nat_wall_timeout(nat_timeout_s: float, time_scale: float) -> int:
    """Conntrack's idle timeout, in the whole wall seconds it counts, for a NAT that forgets
    after `nat_timeout_s` protocol seconds at `time_scale` (at least 1 s)."""
    return max(1, round(nat_timeout_s / time_scale))


def sweep_stale_dirs(root: Optional[str] = None) -> list[Path]:
    """Temporary directories of labs that are no longer running (`tblab-PID-ROLE-XXXX` in
    the temp dir), removed."""
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}-*-*-*"):
        if d.is_dir() and is_stale(d.name.rsplit("-", 1)[0]):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class NetnsLab:
    """`await start()` -> Manifest, `await wait()` until a process of the lab ends,
    `await stop()` (also after a start that failed half-way)."""

    def __init__(self, config: LabConfig, *, impairment: Impairment = Impairment(),
                 record: Optional[Path] = None, workers: int = 2, uvloop: bool = False,
                 network: NetworkPlan = NetworkPlan()) -> None:
        self.network = network
        self.impairment = impairment
        self.record_path = None if record is None else Path(record)
        self.workers = workers
        self.uvloop = uvloop
        self.nat_wall_s: Optional[int] = None
        nat = config.nat_timeout_s
        if nat is not None:
            self.nat_wall_s = nat_wall_timeout(nat, config.time_scale)
            nat = self.nat_wall_s * config.time_scale    # what conntrack will do
        # the hosts on the servers' network with the profile's own ports
        self.config = dataclasses.replace(config, plan=network.servers, privileged_ports=True,
                                          record=None, nat_timeout_s=nat)
        self.namespaces = Namespaces()
        self.swept: list[str] = []
        self.processes: Optional[ProcessLab] = None
        self.redis: Optional[RedisServer] = None
        self.store: Optional[Store] = None
        self.recorder: Optional[asyncio.subprocess.Process] = None
        self._recorder_log: Optional[asyncio.Task] = None
        self._tmp: Optional[Path] = None
        self._preparing: Optional[asyncio.Future] = None
        self.manifest: Optional[Manifest] = None

    @property
    def manifest_path(self) -> Optional[Path]:
        return self.processes.manifest_path if self.processes else None

    @property
    def children(self):
        return self.processes.children if self.processes else []

    # ------------------------------------------------------------------ start
    async def start(self) -> Manifest:
        net = LabNetwork(self.namespaces, self.network, self.impairment, self.nat_wall_s)

        def prepare() -> None:
            self.swept = sweep_stale()
            sweep_stale_dirs()
            net.build()

        # in a thread, which goes on if start() is cancelled: stop() waits for it before it
        # removes what it made
        self._preparing = asyncio.ensure_future(asyncio.to_thread(prepare))
        await asyncio.shield(self._preparing)
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{name_of(STORE)}-"))
        # started from this (the loop's) thread: PR_SET_PDEATHSIG follows the thread
        self.redis = RedisServer(self._tmp, place=exec_in(self.namespaces[STORE]),
                                 preexec_fn=end_with_parent(signal.SIGTERM)).start()
        url = self.redis.unix_url
        self.store = await make_store(url)
        self.processes = ProcessLab(self.config, self.store, url, workers=self.workers,
                                    uvloop=self.uvloop,
                                    place=lambda role: exec_in(self.namespaces[role]))
        self.processes.extra.update(self._extra())
        await self.processes.start_hosts()
        manifest = await self.processes.make_manifest()
        if self.record_path is not None:
            await self._start_recorder(manifest)
        self.manifest = self.processes.write_manifest()
        return self.manifest

    def _extra(self) -> dict:
        cfg = self.config
        extra = {"netns": {
            "namespaces": dict(self.namespaces.made),
            "network": self.network.to_dict(),
            "impairment": self.impairment.to_dict(),
            "recorder": {"namespace": self.namespaces[GATEWAY], "iface": HOTSPOT_IF},
        }}
        if cfg.nat_timeout_s is not None:
            extra["nat"] = {"idle_timeout_s": cfg.nat_timeout_s, "latency_s": 0.0,
                            "hosts": sorted(HOST_NAMES), "kernel": True,
                            "wall_timeout_s": self.nat_wall_s}
        return extra

    async def _start_recorder(self, manifest: Manifest) -> None:
        copy = manifest.write(self._tmp / "manifest.json")    # its comment: no passwords
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        argv = exec_in(self.namespaces[GATEWAY], sys.executable, "-m", "testbed.cli",
                       "record", "--iface", HOTSPOT_IF, "--out", str(self.record_path),
                       "--manifest", str(copy))
        self.recorder = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=end_with_parent(signal.SIGTERM),
            start_new_session=True)   # Ctrl-C is the lab's: it stops the recorder last
        said = []
        deadline = time.monotonic() + RECORDER_READY_S
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.recorder.stdout.readline(), max(left, 0))
            except asyncio.TimeoutError:
                raise HostFailed(f"the recorder did not start in {RECORDER_READY_S:g} s") \
                    from None
            text = line.decode(errors="replace").rstrip()
            if not line:
                raise HostFailed(f"the recorder did not start: {' '.join(said[-2:])}")
            said.append(text)
            if text.startswith("listening on"):
                break
        self._recorder_log = asyncio.ensure_future(self._relay_recorder())

    async def _relay_recorder(self) -> None:
        """What the recorder says after it started (its counts at the end), on stderr."""
        async for line in self.recorder.stdout:
            print(f"recorder: {line.decode(errors='replace').rstrip()}", file=sys.stderr,
                  flush=True)

    # ------------------------------------------------------------------ run and stop
    async def wait(self) -> str:
        """Until a host process or the recorder ends; says which and how."""
        waits = {asyncio.ensure_future(self.processes.wait()): "host"}
        if self.recorder is not None:
            waits[asyncio.ensure_future(self.recorder.wait())] = "recorder"
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        first = next(iter(done))
        if waits[first] == "recorder":
            return f"the recorder (pid {self.recorder.pid}) exited with code " \
                   f"{self.recorder.returncode}"
        return first.result()

    async def stop(self) -> None:
        try:
            if self.processes is not None:
                await self.processes.stop()
            await self._stop_recorder()
            if self.store is not None:
                await self.store.close()
                self.store = None
            if self.redis is not None:
                await asyncio.to_thread(self.redis.stop)
                self.redis = None
        finally:
            if self._preparing is not None:
                await asyncio.gather(self._preparing, return_exceptions=True)
            await asyncio.to_thread(self.namespaces.remove_all)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    async def _stop_recorder(self) -> None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        if rec.returncode is None:
            rec.send_signal(signal.SIGINT)     # it writes its statistics and closes the file
            try:
                await asyncio.wait_for(rec.wait(), RECORDER_STOP_S)
            except asyncio.TimeoutError:
                rec.kill()
                await rec.wait()
        if self._recorder_log is not None:
            await asyncio.gather(self._recorder_log, return_exceptions=True)
            self._recorder_log = None


def wall_timeout_note(nat_timeout_s: float, time_scale: float) -> Optional[str]:
    """A line for the user when conntrack's whole seconds change the NAT's timeout, else
    None."""
    wall = nat_wall_timeout(nat_timeout_s, time_scale)
    actual = wall * time_scale
    if math.isclose(actual, nat_timeout_s, rel_tol=0.01):
        return None
    return (f"conntrack counts whole seconds: a {nat_timeout_s:g} s NAT timeout at time scale "
            f"{time_scale:g} is {nat_timeout_s / time_scale:.3g} wall s; using {wall} s = "
            f"{actual:g} protocol s")
