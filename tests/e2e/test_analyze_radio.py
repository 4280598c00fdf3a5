"""`testbed analyze CAPTURE --radio PROFILE`, run as a user runs it, on a capture the lab's
tap writes with chosen times, on a live lab's recording, and on a real capture."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from testbed.capture.tap import Tap
from testbed.client.session import Session
from tests.capture.json_contract import assert_valid
from tests.capture.real import NDPI
from tests.conftest import start_lab

REPO = Path(__file__).resolve().parents[2]
SCALE = 100.0                      # protocol seconds per wall second, as the comment says
T0 = 1_700_000_000.0               # wall time of protocol second 0
PHONE, OTHER, SERVER = "127.99.0.1", "127.99.0.2", ("127.0.0.2", 8080)
NOOP = b"\x00\x00\x00\x10\x00\x10\x00\x01\x00\x00\x00\x06\x00\x00\x00\x01"   # 16 bytes
ONE_UMTS_J = 2 * 0.53 + 5 * 0.8 + 12 * 0.46          # a lone burst: 10.58 J
ONE_LTE_J = 0.2601 * 1.2107 + 11.576 * 1.06           # 12.58546307 J


def run_analyze(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "testbed.cli", "analyze", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)


def wall(protocol_s: float) -> float:
    return T0 + protocol_s / SCALE


def heartbeat_capture(path: Path) -> None:
    """The phone's long link: a NOOP and its reply at 0, 270, 540 and 3600 s, a server
    push at 400 s (the phone only ACKs it), the phone's FIN at 3600.25 s; another phone's one
    request at 100 s. Every burst lasts at most 0.25 s, inside the promotion (0.2601 s on
    LTE), so each costs exactly what a lone packet does."""
    with Tap(path, comment={"how": "tap", "time_scale": SCALE}, seed=3) as tap:
        conn = tap.tcp_open((PHONE, 40001), SERVER, ts=wall(0))

        def heartbeat(t):
            tap.tcp_data(conn, True, NOOP, ts=wall(t))
            tap.tcp_data(conn, False, NOOP, ts=wall(t + 0.2))

        heartbeat(0)
        other = tap.tcp_open((OTHER, 40002), SERVER, ts=wall(100))
        tap.tcp_data(other, True, b"GET / HTTP/1.1\r\n\r\n", ts=wall(100.1))
        heartbeat(270)
        tap.tcp_data(conn, False, NOOP, ts=wall(400))       # the push, and the phone's ACK
        heartbeat(540)
        heartbeat(3600)
        tap.tcp_close(conn, True, ts=wall(3600.25))


def test_analyze_radio_on_a_tap_capture_matches_the_hand_calculation(tmp_path):
    cap = tmp_path / "heartbeats.pcapng"
    heartbeat_capture(cap)
    p = run_analyze(str(cap), "--radio", "umts-2010", "--radio", "lte-2012", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert_valid(doc)
    radio = doc["radio"]
    assert [pr["name"] for pr in radio["profiles"]] == ["umts-2010", "lte-2012"]
    assert "qian2010" in radio["profiles"][0]["sources"]
    rows = {(c["client"], c["profile"]): c for c in radio["clients"]}
    assert set(rows) == {(a, pr) for a in (PHONE, OTHER) for pr in ("umts-2010", "lte-2012")}

    u = rows[(PHONE, "umts-2010")]
    assert (u["wakeups"], u["server_wakeups"], u["promotions"]) == (5, 1, 5)
    assert u["signalling_messages"] == 4 * 12 + 13             # the push pages the phone
    assert u["tail_s"] == pytest.approx(5 * 17.0)
    assert u["radio_on_s"] == pytest.approx(5 * 19.0)
    assert u["energy_j"] == pytest.approx(5 * ONE_UMTS_J, rel=1e-6)
    assert u["battery_share"] == pytest.approx(5 * ONE_UMTS_J / 19980, rel=1e-4)
    assert u["observed_s"] == pytest.approx(3600.25, abs=0.01)
    assert u["battery_share_per_day"] == pytest.approx(
        u["battery_share"] * 86400 / u["observed_s"], rel=1e-4)
    lte = rows[(PHONE, "lte-2012")]
    assert (lte["wakeups"], lte["server_wakeups"]) == (5, 1)
    assert lte["signalling_messages"] == 4 * 8 + 9
    assert lte["energy_j"] == pytest.approx(5 * ONE_LTE_J, rel=1e-6)
    o = rows[(OTHER, "umts-2010")]
    assert (o["wakeups"], o["packets_c2s"]) == (1, 3)      # SYN, ACK, the request
    assert o["energy_j"] == pytest.approx(ONE_UMTS_J, rel=1e-6)

    table = run_analyze(str(cap), "--radio", "umts-2010")
    assert table.returncode == 0, table.stderr
    assert "radio: umts-2010" in table.stdout
    sentence = next(line for line in table.stdout.splitlines()
                    if line.startswith(f"{PHONE} on umts-2010 in 3600."))
    assert "s of traffic: the radio woke up 5 times (1 of them for a server push)" in sentence
    assert "a day of traffic like this would take" in table.stdout


def test_analyze_radio_refuses_an_unknown_profile(tmp_path):
    cap = tmp_path / "heartbeats.pcapng"
    heartbeat_capture(cap)
    p = run_analyze(str(cap), "--radio", "gprs-2005")
    assert p.returncode == 2 and p.stdout == ""
    assert "unknown radio profile 'gprs-2005'" in p.stderr and "Traceback" not in p.stderr


async def test_analyze_radio_on_a_live_lab_recording(tmp_path):
    path = tmp_path / "lab.pcapng"
    lab = await start_lab(tmp_path, users=2, record=path)
    plan = lab.config.plan
    own_block = lab.manifest.dns_address == plan.dns
    try:
        u = lab.manifest.users[0]
        s = Session(lab.manifest, u["username"], u["password"],
                    local_addr=plan.phone if own_block else None)
        await s.login()
        await s.connect_long()
        await s.link.noop()
        await s.close()
        await asyncio.sleep(0.05)
    finally:
        await lab.stop()
    p = await asyncio.to_thread(run_analyze, str(path), "--radio", "lte-2012", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert_valid(doc)
    clients = doc["radio"]["clients"]
    if own_block:    # the phone has its own address: it alone is a client, no server is
        assert [c["client"] for c in clients] == [plan.phone]
    c = clients[0]
    assert c["wakeups"] >= 1 and c["packets_c2s"] > 0 and c["packets_s2c"] > 0
    assert c["radio_on_s"] >= c["wakeups"] * 11.576


def lte_by_hand(path: Path, host: str) -> tuple[int, int, float]:
    """Packets, wake-ups and radio-on seconds of `host` on lte-2012, from dpkt's reading:
    a packet more than the promotion plus the tail after the radio's last activity wakes
    it; a packet during a promotion goes out when it ends."""
    times = []
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                if host in (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)):
                    times.append(ts)
    promo, tail = 0.2601, 11.576
    wakeups, on, last = 0, 0.0, None       # last: when the radio's tail (re)started
    session_start = None
    for t in times:
        if last is not None and t < last + tail:
            last = max(last, t)
            continue
        if last is not None:
            on += last + tail - session_start
        wakeups += 1
        session_start, last = t, t + promo
    on += last + tail - session_start
    return len(times), wakeups, on


def test_analyze_radio_on_a_real_capture_agrees_with_dpkt():
    real = NDPI
    host = "192.168.1.103"             # the WeChat Web browser host
    packets, wakeups, on = lte_by_hand(real, host)
    p = run_analyze(str(real), "--radio", "lte-2012", "--json")
    assert p.returncode == 0, p.stderr
    row = next(c for c in json.loads(p.stdout)["radio"]["clients"] if c["client"] == host)
    assert row["packets_c2s"] + row["packets_s2c"] == packets
    assert row["wakeups"] == wakeups and row["radio_on_s"] == pytest.approx(on, rel=1e-6)
    assert row["summary"].startswith(f"{host} on lte-2012 in 3954.0 s of traffic: the radio "
                                     f"woke up {wakeups} times")
