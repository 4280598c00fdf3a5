"""`testbed replay` as a user runs it: a subprocess against a running lab, the table, the
JSON, the exit status, and exactly the difference a rewritten capture holds."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from testbed.replay.golden import GOLDENS, lab_options
from testbed.replay.sessions import load_sessions
from tests.conftest import start_lab
from tests.replay.pcap_edit import alter_reply

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "captures" / "golden"


async def run_testbed(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_a_golden_replays_from_the_command_line(tmp_path):
    g = GOLDENS["chat"]
    lab = await start_lab(tmp_path, **lab_options(g))
    try:
        rc, out, err = await run_testbed("replay", str(GOLDEN / g.file), "--manifest",
                                     str(lab.config.manifest_path), "--json")
        assert rc == 0, err
        doc = json.loads(out)
        rc2, table, err2 = await run_testbed("replay", str(GOLDEN / g.file), "--manifest",
                                         str(lab.config.manifest_path))
    finally:
        await lab.stop()
    n = len(load_sessions(str(GOLDEN / g.file)))
    assert doc["exchanges"] == doc["replayed"] == n
    assert doc["matched"] + doc["masked"] == n and doc["matched"] > doc["masked"]
    assert doc["diffs"] == [] and doc["unused"] == [] and doc["unexpected"] == []
    assert {m["mask"] for m in doc["masks"]} >= {"present"}   # create_time, listed
    lab_addresses = {lab.manifest.dns_address} | {
        a for h in lab.manifest.hosts.values() for a in h.addresses}
    assert doc["targets"] and {t.rsplit(":", 1)[0] for t in doc["targets"]} <= lab_addresses
    # the second replay ran against a lab that is no longer fresh: the sync logs are longer
    assert rc2 == 1 and "first divergence: exchange" in table
    assert "masks used:" in table and "NEWSYNC" in table


async def test_one_altered_letter_is_exactly_one_diff_with_its_path_and_frame(tmp_path):
    g = GOLDENS["chat"]
    src = GOLDEN / g.file
    altered = tmp_path / "altered.pcapng"
    # the first reply (server to phone) that holds the text: the receiver's newsync
    frame = alter_reply(src, altered, "from user0001".encode(), b"frum user0001")
    lab = await start_lab(tmp_path, **lab_options(g))
    try:
        rc, out, err = await run_testbed("replay", str(altered), "--manifest",
                                     str(lab.config.manifest_path), "--json")
    finally:
        await lab.stop()
    assert rc == 1, err
    doc = json.loads(out)
    assert len(doc["diffs"]) == 1, doc["diffs"]
    d = doc["diffs"][0]
    assert d["frame"] == frame and d["command"] == "NEWSYNC"
    assert d["host"] == "long.weixin.qq.com"
    assert d["path"].startswith("cmd_list[") and d["path"].endswith("].cmd_buf.content")
    assert d["recorded"] == "你好 user0002, frum user0001"
    assert d["replayed"] == "你好 user0002, from user0001"
    assert doc["first_divergence"]["exchange"] == d["exchange"]
    assert doc["unused"] == [] and doc["unexpected"] == [] and doc["missing"] == []


async def test_ctrl_c_stops_a_long_replay_within_two_seconds(tmp_path):
    import signal
    import time

    g = GOLDENS["heartbeat"]
    # a lab at a tenth of the recorded time scale: paced as recorded, 90 s of heartbeats
    lab = await start_lab(tmp_path, **dict(lab_options(g), time_scale=g.time_scale / 10))
    try:
        for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "testbed.cli", "replay", str(GOLDEN / g.file),
                "--manifest", str(lab.config.manifest_path), "--pace", "recorded",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            deadline = time.monotonic() + 30
            while lab.long.identified_count() < 2:     # both links up: it is under way
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.02)
            sent = time.monotonic()
            proc.send_signal(signum)
            out, err = await asyncio.wait_for(proc.communicate(), 10)
            assert time.monotonic() - sent < 2.0
            assert proc.returncode == status, err.decode()
            assert "interrupted" in err.decode() and "Traceback" not in err.decode()
            for _ in range(100):                       # its links are gone
                if lab.long.identified_count() == 0:
                    break
                await asyncio.sleep(0.02)
            assert lab.long.identified_count() == 0
    finally:
        await lab.stop()


async def test_map_replays_each_recorded_user_as_another_lab_user(tmp_path):
    """--map swaps the two recorded users: each logs in as the other, texts go to the mapped
    user (to_user re-bound), names and avatar URLs in replies must be the mapped ones; what
    differs is each user's own profile (nickname, sex, city, signature), which a mask file
    lets pass, and the output lists it."""
    g = GOLDENS["chat"]
    masks = tmp_path / "profiles.toml"
    fields = ("nickname", "sex", "city", "signature")
    masks.write_text("".join(f'[{name}]\n' + "".join(
        f'"cmd_list[].cmd_buf.{f}" = "ignore"\n' for f in fields) for name in
        ("NEWINIT", "NEWSYNC")))
    lab = await start_lab(tmp_path, **lab_options(g))
    try:
        rc, out, err = await run_testbed(
            "replay", str(GOLDEN / g.file), "--manifest", str(lab.config.manifest_path),
            "--map", "user0001=user0002", "--map", "2=user0001", "--mask", str(masks),
            "--json")
        bad_rc, _, bad_err = await run_testbed(
            "replay", str(GOLDEN / g.file), "--manifest", str(lab.config.manifest_path),
            "--map", "user0001")
    finally:
        await lab.stop()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["diffs"] == [] and doc["unused"] == []
    logins = [r["detail"] for r in doc["rows"] if r["command"] == "MANUALAUTH"]
    assert sorted(logins) == ["logged in afresh as user0001 (uin 1)",
                              "logged in afresh as user0002 (uin 2)"]
    rows = {r["exchange"]: r for r in doc["rows"]}
    sends = [r for r in doc["rows"] if r["command"] == "NEWSENDMSG"]
    assert sends and all(r["status"] in ("match", "masked") for r in sends)
    used = {(m["path"], m["origin"]) for m in doc["masks"]}
    assert ("cmd_list[].cmd_buf.nickname", str(masks)) in used
    assert any(m["mask"] == "captured username" for m in doc["masks"])
    assert rows and doc["rebound"] > 0
    assert bad_rc == 2 and "RECORDED=LAB" in bad_err
