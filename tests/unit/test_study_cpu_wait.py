"""The study's lag monitor tells a loop's own slowness from a machine short of cores: each
sample also says how long the loop's thread waited for a CPU (`measure.CpuWait`), and the
figures sum it over the windows and count the stalls that were mostly such a wait."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from testbed.lab.clock import Clock
from testbed.study.heartbeat.measure import CpuWait, LagMonitor, cpu_wait_between

pytestmark = pytest.mark.skipif(CpuWait.of_this_thread() is None,
                                reason="the kernel does not count a thread's wait for a CPU")


async def _monitor(seconds: float) -> LagMonitor:
    """A lag monitor beside work that keeps the loop busy 2 ms in every 3 (as the study's
    loops are at 1,000 phones a policy)."""
    monitor = LagMonitor(Clock(scale=1))
    task = asyncio.ensure_future(monitor.run())
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        busy = time.perf_counter() + 0.002
        while time.perf_counter() < busy:
            pass
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return monitor


def test_a_loop_sharing_its_cpu_with_a_busy_process_is_seen_waiting():
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c",
                            f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {cpu})          # this thread only: the loop's
        try:
            shared = asyncio.run(_monitor(0.6))
        finally:
            os.sched_setaffinity(0, before)
    finally:
        hog.kill()
        hog.wait()
    assert len(shared.cpu_waits) == len(shared.samples) > 10
    span = (shared.samples[0][0], shared.samples[-1][0])
    waited, stalls = cpu_wait_between(shared.samples, shared.cpu_waits, *span,
                                      lambda lag: lag >= 0.0075)
    # the hog takes its share of the CPU whenever the loop wants it: a good part of the
    # 0.6 s is a wait (the kernel counts it by its tick, 4 ms on a 250 Hz kernel)
    assert waited > 0.1
    # (which samples the kernel's ticks put the wait in, and how long the lags, varies)
    stalled = sum(1 for _, lag in shared.samples if lag >= 0.0075)
    assert 0 <= stalls <= stalled


def test_waits_are_summed_over_the_window_only_and_none_when_unknown():
    samples = [(1.0, 0.001), (2.0, 0.020), (3.0, 0.010), (9.0, 0.030)]
    waits = [0.0, 0.016, 0.002, 0.030]

    def stall(lag: float) -> bool:
        return lag >= 0.0075

    assert cpu_wait_between(samples, waits, 1.0, 3.0, stall) == (pytest.approx(0.018), 1)
    assert cpu_wait_between(samples, waits, 0.0, 10.0, stall) == (pytest.approx(0.048), 2)
    assert cpu_wait_between(samples, [], 0.0, 10.0, stall) is None
    assert cpu_wait_between(samples, waits[:3], 0.0, 10.0, stall) is None   # not one a sample
    assert cpu_wait_between(samples, waits, 0.0, 10.0, lambda lag: False) == \
        (pytest.approx(0.048), 0)


def test_the_warning_says_when_the_stalls_were_the_machines():
    from testbed.study.heartbeat import StudyResult
    from testbed.study.heartbeat.cli import stall_advice
    from testbed.study.heartbeat.render import timing_summary

    machine = StudyResult(config={}, policies=[], stalls=40, stall_threshold_s=15.0,
                          cpu_wait_s=16.5, stalls_waiting_for_cpu=31)
    assert "31 of them were mostly a wait for a CPU" in stall_advice(machine)
    assert "16.5 s" in stall_advice(machine) and "fewer --clients" in stall_advice(machine)
    assert "31 of them mostly waiting for a CPU; the loops waited 16.5 s" in \
        timing_summary(machine)
    own = StudyResult(config={}, policies=[], stalls=40, stall_threshold_s=15.0,
                      cpu_wait_s=0.2, stalls_waiting_for_cpu=3)
    assert "rerun, or use a lower --time-scale" in stall_advice(own)
    unknown = StudyResult(config={}, policies=[], stalls=40, stall_threshold_s=15.0)
    assert "rerun" in stall_advice(unknown) and "CPU" not in timing_summary(unknown)[-60:]
