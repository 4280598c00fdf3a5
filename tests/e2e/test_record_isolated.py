"""`testbed record --run -- COMMAND`: a real capture of a command's traffic, in a private
user+network namespace, without root."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from testbed.capture.analyze import analyze
from testbed.capture.isolated import record_command
from testbed.cli import main


def _userns_reason():
    if shutil.which("unshare") is None or shutil.which("tcpdump") is None:
        return "needs unshare (util-linux) and tcpdump"
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return f"user namespaces are not allowed here: {p.stderr.strip()}"
    return None


@pytest.mark.skipif(_userns_reason() is not None, reason=str(_userns_reason()))
def test_demo_recorded_from_a_user_namespace_verifies(tmp_path, capsys):
    out = tmp_path / "sniffed.pcapng"
    # userns=True takes the unprivileged path even when the tests run as root
    rc = record_command(out, [sys.executable, "-m", "testbed.cli", "demo", "--out",
                              str(tmp_path / "demo")], comment={"time_scale": 100.0},
                        userns=True)
    assert rc == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--storyboard", "--secret", "pass0001", "--phones", "2",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_id = {v["id"]: v for v in doc["verdicts"]}
    assert all(v["ok"] for v in by_id.values() if v["scope"] == "lab")
    # each connection once, though the sniffer saw both sides of the lab's relay
    assert by_id["4"]["detail"].startswith("2 TLS logins"), by_id["4"]["detail"]
    assert by_id["16"]["detail"].startswith("2 long connections"), by_id["16"]["detail"]
    # heartbeats read back in protocol time through the recorded time scale
    interval = float(re.search(r"median interval ([\d.]+) s", by_id["17"]["detail"]).group(1))
    assert abs(interval - 300) < 15
    assert analyze(str(out)).meta["how"] == "sniffer"


def test_record_needs_an_interface_or_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["record", "--out", "x.pcapng"])
    assert info.value.code == 2
    assert "needs --iface" in capsys.readouterr().err
    assert record_command("x.pcapng", []) == 2
