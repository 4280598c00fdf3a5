"""docker-compose.yml without Docker: every service's command run as a local process, each
on a loopback stand-in for its container's address, honouring depends_on and healthchecks.

What stands in for what:

- **addresses**: the compose networks' 198.18.x.y (and 198.19.x.y) become 127.18.x.y (and
  127.19.x.y) wherever they appear (commands, healthchecks, environment): deterministic, and
  every 127.x address is local on `lo`. Everything runs inside one network namespace of the
  caller's (`ip netns exec NS`), so the protocol's real ports are free and nothing else on
  the machine is touched; its `lo` stands in for both networks' bridges.
- **volumes**: a named volume is a directory under the run's work directory, a bind mount
  (`./captures`) another, a `tmpfs` a directory of each container's own; a command argument
  or variable that names a path under a mount's target is rewritten to the directory.
- **variables**: `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$` are interpolated from
  the given environment, as compose does.
- **images**: `testbed ...` runs this checkout's CLI (`python -m testbed.cli`, what the
  image's entry point is); anything else (`redis-server`, `redis-cli`, `test`) is the local
  binary of that name.
- **profiles and targets**: as `docker compose [--profile P] up [SERVICE...]`: a service
  with `profiles` runs only when one of them is enabled (naming a service enables its own);
  with target services, only they and what they depend on run.
- **compose**: a service starts once its dependencies meet their conditions
  (`service_started`, `service_healthy`, `service_completed_successfully`); a healthcheck's
  test runs every `interval` from one interval after the start (at most `timeout` each)
  until it passes, and a service whose
  test fails `retries` times in a row after `start_period` is unhealthy. Once healthy it is
  not probed again: inside a container a probe never reaches the wire, on the shared `lo`
  it would reach the recorder. `--scale` is `scale={"phone": 2}`.

Not stood in for: `user`, `cap_add`, `sysctls`, `init`, `hostname`, `network_mode`,
`networks` membership and `dns` (every process runs as the test's root in its namespace;
the emulator asks the lab DNS the manifest names, as it does in a container): what of those
Docker would refuse is read from the file instead (reachability.py).

A service that others wait for with `service_completed_successfully`, or that nothing
depends on (the phones, the report), is a job: the run is up when every job has exited 0.
Any other service is a server, and a server that exits, a job that exits non-zero or a
service that turns unhealthy fails the run at once (`ComposeFailed`, naming it, with the
end of its log). `down()` stops what runs (SIGTERM, dependents first; SIGKILL what is left after 10 s).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

ADDRESS = re.compile(r"\b198\.(1[89])\.(\d{1,3})\.(\d{1,3})\b")
VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}"
                      r"|([A-Za-z_][A-Za-z0-9_]*))")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
POLL_S = 0.05
STOP_GRACE_S = 10.0


class ComposeFailed(AssertionError):
    """The run failed: which service, why, and the end of its log."""


def stand_in(text: str) -> str:
    """198.18.x.y -> 127.18.x.y (and 198.19 -> 127.19), wherever it is in `text`."""
    return ADDRESS.sub(r"127.\1.\2.\3", text)


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        value = env.get(name)
        if m.group(3) == ":-" and not value:
            return m.group(4)
        if m.group(3) == "-" and value is None:
            return m.group(4)
        return value or ""
    return VARIABLE.sub(one, text)


def duration(text, default: float) -> float:
    if text is None:
        return default
    if isinstance(text, (int, float)):
        return float(text)
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def _walk(obj, fn):
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_walk(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    return obj


def load(path: Path, env: Optional[dict[str, str]] = None) -> dict:
    """The compose file as compose reads it: anchors merged, variables interpolated."""
    doc = yaml.safe_load(path.read_text())
    return _walk(doc, lambda s: interpolate(s, dict(os.environ if env is None else env)))


@dataclass
class Health:
    test: list[str]
    interval: float
    timeout: float
    retries: int
    start_period: float


@dataclass
class Service:
    name: str
    command: list[str]
    environment: dict[str, str]
    depends_on: dict[str, str]           # service -> condition
    health: Optional[Health]
    mounts: list[tuple[str, Path]]       # (target in the container, local directory)
    tmpfs: list[str]                     # targets of each container's own
    replicas: int = 1
    profiles: tuple[str, ...] = ()


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _depends(spec) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        return {name: "service_started" for name in spec}
    return {name: (v or {}).get("condition", "service_started") for name, v in spec.items()}


def _environment(spec) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        return dict(item.split("=", 1) for item in spec)
    return {k: "" if v is None else str(v) for k, v in spec.items()}


def services(doc: dict, workdir: Path, scale: dict[str, int]) -> dict[str, Service]:
    out = {}
    for name, spec in doc["services"].items():
        mounts = []
        for v in spec.get("volumes", []):
            source, target = v.split(":")[:2]
            if source.startswith((".", "/")):
                local = workdir / "binds" / Path(source).name
            else:
                local = workdir / "volumes" / source
            local.mkdir(parents=True, exist_ok=True)
            mounts.append((target, local))
        health = None
        hc = spec.get("healthcheck")
        if hc and not hc.get("disable") and hc["test"][0] != "NONE":
            test = hc["test"]
            if isinstance(test, str):
                test = ["CMD-SHELL", test]
            health = Health(test, duration(hc.get("interval"), 30.0),
                            duration(hc.get("timeout"), 30.0), int(hc.get("retries", 3)),
                            duration(hc.get("start_period"), 0.0))
        tmpfs = spec.get("tmpfs", [])
        out[name] = Service(name, _argv(spec.get("command", [])),
                            _environment(spec.get("environment")), _depends(spec.get("depends_on")),
                            health, mounts, [tmpfs] if isinstance(tmpfs, str) else list(tmpfs),
                            scale.get(name, 1), tuple(spec.get("profiles", ())))
    for name, svc in out.items():
        for dep in svc.depends_on:
            if dep not in out:
                raise ValueError(f"{name} depends on {dep}, which is not a service")
    return out


def active(svcs: dict[str, Service], profiles=(), targets=None) -> dict[str, Service]:
    """The services compose runs with these profiles enabled and these target services
    (None: all), as `docker compose --profile P up [TARGET...]` picks them: the targets and
    their dependencies, or every service whose profiles are enabled (or has none). A target
    enables its own profiles; a service picked whose profiles are not enabled is an error."""
    enabled = set(profiles) | {p for t in targets or () for p in svcs[t].profiles}
    if targets is None:
        return {n: s for n, s in svcs.items() if not s.profiles or enabled & set(s.profiles)}
    picked, todo = {}, list(targets)
    while todo:
        name = todo.pop()
        if name in picked:
            continue
        svc = picked[name] = svcs[name]
        if svc.profiles and not enabled & set(svc.profiles):
            raise ValueError(f"{name} is in profile {', '.join(svc.profiles)}, not enabled")
        todo.extend(svc.depends_on)
    return {n: s for n, s in svcs.items() if n in picked}


def jobs(svcs: dict[str, Service]) -> set[str]:
    """The services that are meant to end (see the module docstring)."""
    waited = {d for s in svcs.values() for d, c in s.depends_on.items()
              if c == "service_completed_successfully"}
    depended = {d for s in svcs.values() for d in s.depends_on}
    return waited | (set(svcs) - depended)


@dataclass
class Instance:
    """One container of a service: its process, its own directories, its health."""

    service: Service
    name: str
    log: Path
    mounts: list[tuple[str, Path]] = field(default_factory=list)   # longest target first
    proc: Optional[subprocess.Popen] = None
    healthy: bool = False
    probe: Optional[subprocess.Popen] = None
    probe_started: float = 0.0
    next_probe: float = 0.0
    failures: int = 0
    started_at: float = 0.0
    exit_code: Optional[int] = None   # as the run noted it; None while it runs

    def local(self, text: str) -> str:
        """A string of this container's as its stand-in sees it: addresses, mount paths."""
        text = stand_in(text)
        for target, where in self.mounts:
            if text == target or text.startswith(target + "/"):
                return str(where) + text[len(target):]
        return text

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalCompose:
    """`LocalCompose(file, workdir, netns, scale={"phone": 2}).up()` ... `.down()`."""

    compose_file: Path
    workdir: Path
    netns: str
    scale: dict[str, int] = field(default_factory=dict)
    env: Optional[dict[str, str]] = None
    profiles: tuple[str, ...] = ()
    targets: Optional[list[str]] = None      # `docker compose up TARGET...`; None: all
    instances: dict[str, list[Instance]] = field(default_factory=dict)
    started: list[Instance] = field(default_factory=list)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)   # (s, who, what)

    def __post_init__(self) -> None:
        self.doc = load(self.compose_file, self.env)
        self.defined = services(self.doc, self.workdir, self.scale)
        self.services = active(self.defined, self.profiles, self.targets)
        self.jobs = jobs(self.services)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()

    def _note(self, who: str, what: str) -> None:
        self.timeline.append((round(time.monotonic() - self._t0, 2), who, what))

    # ------------------------------------------------------------------ processes
    def _exec(self, inst: Instance, argv: list[str]) -> list[str]:
        argv = [inst.local(a) for a in argv]
        if argv[0] == "testbed":
            argv = [sys.executable, "-m", "testbed.cli", *argv[1:]]
        return ["ip", "netns", "exec", self.netns, *argv]

    def _env(self, inst: Instance) -> dict[str, str]:
        return {**os.environ, **{k: inst.local(v) for k, v in inst.service.environment.items()}}

    def _cwd(self, name: str) -> Path:
        cwd = self.workdir / "containers" / name
        cwd.mkdir(parents=True, exist_ok=True)
        return cwd

    def _instance(self, svc: Service, name: str) -> Instance:
        own = []
        for target in svc.tmpfs:
            where = self._cwd(name) / "tmpfs" / target.strip("/")
            where.mkdir(parents=True, exist_ok=True)
            own.append((target, where))
        mounts = sorted(svc.mounts + own, key=lambda m: -len(m[0]))
        return Instance(svc, name, self.workdir / "logs" / f"{name}.log", mounts)

    def _start(self, svc: Service) -> None:
        group = []
        for i in range(svc.replicas):
            name = svc.name if svc.replicas == 1 else f"{svc.name}-{i + 1}"
            inst = self._instance(svc, name)
            with open(inst.log, "wb") as log:
                inst.proc = subprocess.Popen(self._exec(inst, svc.command), env=self._env(inst),
                                             cwd=self._cwd(name), stdout=log,
                                             stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            inst.started_at = inst.next_probe = time.monotonic()
            if svc.health is not None:   # the first test runs one interval after the start
                inst.next_probe += svc.health.interval
            self._note(name, "started")
            group.append(inst)
            self.started.append(inst)
        self.instances[svc.name] = group

    def run_one_off(self, service: str, argv: list[str], timeout: float = 60.0):
        """`docker compose run --rm SERVICE ARGV...`: ARGV with the service's environment,
        mounts and stand-in addresses; the finished process."""
        inst = self._instance(self.defined[service], f"{service}-run")
        return subprocess.run(self._exec(inst, argv), env=self._env(inst),
                              cwd=self._cwd(inst.name), capture_output=True, text=True,
                              timeout=timeout)

    # ------------------------------------------------------------------ health
    def _poll_health(self, inst: Instance, now: float) -> None:
        h = inst.service.health
        if inst.probe is not None:
            code = inst.probe.poll()
            if code is None and now - inst.probe_started < h.timeout:
                return
            if code is None:
                inst.probe.kill()
                inst.probe.wait()
            inst.probe = None
            if code == 0:
                inst.healthy = True
                self._note(inst.name, "healthy")
                return
            if now - inst.started_at >= h.start_period:
                inst.failures += 1
            if inst.failures >= h.retries:
                raise ComposeFailed(f"{inst.name} is unhealthy: {h.test[1:]} failed "
                                    f"{inst.failures} times\n{inst.tail()}")
            inst.next_probe = inst.probe_started + h.interval
        if now < inst.next_probe:
            return
        kind, rest = h.test[0], h.test[1:]
        argv = rest if kind == "CMD" else ["sh", "-c", rest[0]]
        inst.probe = subprocess.Popen(self._exec(inst, argv), env=self._env(inst),
                                      cwd=self._cwd(inst.name), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        inst.probe_started = now

    def _met(self, dep: str, condition: str) -> bool:
        group = self.instances.get(dep)
        if not group:
            return False
        if condition == "service_started":
            return True
        if condition == "service_healthy":
            return all(i.healthy for i in group)
        if condition == "service_completed_successfully":
            # the exit as noted, not a fresh poll: a dependent must never start before the
            # timeline says its dependency ended
            return all(i.exit_code == 0 for i in group)
        raise ValueError(f"unknown depends_on condition {condition!r}")

    # ------------------------------------------------------------------ run
    def up(self, timeout: float = 120.0) -> float:
        """Start everything and wait until every job has exited 0; the wall seconds it took.
        `ComposeFailed` at the first failure, or if it takes longer than `timeout`."""
        t0 = self._t0 = time.monotonic()
        waiting = dict(self.services)
        while True:
            now = time.monotonic()
            for inst in self.started:
                code = inst.proc.poll()
                if code is not None and inst.exit_code is None:
                    inst.exit_code = code
                    self._note(inst.name, f"exited {code}")
                if code is not None:
                    if inst.service.name not in self.jobs:
                        raise ComposeFailed(f"{inst.name} (a server) exited with {code}\n"
                                            f"{inst.tail()}")
                    if code != 0:
                        raise ComposeFailed(f"{inst.name} exited with {code}\n{inst.tail()}")
                elif inst.service.health is not None and not inst.healthy:
                    self._poll_health(inst, now)
            for name, svc in list(waiting.items()):
                if all(self._met(d, c) for d, c in svc.depends_on.items()):
                    del waiting[name]
                    self._start(svc)
            if not waiting and all(i.exit_code == 0 for i in self.started
                                   if i.service.name in self.jobs):
                return now - t0
            if now - t0 > timeout:
                stuck = sorted(waiting) or sorted(i.name for i in self.started
                                                  if i.service.name in self.jobs
                                                  and i.proc.poll() is None)
                raise ComposeFailed(f"not up after {timeout:g} s: waiting for "
                                    f"{', '.join(stuck)}")
            time.sleep(POLL_S)

    def down(self) -> dict[str, int]:
        """Stop every process still running, dependents first; their exit codes."""
        for inst in reversed(self.started):
            if inst.probe is not None and inst.probe.poll() is None:
                inst.probe.kill()
                inst.probe.wait()
            if inst.proc.poll() is None:
                inst.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        codes = {}
        for inst in reversed(self.started):
            try:
                inst.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.proc.wait()
            codes[inst.name] = inst.proc.returncode
        return codes
