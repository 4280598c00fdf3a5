"""`testbed analyze --jobs N`: the TCP flows shared out over N processes print the very
document one process prints (flow ids, events in capture order, handshakes, DNS names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..capture.real import REPO_FILES

GOLDEN = Path(__file__).resolve().parents[2] / "captures" / "golden"


def _analyze(path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", "analyze", "--json",
                           *options, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})


@pytest.mark.parametrize("path", REPO_FILES + [GOLDEN / "storyboard.pcapng"],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("events", [("--events",), ()], ids=["events", "summary"])
def test_jobs_print_what_one_process_prints(path, events):
    # with events each shard reads packet by packet, without them by `Capture.scan`
    one = _analyze(path, *events)
    assert one.returncode == 0, one.stderr
    assert '"flows"' in one.stdout
    for jobs in ("2", "3"):
        many = _analyze(path, *events, "--jobs", jobs)
        assert many.returncode == 0, many.stderr
        assert many.stdout == one.stdout, f"--jobs {jobs} differs on {path.name}"


def test_jobs_must_be_positive():
    r = _analyze(GOLDEN / "login.pcapng", "--jobs", "0")
    assert r.returncode == 2 and r.stdout == ""
    assert "--jobs" in r.stderr and "Traceback" not in r.stderr


def _relayed_capture(path: Path) -> Path:
    """Eight phone connections through a relay, as a sniffer on `lo` sees them: each one
    (phone -> the public port) and its leg (relay -> the internal port) a few ms later with
    the same first bytes; spread over the shards by their 4-tuples."""
    from ..capture.builders import ACK, FIN, Conn, segments_pcap

    segs = []
    for i in range(8):
        request = b"POST /cgi-bin/micromsg-bin/newsync HTTP/1.1\r\nHost: s\r\n\r\n%03d" % i
        for conn in (Conn(client=("127.0.0.1", 40000 + i), server=("127.0.0.21", 8080),
                          t0=10.0 + i, step=0.001),
                     Conn(client=("127.0.0.21", 50000 + 7 * i), server=("127.0.0.21", 18080),
                          t0=10.0005 + i, step=0.001)):
            segs += conn.handshake() + [conn.c(request), conn.s(b"HTTP/1.1 204 OK\r\n\r\n"),
                                        conn.c(flags=FIN | ACK), conn.s(flags=FIN | ACK),
                                        conn.c()]
    segs.sort(key=lambda s: s.ts)
    path.write_bytes(segments_pcap([s._replace(index=n + 1) for n, s in enumerate(segs)]))
    return path


def test_jobs_leave_out_the_same_relay_legs(tmp_path):
    """A leg and the connection it copies can hash to different shards: the merge finds the
    legs, so --jobs leaves out (or, with --all-legs, keeps) exactly what one process does."""
    import json

    path = _relayed_capture(tmp_path / "relayed.pcap")
    for legs in ((), ("--all-legs",)):
        one = _analyze(path, "--events", *legs)
        assert one.returncode == 0, one.stderr
        doc = json.loads(one.stdout)
        assert doc["relay_legs"] == {"found": 8, "kept": bool(legs)}
        assert len(doc["flows"]) == (16 if legs else 8)
        for jobs in ("2", "3"):
            many = _analyze(path, "--events", "--jobs", jobs, *legs)
            assert many.returncode == 0, many.stderr
            assert many.stdout == one.stdout, f"--jobs {jobs} {legs} differs"
