"""Ctrl-C (SIGINT) and SIGTERM stop every long-running command, as a user would send them:
each command is a real process in a process group of its own, the signal goes to its PID in
the middle of its run, and within 2 s it has exited 130 / 143, with no process of its group
left, its capture closed (a file `analyze` reads whole) and its manifest (passwords) gone."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mocks.runner import LabConfig, start_lab
from testbed.capture.analyze import analyze
from testbed.client.resolver import Resolver
from testbed.lab.addressing import LONG, AddressPlan
from testbed.lab.manifest import load_manifest

from tests.conftest import netns_unavailable

from .helpers import process_group

STOP_WITHIN_S = 2.0
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Command:
    """A `testbed` command started as a user's shell would start a job: its own process
    group, optionally with SIGINT ignored (a background job of a non-interactive shell)."""

    def __init__(self, tmp_path: Path, *argv: str, ignore_sigint: bool = False) -> None:
        self.tmp = tmp_path / "tmp"      # TMPDIR: whatever it leaves behind is seen
        self.tmp.mkdir(exist_ok=True)
        self.out_path, self.err_path = tmp_path / "stdout", tmp_path / "stderr"
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint \
            else None
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.cli", *argv], stdout=out, stderr=err,
                start_new_session=True, preexec_fn=preexec, cwd=tmp_path,
                env=dict(os.environ, TMPDIR=str(self.tmp)))

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def group(self) -> list[int]:
        """PIDs of the processes in the command's process group, itself included."""
        return process_group(self.proc.pid)

    def wait_until(self, condition, timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, \
                f"exited early ({self.proc.returncode}): {self.stderr[-2000:]}"
            assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
            time.sleep(0.05)

    def stop(self, sig: int, group: bool = False) -> float:
        """Send `sig` to the command's PID (to its whole process group with `group`, as a
        terminal's Ctrl-C does); assert it exits with 128 + sig and leaves no process
        behind, both within STOP_WITHIN_S. Returns the seconds it took."""
        t0 = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)
        try:
            rc = self.proc.wait(timeout=STOP_WITHIN_S + 10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"still running 12 s after {sig!r}: {self.stderr[-2000:]}")
        while self.group() and time.monotonic() - t0 < STOP_WITHIN_S + 5:
            time.sleep(0.02)
        took = time.monotonic() - t0
        left = self.group()
        if left:
            os.killpg(self.proc.pid, signal.SIGKILL)
        assert rc == STATUS[sig], f"exit status {rc}: {self.stderr[-2000:]}"
        assert not left, f"processes left in the group: {left}"
        assert took < STOP_WITHIN_S, f"took {took:.2f} s to stop: {self.stderr[-3000:]}"
        assert "Traceback" not in self.stderr, self.stderr
        assert list(self.tmp.iterdir()) == []
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def command(tmp_path):
    started: list[Command] = []

    def start(*argv: str, **kw) -> Command:
        c = Command(tmp_path, *argv, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def assert_whole_capture(path: Path) -> None:
    a = analyze(str(path))
    assert not a.truncated and a.error is None, a.error
    assert a.packets > 0


def _subnet() -> str:
    return AddressPlan.random_loopback().prefix


@pytest.mark.parametrize("sig,group", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                       (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "Ctrl-C-to-the-group"])
def test_demo_stops_mid_session(command, tmp_path, sig, group):
    out = tmp_path / "demo"
    c = command("demo", "--out", str(out))
    manifest, capture = out / "manifest.json", out / "demo.pcapng"
    c.wait_until(manifest.exists, what="the demo's lab is up")
    # the tap flushes every second: a capture with packets means the session is running
    c.wait_until(lambda: capture.exists() and capture.stat().st_size > 5000,
                 what="phones on the wire")
    c.stop(sig, group)
    assert not manifest.exists()
    assert_whole_capture(capture)


@pytest.mark.parametrize("sig,ignored", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                         (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-ignored-by-the-shell"])
def test_lab_up_stops(command, tmp_path, sig, ignored):
    manifest, capture = tmp_path / "m.json", tmp_path / "lab.pcapng"
    c = command("lab", "up", "--users", "2", "--manifest", str(manifest), "--subnet",
                _subnet(), "--record", str(capture), ignore_sigint=ignored)
    c.wait_until(manifest.exists, what="the manifest")
    m = load_manifest(manifest)
    answers = asyncio.run(Resolver(m.dns_address, m.dns_port).resolve(LONG))
    assert len(answers) >= 2     # the lab serves: its capture holds a query and its answer
    c.stop(sig)
    assert not manifest.exists()
    assert_whole_capture(capture)


@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["Ctrl-C-to-the-group", "SIGTERM"])
def test_lab_of_processes_stops_with_its_hosts(command, tmp_path, redis_url, sig, group):
    """`lab up --store redis://`: every host a `testbed serve` process of its own; all of
    them stop, and the store's namespace is emptied."""
    import uuid
    manifest = tmp_path / "m.json"
    c = command("lab", "up", "--users", "2", "--manifest", str(manifest), "--subnet",
                _subnet(), "--store", f"{redis_url}?namespace=sig-{uuid.uuid4().hex[:12]}",
                "--workers", "1")
    c.wait_until(manifest.exists, timeout=60, what="the manifest")
    assert len(c.group()) >= 7              # itself and a process per host at least
    c.stop(sig, group)
    assert not manifest.exists()
    assert not (tmp_path / "m-run").exists() and not (tmp_path / "m-ca").exists()


@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["Ctrl-C-to-the-group", "SIGTERM"])
async def test_emulate_stops_with_its_phone_processes(command, tmp_path, sig, group):
    lab = await start_lab(LabConfig(users=4, time_scale=100,
                                    manifest_path=tmp_path / "lab" / "m.json"))
    try:
        c = command("emulate", "heartbeat", "--manifest", str(lab.manifest_path),
                    "--clients", "4", "--processes", "2", "--duration", "100000")

        async def logged_in() -> None:
            while lab.long.connections_total < 4:
                assert c.proc.poll() is None, c.stderr
                await asyncio.sleep(0.05)

        await asyncio.wait_for(logged_in(), 60)
        assert len(c.group()) >= 3          # itself and its two phone processes
        await asyncio.to_thread(c.stop, sig, group)
    finally:
        await lab.stop()


@pytest.mark.parametrize("layout, group, sig", [
    # one lab, its phones in a process of its own: itself, the resource tracker, the phones
    (["--processes", "1"], 3, signal.SIGTERM),
    # two shards, each a lab and its phones in a process of its own
    (["--shards", "2"], 4, signal.SIGINT)], ids=["phone-process", "shards"])
def test_study_stops(command, layout, group, sig):
    c = command("study", "heartbeat", "--clients", "2", "--policy", "fixed:270", "--hours",
                "24", "--time-scale", "100", *layout, "--quiet")
    # the workers have started once the group holds more than the study itself and
    # multiprocessing's resource tracker
    c.wait_until(lambda: len(c.group()) >= group, what="the study's processes")
    time.sleep(1.5)
    c.stop(sig)


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_record_iface_stops(command, tmp_path):
    out = tmp_path / "lo.pcapng"
    c = command("record", "--iface", "lo", "--out", str(out), "--filter", "tcp port 9")
    c.wait_until(out.exists, what="the capture file")
    with pytest.raises(OSError):     # a packet or two on the wire: a SYN and its RST
        socket.create_connection(("127.0.0.1", 9), timeout=2)
    time.sleep(0.2)
    c.stop(signal.SIGINT)
    assert_whole_capture(out)


@pytest.mark.skipif(shutil.which("unshare") is None or netns_unavailable() is not None,
                    reason="needs unshare and root")
@pytest.mark.parametrize("group", [False, True], ids=["SIGINT", "Ctrl-C-to-the-group"])
def test_record_run_stops_the_command_and_its_capture(command, tmp_path, group):
    out, demo = tmp_path / "sniffed.pcapng", tmp_path / "demo"
    c = command("record", "--out", str(out), "--time-scale", "100", "--run", "--",
                sys.executable, "-m", "testbed.cli", "demo", "--out", str(demo))
    c.wait_until((demo / "manifest.json").exists, what="the demo's lab, in the namespace")
    c.wait_until(lambda: out.exists() and out.stat().st_size > 5000, what="packets")
    c.stop(signal.SIGINT, group)
    assert not (demo / "manifest.json").exists()
    assert_whole_capture(out)
    assert_whole_capture(demo / "demo.pcapng")
