"""A capture the testbed did not make (a tcpdump of `testbed demo`) says nothing of the lab's
time scale: `--time-scale K` on analyze, verify and report reads it in protocol time."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys

import pytest

from tests.conftest import netns_unavailable

from .helpers import wait_manifest

pytestmark = pytest.mark.skipif(netns_unavailable() is not None,
                                reason=str(netns_unavailable()))

HEARTBEAT = "17"   # "The long connection is kept alive by a heartbeat every 5 minutes"


def _tcpdump(netns: str, tmp_path, run):
    """`tcpdump -i lo -w` while `run()` makes traffic in namespace `netns` (so the capture
    holds that traffic only)."""
    cap = tmp_path / "tcpdump.pcap"
    # immediate mode: else libpcap hands packets over a block at a time (up to 1 s late),
    # and the block still pending at SIGINT, the demo's last exchanges, is lost; a 32 MiB
    # ring: the default 2 MiB one overflows (a segment lost) when tcpdump is not scheduled
    # for a moment on a loaded machine
    dump = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-Z", "root", "-i", "lo",
                             "--immediate-mode", "-B", "32768", "-U", "-w", str(cap)],
                            stderr=subprocess.PIPE, text=True)
    try:
        heard = ""
        while "listening on" not in heard:
            ready, _, _ = select.select([dump.stderr], [], [], 10)
            assert ready and dump.poll() is None, f"tcpdump did not start: {heard}"
            heard += dump.stderr.readline()
        run()
    finally:
        dump.send_signal(signal.SIGINT)
        said = dump.communicate(timeout=30)[1]
    assert re.search(r"^0 packets dropped by kernel$", said, re.M), said
    return cap


def _in(netns: str, *argv) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-m", "testbed.cli", *argv]


def _tcpdump_demo(netns: str, tmp_path):
    """A tcpdump of `testbed demo` (which records through the servers' own transports: no
    relay, each connection seen once)."""
    def demo():
        done = subprocess.run(_in(netns, "demo", "--out", str(tmp_path / "demo")),
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return _tcpdump(netns, tmp_path, demo)


def _tcpdump_relayed_storyboard(netns: str, tmp_path):
    """A tcpdump of the storyboard on a lab whose NAT relays every connection (`lab up
    --nat-timeout`: phone -> relay, relay -> the server's internal port)."""
    manifest = tmp_path / "m.json"

    def storyboard():
        lab = subprocess.Popen(_in(netns, "lab", "up", "--users", "2", "--time-scale", "100",
                                   "--nat-timeout", "1e9", "--manifest", str(manifest)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_manifest(lab, manifest, timeout=120)
            done = subprocess.run(_in(netns, "emulate", "storyboard", "--manifest",
                                      str(manifest)), capture_output=True, text=True,
                                  timeout=180)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        finally:
            lab.send_signal(signal.SIGINT)       # our own lab, by its pid
            lab.communicate(timeout=30)
    return _tcpdump(netns, tmp_path, storyboard)


def _testbed(*argv):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *argv], capture_output=True,
                          text=True, timeout=120)


def test_a_tcpdump_of_the_demo_verifies_with_its_time_scale(netns, tmp_path):
    cap = _tcpdump_demo(netns, tmp_path)

    # without the scale, a 300 s heartbeat at time scale 100 looks like a 3 s one
    plain = _testbed("verify", str(cap), "--json")
    verdicts = {v["id"]: v for v in json.loads(plain.stdout)["verdicts"]}
    assert verdicts[HEARTBEAT]["ok"] is False
    assert "expected 300 s" in verdicts[HEARTBEAT]["detail"]

    scaled = _testbed("verify", str(cap), "--time-scale", "100", "--json")
    doc = json.loads(scaled.stdout)
    assert doc["time_scale"] == 100 and doc["time_scale_from"] == "assumed"
    assert doc["truncated"] is False
    verdicts = {v["id"]: v for v in doc["verdicts"]}
    assert verdicts[HEARTBEAT]["ok"] is True, verdicts[HEARTBEAT]["detail"]

    analysis = json.loads(_testbed("analyze", str(cap), "--time-scale", "100",
                                   "--json").stdout)
    beats = [f["heartbeat_s"] for f in analysis["flows"] if f["heartbeat_s"]]
    assert beats and all(abs(b - 300) < 15 for b in beats), beats
    # the demo records without a relay: nothing crosses the wire twice
    assert analysis["relay_legs"]["found"] == 0

    report = _testbed("report", str(cap), "--time-scale", "100", "--html",
                      str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr


def test_a_sniffed_relayed_lab_shows_each_connection_once(netns, tmp_path):
    """tcpdump sees both sides of the lab's relay (phone -> relay, relay -> the server's
    internal port): the analysis counts each connection once, so the storyboard's counts
    are the scenario's (two phones: two TLS logins, two long links), checked with
    `--phones 2`; `--all-legs` keeps the relay's copies, and the counts then fail."""
    cap = _tcpdump_relayed_storyboard(netns, tmp_path)

    p = _testbed("verify", str(cap), "--time-scale", "100", "--phones", "2", "--json")
    assert p.returncode == 0, p.stdout[-3000:]
    assert "relay legs are left out (--all-legs keeps them)" in p.stderr
    verdicts = {v["id"]: v for v in json.loads(p.stdout)["verdicts"]}
    assert all(v["ok"] is not False for v in verdicts.values())
    assert verdicts["4"]["detail"].startswith("2 TLS logins to short.weixin.qq.com")
    assert verdicts["16"]["detail"].startswith("2 long connections")

    flows = json.loads(_testbed("analyze", str(cap), "--json").stdout)
    both = json.loads(_testbed("analyze", str(cap), "--json", "--all-legs").stdout)
    assert flows["relay_legs"]["found"] == both["relay_legs"]["found"] > 0
    assert (flows["relay_legs"]["kept"], both["relay_legs"]["kept"]) == (False, True)
    assert len(both["flows"]) == 2 * len(flows["flows"])
    # what is left is the phones' side: every connection from the phones' address
    assert len({f["client"].rpartition(":")[0] for f in flows["flows"]}) == 1
    assert sum(f["app"] == "longlink" for f in flows["flows"]) == 2

    kept = _testbed("verify", str(cap), "--time-scale", "100", "--phones", "2",
                    "--all-legs", "--json")
    assert kept.returncode == 1
    verdicts = {v["id"]: v for v in json.loads(kept.stdout)["verdicts"]}
    assert verdicts["4"]["ok"] is False
    assert "4 TLS logins for the 2 phones" in verdicts["4"]["detail"]


def test_a_capture_that_records_its_scale_keeps_it(tmp_path):
    """The tap writes the scale into the capture: a different --time-scale is ignored,
    and said so."""
    from testbed.capture.pcapng_writer import PcapngWriter, capture_comment

    cap = tmp_path / "tap.pcapng"
    with PcapngWriter(cap, comment=capture_comment("tap", time_scale=100.0)):
        pass
    p = _testbed("analyze", str(cap), "--time-scale", "50", "--json")
    doc = json.loads(p.stdout)
    assert doc["time_scale"] == 100 and doc["time_scale_from"] == "capture"
    assert "--time-scale 50 ignored" in p.stderr


def test_verify_says_a_capture_is_truncated_before_its_verdicts(tmp_path):
    from testbed.capture.pcapng_writer import PcapngWriter, capture_comment

    cap = tmp_path / "cut.pcapng"
    with PcapngWriter(cap, comment=capture_comment("tap", time_scale=100.0)) as w:
        for i in range(20):
            w.write_ns(1_000_000_000 + i * 1000, bytes(60))
    data = cap.read_bytes()
    cap.write_bytes(data[:-30])              # the last packet block cut short
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "verify", str(cap)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    assert "Traceback" not in p.stdout
    said, table = p.stdout.find("is truncated"), p.stdout.find("storyboard verdicts")
    assert 0 <= said < table, p.stdout
