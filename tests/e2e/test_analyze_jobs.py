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


def _busy_capture(path: Path) -> Path:
    """Small connections interleaved (some VLAN-tagged, one DNS over TCP), then a bulk
    flow of 2 MiB (longer than a read buffer: the other shards' records jump past it), more
    small ones, and a damaged record header (a length no record has) where reading stops."""
    import struct

    from ..capture.builders import ACK, FIN, Conn, ether, segment_ip, segments_pcap

    def small(first: int, t0: float) -> list:
        segs = []
        for i in range(first, first + 16):
            dns = i == first + 3
            conn = Conn(client=("198.18.0.%d" % (10 + i % 7), 41000 + 3 * i),
                        server=("198.18.1.1", 53 if dns else 8080), t0=t0 + i * 0.01,
                        step=0.003)
            segs += conn.handshake()
            for j in range(6):
                segs += [conn.c(b"GET /%d/%d HTTP/1.1\r\nHost: h\r\n\r\n" % (i, j)),
                         conn.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), conn.c()]
            segs += [conn.c(flags=FIN | ACK), conn.s(flags=FIN | ACK), conn.c()]
        return segs

    bulk = Conn(client=("198.18.0.99", 45000), server=("198.18.1.2", 9000), t0=20.0,
                step=0.0001)
    segs = small(0, 10.0) + bulk.handshake() + \
        [bulk.c(bytes(1400)) for _ in range(1500)] + small(16, 30.0)
    segs.sort(key=lambda s: s.ts)

    def frame(s):
        tagged = s.sport % 5 == 0 or s.dport % 5 == 0
        return ether(segment_ip(s), vlans=(7,) if tagged else ())
    data = segments_pcap([s._replace(index=n + 1) for n, s in enumerate(segs)], frame)
    path.write_bytes(data + struct.pack("<IIII", 40, 0, 1 << 30, 1 << 30) + bytes(64))
    return path


def test_jobs_hand_out_records_as_one_process_reads_them(tmp_path):
    """Without events, shard 0 walks the pcap file and hands the others their records: the
    same document, the damage reported alike, whatever the number of processes."""
    import json

    path = _busy_capture(tmp_path / "busy.pcap")
    one = _analyze(path)
    assert one.returncode == 0, one.stderr
    doc = json.loads(one.stdout)
    assert "corrupt packet record" in doc["error"]
    assert len(doc["flows"]) == 33
    for jobs in ("2", "3"):
        many = _analyze(path, "--jobs", jobs)
        assert many.returncode == 0, many.stderr
        assert many.stdout == one.stdout, f"--jobs {jobs} differs"
