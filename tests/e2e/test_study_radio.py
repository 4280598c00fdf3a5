"""`testbed study heartbeat --radio ...`, run as a user runs it, against a hand calculation.

Three phones per policy behind a 300 s carrier NAT for 1 protocol hour at k = 200 (about 18 s
of wall time), no messages, so each phone's traffic is its heartbeat schedule alone:

* `fixed:270`: a NOOP and its reply every 270 s: floor(3600 / 270) = 13 a window, each one
  wake-up of the radio (the reply comes inside the promotion);
* `fixed:1680`: every NOOP finds the link black-holed (the NAT forgets after 300 s), goes
  unanswered for the NOOP timeout T, then the phone reconnects (FIN, TCP handshake, IDENTIFY,
  newsync) and the next NOOP is 1680 s after that: NOOPs at 1680 + i (1680 + T), two in the
  window, each two wake-ups (T = 20 s is longer than either profile's tails).

A wake-up that carries one short exchange costs what one packet costs (docs/radio.md), from
the profiles' sourced figures: the promotion, then every tail in full. Packets (IP, both
ways): a heartbeat is 3 (NOOP, reply, the phone's ACK); a `fixed:1680` cycle is 11 (the
NOOP into the black hole; then the FIN, SYN, SYN-ACK, ACK, IDENTIFY and its reply and ACK,
newsync and its reply and ACK).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.study.heartbeat import StudyResult, render_radio_tables

REPO = Path(__file__).resolve().parents[2]
# k = 200, not more: a reply the phone's loop reads late by a few wall milliseconds is a radio
# tail longer by as many protocol seconds, and the energy check is to 5 %
HOURS, SCALE, CLIENTS, POPULATION = 1.0, 200, 3, 300e6
WINDOW = HOURS * 3600
DAY = 86400.0
BATTERY_J = 1500 * 3.7 * 3.6        # 1,500 mAh at 3.7 V: 19,980 J
# one wake-up carrying one short exchange: (energy J, radio-on s, signalling messages)
WAKE = {
    # IDLE->DCH 2 s at 530 mW, DCH tail 5 s at 800 mW, FACH tail 12 s at 460 mW; the
    # phone's promotion (8 messages), DCH->FACH (2), FACH->IDLE (2)
    "umts-2010": (2.0 * 0.53 + 5.0 * 0.8 + 12.0 * 0.46, 2.0 + 5.0 + 12.0, 8 + 2 + 2),
    # IDLE->CONNECTED 0.2601 s at 1210.7 mW, tail 11.576 s at 1060 mW; 7 + 1 release
    "lte-2012": (0.2601 * 1.2107 + 11.576 * 1.06, 0.2601 + 11.576, 7 + 1),
}

# A wake-up's figures above take its exchanges as instant. The lab's round trips are not: a
# few wall ms for six phones through the NAT, as many hundred protocol ms at k = 200, past
# LTE's 0.26 s promotion, and a reconnect's three in a row (handshake, IDENTIFY, newsync)
# past UMTS's 2 s. The tail then starts at the last answer, so radio-on time, energy and
# battery share may exceed the hand figure by each round trip, at most this many protocol
# seconds (10 wall ms), in the power of the state the tail starts in.
REPLY_SLACK_S = 2.0
TAIL_W = {"umts-2010": 0.8, "lte-2012": 1.06}      # DCH; RRC_CONNECTED
TAIL_KEYS = {"radio_on_s_per_day": lambda name: 1.0,
             "energy_j_per_day": lambda name: TAIL_W[name],
             "battery_share_per_day": lambda name: TAIL_W[name] / BATTERY_J}


def run_study(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "testbed.cli", "study", "heartbeat", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def hand_schedule(policy: str, noop_timeout: float) -> tuple[int, int, int]:
    """(wake-ups, packets, round trips) of one phone's window, from its heartbeat schedule
    alone."""
    if policy == "fixed:270":
        beats = math.floor(WINDOW / 270)
        return beats, 3 * beats, beats
    cycle = 1680 + noop_timeout
    noops = math.floor((WINDOW - 1680) / cycle) + 1
    return 2 * noops, 11 * noops, 3 * noops


def test_study_radio_agrees_with_a_hand_calculation(tmp_path):
    out, png = tmp_path / "study.json", tmp_path / "study.png"
    r = run_study("--nat-timeout", "300", "--policy", "fixed:270", "--policy", "fixed:1680",
                  "--clients", str(CLIENTS), "--hours", str(HOURS), "--time-scale", str(SCALE),
                  "--messages-per-client-per-day", "0", "--radio", "umts-2010",
                  "--radio", "lte-2012", "--population", "300e6", "--processes", "0",
                  "--json", str(out), "--plot", str(png), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "Radio: what the traffic costs" in r.stdout
    # stdout's tables fit 100 columns: turned, one per profile, named in its title
    assert r.stdout.count("umts-2010") == 1 and r.stdout.count("lte-2012") == 1
    assert max(len(line) for line in r.stdout.splitlines()) <= 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads(out.read_text())
    assert data["config"]["radio"] == ["umts-2010", "lte-2012"]
    profiles = {p["name"]: p for p in data["radio_profiles"]}
    assert "qian2010" in profiles["umts-2010"]["sources"]
    assert "huang2012" in profiles["lte-2012"]["sources"]
    noop_timeout = data["noop_timeout_effective_s"]
    assert noop_timeout == 20          # the phone's own (its 50 ms wall floor is 10 s at k = 200)
    by = {p["policy"]: p for p in data["policies"]}

    for policy in ("fixed:270", "fixed:1680"):
        p = by[policy]
        wakeups, packets, trips = hand_schedule(policy, noop_timeout)
        per_day = wakeups * DAY / WINDOW
        for name, (joules, on_s, msgs) in WAKE.items():
            f = p["radio"][name]
            why = f"{policy} on {name}: {f}"
            hand = {"packets_per_day": packets * DAY / WINDOW,
                    "wakeups_per_day": per_day, "promotions_per_day": per_day,
                    "signalling_per_day": per_day * msgs, "radio_on_s_per_day": per_day * on_s,
                    "energy_j_per_day": per_day * joules,
                    "battery_share_per_day": per_day * joules / BATTERY_J,
                    "signalling_per_s_per_million": per_day * msgs * 1e6 / DAY,
                    "signalling_per_s": per_day * msgs * POPULATION / DAY,
                    "wakeups_per_s": per_day * POPULATION / DAY}
            for key, value in hand.items():
                if key in TAIL_KEYS:
                    most = value + trips * DAY / WINDOW * REPLY_SLACK_S * TAIL_KEYS[key](name)
                    assert value * 0.99 <= f[key] <= most, (key, value, most, why)
                    continue
                assert f[key] == pytest.approx(value, rel=0.05), (key, why)
            # nothing was sent to the phones and no server closed a link: a server packet
            # that woke a radio could only be a reply held back by a stalled loop
            assert f["server_wakeups"] == f["late_wakeups"], why
            assert f["population"] == POPULATION

    # the phones' own counters tell the same story: the radio woke for every heartbeat and
    # for every reconnect (each of fixed:1680's heartbeats dies), and for every reply that a
    # stalled loop held back past the tails (counted as late)
    assert by["fixed:1680"]["silent_deaths"] == by["fixed:1680"]["heartbeats_sent"]
    for p in by.values():
        for name in WAKE:
            f = p["radio"][name]
            assert f["wakeups"] == p["heartbeats_sent"] + p["reconnects"] + f["late_wakeups"], p

    # the JSON reads back and renders, wide and turned (one table per profile)
    from rich.console import Console

    result = StudyResult.from_dict(data)
    assert result.by_policy("fixed:270").radio["lte-2012"].wakeups > 0
    for vertical, width, tables in ((False, 200, 1), (True, 80, 2)):
        rendered = render_radio_tables(result, vertical=vertical)
        assert len(rendered) == tables
        console = Console(width=width, record=True)
        for t in rendered:
            console.print(t)
        text = console.export_text()
        assert "fixed:1680" in text and "lte-2012" in text and "battery" in text


def test_study_radio_bad_arguments_exit_2():
    r = run_study("--radio", "gprs-1999", "--hours", "1")
    assert r.returncode == 2
    assert "unknown radio profile 'gprs-1999'" in r.stderr and "Traceback" not in r.stderr
    r = run_study("--radio", "umts-2010", "--radio", "umts-2010")
    assert r.returncode == 2 and "given twice" in r.stderr
    r = run_study("--radio", "lte-2012", "--population", "0")
    assert r.returncode == 2 and "--population" in r.stderr
