"""A capture made by the sniffer (real kernel packets, `testbed record --run`) replays as
well as one made by the tap."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from testbed.replay.golden import GOLDENS, lab_options, record
from testbed.replay.player import replay
from testbed.replay.result import Status
from testbed.replay.sessions import load_sessions
from tests.conftest import start_lab


def _reason():
    if shutil.which("unshare") is None or shutil.which("tcpdump") is None:
        return "needs unshare (util-linux) and tcpdump"
    flags = ["--net"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--net"]
    p = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
    return None if p.returncode == 0 else f"no namespaces here: {p.stderr.strip()}"


@pytest.mark.skipif(_reason() is not None, reason=str(_reason()))
@pytest.mark.parametrize("name", ["chat", "media"])
async def test_a_sniffed_capture_replays_with_zero_diffs(name, tmp_path):
    g = GOLDENS[name]
    path = await asyncio.to_thread(record, g, tmp_path, how="sniffer")
    sessions = load_sessions(str(path))
    assert sessions.made_by == "sniffer" and sessions.recorded_manifest is None
    lab = await start_lab(tmp_path, **lab_options(g))
    try:
        result = await replay(sessions, lab.manifest)
    finally:
        await lab.stop()
    bad = [r.to_dict() for r in result.rows if r.status not in (Status.MATCH, Status.MASKED)]
    assert bad == []
    assert result.replayed == len(sessions) > 20
    kinds = {str(x.kind) for x in sessions.exchanges}
    assert kinds >= {"dns", "login", "cgi", "long", "push"}

