"""A replay sends only to the lab its manifest names: a capture's own addresses are never
used (hosts are mapped by name), anything else is refused, and passwords are never shown."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.replay.golden import GOLDENS, lab_options
from testbed.replay.player import replay
from testbed.replay.result import Status
from testbed.replay.sessions import load_sessions
from testbed.replay.targets import LabTargets, UnsafeTarget
from tests.conftest import start_lab
from tests.replay.pcap_edit import move_addresses
from tests.replay.test_replay_command import run_testbed

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "captures" / "golden"
REAL = REPO / "tests" / "data" / "real"


def public_copy(tmp_path: Path, name: str = "chat") -> Path:
    """A golden whose addresses are public ones (documentation ranges): the lab's hosts at
    203.0.113.x, the phone at 198.51.100.x."""
    src = GOLDEN / GOLDENS[name].file
    s = load_sessions(str(src))
    mapping = {}
    for c in s.connections.values():
        mapping[c.server[0]] = "203.0.113." + c.server[0].rsplit(".", 1)[1]
        mapping[c.client[0]] = "198.51.100." + c.client[0].rsplit(".", 1)[1]
    recorded = s.recorded_manifest
    for a in [recorded["dns"]["address"], *(a for h in recorded["hosts"].values()
                                             for a in h["addresses"])]:
        mapping[a] = "203.0.113." + a.rsplit(".", 1)[1]
    return move_addresses(src, tmp_path / f"public-{name}.pcapng", mapping)


def test_the_copy_really_names_public_addresses(tmp_path):
    s = load_sessions(str(public_copy(tmp_path)))
    servers = {c.server[0] for c in s.connections.values()}
    assert servers and all(a.startswith("203.0.113.") for a in servers)
    assert all(a.startswith("203.0.113.") for addrs in s.dns.values() for a in addrs)
    hosts = s.recorded_manifest["hosts"]
    assert all(a.startswith("203.0.113.") for h in hosts.values() for a in h["addresses"])


async def test_a_capture_of_public_addresses_replays_only_to_the_lab(tmp_path):
    capture = public_copy(tmp_path)
    lab = await start_lab(tmp_path, **lab_options(GOLDENS["chat"]))
    try:
        result = await replay(load_sessions(str(capture)), lab.manifest)
    finally:
        await lab.stop()
    assert not result.diffs and not result.by(Status.MISSING) and not result.by(Status.SKIPPED)
    lab_addresses = {lab.manifest.dns_address} | {
        a for h in lab.manifest.hosts.values() for a in h.addresses}
    assert result.opened and {a for _, a, _ in result.opened} <= lab_addresses


_IN_NAMESPACE = r"""
import json, subprocess, sys, time, os, signal
capture, work = sys.argv[1], sys.argv[2]
m = os.path.join(work, "m.json")
lab = subprocess.Popen([sys.executable, "-m", "testbed.cli", "lab", "up", "--users", "2",
                        "--time-scale", "100", "--manifest", m], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        if os.path.exists(m):
            break
        time.sleep(0.05)
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "replay", capture, "--manifest", m,
                        "--json"], capture_output=True, text=True, timeout=120)
    print(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr[-2000:]}))
finally:
    lab.send_signal(signal.SIGINT)
    lab.wait(30)
"""


def test_in_a_namespace_with_only_lo_nothing_else_is_reachable(netns, tmp_path):
    """Inside a fresh network namespace there is no route but lo: a replay that tried any
    of the capture's public addresses could not reach it and would report it missing."""
    capture = public_copy(tmp_path)
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _IN_NAMESPACE,
                        str(capture), str(tmp_path)], capture_output=True, text=True,
                       timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout.strip().splitlines()[-1])
    assert run["rc"] == 0, run["err"]
    doc = json.loads(run["out"])
    assert doc["diffs"] == [] and doc["missing"] == [] and doc["unused"] == []
    assert doc["replayed"] == doc["exchanges"] > 20
    assert all(t.startswith("127.0.0.") for t in doc["targets"]), doc["targets"]


def test_targets_outside_the_lab_are_refused(tmp_path):
    async def main():
        lab = await start_lab(tmp_path, users=2)
        try:
            return lab.manifest
        finally:
            await lab.stop()
    manifest = asyncio.run(main())
    t = LabTargets(manifest)
    for addr in (manifest.dns_address, *manifest.hosts["long.weixin.qq.com"].addresses):
        assert t.check(addr, 1)[0] == addr
    for addr in ("8.8.8.8", "203.0.113.11", "10.0.0.1", "192.168.1.1", "127.0.0.99",
                 "198.18.0.1", "not-an-address"):
        with pytest.raises(UnsafeTarget, match="refusing|not an address of the lab"):
            t.check(addr, 80, "x")
    with pytest.raises(UnsafeTarget, match="not a host of the lab"):
        t.host_address("www.google.com")
    assert [a for _, a, _ in t.opened] == [manifest.dns_address,
                                           *manifest.hosts["long.weixin.qq.com"].addresses]


async def test_real_captures_say_why_per_exchange_and_send_nothing(tmp_path):
    lab = await start_lab(tmp_path, users=2)
    try:
        docs = {}
        for name in ("citizenlab-wechat-android-2023.pcap", "ndpi-wechat-web-2017.pcap",
                     "http-get.pcapng"):
            rc, out, err = await run_testbed("replay", str(REAL / name), "--manifest",
                                             str(lab.config.manifest_path), "--json")
            assert rc == 1 and "Traceback" not in err, err
            assert "nothing in this capture can be replayed" in err
            docs[name] = json.loads(out)
        rc, table, err = await run_testbed("replay", str(REAL / "http-get.pcapng"),
                                           "--manifest", str(lab.config.manifest_path))
    finally:
        await lab.stop()
    for name, doc in docs.items():
        assert doc["replayed"] == 0 and doc["targets"] == [], name
        assert doc["unused"] and all(u["reason"] for u in doc["unused"]), name
    reasons = " ".join(u["reason"] for u in docs["citizenlab-wechat-android-2023.pcap"]["unused"])
    assert "MMTLS" in reasons and "/mmtls/" in reasons and "sglong.wechat.com" in reasons
    # the table fits 100 columns: its detail column wraps, read back row by row
    assert max(len(line) for line in table.splitlines()) <= 100
    detail = " ".join(line.split("│")[-2].strip() for line in table.splitlines()
                      if line.startswith("│"))
    assert "is not a host of the lab" in detail and rc == 1


async def test_passwords_in_a_capture_are_never_shown(tmp_path):
    """A capture with a login in clear (a manualauth over plain HTTP, which the lab refuses):
    its password is in the capture, and in no output of the replay."""
    from mocks.runner import LabConfig
    from mocks.runner import start_lab as runner_start
    from testbed.client.phone import Phone
    from testbed.client.shortlink import ShortLink
    from testbed.wire import CGI_PREFIX, pb

    out = tmp_path / "clear-login.pcapng"
    lab = await runner_start(LabConfig(users=2, time_scale=100, record=out,
                                       manifest_path=tmp_path / "rec.json"))
    try:
        m = lab.manifest
        u = m.users[0]
        short = ShortLink(m.hosts["short.weixin.qq.com"].addresses, m.hosts[
            "short.weixin.qq.com"].port)
        await short.post(CGI_PREFIX + "manualauth", pb.ManualAuthRequest(
            username=u["username"], password=u["password"]).SerializeToString())
        phone = Phone(m, u["username"], u["password"])
        await phone.start()
        await phone.stop()
    finally:
        await lab.stop()
    assert u["password"].encode() in out.read_bytes()
    (tmp_path / "fresh").mkdir()
    fresh = await start_lab(tmp_path / "fresh", users=2, time_scale=100)
    try:
        outputs = [await run_testbed("replay", str(out), "--manifest",
                                     str(fresh.config.manifest_path), *extra)
                   for extra in ((), ("--json",), ("--strict", "--json"))]
    finally:
        await fresh.stop()
    for rc, stdout, stderr in outputs:
        assert u["password"] not in stdout + stderr
    doc = json.loads(outputs[1][1])
    assert doc["diffs"] == []
    clear = [r for r in doc["rows"] if r["request_frame"] and r["command"] == "MANUALAUTH"]
    assert len(clear) == 2          # the one in clear and the phone's over TLS
    assert outputs[2][0] == 1       # --strict: the login in clear could not be replayed
