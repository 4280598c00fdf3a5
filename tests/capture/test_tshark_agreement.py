"""Our reader, flows and tcp.analysis against tshark (run at test time), frame by frame.

Files: every real capture in tests/data/real (and ../shared/captures/real when present),
every hand-made scenario written as pcap, a synthetic capture of many flows, a one-way
capture, and fresh captures of real loss made here with two network namespaces, a veth
pair, an nftables drop rule and tcpdump.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.capture.packets import read_capture

from .builders import ACK, FIN, Conn, ether, pppoe, segment_ip, segments_pcap
from .scenarios import SCENARIOS, adversarial, build
from .tshark import Ours, Reference, available, check_against_tshark, run

pytestmark = pytest.mark.skipif(not available(), reason="tshark is not installed")

from .real import REAL_FILES


# ============================================================================ real captures
@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_real_capture(path):
    rows = check_against_tshark(path, follow=64, literal_filters=True)
    if path.name.startswith("ndpi-wechat-web"):
        # what the capture's README describes, in tshark's terms
        assert rows["keep_alive"]["ours"] == 6 and rows["retransmission"]["ours"] == 82


def test_real_captures_present():
    assert {p.name for p in REAL_FILES} >= {"citizenlab-wechat-android-2023.pcap",
                                           "ndpi-wechat-web-2017.pcap",
                                           "dns-multiple-a.pcapng", "http-get.pcapng"}


# ============================================================================ hand-made
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_against_tshark(tmp_path, name):
    segs, expected = build(name)
    p = tmp_path / f"{name}.pcap"
    p.write_bytes(segments_pcap(segs))
    ref = Reference(p)
    assert ref.flags == expected, f"tshark disagrees with the scenario's expectations: " \
                                  f"{ref.flags} != {expected}"
    check_against_tshark(p)


@pytest.mark.parametrize("seed", [0, 4, 9, 17])
def test_adversarial_sequences(tmp_path, seed):
    """Hostile random sequences (these seeds once found a difference: after an ACK of data
    never captured, tshark counts the stalled sender as having sent enough duplicate ACKs
    for a fast retransmission)."""
    p = tmp_path / f"adv{seed}.pcap"
    p.write_bytes(segments_pcap(adversarial(seed)))
    check_against_tshark(p)


def test_one_way_capture(tmp_path):
    """Only one direction captured, past the 10,000 segments tshark keeps waiting for an
    ACK: its FIN, the FIN again and the data after it get tshark's flags."""
    c = Conn(step=0.0001)
    segs = c.handshake() + [c.c(b"x" * 10) for _ in range(10_050)]
    fin = c.c(flags=FIN | ACK)
    segs += [fin, fin._replace(ts=fin.ts + 0.5), c.c(b"y" * 10, ts=fin.ts + 0.6),
             c.s(ts=fin.ts + 0.7)]
    p = tmp_path / "one-way.pcap"
    p.write_bytes(segments_pcap([s._replace(index=i + 1) for i, s in enumerate(segs)]))
    rows = check_against_tshark(p)
    assert rows["lost_segment"] == {"tshark": 1, "ours": 1}


ENCAPSULATIONS = {
    "vlan": lambda ip: ether(ip, vlans=[10]),
    "qinq": lambda ip: ether(ip, vlans=[(0x88A8, 100), 20]),
    "pppoe": lambda ip: ether(pppoe(ip), 0x8864),
    "pppoe-over-qinq": lambda ip: ether(pppoe(ip), 0x8864, vlans=[(0x88A8, 100), 20]),
}


@pytest.mark.parametrize("name", sorted(ENCAPSULATIONS))
def test_vlan_and_pppoe_frames(tmp_path, name):
    """A connection with loss and reordering in VLAN-tagged, QinQ and PPPoE frames: the
    same flows, flags and stream bytes as tshark."""
    wrap = ENCAPSULATIONS[name]
    segs, _ = build("fast_retransmission_and_dup_acks")
    c = Conn(client=("198.18.0.9", 41000), t0=segs[-1].ts + 1)
    more = c.handshake() + [c.c(b"GET / HTTP/1.1\r\n\r\n"), c.s(b"HTTP/1.1 200 OK\r\n\r\n"),
                            c.c(flags=FIN | ACK), c.s(flags=FIN | ACK), c.c()]
    p = tmp_path / f"{name}.pcap"
    p.write_bytes(segments_pcap(segs + more, frame=lambda s: wrap(segment_ip(s))))
    rows = check_against_tshark(p, follow=2)
    assert rows["fast_retransmission"] == {"tshark": 1, "ours": 1}
    assert len(Ours(p).table.flows) == 2


@pytest.mark.parametrize("version,swapped", [((2, 2), True), ((2, 3), True), ((2, 3), False)])
def test_old_pcap_formats(tmp_path, version, swapped):
    """Files older than format 2.3 (lengths swapped) cut by a snaplen: tshark and we read
    the same lengths, captured and original, and give the same flags."""
    segs, _ = build("retransmission")
    c = Conn(client=("198.18.0.9", 41000), t0=segs[-1].ts + 1)
    more = c.handshake() + [c.c(b"q" * 300), c.s(b"r" * 900), c.c(flags=FIN | ACK),
                            c.s(flags=FIN | ACK), c.c()]
    p = tmp_path / "old.pcap"
    p.write_bytes(segments_pcap(segs + more, snaplen=200, version=version,
                                lengths_swapped=swapped))
    out = run(["-r", str(p), "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len"])
    theirs = [tuple(int(x) for x in line.split("\t")) for line in out.splitlines()]
    ours = [(pk.origlen, len(pk.data)) for pk in read_capture(p)]
    assert ours == theirs and (954, 200) in ours
    check_against_tshark(p)


# ============================================================================ synthetic
def test_synthetic_capture(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        from bench_analyze import synthesize
    finally:
        sys.path.pop(0)
    p = tmp_path / "synth.pcap"
    synthesize(str(p), 20_000, seed=3, concurrent=60)
    rows = check_against_tshark(p)
    assert rows["retransmission"]["ours"] > 50 and rows["duplicate_ack"]["ours"] > 100


# ============================================================================ real loss
_NS_COUNTER = itertools.count()


def _netns_unusable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, tcpdump)"
    for tool in ("ip", "nft", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"tbprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns is not usable here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.6", 5001)); s.listen(4); s.settimeout(60)
for _ in range(int(sys.argv[1])):
    c, _ = s.accept(); c.settimeout(60)
    n = 0
    while True:
        b = c.recv(65536)
        if not b: break
        n += len(b)
    c.sendall(bytes(range(256)) * (int(sys.argv[2]) // 256))
    c.close()
"""

CLIENT = r"""
import socket, sys
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("198.18.0.6", 5001), timeout=60)
    s.sendall(b"x" * int(sys.argv[2])); s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        b = s.recv(65536)
        if not b: break
        got += len(b)
    assert got == int(sys.argv[3]) // 256 * 256, got
    s.close()
"""


class LossyPair:
    """Two namespaces A and B joined through a router namespace R by veth pairs:
    A 198.18.0.1/30 -- 198.18.0.2/30 R 198.18.0.5/30 -- 198.18.0.6/30 B."""

    def __init__(self) -> None:
        n = next(_NS_COUNTER)
        tag = f"{os.getpid() % 100000}{n}"
        self.a, self.r, self.b = f"tbcapA{tag}", f"tbcapR{tag}", f"tbcapB{tag}"
        self.va, self.vra, self.vrb, self.vb = (f"tbva{tag}", f"tbra{tag}", f"tbrb{tag}",
                                                f"tbvb{tag}")
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []

    def sh(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def up(self) -> None:
        for ns in (self.a, self.r, self.b):
            self.sh("ip", "netns", "add", ns)
            self.made.append(ns)
        self.sh("ip", "link", "add", self.va, "netns", self.a, "type", "veth", "peer", "name",
                self.vra, "netns", self.r)
        self.sh("ip", "link", "add", self.vb, "netns", self.b, "type", "veth", "peer", "name",
                self.vrb, "netns", self.r)
        for ns, dev, addr in ((self.a, self.va, "198.18.0.1/30"),
                              (self.r, self.vra, "198.18.0.2/30"),
                              (self.r, self.vrb, "198.18.0.5/30"),
                              (self.b, self.vb, "198.18.0.6/30")):
            self.sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            # no segmentation offload: the capture shows the segments that crossed the link
            self.sh("ip", "-n", ns, "link", "set", dev, "gso_max_segs", "1",
                    "gso_max_size", "1500")
            self.sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns in (self.a, self.r, self.b):
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.sh("ip", "-n", self.a, "route", "add", "198.18.0.4/30", "via", "198.18.0.2")
        self.sh("ip", "-n", self.b, "route", "add", "198.18.0.0/30", "via", "198.18.0.5")
        self.sh("ip", "netns", "exec", self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def drop(self, ns: str, hook: str, percent: int) -> None:
        self.sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "loss")
        self.sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "loss", hook,
                f"{{ type filter hook {hook} priority 0; }}")
        self.sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "loss", hook,
                "meta", "l4proto", "tcp", "numgen", "random", "mod", "100", "<", str(percent),
                "counter", "drop")

    def tcpdump(self, ns: str, dev: str, out: Path) -> subprocess.Popen:
        log = open(str(out) + ".log", "w+")
        p = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-Z", "root", "-i", dev,
                              "-U", "-w", str(out), "tcp"], stdout=log,
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log.seek(0)
            if "listening on" in log.read():
                return p
            if p.poll() is not None:
                break
            time.sleep(0.05)
        log.seek(0)
        raise RuntimeError(f"tcpdump did not start: {log.read()}")

    def run(self, ns: str, script: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lossy_pair():
    reason = _netns_unusable()
    if reason:
        pytest.skip(reason)
    pair = LossyPair()
    try:
        pair.up()
        yield pair
    finally:
        pair.down()


def test_real_loss_capture(tmp_path, lossy_pair):
    """Real loss, captured at both ends and compared with tshark.

    B's input chain drops 20% of what reaches it (B's capture still sees those packets:
    the kernel taps before netfilter), so both captures show the retransmissions, fast
    retransmissions, duplicate ACKs and out-of-order segments that follow. The router drops
    5% more in its forward chain: those packets are seen by A's capture only, so B's shows
    "previous segment not captured" and "ACKed unseen segment" as well.
    """
    pair = lossy_pair
    pair.drop(pair.b, "input", 20)
    pair.drop(pair.r, "forward", 5)
    cap_a, cap_b = tmp_path / "side-a.pcap", tmp_path / "side-b.pcap"
    td_a = pair.tcpdump(pair.a, pair.va, cap_a)
    td_b = pair.tcpdump(pair.b, pair.vb, cap_b)
    conns, up, down = "2", "200000", "120000"
    server = pair.run(pair.b, SERVER, conns, down)
    time.sleep(0.2)
    client = pair.run(pair.a, CLIENT, conns, up, down)
    try:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        server.communicate(timeout=30)
    finally:
        time.sleep(0.3)
        pair.stop(td_a)
        pair.stop(td_b)
    seen = {}
    for cap in (cap_a, cap_b):
        rows = check_against_tshark(cap, follow=2, literal_filters=True)
        seen[cap.name] = {n: r["ours"] for n, r in rows.items() if r["ours"]}
    print(seen)
    # real loss happened and was seen
    for name in ("side-a.pcap", "side-b.pcap"):
        assert seen[name].get("retransmission", 0) > 0 and seen[name].get("duplicate_ack", 0) > 0
    assert seen["side-b.pcap"].get("lost_segment", 0) > 0
