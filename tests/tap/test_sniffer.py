"""The AF_PACKET sniffer, on `lo` inside a fresh network namespace (root only)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.capture import sniffer
from testbed.capture.packets import read_capture

from .netns_sniff import MESSAGES
from ..conftest import netns_unavailable
from .tshark import fields, needs_tshark, tshark

REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("netns_sniff.py")


def _netns_reason() -> str | None:
    return netns_unavailable()


def run_in(ns: str, mode: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(HELPER), mode,
                        str(out)], capture_output=True, text=True, timeout=60, env=env,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_exchange(out: Path, port: int) -> list[list[str]]:
    """Every frame is the echo exchange on `port`, each packet exactly once."""
    rows = fields(out, "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.payload", "udp.port")
    assert rows, "nothing captured"
    assert all(str(port) in (r[0], r[1]) and not r[4] for r in rows)   # the filter held
    payloads = [bytes.fromhex(r[3].replace(":", "")) for r in rows if r[3]]
    assert sorted(payloads) == sorted(MESSAGES * 2)    # each message there and back, once
    assert [r[2] for r in rows[:3]] == ["0x0002", "0x0012", "0x0010"]
    assert sum(1 for r in rows if r[2] == "0x0002") == 1
    assert tshark(out, "-Y", "tcp.analysis.flags") == ""   # a doubled frame would be flagged
    return rows


@needs_tshark
def test_sniff_lo_in_a_namespace(netns, tmp_path):
    out = tmp_path / "lo.pcapng"
    res = run_in(netns, "api", out)
    rows = check_exchange(out, res["port"])
    st = res["stats"]
    assert st["packets"] == len(rows) and st["kernel_drops"] == 0
    assert st["skipped_outgoing"] >= st["packets"]       # lo shows every frame twice
    assert st["kernel_packets"] >= st["packets"]
    cap = read_capture(out)
    assert sum(1 for _ in cap) == len(rows) and cap.error is None
    c = cap.meta
    assert c["how"] == "sniffer" and c["synthesised"] is False
    assert c["iface"] == "lo" and c["filter"] == f"tcp port {res['port']}"
    assert c["scenario"] == "netns echo" and c["manifest"] is None
    assert cap.interfaces[0].linktype == 1 and cap.interfaces[0].name == "lo"
    assert cap.stats[0]["ifdrop"] == st["kernel_drops"]
    assert cap.stats[0]["ifrecv"] == st["kernel_packets"]


@needs_tshark
def test_record_command_until_sigint(netns, tmp_path):
    out = tmp_path / "cli.pcapng"
    res = run_in(netns, "cli", out)
    assert res["rc"] == 130, res["stderr"]      # stopped by SIGINT: 128 + 2
    check_exchange(out, res["port"])
    assert "packets captured" in res["stdout"] and "dropped by kernel" in res["stdout"]


def test_record_main_not_root(monkeypatch, tmp_path, capsys):
    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(sniffer.socket, "socket", refuse)
    assert sniffer.record_main("lo", tmp_path / "x.pcapng", None, 1.0) == 2
    err = capsys.readouterr().err
    assert "capturing needs root (CAP_NET_RAW)" in err
    assert "testbed lab up --record FILE" in err
    assert not (tmp_path / "x.pcapng").exists()


def test_record_main_really_unprivileged(tmp_path):
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    code = ("import sys; from testbed.capture.sniffer import record_main; "
            "sys.exit(record_main('lo', '/tmp/never-written.pcapng', None, 1.0))")
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    if "No module named" in p.stderr or "Permission denied: '" in p.stderr:
        pytest.skip(f"the repository is not readable by nobody: {p.stderr[-200:]}")
    assert p.returncode == 2, p.stderr
    assert "capturing needs root (CAP_NET_RAW)" in p.stderr


def test_record_main_bad_interface_and_filter(tmp_path, capsys):
    if _netns_reason():
        pytest.skip(_netns_reason())
    assert sniffer.record_main("no-such-if0", tmp_path / "a.pcapng", None, 0.1) == 2
    assert "no such interface" in capsys.readouterr().err
    assert sniffer.record_main("lo", tmp_path / "b.pcapng", "tcp port", 0.1) == 2
    assert "bad capture filter" in capsys.readouterr().err


def test_compile_bpf_parses_tcpdump(monkeypatch):
    class Done:
        returncode = 0
        stdout = "3\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n"
        stderr = ""
    monkeypatch.setattr(sniffer.subprocess, "run", lambda *a, **k: Done())
    assert sniffer.compile_bpf("lo", "ip") == [(40, 0, 0, 12), (21, 0, 1, 2048),
                                               (6, 0, 0, 262144)]
    Done.stdout = "2\n40 0 0 12\n"
    with pytest.raises(sniffer.SnifferError):
        sniffer.compile_bpf("lo", "ip")


def test_filter_attaches_to_a_packet_socket():
    if _netns_reason():
        pytest.skip(_netns_reason())
    s = sniffer._open("lo", "tcp port 9")
    try:
        assert s.family == socket.AF_PACKET
    finally:
        s.close()


def test_record_main_unwritable_output(tmp_path, capsys):
    if _netns_reason():
        pytest.skip(_netns_reason())
    (tmp_path / "file").write_text("")
    assert sniffer.record_main("lo", tmp_path / "file" / "x.pcapng", None, 0.1) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "needs root" not in err
