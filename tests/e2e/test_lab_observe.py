"""The running lab is observable, as a user watches it: `testbed lab up -v` prints a line per
request, what it served when it stops, and leaves no file behind; `testbed lab status` says
what is up."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

from .helpers import start_lab_up, wait_manifest

LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<host>\S+) (?P<client>[\d.]+:\d+)(?: \((?P<user>\w+)\))? "
                  r"(?P<what>.+) -> (?P<result>.+) (?P<ms>[\d.]+) ms$")


def _testbed(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


def test_lab_up_v_logs_each_request_and_says_what_it_served(tmp_path):
    proc, path = start_lab_up(tmp_path, "-v", "--time-scale", "100", users=2)
    try:
        m = wait_manifest(proc, path)
        ca = m.ca_cert
        p = _testbed("emulate", "login", "--manifest", str(path), "--clients", "2", "--json")
        assert p.returncode == 0, p.stderr
        # the lab's status meanwhile: everything up
        st = _testbed("lab", "status", "--manifest", str(path), "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["up"] is True and status["users"] == 2
        hosts = {e["host"] for e in status["endpoints"]}
        assert hosts == {*m.hosts, "lab resolver (DNS)"}
        assert all(e["up"] for e in status["endpoints"])
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    lines = [LINE.match(x) for x in err.splitlines() if LINE.match(x)]
    logins = [x for x in lines if x["what"] == "manualauth (TLS)"]
    assert sorted(x["user"] for x in logins) == ["user0001", "user0002"]
    assert all(x["result"] == "ok" and x["host"] == "short.weixin.qq.com" for x in logins)
    assert sum(x["what"] == "IDENTIFY" and x["host"] == "long.weixin.qq.com"
               for x in lines) == 2
    assert any(x["host"] == "dns" and x["what"] == "long.weixin.qq.com"
               and x["result"] == "answered" for x in lines)
    # the status probes' DNS queries are requests too; the stop summary counts every line
    assert "served" in out and "manualauth (TLS) 2" in out
    row = next(r for r in out.splitlines() if "short.weixin.qq.com" in r and "manualauth" in r)
    short = sum(x["host"] == "short.weixin.qq.com" for x in lines)
    assert f" {short} " in row
    # nothing left behind: the manifest (it holds passwords) and the CA file it wrote
    assert not path.exists()
    assert not (tmp_path / "m-ca.pem").exists() and not os.path.exists(ca)


def test_lab_up_json_keeps_stdout_one_document(tmp_path):
    proc, path = start_lab_up(tmp_path, "--json", "--time-scale", "100", users=2)
    try:
        wait_manifest(proc, path)
        p = _testbed("emulate", "login", "--manifest", str(path), "--clients", "2", "--json")
        assert p.returncode == 0, p.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "hosts" in json.loads(out)           # the host document, and nothing else
    served = re.search(r"^note: served: (.*)$", err, re.M)
    assert served, err
    counts = dict(x.rsplit(" ", 1) for x in served.group(1).split(", "))
    assert int(counts["short.weixin.qq.com"]) >= 4      # 2 logins over TLS, 2 newinits
    assert int(counts["long.weixin.qq.com"]) >= 4       # 2 IDENTIFY, 2 NEWSYNC
    assert not re.search(r"^\d\d:\d\d:\d\d ", err, re.M)     # no -v: no request lines


def test_lab_status_of_a_lab_that_is_gone(tmp_path):
    proc, path = start_lab_up(tmp_path, users=1)
    try:
        wait_manifest(proc, path)
        stale = tmp_path / "stale.json"
        shutil.copy(path, stale)      # as a killed lab leaves it
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    p = _testbed("lab", "status", "--manifest", str(stale), "--timeout", "1")
    assert p.returncode == 1
    assert "DOWN" in p.stdout and " up " not in p.stdout
    assert p.stderr.strip().splitlines() == [
        f"error: 10 of 10 endpoints of the lab in {stale} do not answer: is the lab still "
        f"up? (a lab removes its manifest when it stops; this one was left by a lab that was "
        f"killed)"]
    missing = _testbed("lab", "status", "--manifest", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "no manifest at" in missing.stderr
