"""The pcapng writer: read back by tshark, capinfos and dpkt, the comment intact."""

from __future__ import annotations

import io
import json
import re
import time

import dpkt
import pytest

from testbed.capture.packets import Interface, read_capture
from testbed.capture.pcapng_writer import MAX_COMMENT, PcapngWriter, capture_comment
from testbed.lab.manifest import HostEntry, Manifest

from .tshark import capinfos, fields, needs_tshark, tshark


def udp_frame(i: int, size: int = 5) -> bytes:
    udp = dpkt.udp.UDP(sport=40000 + i, dport=5353, data=b"x" * size)
    udp.ulen = 8 + size
    ip = dpkt.ip.IP(src=b"\x7f\x00\x00\x57", dst=b"\x7f\x00\x00\x35", p=17, data=udp)
    ip.len = 20 + len(udp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02\x00\x7f\x00\x00\x57",
                                        dst=b"\x02\x00\x7f\x00\x00\x35", data=ip))


def manifest() -> Manifest:
    return Manifest(profile="lab-report-2013", time_scale=60.0, dns_address="127.0.0.53",
                    dns_port=5353, hosts={"long.weixin.qq.com": HostEntry(["127.0.0.11"], 8080)},
                    ca_cert="/tmp/ca.pem",
                    users=[{"username": "alice", "password": "s3cret-alice"},
                           {"username": "bob", "password": "s3cret-bob"}],
                    heartbeat_s=300, server_idle_s=660)


def shb_comment_via_dpkt(path) -> str:
    """The section comment as dpkt parses the first block (its Reader skips the SHB)."""
    data = path.read_bytes()
    total = int.from_bytes(data[4:8], "little")
    shb = dpkt.pcapng.SectionHeaderBlockLE(data[:total])
    return [o.text for o in shb.opts if o.code == dpkt.pcapng.PCAPNG_OPT_COMMENT][0]


def test_comment_records_how_and_redacts_passwords():
    c = capture_comment("tap", manifest=manifest(), fault_plan={"loss": 0.3}, seed=7,
                        started=1_370_000_000.25)
    text = json.dumps(c)
    assert "s3cret" not in text and "password" not in text
    assert c["how"] == "tap" and c["synthesised"] is True
    assert c["profile"] == "lab-report-2013" and c["time_scale"] == 60.0
    assert [u["username"] for u in c["manifest"]["users"]] == ["alice", "bob"]
    assert c["fault_plan"] == {"loss": 0.3} and c["seed"] == 7
    assert c["started"] == 1_370_000_000.25 and c["started_utc"].startswith("2013-05-31T")
    assert c["testbed_version"]
    # a manifest given as a dict is redacted too; absent plans are recorded as null
    c2 = capture_comment("sniffer", manifest=manifest().to_dict())
    assert "s3cret" not in json.dumps(c2)
    assert c2["fault_plan"] is None and c2["seed"] is None and c2["synthesised"] is False
    with pytest.raises(ValueError):
        capture_comment("guessed")


def test_huge_manifest_is_trimmed_to_fit(tmp_path):
    m = manifest()
    m.users = [{"username": f"user{i:06d}", "password": "p"} for i in range(20000)]
    c = capture_comment("tap", manifest=m)
    assert c["manifest"]["users_omitted"] == 20000 - len(c["manifest"]["users"])
    with PcapngWriter(tmp_path / "big.pcapng", comment=c):
        pass
    with pytest.raises(ValueError):
        PcapngWriter(io.BytesIO(), comment="x" * (MAX_COMMENT + 1))


@needs_tshark
def test_read_by_tshark_capinfos_and_dpkt(tmp_path):
    path = tmp_path / "w.pcapng"
    comment = capture_comment("tap", manifest=manifest(), started=1_700_000_000.0)
    t0 = 1_700_000_000.123456
    with PcapngWriter(path, comment=comment) as w:
        for i in range(5):
            w.write(t0 + i * 0.001, udp_frame(i))
        w.write_stats(ifdrop=3, ifrecv=8, ts=t0 + 1, starttime=t0, endtime=t0 + 1)
    # tshark: every frame, no complaint; io,stat and capinfos work
    rows = fields(path, "frame.time_epoch", "udp.srcport")
    assert [r[1] for r in rows] == [str(40000 + i) for i in range(5)]
    assert [float(r[0]) for r in rows] == pytest.approx([t0 + i * 0.001 for i in range(5)],
                                                        abs=1e-6)
    assert re.search(r"\|\s+5\s+\|\s+\d+\s+\|", tshark(path, "-q", "-z", "io,stat,0"))
    info = capinfos(path)
    assert "Number of packets:   5" in info
    assert "Capture application: wechat-testbed" in info
    assert "microseconds" in info
    # dpkt reads the packets; the SHB comment is the JSON we wrote, intact
    with open(path, "rb") as f:
        pkts = list(dpkt.pcapng.Reader(f))
    assert len(pkts) == 5 and pkts[0][1] == udp_frame(0)
    assert pkts[0][0] == pytest.approx(t0, abs=1e-6)
    assert json.loads(shb_comment_via_dpkt(path)) == json.loads(json.dumps(comment))
    # the project's reader: the statistics block says 3 were dropped
    cap = read_capture(path)
    assert len(list(cap)) == 5 and cap.error is None
    assert cap.meta["how"] == "tap" and cap.userappl == "wechat-testbed" and cap.os
    assert cap.interfaces == [Interface(1, 262144, 10 ** 6, "lab0")]
    assert cap.stats[0]["ifdrop"] == 3 and cap.stats[0]["ifrecv"] == 8 and cap.drops == {0: 3}


@needs_tshark
def test_nanoseconds_snaplen_and_file_objects(tmp_path):
    path = tmp_path / "ns.pcapng"
    ts_ns = 1_700_000_000_123_456_789
    with PcapngWriter(path, comment="plain text comment", tsresol_ns=True, snaplen=60,
                      if_name="veth-phone") as w:
        w.write_ns(ts_ns, udp_frame(0, size=100))
    rows = fields(path, "frame.time_epoch", "frame.len", "frame.cap_len")
    assert rows == [["1700000000.123456789", "142", "60"]]
    cap = read_capture(path)
    assert cap.comments == ["plain text comment"] and cap.meta is None
    assert cap.interfaces[0].tsresol == 10 ** 9 and cap.interfaces[0].name == "veth-phone"
    # a file object is written to and left open for its owner
    buf = io.BytesIO()
    w = PcapngWriter(buf, comment={"how": "tap"})
    w.write(time.time(), udp_frame(1))
    w.close()
    assert not buf.closed and w.packets == 1
    (tmp_path / "buf.pcapng").write_bytes(buf.getvalue())
    assert len(fields(tmp_path / "buf.pcapng", "frame.number")) == 1
    with pytest.raises(ValueError):
        w.write(time.time(), b"late")
