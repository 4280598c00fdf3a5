"""The golden captures (captures/golden): each replays against a fresh lab with zero
differences, paced asap and as recorded; recorded pacing keeps the heartbeat's interval."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testbed.capture.analyze import analyze
from testbed.replay.golden import GOLDENS, lab_options
from testbed.replay.player import Pace, replay
from testbed.replay.result import Status
from testbed.replay.sessions import load_sessions
from tests.conftest import start_lab

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "captures" / "golden"


def clean(result) -> list:
    """What is not a match or a masked match: nothing, for a golden."""
    return [r.to_dict() for r in result.rows if r.status not in (Status.MATCH, Status.MASKED)]


def test_every_golden_is_there_with_its_readme_line():
    readme = (REPO / "captures" / "README.md").read_text()
    files = sorted(p.name for p in GOLDEN.glob("*.pcapng"))
    assert files == sorted(g.file for g in GOLDENS.values())
    for g in GOLDENS.values():
        assert f"| `golden/{g.file}` | {g.scenario} | {g.time_scale:g} | {g.what} |" in readme
        assert (GOLDEN / g.file).stat().st_size < 1_000_000   # KBs, not MBs
        s = load_sessions(str(GOLDEN / g.file))
        assert s.made_by == "tap" and s.time_scale == g.time_scale
        assert len(s.clients) == g.clients and all(c.username for c in s.clients.values())


@pytest.mark.parametrize("pace", ["asap", "recorded"])
@pytest.mark.parametrize("name", list(GOLDENS))
async def test_golden_replays_against_a_fresh_lab_with_zero_diffs(name, pace, tmp_path):
    g = GOLDENS[name]
    sessions = load_sessions(str(GOLDEN / g.file))
    lab = await start_lab(tmp_path, record=tmp_path / "replayed.pcapng", **lab_options(g))
    t0 = time.monotonic()
    try:
        result = await replay(sessions, lab.manifest, pace=Pace.parse(pace))
    finally:
        await lab.stop()
    wall = time.monotonic() - t0
    assert lab.server_errors() == []
    assert clean(result) == []
    assert result.replayed == len(sessions) and not result.diffs
    assert result.by(Status.MATCH)
    span = (sessions.exchanges[-1].start - sessions.exchanges[0].start) / g.time_scale
    if pace == "recorded":
        assert wall >= 0.95 * span          # the recorded gaps, on the lab's clock
    if name == "heartbeat" and pace == "asap":   # collapsed: no 300 s rhythm any more
        again = analyze(str(tmp_path / "replayed.pcapng"))
        beats = [f["heartbeat_s"] for f in again.flows if f["app"] == "longlink"]
        assert beats and all(b is None or b < 100 for b in beats), beats


async def test_recorded_pacing_keeps_the_heartbeat_interval(tmp_path):
    """The heartbeat golden (recorded at k = 1000) against a lab at k = 200, paced as
    recorded: the lab's own capture of the replay shows a NOOP every 300 protocol seconds on
    each link, as the recording did (15 protocol seconds are 75 ms of wall time here)."""
    g = GOLDENS["heartbeat"]
    sessions = load_sessions(str(GOLDEN / g.file))
    recorded = [f["heartbeat_s"] for f in analyze(str(GOLDEN / g.file)).flows
                if f["app"] == "longlink"]
    lab = await start_lab(tmp_path, record=tmp_path / "replayed.pcapng",
                          **dict(lab_options(g), time_scale=200))
    try:
        result = await replay(sessions, lab.manifest, pace=Pace.parse("recorded"))
    finally:
        await lab.stop()
    assert clean(result) == []
    beats = [f["heartbeat_s"] for f in analyze(str(tmp_path / "replayed.pcapng")).flows
             if f["app"] == "longlink"]
    assert len(beats) == len(recorded) == 2
    assert all(b is not None and abs(b - 300) < 15 for b in recorded + beats), (recorded, beats)


async def test_faster_pace_shortens_the_gaps(tmp_path):
    g = GOLDENS["heartbeat"]
    sessions = load_sessions(str(GOLDEN / g.file))
    span = (sessions.exchanges[-1].start - sessions.exchanges[0].start) / g.time_scale
    lab = await start_lab(tmp_path, **dict(lab_options(g), time_scale=g.time_scale / 4))
    t0 = time.monotonic()
    try:
        result = await replay(sessions, lab.manifest, pace=Pace.parse("x8"))
    finally:
        await lab.stop()
    # a lab at a quarter of the recorded scale, gaps 8 times shorter: half the span
    assert 0.45 * span <= time.monotonic() - t0 < 2 * span
    assert clean(result) == []


async def test_a_link_the_lab_closed_is_opened_again_and_the_replay_goes_on(tmp_path):
    """A lab that closes a link idle for 100 protocol seconds, and heartbeats every 300: each
    NOOP finds its link closed (0.4 s of wall time after the lab closed it, at k = 500); the
    replay opens it again, identifies it as recorded, and the NOOP is answered as it was."""
    g = GOLDENS["heartbeat"]
    sessions = load_sessions(str(GOLDEN / g.file))
    lab = await start_lab(tmp_path, server_idle_s=100, **dict(lab_options(g), time_scale=500))
    try:
        result = await replay(sessions, lab.manifest, pace=Pace.parse("recorded"))
        closed = lab.long.idle_closed
    finally:
        await lab.stop()
    noops = [r for r in result.rows if r.command == "NOOP"]
    assert len(noops) == 6 and all(r.status is Status.MATCH for r in noops)
    assert not result.diffs and not result.by(Status.MISSING)
    assert closed >= 6          # every link was closed for idleness before each beat
    opened = [t for t in result.opened if t[0] == "long.weixin.qq.com"]
    assert len(opened) == 2 + 6
