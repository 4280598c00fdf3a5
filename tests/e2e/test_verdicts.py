"""Verdicts that mean what they say, as a user meets them: `emulate heartbeat` behind a NAT
that kills every link, more phones than accounts, a TLS login's kind, `verify --set`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from .helpers import start_lab_up, wait_manifest

GOLDEN = Path(__file__).resolve().parents[2] / "captures" / "golden"


def _testbed(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def _lab(tmp_path, *extra, users=3):
    proc, manifest = start_lab_up(tmp_path, *extra, users=users)
    try:
        wait_manifest(proc, manifest)
        yield manifest
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 130


def _steps(p) -> dict:
    return {s["name"]: s for s in json.loads(p.stdout)["steps"]}


def test_heartbeat_behind_a_nat_that_kills_the_links_says_so(tmp_path):
    # the profile's 300 s heartbeat against a NAT that forgets a mapping after 60 s
    with _lab(tmp_path, "--nat-timeout", "60", "--time-scale", "1000") as manifest:
        p = _testbed("emulate", "heartbeat", "--manifest", str(manifest), "--json")
    result = json.loads(p.stdout)
    steps = _steps(p)
    assert result["metrics"]["heartbeats_answered"] == 0
    assert result["metrics"]["silent_deaths"] > 0
    assert "heartbeats answered" not in steps      # no "ok" for heartbeats nobody answered
    died = steps["links die silently behind the NAT (idle timeout 60 s, heartbeat 300 s)"]
    assert died["ok"] is True
    assert died["detail"].startswith("0 of ")
    assert f"{result['metrics']['silent_deaths']} silent deaths" in died["detail"]


def test_heartbeat_without_a_nat_is_answered(tmp_path):
    with _lab(tmp_path, "--time-scale", "1000") as manifest:
        p = _testbed("emulate", "heartbeat", "--manifest", str(manifest), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    answered = _steps(p)["heartbeats answered"]
    sent = result["metrics"]["heartbeats_sent"]
    assert answered["ok"] is True and sent > 0
    assert answered["detail"] == (f"{result['metrics']['heartbeats_answered']} of {sent} "
                                  f"heartbeats answered, 0 silent deaths")


def test_more_phones_than_accounts_is_said(tmp_path):
    with _lab(tmp_path, users=2) as manifest:
        p = _testbed("emulate", "login", "--manifest", str(manifest), "--clients", "5",
                     "--json")
    assert p.returncode == 0, p.stderr
    assert ("5 phones on a lab of 2 users: they share the accounts, up to 3 phones logged "
            "in as each user") in p.stderr
    assert "testbed lab up --users 5" in p.stderr
    json.loads(p.stdout)        # stdout stays the document alone


def test_a_tls_login_is_a_short_connection(tmp_path):
    """TLS 1.3 seals its handshake in application-data records and the server sends session
    tickets after it: neither is an exchange, so a login is one request, `short`."""
    cap = tmp_path / "lab.pcapng"
    with _lab(tmp_path, "--record", str(cap), "--time-scale", "1000") as manifest:
        p = _testbed("emulate", "login", "--manifest", str(manifest), "--clients", "3",
                     "--json")
        assert p.returncode == 0, p.stderr
    flows = json.loads(_testbed("analyze", str(cap), "--json").stdout)["flows"]
    tls = [f for f in flows if f["app"] == "tls"]
    assert len(tls) == 3
    assert [(f["kind"], f["requests"]) for f in tls] == [("short", 1)] * 3


def test_verify_says_which_expectation_sets_exist():
    cap = str(GOLDEN / "login.pcapng")
    usage = _testbed("verify", "--help").stdout
    assert "--set {storyboard}" in usage and "the only set so far" in usage
    wrong = _testbed("verify", cap, "--set", "nosuch")
    assert wrong.returncode == 2
    assert "invalid choice: 'nosuch' (choose from 'storyboard')" in wrong.stderr
    table = _testbed("verify", cap)
    assert "set storyboard: the lab report's statements" in table.stdout
    assert json.loads(_testbed("verify", cap, "--json").stdout)["set"] == "storyboard"
