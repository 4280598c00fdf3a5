"""The two pieces of the container lab that a loopback run cannot show, on real links between
network namespaces (root): the NAT gateway taking the public addresses it fronts (`serve nat
--add-addresses`), and the recorder on a container network's bridge (`record --iface
route:ADDR`) seeing traffic between two other ports of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ..conftest import netns_unavailable


def _ip(*args):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespaces():
    """make() -> a fresh network namespace with `lo` up; all deleted afterwards."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    made = []

    def make() -> str:
        name = f"tb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _ip("netns", "add", name)
        made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _veth(a, addr_a, b, addr_b=None, bridge=None):
    """A veth from namespace a (address addr_a/24) to namespace b (addr_b/24, or enslaved
    to `bridge` there)."""
    tag = uuid.uuid4().hex[:6]
    _ip("link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", f"vb{tag}", "netns", b)
    _ip("-n", a, "addr", "add", f"{addr_a}/24", "dev", f"va{tag}")
    _ip("-n", a, "link", "set", f"va{tag}", "up")
    if bridge is not None:
        _ip("-n", b, "link", "set", f"vb{tag}", "master", bridge)
    elif addr_b is not None:
        _ip("-n", b, "addr", "add", f"{addr_b}/24", "dev", f"vb{tag}")
    _ip("-n", b, "link", "set", f"vb{tag}", "up")
    return f"va{tag}", f"vb{tag}"


def _testbed(ns, *args, **kw):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "testbed.cli",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def _testbed_run(ns, *args):
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "testbed.cli",
                           *args], capture_output=True, text=True, timeout=60)


def _wait_file(path, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"no {path} in time"
        time.sleep(0.05)
    return json.loads(path.read_text())


def _stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def test_the_nat_gateway_takes_the_addresses_it_fronts_and_gives_them_back(namespaces,
                                                                          tmp_path):
    phone, gw = namespaces(), namespaces()
    _, gw_dev = _veth(phone, "198.18.7.100", gw, "198.18.7.2")
    target = _testbed(gw, "serve", "mapabc", "--listen", "127.0.0.1:8081",
                      "--ready-file", str(tmp_path / "mapabc.json"))
    nat = None
    try:
        _wait_file(tmp_path / "mapabc.json", target)
        nat = _testbed(gw, "serve", "nat", "--add-addresses", "--map",
                       "198.18.7.31:80=127.0.0.1:8081", "--map", "198.18.7.2:8080=127.0.0.1:8081",
                       "--ready-file", str(tmp_path / "nat.json"))
        ready = _wait_file(tmp_path / "nat.json", nat)
        assert ready["added_addresses"] == ["198.18.7.31"]     # .2 was its own already
        assert "198.18.7.31/32" in _ip("-n", gw, "-o", "addr", "show", "dev", gw_dev)
        # from the phone's side of the link it is an address like any (ARP, then HTTP)
        seen = _testbed_run(phone, "serve", "mapabc", "--listen", "198.18.7.31:80", "--check")
        assert seen.returncode == 0, seen.stderr
        assert _stop(nat) == 143
        nat = None
        assert "198.18.7.31" not in _ip("-n", gw, "-o", "addr", "show", "dev", gw_dev)
        gone = _testbed_run(phone, "serve", "mapabc", "--listen", "198.18.7.31:80", "--check")
        assert gone.returncode == 1
    finally:
        if nat is not None:
            _stop(nat)
        _stop(target)


def test_the_nat_gateway_adds_no_address_outside_the_lab_range(namespaces):
    gw = namespaces()
    p = _testbed_run(gw, "serve", "nat", "--add-addresses", "--map",
                     "192.0.2.5:80=127.0.0.1:8081")
    assert p.returncode == 1
    assert "only addresses of 198.18.0.0/15 are ever added" in p.stderr
    assert "192.0.2.5" not in _ip("-n", gw, "-o", "addr")


def test_the_recorder_on_a_bridge_sees_two_other_ports_talk(namespaces, tmp_path):
    """As on a compose network: the recorder sniffs the bridge (found by the route to an
    address on it) and sees a phone and a host that are two other ports of it."""
    host_ns, a, c = namespaces(), namespaces(), namespaces()
    _ip("-n", host_ns, "link", "add", "wxb0", "type", "bridge")
    _ip("-n", host_ns, "addr", "add", "198.18.8.1/24", "dev", "wxb0")
    _ip("-n", host_ns, "link", "set", "wxb0", "up")
    _veth(a, "198.18.8.10", host_ns, bridge="wxb0")
    _veth(c, "198.18.8.20", host_ns, bridge="wxb0")
    server = _testbed(c, "serve", "mapabc", "--listen", "198.18.8.20:80",
                      "--ready-file", str(tmp_path / "mapabc.json"))
    out = tmp_path / "bridge.pcapng"
    recorder = None
    try:
        _wait_file(tmp_path / "mapabc.json", server)
        recorder = _testbed(host_ns, "record", "--iface", "route:198.18.8.20", "--filter",
                            "net 198.18.8.0/24", "--out", str(out), "--ready-file",
                            str(tmp_path / "recording"))
        _wait_file(tmp_path / "recording", recorder)
        asked = _testbed_run(a, "serve", "mapabc", "--listen", "198.18.8.20:80", "--check")
        assert asked.returncode == 0, asked.stderr
        time.sleep(0.3)
        assert _stop(recorder, signal.SIGINT) == 130      # stopped by Ctrl-C: 128 + SIGINT
        err = recorder.stderr.read()
        recorder = None
    finally:
        if recorder is not None:
            _stop(recorder)
        _stop(server)
    assert "listening on wxb0" in err
    assert not (tmp_path / "recording").exists()
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "analyze", str(out), "--json"],
                       capture_output=True, text=True, timeout=60)
    flows = json.loads(p.stdout)["flows"]
    http = [f for f in flows if f["server"] == "198.18.8.20:80"]
    assert http and http[0]["client"].startswith("198.18.8.10:"), flows
    assert http[0]["requests"] >= 1 and http[0]["packets_s2c"] >= 2
