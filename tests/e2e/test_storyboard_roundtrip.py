"""The storyboard round trip: recorded by the tap and by the sniffer (in a namespace), both
captures pass `testbed verify --storyboard`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testbed.cli import main
from testbed.client.scenarios import run_scenario

from ..conftest import start_lab

REPO = Path(__file__).resolve().parents[2]


async def test_tap_capture_verifies(tmp_path, capsys):
    capture = tmp_path / "tap.pcapng"
    lab = await start_lab(tmp_path, users=2, time_scale=200.0, record=capture)
    try:
        r = await run_scenario("storyboard", lab.manifest, clients=2, seed=1,
                               local_addr=lab.config.plan.phone)
        assert r.ok, r
    finally:
        await lab.stop()
    assert main(["verify", str(capture), "--storyboard", "--secret", "pass0001",
                 "--secret", "pass0002", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_id = {v["id"]: v for v in doc["verdicts"]}
    assert all(v["ok"] for v in by_id.values() if v["scope"] == "lab")
    assert "2 passwords searched" in by_id["4"]["detail"]
    # a capture where a password leaks fails statement 4 and the command exits 1
    assert main(["verify", str(capture), "--storyboard", "--secret", "user0001"]) == 1


def test_sniffer_capture_in_a_namespace_verifies(netns, tmp_path, capsys):
    out = tmp_path / "sniffed.pcapng"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable,
                        str(Path(__file__).with_name("netns_storyboard.py")), str(out)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["ok"], summary["errors"]
    assert summary["packets"] > 200 and summary["kernel_drops"] == 0
    args = ["verify", str(out), "--storyboard", "--json"]
    for pw in summary["passwords"]:
        args += ["--secret", pw]
    rc = main(args)
    doc = json.loads(capsys.readouterr().out)
    failed = [(v["id"], v["detail"]) for v in doc["verdicts"] if v["ok"] is False]
    assert rc == 0 and not failed, failed
    lab_ok = [v for v in doc["verdicts"] if v["scope"] == "lab" and v["ok"]]
    assert len(lab_ok) == 14
