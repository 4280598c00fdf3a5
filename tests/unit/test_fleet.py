"""The fleet runner (`testbed.fleet`): workers in processes, one channel each way,
children that never outlive their parent; and the one scheme for clients' source addresses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.fleet import Fleet, WorkerFailed
from testbed.lab.addressing import MAX_CLIENTS, client_address

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- workers
async def chatty(payload: int, channel) -> int:
    """Says hello, answers pings until told to stop, returns its payload times ten."""
    channel.send("hello", payload, os.getpid())
    while True:
        kind, *args = await channel.receive()
        if kind == "ping":
            channel.send("pong", payload * 100 + args[0])
        elif kind == "stop":
            return payload * 10


async def fails_on_two(payload: int, channel) -> int:
    if payload == 2:
        raise ValueError(f"bad payload {payload}")
    await asyncio.sleep(3600)
    return payload


async def exits_on_one(payload: int, channel) -> int:
    if payload == 1:
        os._exit(3)
    return payload


async def fails_once(marker: str, channel) -> str:
    """Raises the first time (no marker file yet), then says hello and waits for stop."""
    if not os.path.exists(marker):
        Path(marker).touch()
        raise RuntimeError("first start fails")
    channel.send("hello", os.getpid())
    await channel.receive()
    return "second start"


async def sleeper(payload: int, channel) -> None:
    channel.send("up", os.getpid())
    await asyncio.sleep(3600)


async def stuck(payload: int, channel) -> None:
    """Blocks its event loop: only the kernel (PR_SET_PDEATHSIG) can stop it with the parent."""
    channel.send("up", os.getpid())
    time.sleep(3600)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (PID 1 of a container may not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_dead(pids: list[int], timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not all(_dead(p) for p in pids):
        assert time.monotonic() - t0 < timeout, f"still alive: {pids}"
        time.sleep(0.02)
    return time.monotonic() - t0


# ---------------------------------------------------------------------------- talking
@pytest.mark.parametrize("spawn", [True, False], ids=["processes", "in-process"])
async def test_workers_talk_both_ways_and_results_come_back_in_order(spawn):
    async with Fleet(chatty, [1, 2, 3], spawn=spawn, loop="asyncio", name="t") as fleet:
        hello = await fleet.collect("hello", timeout=60)
        assert [h[0] for h in hello] == [1, 2, 3]
        pids = {h[1] for h in hello}
        if spawn:
            assert pids == set(fleet.pids) and len(pids) == 3 and os.getpid() not in pids
        else:
            assert pids == {os.getpid()} and fleet.pids == []
        fleet.send(1, "ping", 7)                 # one worker ...
        assert (await fleet.receive(timeout=10)).value == 207
        fleet.broadcast("ping", 5)               # ... and all of them
        assert await fleet.collect("pong", timeout=10) == [105, 205, 305]
        fleet.broadcast("stop")
        seen = []
        assert await fleet.run(on_message=seen.append) == [10, 20, 30]
        assert seen == [] and fleet.done()


@pytest.mark.parametrize("spawn", [True, False], ids=["processes", "in-process"])
async def test_a_failing_worker_names_itself_and_the_others_are_stopped(spawn):
    fleet = Fleet(fails_on_two, [0, 1, 2, 3], spawn=spawn, loop="asyncio", name="phones")
    with pytest.raises(WorkerFailed) as info:
        async with fleet:
            pids = fleet.pids
            await fleet.run()
    assert info.value.worker == 2 and info.value.name == "phones-3"
    assert "ValueError: bad payload 2" in str(info.value)
    if spawn:
        assert len(pids) == 4
        assert _wait_dead(pids, timeout=5) < 5     # SIGTERM at once, not a polite wait
    else:
        assert isinstance(info.value.__cause__, ValueError)


async def test_a_worker_that_dies_is_reported_or_replaced():
    async with Fleet(exits_on_one, [0, 1, 2], loop="asyncio") as fleet:
        with pytest.raises(WorkerFailed, match="exited with code 3 before returning"):
            await fleet.run()
    failed = []
    async with Fleet(exits_on_one, [0, 1, 2], loop="asyncio") as fleet:
        results = await fleet.run(on_failure=lambda f: failed.append(f.name) or -1)
    assert results == [0, -1, 2] and failed == ["fleet-2"]


async def test_a_killed_worker_restarts_in_a_new_process_and_its_old_messages_are_dropped():
    async with Fleet(chatty, [1, 2], loop="asyncio", name="srv") as fleet:
        hello = await fleet.collect("hello", timeout=60)
        old = fleet.pids[0]
        assert hello[0] == (1, old)
        fleet.send(0, "ping", 1)
        fleet.send(0, "ping", 2)
        await asyncio.sleep(0.5)          # its answers are in the pipe, unread
        os.kill(old, signal.SIGKILL)
        with pytest.raises(WorkerFailed, match="exited with code -9") as info:
            while True:
                m = await fleet.receive(timeout=10)
                assert m.kind == "pong"   # read before the death is reported
        assert info.value.worker == 0
        fleet.send(1, "ping", 3)
        fleet.restart(0)
        new = fleet.pids[0]
        assert new != old and _dead(old)
        got = [await fleet.receive(timeout=60) for _ in range(2)]
        assert sorted((m.worker, m.kind, m.value) for m in got) == [
            (0, "hello", (1, new)), (1, "pong", 203)]
        with pytest.raises(RuntimeError, match="still running"):
            fleet.restart(0)
        fleet.broadcast("stop")
        assert await fleet.run() == [10, 20]


async def test_a_restarted_worker_is_not_taken_for_dead_by_its_old_process_exit(tmp_path):
    """The old process's exit is reported after its error; restarting in between, the
    restarted worker must not be taken for the one that exited."""
    async with Fleet(fails_once, [str(tmp_path / "marker")], loop="asyncio") as fleet:
        with pytest.raises(WorkerFailed, match="first start fails"):
            await fleet.receive(timeout=60)
        await asyncio.sleep(0.5)      # its process ends meanwhile: that exit is queued
        fleet.restart(0)
        m = await fleet.receive(timeout=60)
        assert (m.kind, m.value) == ("hello", fleet.pids[0])
        await asyncio.sleep(0.3)
        fleet.send(0, "stop")
        assert await fleet.run() == ["second start"]


async def test_a_quiet_fleet_times_out_naming_who():
    async with Fleet(sleeper, [0], spawn=False, name="quiet") as fleet:
        await fleet.collect("up", timeout=10)
        with pytest.raises(TimeoutError, match="quiet-1"):
            await fleet.receive(timeout=0.05)


# ---------------------------------------------------------------------------- dying together
PARENT = """
import asyncio, json, sys
from testbed.fleet import Fleet
import tests.unit.test_fleet as t

async def main():
    async with Fleet(getattr(t, sys.argv[1]), [0, 1], loop="asyncio") as fleet:
        up = await fleet.collect("up", timeout=60)
        print(json.dumps(up), flush=True)
        await fleet.run()

asyncio.run(main())
"""


@pytest.mark.parametrize("sig,worker", [(signal.SIGINT, "sleeper"), (signal.SIGTERM, "sleeper"),
                                        (signal.SIGKILL, "sleeper"), (signal.SIGINT, "stuck"),
                                        (signal.SIGKILL, "stuck")])
def test_children_die_with_their_parent(sig, worker):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, worker], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        children = json.loads(line)
        assert len(children) == 2 and parent.pid not in children
        if sig == signal.SIGINT:   # Ctrl-C in a terminal: the whole process group
            os.killpg(parent.pid, sig)
        else:                      # a signal to the parent alone
            parent.send_signal(sig)
        parent.wait(10)
        took = _wait_dead(children, timeout=5)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert took < 5
    assert "Process " not in parent.stderr.read()   # no child reported an exception


# ---------------------------------------------------------------------------- addresses
def test_one_source_address_per_client_outside_every_lab_block():
    lab = "127.123.45.53"
    addrs = [client_address(lab, i) for i in range(MAX_CLIENTS)]
    assert len(set(addrs)) == MAX_CLIENTS
    assert addrs[0] == "127.99.0.1" and addrs[250] == "127.99.1.1"
    assert all(a.startswith("127.99.") and not a.endswith((".0", ".255")) for a in addrs)
    # the kernel chooses for a one-address lab and for a namespace lab
    assert client_address("127.0.0.1", 0) is None
    assert client_address("198.18.0.53", 0) is None
    with pytest.raises(ValueError):
        client_address(lab, MAX_CLIENTS)
