"""The namespace lab (`testbed lab up --netns`, root), as a user runs it: the lab as a
subprocess, phones run by `testbed emulate` (which enters the lab's phone namespace), the
capture of the phone's link verified; Ctrl-C and SIGKILL, and what each leaves behind."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mocks.netns.namespaces import (delete, is_stale, list_namespaces, name_of, owner_of,
                                    pids_in, sweep_stale)
from testbed.capture.packets import read_capture
from testbed.lab.manifest import load_manifest
from testbed.cli import main
from testbed.cli.netns import TOOLS

from ..capture.tshark import check_against_tshark, filter_frames
from ..conftest import netns_unavailable
from .helpers import descendants, process_group, still_alive

PHONE, HOTSPOT = "198.18.137.87", "198.18.137.1"
READY_S = 90.0      # the lab's seven processes start on a shared 2-core machine


def _unavailable() -> str | None:
    reason = netns_unavailable()
    if reason:
        return reason
    for tool in [*TOOLS, "tshark"]:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


REQUIRE = "TESTBED_REQUIRE_NETNS"   # "1" in CI: the namespace lab must run there


@pytest.fixture
def netns_lab_tools():
    """Skips the test where the namespace lab cannot run (not root, a tool missing), unless
    TESTBED_REQUIRE_NETNS=1 (CI), where that is a failure."""
    reason = _unavailable()
    if reason:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{reason}, but {REQUIRE}=1")
        pytest.skip(reason)


needs_netns_lab = pytest.mark.usefixtures("netns_lab_tools")


class LabUp:
    """`testbed lab up --netns ...` started as a shell starts a job (a process group of its
    own, so a Ctrl-C can go to the whole group as a terminal sends it), its stdout and
    stderr in files (a pipe nobody reads could fill and stop the lab)."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.manifest = tmp_path / f"{name}.json"
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.cli", "lab", "up", "--netns", "--users", "2",
                 "--workers", "1", "--manifest", str(self.manifest), *args],
                stdout=out, stderr=err, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_manifest(self, timeout: float = READY_S):
        """The manifest, once the lab has written it (every host listens then)."""
        deadline = time.monotonic() + timeout
        while not self.manifest.exists():
            assert self.proc.poll() is None, f"lab exited early: {self.err()[-3000:]}"
            assert time.monotonic() < deadline, f"no manifest in time: {self.err()[-3000:]}"
            time.sleep(0.02)
        return load_manifest(self.manifest)

    def wait_json(self, timeout: float = 10.0) -> dict:
        """`--json`'s document on stdout (printed right after the manifest is written)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return json.loads(self.out())
            except ValueError:
                assert self.proc.poll() is None, f"lab exited: {self.err()[-3000:]}"
                assert time.monotonic() < deadline, f"no JSON on stdout: {self.out()!r}"
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGINT, group: bool = False) -> float:
        """Send `sig` (to the whole group with `group`); the seconds until it exited."""
        t0 = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def remove_leftovers(self) -> None:
        """Kill it and delete whatever namespaces of its are left (a failed test's; not
        if its PID is running again, another lab's then)."""
        self.kill()
        for ns in list_namespaces():
            if owner_of(ns) == self.pid and is_stale(ns):
                delete(ns)


@pytest.fixture
def labs(tmp_path):
    """`labs(name, *args)` starts a `LabUp`; each is killed after the test and its
    namespaces deleted, whatever the test did."""
    started: list[LabUp] = []

    def start(name: str, *args: str) -> LabUp:
        started.append(LabUp(tmp_path, name, *args))
        return started[-1]

    yield start
    for lab in started:
        lab.remove_leftovers()


def emulate(manifest: Path, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "emulate", *args, "--manifest",
                        str(manifest), "--json"], capture_output=True, text=True, timeout=180)
    assert "in the lab's phone namespace" in p.stderr, p.stderr[-2000:]
    return json.loads(p.stdout)


def processes_of(manifest) -> dict[str, list[int]]:
    """Namespace -> the processes in it, for every namespace of a running lab."""
    return {ns: pids_in(ns) for ns in manifest.extra["netns"]["namespaces"].values()}


def serving(namespace: str) -> list[int]:
    """The `testbed serve` processes in `namespace` (not the `ip` commands that build it)."""
    found = []
    for pid in pids_in(namespace):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"\0serve\0" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def root_links() -> set[str]:
    """The links of the root namespace named as the lab names its links (others' tests
    may add and remove links of their own meanwhile)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {n for n in names if n in ("wlan0", "hotspot0", "wan0") or n.startswith("srv-")}


def link_ends(namespace: str) -> list[dict]:
    """Every link of `namespace` but lo, as `ip -j -d addr` shows it."""
    out = subprocess.run(["ip", "-n", namespace, "-j", "-d", "addr", "show"],
                         capture_output=True, text=True, check=True).stdout
    return [link for link in json.loads(out) if link["ifname"] != "lo"]


def offloads(namespace: str, dev: str) -> dict[str, str]:
    """`ethtool -k DEV` in `namespace`: feature -> "on" / "off"."""
    out = subprocess.run(["ip", "netns", "exec", namespace, "ethtool", "-k", dev],
                         capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.split()[0] for k, _, v in
            (line.partition(":") for line in out.splitlines()[1:]) if v.strip()}


def check_links(namespaces: dict[str, str]) -> None:
    """The network as docs/lab.md plans it: addresses in 198.18.0.0/15 only, MTU 1500 on
    every link, the veths' offloads off (a capture shows the segments that crossed)."""
    lab_net = ipaddress.ip_network("198.18.0.0/15")
    for role, ns in namespaces.items():
        for link in link_ends(ns):
            where = f"{ns} {link['ifname']}"
            assert link["mtu"] == 1500, where
            for a in link.get("addr_info", []):
                assert a["family"] == "inet" and ipaddress.ip_address(a["local"]) in lab_net, \
                    (where, a)
            if link.get("linkinfo", {}).get("info_kind") == "veth":
                features = offloads(ns, link["ifname"])
                for f in ("tx-checksumming", "tcp-segmentation-offload",
                          "generic-segmentation-offload", "generic-receive-offload"):
                    assert features[f] == "off", (where, f, features[f])
    phone = link_ends(namespaces["phone"])
    assert [(x["ifname"], [a["local"] for a in x["addr_info"]]) for x in phone] \
        == [("wlan0", [PHONE])]
    gateway = {x["ifname"]: [a["local"] for a in x.get("addr_info", [])]
               for x in link_ends(namespaces["gateway"])}
    assert gateway["hotspot0"] == [HOTSPOT] and gateway["wan0"] == ["198.19.0.1"]


SEND = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"x" * int(sys.argv[3]))
c.close()
"""
RECEIVE = """
import socket, sys, time
t0 = time.monotonic()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
n = 0
while (b := c.recv(65536)):
    n += len(b)
print(n, time.monotonic() - t0)
"""


def download_s(namespaces: dict[str, str], nbytes: int) -> float:
    """Seconds the phone takes to receive `nbytes` over TCP from a server in the qpic
    namespace (port 9000 of its address: the lab's hosts keep theirs), through the hotspot
    and its NAT."""
    server = subprocess.Popen(["ip", "netns", "exec", namespaces["qpic"], sys.executable,
                               "-c", SEND, "198.19.0.51", "9000", str(nbytes)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        got = subprocess.run(["ip", "netns", "exec", namespaces["phone"], sys.executable,
                              "-c", RECEIVE, "198.19.0.51", "9000"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
        assert int(got[0]) == nbytes, got
        return float(got[1])
    finally:
        server.kill()
        server.wait(10)


def nft_drops(namespace: str) -> int:
    """Packets the loss rules of the lab's nftables table in `namespace` dropped."""
    out = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list", "table", "inet",
                          "testbed"], capture_output=True, text=True, check=True).stdout
    return sum(int(m) for m in re.findall(r"numgen random .*? counter packets (\d+)", out))


@needs_netns_lab
def test_namespace_lab_storyboard_on_real_links(tmp_path, capsys, labs):
    links_before = root_links()

    # -- a lab whose NAT forgets an idle connection after 200 protocol s (1 wall s) ---------
    lab_a = labs("a", "--time-scale", "200", "--nat-timeout", "200", "--json",
                  "--rate", "2mbit")
    try:
        manifest_a = lab_a.wait_manifest()
        assert manifest_a.extra["nat"]["wall_timeout_s"] == 1
        ns_a = manifest_a.extra["netns"]["namespaces"]
        doc = lab_a.wait_json()
        assert doc["netns"]["namespaces"] == ns_a
        assert doc["netns"]["phone"] == {"address": PHONE, "hotspot": HOTSPOT,
                                         "gateway": "198.19.0.1"}
        assert doc["hosts"]["long.weixin.qq.com"]["addresses"] == ["198.19.0.11", "198.19.0.12"]
        # each host's processes in its own namespace
        for host, role in (("long.weixin.qq.com", "long"), ("short.weixin.qq.com", "short"),
                           ("dns", "dns")):
            assert set(doc["processes"][host]) <= set(serving(ns_a[role])), host
        check_links(ns_a)
        # a phone beating every 300 s behind it: every beat finds the mapping gone, no
        # RST or FIN comes back (the link is not closed), the NOOP goes unanswered
        beat = emulate(lab_a.manifest, "heartbeat", "--clients", "1", "--duration", "700")
        m = beat["metrics"]
        assert m["silent_deaths"] >= 1 and m["reconnects"] >= 1, m
        assert m["links_closed"] == 0, m
        # --rate: 250 kB to the phone at 2 Mbit/s takes a second at least (tbf lets a
        # burst of 10 ms of the rate through at once; load only makes it slower)
        took = download_s(ns_a, 250_000)
        assert took >= 0.9 * 250_000 * 8 / 2e6, f"250 kB in {took:.2f} s through 2mbit"
        left_a = processes_of(manifest_a)
        # every host and redis-server in a namespace of its own; the phone's is the user's
        assert all(left_a[ns_a[role]] for role in ns_a if role not in ("phone", "gateway"))
    finally:
        lab_a.kill()                             # a crash: it cannot clean up
    # what a killed lab leaves: its namespaces; its processes die with it
    assert set(left_a) <= set(list_namespaces())
    assert still_alive([p for pids in left_a.values() for p in pids], within=5.0) == []

    # -- the next lab sweeps them, and runs the storyboard over a lossy, shaped link -------
    capture = tmp_path / "phone-link.pcapng"
    # a loss starts a 300 ms fade: a segment sent into one is sent again after TCP's first
    # timeout (lost again) and after the longer second one (through): about 0.6 s, within
    # the phone's NOOP timeout at this time scale (20 protocol s = 0.8 s)
    lab_b = labs("b", "--time-scale", "25", "--loss", "0.5", "--fade", "300",
                  "--rate", "50mbit", "--record", str(capture))
    try:
        manifest_b = lab_b.wait_manifest()
        assert not set(left_a) & set(list_namespaces()), "a killed lab's namespaces stayed"
        # two beats are enough for the heartbeat's interval (statement 17)
        story = emulate(lab_b.manifest, "storyboard", "--clients", "2", "--seed", "3",
                        "--duration", "650")
        assert story["ok"], (story["errors"], [s for s in story["steps"] if not s["ok"]])
        assert "lab up --netns" in lab_b.out()          # the host table, on stdout
        ns_b = manifest_b.extra["netns"]["namespaces"]
        shaper = subprocess.run(["tc", "-n", ns_b["gateway"], "-s", "qdisc", "show", "dev",
                                 "hotspot0"], capture_output=True, text=True).stdout
        assert "tbf" in shaper and "rate 50Mbit" in shaper and " Sent 0 bytes" not in shaper
        # --loss: both directions of the phone's link lost packets
        assert nft_drops(ns_b["gateway"]) > 0 and nft_drops(ns_b["phone"]) > 0
        left_b = processes_of(manifest_b)
        pids_b = [p for pids in left_b.values() for p in pids]
        assert len(pids_b) >= 8                 # six hosts, redis, the recorder
        # Ctrl-C as a terminal sends it: to the lab and the hosts in its group at once
        stop_s = lab_b.stop(signal.SIGINT, group=True)
    finally:
        lab_b.kill()
    err = lab_b.err()
    assert lab_b.proc.returncode == 130, err[-3000:]
    swept = re.search(r"removed (\d+) namespaces left by labs that were killed", err)
    assert swept and int(swept.group(1)) >= len(left_a), err[-3000:]
    assert stop_s < 10, f"Ctrl-C took {stop_s:.1f} s"
    # nothing left: no namespace, no link in the root namespace, no process
    assert not (set(left_a) | set(left_b)) & set(list_namespaces())
    assert root_links() == links_before
    assert still_alive(pids_b, within=0) == []
    assert process_group(lab_b.pid) == []
    assert not lab_b.manifest.exists()

    # -- the capture of the phone's link: every statement holds, (wire) ones included -----
    cap = read_capture(capture)
    assert cap.meta["how"] == "sniffer" and cap.meta["iface"] == "hotspot0"
    impairment = cap.meta["manifest"]["netns"]["impairment"]
    assert cap.meta["time_scale"] == 25 and impairment["loss_pct"] == 0.5 \
        and impairment["fade_ms"] == 300
    args = ["verify", str(capture), "--storyboard", "--json"]
    for u in manifest_b.users:
        args += ["--secret", u["password"]]
    rc = main(args)
    doc = json.loads(capsys.readouterr().out)
    verdicts = {v["id"]: v for v in doc["verdicts"]}
    failed = {i: v["detail"] for i, v in verdicts.items() if v["ok"] is not True}
    assert rc == 0 and not failed, failed
    assert {v["id"] for v in doc["verdicts"] if v["scope"] == "wire"} == {"2", "8", "13"}
    # statement 2 as the report saw it: the hotspot asks for the phone, the phone answers
    from ..tap.tshark import fields
    arp = fields(capture, "arp.opcode", "arp.src.proto_ipv4", "arp.dst.proto_ipv4",
                 filt="arp")
    assert ["1", HOTSPOT, PHONE] in arp and ["2", PHONE, HOTSPOT] in arp, arp
    # retransmissions under loss, counted as tshark counts them, frame by frame
    check_against_tshark(capture)          # every frame flagged as tshark flags it
    retransmitted = filter_frames(capture, "retransmission")
    assert main(["analyze", str(capture), "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)["tcp"]["retransmissions"]
    assert counted == len(retransmitted) > 0
    # statement 8's segment is one of them: sent, sent again twice, then acknowledged
    assert "acknowledged in packet" in verdicts["8"]["detail"], verdicts["8"]


@needs_netns_lab
@pytest.mark.parametrize("sig,group,when", [
    (signal.SIGINT, True, "network"), (signal.SIGINT, True, "hosts"),
    (signal.SIGTERM, False, "hosts")],
    ids=["Ctrl-C-to-the-group-while-the-network-is-built",
         "Ctrl-C-to-the-group-while-the-hosts-start", "SIGTERM-while-the-hosts-start"])
def test_a_signal_while_the_namespace_lab_starts_leaves_nothing(labs, sig, group, when):
    lab = labs("early")
    mine = f"tblab-{lab.pid}-"

    def now() -> bool:
        if when == "network":       # its first namespaces are there
            return any(ns.startswith(mine) for ns in list_namespaces())
        return bool(serving(f"{mine}long"))

    try:
        deadline = time.monotonic() + 30
        while not now():
            assert lab.proc.poll() is None and time.monotonic() < deadline, lab.err()
            time.sleep(0.01)
        assert not lab.manifest.exists()
        started = {p for ns in list_namespaces() if ns.startswith(mine) for p in pids_in(ns)}
        started |= descendants(lab.pid)
        lab.stop(sig, group)
    finally:
        lab.kill()
    assert lab.proc.returncode == 128 + sig, lab.err()[-3000:]
    assert not lab.manifest.exists()
    assert not [ns for ns in list_namespaces() if ns.startswith(mine)]
    assert still_alive(sorted(started), within=0) == []
    if when == "hosts":
        assert len(started) >= 2            # a host and redis-server at least
    assert process_group(lab.pid) == []


@needs_netns_lab
def test_the_sweep_removes_only_namespaces_of_labs_that_are_gone():
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = name_of("phone", gone.pid)
    live = name_of("phone", 1)                  # PID 1 runs as long as the machine does
    foreign = f"tbfor{os.getpid()}"             # not a lab's name at all
    made = []
    try:
        for ns in (stale, live, foreign):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        assert is_stale(stale) and not is_stale(live) and not is_stale(foreign)
        removed = sweep_stale()
        assert stale in removed and live not in removed and foreign not in removed
        left = set(list_namespaces())
        assert stale not in left and {live, foreign} <= left
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_namespace_options_need_netns(capsys):
    assert main(["lab", "up", "--loss", "5", "--rate", "1mbit"]) == 2
    err = capsys.readouterr().err
    assert "--loss, --rate: for the namespace lab's phone link; add --netns" in err
    assert "Traceback" not in err


@needs_netns_lab
def test_namespace_lab_refuses_what_it_cannot_do(capsys):
    assert main(["lab", "up", "--netns", "--store", "redis://127.0.0.1:1/0"]) == 2
    assert "runs a redis-server of its own" in capsys.readouterr().err
    assert main(["lab", "up", "--netns", "--nat-latency", "1"]) == 2
    assert "there is no netem here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lab", "up", "--netns", "--loss", "100"])
    assert "loss must be 0 to 100 percent" in capsys.readouterr().err
