"""`testbed lab up` as a user runs it: a process, a manifest, every host reachable, a clean stop."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

from testbed.client.resolver import Resolver
from testbed.client.session import Session
from testbed.eventloop import have_uvloop
from testbed.lab.addressing import AddressPlan, HOST_NAMES, LONG, SHORT

from .helpers import start_lab_up, wait_manifest


def _start(tmp_path, *extra):
    return start_lab_up(tmp_path, *extra)


async def _login_and_noop(m) -> None:
    """Resolve the long link's two addresses, log in over TLS, identify, one NOOP."""
    assert len(await Resolver(m.dns_address, m.dns_port).resolve(LONG)) == 2
    s = Session(m, "user0001", "pass0001")
    await s.login()
    await s.connect_long()
    await s.link.noop()
    await s.close()


def test_lab_up_serves_then_stops_cleanly(tmp_path):
    proc, path = _start(tmp_path, "--time-scale", "50")
    try:
        m = wait_manifest(proc, path)
        # every server listens the moment the manifest exists
        for name in HOST_NAMES:
            h = m.hosts[name]
            for addr in h.addresses:
                for port in filter(None, (h.port, h.tls_port)):
                    socket.create_connection((addr, port), timeout=2).close()
        assert len(m.hosts[LONG].addresses) >= 2 and len(m.hosts[SHORT].addresses) >= 2
        assert m.time_scale == 50.0 and m.profile == "lab-report-2013"
        assert [u["username"] for u in m.users] == ["user0001", "user0002", "user0003"]
        assert m.users[0]["password"] == "pass0001"
        raw = json.loads(path.read_text())
        assert set(raw) >= {"contract", "profile", "time_scale", "dns", "hosts", "ca_cert",
                            "users", "heartbeat_s", "server_idle_s"}
        assert raw["heartbeat_s"] == 300 and raw["server_idle_s"] == 660

        asyncio.run(_login_and_noop(m))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 143, err      # 128 + SIGTERM, as a shell reports it
    assert "long.weixin.qq.com" in out and "long.weixin.qq.com" not in err   # the table
    assert not path.exists()      # a stopped lab leaves no stale manifest behind
    assert "event loop: asyncio" in err


def test_lab_up_on_uvloop(tmp_path):
    proc, path = _start(tmp_path, "--uvloop")
    try:
        asyncio.run(_login_and_noop(wait_manifest(proc, path)))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 143, err      # stopped by SIGTERM, on uvloop too
    assert not path.exists()
    if have_uvloop():
        assert "event loop: uvloop" in err
    else:
        assert "uvloop not installed; using asyncio" in err and "event loop: asyncio" in err


def test_lab_up_sigint_and_bad_arguments(tmp_path):
    proc, path = _start(tmp_path)
    wait_manifest(proc, path)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)
    assert proc.returncode == 130
    bad = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--profile",
                          "nosuch"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown profile" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--time-scale",
                          "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "must be positive" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--subnet",
                          "10.1.2"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "127.0.0.0/8" in bad.stderr


def test_lab_up_refuses_a_taken_block(tmp_path):
    proc, path = _start(tmp_path)
    try:
        m = wait_manifest(proc, path)
        prefix = m.dns_address.rsplit(".", 1)[0]
        second = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--subnet",
                                 prefix, "--manifest", str(tmp_path / "m2.json")],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and "cannot bind" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


async def test_lab_falls_back_to_one_address_when_its_block_is_missing(tmp_path):
    """198.18.0.0/15 addresses exist only inside namespace labs: binding them here fails
    with EADDRNOTAVAIL, as 127.0.0.11 does on a machine with only 127.0.0.1."""
    from mocks.runner import Lab, LabConfig
    lab = Lab(LabConfig(users=2, plan=AddressPlan("198.18.250"),
                        manifest_path=tmp_path / "m.json"))
    m = await lab.start()
    try:
        ports = set()
        for name in HOST_NAMES:
            h = m.hosts[name]
            assert set(h.addresses) == {"127.0.0.1"}
            ports |= {h.port, h.tls_port} - {None}
        assert len(ports) == 6          # every server its own port on the one address
        assert m.dns_address == "127.0.0.1"
        s = Session(m, "user0001", "pass0001")
        await s.login()
        await s.connect_long()
        await s.link.noop()
        await s.close()
    finally:
        await lab.stop()
