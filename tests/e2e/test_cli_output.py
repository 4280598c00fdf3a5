"""The command line's conventions, command by command, as a user meets them: tables on
stdout within 100 columns, diagnostics on stderr, `--json` wherever a table is printed, and
one-line errors that name a path once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mocks.runner import LabConfig, start_lab
from testbed.client.scenarios import run_scenario
from tests.conftest import netns_unavailable

WIDTH = 100


def run_cli(*argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}   # a pipe, no terminal
    return subprocess.run([sys.executable, "-m", "testbed.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


def assert_table_on_stdout(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, \
        "\n".join(line for line in lines if len(line) > WIDTH)
    for w in words:
        assert w in p.stdout and w not in p.stderr, w


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A real lab session recorded by the tap: the login and chat of two phones."""
    import asyncio

    tmp = tmp_path_factory.mktemp("session")

    async def go():
        lab = await start_lab(LabConfig(users=2, time_scale=100, record=tmp / "s.pcapng",
                                        manifest_path=tmp / "m.json"))
        try:
            r = await run_scenario("chat", lab.manifest, clients=2)
            assert r.ok, r.errors
        finally:
            await lab.stop()

    asyncio.run(go())
    return tmp / "s.pcapng"


def test_profiles_table_and_json():
    p = run_cli("profiles")
    assert_table_on_stdout(p, "lab-report-2013", "wechat-3.6")
    doc = json.loads(run_cli("profiles", "--json").stdout)
    assert {d["name"] for d in doc} >= {"lab-report-2013", "mars-smart", "wechat-3.6"}
    assert all(len(d["description"]) > 0 and d["heartbeat_s"] > 0 for d in doc)


def test_analyze_verify_report_on_stdout_within_100_columns(session, tmp_path):
    a = run_cli("analyze", str(session))
    assert_table_on_stdout(a, "flows", "long.weixin.qq.com")
    doc = json.loads(run_cli("analyze", str(session), "--json").stdout)
    assert any(f["host"] == "short.weixin.qq.com" for f in doc["flows"])

    v = run_cli("verify", str(session))
    assert v.returncode in (0, 1), v.stderr     # a chat alone leaves statements unmet
    assert "storyboard verdicts" in v.stdout and "Traceback" not in v.stderr
    assert max(len(line) for line in v.stdout.splitlines()) <= WIDTH
    assert json.loads(run_cli("verify", str(session), "--json").stdout)["verdicts"]

    r = run_cli("report", str(session), "--html", str(tmp_path / "r.html"))
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "r.html")


async def test_emulate_and_lab_up_tables(tmp_path):
    import asyncio

    lab = await start_lab(LabConfig(users=2, time_scale=1000,
                                    manifest_path=tmp_path / "m.json"))
    try:
        p = await asyncio.to_thread(run_cli, "emulate", "login", "--manifest",
                                    str(lab.manifest_path))
        assert_table_on_stdout(p, "login over TLS", "what the phones did")
        p = await asyncio.to_thread(run_cli, "emulate", "login", "--manifest",
                                    str(lab.manifest_path), "--json")
        assert json.loads(p.stdout)["ok"] is True
    finally:
        await lab.stop()

    from testbed.lab.addressing import AddressPlan
    manifest = tmp_path / "lab.json"
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "lab", "up", "--users", "2",
                             "--manifest", str(manifest), "--subnet",
                             AddressPlan.random_loopback().prefix, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not manifest.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    doc = json.loads(out)
    on_disk = json.loads(manifest.read_text()) if manifest.exists() else None
    assert on_disk is None                                 # removed when it stopped
    assert set(doc["hosts"]) >= {"long.weixin.qq.com", "short.weixin.qq.com"}
    assert doc["manifest"] == str(manifest.resolve()) and "password" not in out
    assert "manifest:" in err


def test_demo_json(tmp_path):
    p = run_cli("demo", "--out", str(tmp_path / "demo"), "--time-scale", "1000", "--json",
                timeout=180)
    doc = json.loads(p.stdout)
    assert p.returncode == (0 if doc["ok"] else 1), p.stderr
    assert doc["capture"] == str(tmp_path / "demo" / "demo.pcapng")
    assert {v["id"] for v in doc["verdicts"]} >= {"1", "17"}
    assert doc["scenario"]["scenario"] == "storyboard"


def test_one_line_errors_that_name_a_path_once(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("just some notes\n")
    for argv in (["analyze", str(text)], ["verify", str(text)]):
        p = run_cli(*argv)
        assert p.returncode == 2
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stderr.count(str(text)) == 1, p.stderr
        assert "not a pcap" in p.stderr and p.stdout == ""
    p = run_cli("report", str(text))
    assert p.returncode == 2 and p.stderr.count(str(text)) == 1, p.stderr
    # a text file given as a manifest
    p = run_cli("emulate", "login", "--manifest", str(text))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "not a lab manifest" in p.stderr and p.stderr.count(str(text)) == 1
    json_but_not = tmp_path / "other.json"
    json_but_not.write_text('{"hello": 1}')
    p = run_cli("emulate", "login", "--manifest", str(json_but_not))
    assert p.returncode == 2 and "not a lab manifest" in p.stderr, p.stderr
    # outputs where a file stands in the way of a directory
    from testbed.lab.addressing import AddressPlan
    p = run_cli("lab", "up", "--manifest", str(text / "m.json"), "--subnet",
                AddressPlan.random_loopback().prefix)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        f"error: cannot start the lab: {text}: File exists"], p.stderr
    p = run_cli("demo", "--out", str(text / "demo"))
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        f"error: {text / 'demo'}: Not a directory"], p.stderr


@pytest.mark.skipif(shutil.which("unshare") is None or netns_unavailable() is not None,
                    reason="needs unshare and root")
def test_record_run_of_a_missing_command_is_one_line(tmp_path):
    out = tmp_path / "x.pcapng"
    p = run_cli("record", "--out", str(out), "--run", "--", "/bin/nosuch")
    assert p.returncode == 127
    assert p.stderr.strip().splitlines() == [
        "error: cannot run /bin/nosuch: No such file or directory"], p.stderr
    assert not out.exists()


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_record_json(tmp_path):
    out = tmp_path / "lo.pcapng"
    p = run_cli("record", "--iface", "lo", "--out", str(out), "--filter", "tcp port 9",
                "--duration", "0.3", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["capture"] == str(out) and doc["kernel_drops"] == 0 and "packets" in doc
    assert "listening on lo" in p.stderr
