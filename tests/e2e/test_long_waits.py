"""No silent waits: a scenario that will take long says so before it starts (how long, why,
what makes it shorter), and its progress moves with the clock, not step by step."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from testbed.client.scenarios import run_scenario
from tests.conftest import start_lab


def _first_lines(proc: subprocess.Popen, want: str, timeout: float = 30.0) -> str:
    """stderr of `proc` until a line containing `want` (or it exits, or `timeout`)."""
    got = ""
    deadline = time.monotonic() + timeout
    while want not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            got += line
    return got


async def test_emulate_against_a_real_time_lab_says_how_long_first(tmp_path):
    lab = await start_lab(tmp_path, users=2, time_scale=1.0)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "emulate", "storyboard",
                                 "--manifest", str(lab.manifest_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            import asyncio
            said = await asyncio.to_thread(_first_lines, proc, "time scale")
            text = " ".join(said.split())
            assert "storyboard takes about 16 min" in text, said
            assert "960 protocol s of heartbeats" in text and "time scale 1" in text
            assert "testbed lab up --time-scale 100" in text
        finally:
            os.kill(proc.pid, signal.SIGINT)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 130
        assert out == ""                      # nothing on stdout: no result to show
    finally:
        await lab.stop()


async def test_a_short_run_says_nothing_and_a_long_duration_says_so(tmp_path):
    lab = await start_lab(tmp_path, users=2, time_scale=1000.0)
    try:
        import asyncio
        quick = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "testbed.cli", "emulate", "login",
                             "--manifest", str(lab.manifest_path), "--json"],
            capture_output=True, text=True, timeout=60)
        assert quick.returncode == 0 and "takes about" not in quick.stderr
        proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "emulate", "heartbeat",
                                 "--manifest", str(lab.manifest_path), "--duration", "100000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            said = " ".join((await asyncio.to_thread(_first_lines, proc, "time scale")).split())
            assert "heartbeat takes about 100 s" in said, said
            assert "Shorter with a shorter --duration" in said
            assert "faster lab clock" not in said     # 1000 is fast already
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 143
    finally:
        await lab.stop()


async def test_storyboard_progress_moves_with_the_clock(tmp_path):
    """At time scale 1000 the storyboard's 960 protocol s of heartbeats take ~1 s: the bar
    moves through them many times (time-based), never backwards, and ends at 1."""
    lab = await start_lab(tmp_path, users=2, time_scale=1000.0)
    seen: list[tuple[float, float, str]] = []
    try:
        r = await run_scenario("storyboard", lab.manifest, clients=2,
                               progress=lambda f, t: seen.append((time.monotonic(), f, t)))
    finally:
        await lab.stop()
    assert r.ok, (r.errors, [s for s in r.steps if not s.ok])
    fractions = [f for _, f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    beats = [(t, f) for t, f, what in seen if what == "heartbeat"]
    assert len({f for _, f in beats}) >= 4        # updates while the phones only wait
    # the heartbeats are most of the expected time at this scale: most of the bar
    assert beats[-1][1] - beats[0][1] > 0.2
