"""`testbed analyze` makes sense of real captures of real WeChat traffic, not only ours."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from testbed.capture.analyze import analyze
from testbed.cli import main

from ..capture.json_contract import assert_valid
from ..capture.real import REAL, REAL_FILES
from ..capture.tshark import Reference, available, per_direction, tshark_per_direction


def test_citizenlab_android_2023():
    a = analyze(str(REAL / "citizenlab-wechat-android-2023.pcap"))
    assert a.packets == 489 and 26 < a.duration < 27
    assert len(a.dns["sglong.wechat.com"]) == 2
    rows = Counter((f["host"], f["app"], f["kind"], f["closed_by"]) for f in a.flows)
    assert rows[("sgshort.wechat.com", "http", "short", "fin")] == 24   # POST /mmtls/<hex>
    longs = [f for f in a.flows if f["host"] == "sglong.wechat.com" and f["kind"] == "long"]
    assert len(longs) == 1 and longs[0]["server"].endswith(":8080")
    assert longs[0]["app"] == "unknown"            # MMTLS, not the lab's clear framing
    racing = [f for f in a.flows if f["host"] == "sglong.wechat.com" and f["closed_by"] == "rst"]
    assert len(racing) == 2                         # the losers of the connection race
    posts = [e for e in a.events if e.kind == "http_request" and e.get("method") == "POST"
             and e.host == "sgshort.wechat.com"]
    assert sum(e.get("uri", "").startswith("/mmtls/") for e in posts) == 24
    assert all(f["heartbeat_s"] is None for f in a.flows)   # none within 26 s
    # the raced connection on port 80, reset before any request, exchanged nothing
    (raced,) = [f for f in a.flows if f["server"].endswith(":80") and f["closed_by"] == "rst"]
    assert (raced["kind"], raced["app"], raced["requests"]) == ("other", "none", 0)
    assert all(f["kind"] == "other" for f in a.flows if f["closed_by"] == "rst")


def test_ndpi_wechat_web_2017_keepalive_and_dns():
    a = analyze(str(REAL / "ndpi-wechat-web-2017.pcap"))
    assert a.packets == 1672
    assert len(a.dns["web.wechat.com"]) == 2 and len(a.dns["res.wx.qq.com"]) == 9
    # Google's push link on port 5228 is kept alive by empty ACKs every 45 s; another
    # connection (safebrowsing, TLS) by TCP keep-alives at the same period
    (gcm,) = [f for f in a.flows if f["server"].endswith(":5228")]
    assert gcm["heartbeat_s"] == pytest.approx(45.0, abs=0.5) and gcm["kind"] == "long"
    beats = [f["heartbeat_s"] for f in a.flows if f["heartbeat_s"]]
    assert len(beats) == 2 and all(abs(b - 45.0) < 0.5 for b in beats)
    assert a.tcp["retransmission"] == 82             # what tshark counts (80 are FIN retries)
    assert any(f["app"] == "tls" and f["host"] == "web.wechat.com" for f in a.flows)


def test_small_captures_and_the_cli(capsys):
    a = analyze(str(REAL / "http-get.pcapng"))
    assert [f["app"] for f in a.flows] == ["http"]
    assert [e.get("method") for e in a.events if e.kind == "http_request"] == ["GET"]
    resp = [e for e in a.events if e.kind == "http_response"]
    assert resp and resp[0].get("status") == 200
    d = analyze(str(REAL / "dns-multiple-a.pcapng"))
    assert max(len(v) for v in d.dns.values()) >= 6
    assert main(["analyze", str(REAL / "dns-multiple-a.pcapng"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert_valid(doc)
    assert doc["packets"] == 22 and doc["flows"] == [] and "google.com" in doc["dns"]


@pytest.mark.skipif(not available(), reason="tshark is not installed")
@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_flow_packet_counts_equal_tshark_conversations(path):
    """Every row counts what `tshark -z conv,tcp` counts, the packets after the close too."""
    a = analyze(str(path))
    assert per_direction(a.flows) == tshark_per_direction(Reference(path))


def test_damaged_capture_gives_a_partial_result(tmp_path, capsys):
    data = (REAL / "citizenlab-wechat-android-2023.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 2 + 7])
    a = analyze(str(cut))
    assert a.truncated and a.error and 100 < a.packets < 489
    assert main(["analyze", str(cut)]) == 0
    assert "truncated" in capsys.readouterr().err      # a warning, on stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    assert main(["analyze", str(junk)]) == 2
