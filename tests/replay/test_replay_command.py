"""`testbed replay` as a user runs it: a subprocess against a running lab, the table, the
JSON, the exit status, and exactly the difference a rewritten capture holds."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from testbed.capture.packets import decode, read_capture
from testbed.replay.golden import GOLDENS, lab_options
from testbed.replay.sessions import load_sessions
from tests.conftest import start_lab
from tests.replay.pcap_edit import copy_capture, replace_in_frame

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
    text = "from user0001".encode()
    # the first reply (server to phone) that holds the text: the receiver's newsync
    frame = None
    with read_capture(src) as cap:
        for pkt in cap:
            item = decode(pkt)
            if getattr(item, "sport", None) and text in pkt.data and item.dport > item.sport:
                frame = pkt.index
                break
    assert frame is not None
    altered = copy_capture(src, tmp_path / "altered.pcapng",
                           edit=lambda i, data: replace_in_frame(data, text,
                                                                  b"frum user0001")
                           if i == frame else data)
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
