"""The tap's TCP/UDP rendering, checked by tshark: handshake, segments, ACKs, FIN, RST,
checksums, and no analysis flags (a synthesised capture has nothing to retransmit)."""

from __future__ import annotations

import struct

import pytest

from testbed.capture.packets import read_capture
from testbed.capture.pcapng_writer import PcapngWriter
import random

from testbed.capture.tap import Tap, checksum_of, mac_for, ones_sum

from .tshark import CHECKSUMS, conversations, fields, needs_tshark, tshark

PHONE = ("127.0.0.87", 40001)
SHORT = ("127.0.0.21", 8080)
LONG = ("127.0.0.11", 8080)
DNS = ("127.0.0.53", 5353)
T0 = 1_370_000_000.0

REQUEST = (b"POST /cgi-bin/micromsg-bin/newsendmsg HTTP/1.1\r\nHost: short.weixin.qq.com\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Length: 4000\r\n\r\n"
           + bytes(range(256)) * 15 + b"x" * 160)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def dns_query(name: str, qid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def script(tap: Tap) -> None:
    """A DNS lookup, a short connection (5 segments up, FIN both ways), a long link that
    carries frames both ways and is reset, a connection half-closed by the server first."""
    t = T0
    tap.udp(PHONE[:1] + (50000,), DNS, dns_query("long.weixin.qq.com"), ts=t)
    c = tap.tcp_open(PHONE, SHORT, ts=t + 0.01)
    tap.tcp_data(c, True, REQUEST, ts=t + 0.02)
    tap.tcp_data(c, False, RESPONSE, ts=t + 0.03)
    tap.tcp_close(c, False, ts=t + 0.04)          # server FIN first ...
    tap.tcp_close(c, True, ts=t + 0.05)           # ... then the client's
    tap.tcp_close(c, True, ts=t + 0.051)          # a second FIN is ignored
    lk = tap.tcp_open((PHONE[0], 40002), LONG, ts=t + 0.06)
    for i in range(3):
        tap.tcp_data(lk, True, struct.pack(">IHHII", 16, 16, 1, 6, i + 1), ts=t + 0.07 + i)
        tap.tcp_data(lk, False, struct.pack(">IHHII", 16, 16, 1, 1_000_000_006, i + 1),
                     ts=t + 0.08 + i)
    tap.tcp_close(lk, True, reset=True, ts=t + 4)
    tap.tcp_data(lk, False, b"after reset: not rendered", ts=t + 4.1)
    h = tap.tcp_open((PHONE[0], 40003), SHORT, ts=t + 5)
    tap.tcp_data(h, True, b"GET / HTTP/1.1\r\n\r\n", ts=t + 5.01)
    tap.tcp_close(h, True, ts=t + 5.02)           # client half-closes
    tap.tcp_data(h, False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", ts=t + 5.03)
    tap.tcp_close(h, False, ts=t + 5.04)


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "tap.pcapng"
    with Tap(path, comment={"how": "tap", "test": True}, seed=1) as tap:
        script(tap)
    return path


@needs_tshark
def test_no_analysis_flags_and_checksums_correct(capture):
    assert tshark(capture, "-Y", "tcp.analysis.flags") == ""
    bad = "tcp.checksum.status==2 || ip.checksum.status==2 || udp.checksum.status==2"
    assert tshark(capture, *CHECKSUMS, "-Y", bad) == ""
    good = fields(capture, "frame.number", extra=CHECKSUMS,
                  filt="ip.checksum.status==1 && (tcp.checksum.status==1 || "
                       "udp.checksum.status==1)")
    assert len(good) == len(fields(capture, "frame.number"))


@needs_tshark
def test_conversations_and_handshake(capture):
    assert sorted(conversations(capture)) == [("127.0.0.87:40001", "127.0.0.21:8080"),
                                              ("127.0.0.87:40002", "127.0.0.11:8080"),
                                              ("127.0.0.87:40003", "127.0.0.21:8080")]
    for port in (40001, 40002, 40003):
        rows = fields(capture, "tcp.seq", "tcp.ack", "tcp.flags", "tcp.options.mss_val",
                      filt=f"tcp.port=={port}")[:3]
        assert rows == [["0", "0", "0x0002", "1460"], ["0", "1", "0x0012", "1460"],
                        ["1", "1", "0x0010", ""]]


@needs_tshark
def test_segments_acks_and_close(capture):
    rows = fields(capture, "ip.src", "tcp.seq", "tcp.ack", "tcp.len", "tcp.flags",
                  filt="tcp.port==40001")
    up = [r for r in rows[3:] if r[0] == "127.0.0.87"]
    data = [int(r[3]) for r in up if int(r[3])]
    full, rest = divmod(len(REQUEST), 1460)
    assert data == [1460] * full + ([rest] if rest else []) and len(data) >= 3
    # the server ACKs every second segment and the end of the flight
    acks = [r for r in rows[3:] if r[0] == "127.0.0.21" and r[4] == "0x0010"]
    assert [int(a[2]) for a in acks][:2] == [1 + 2920, 1 + len(REQUEST)]
    # server FIN (ACKed), then the client's FIN (ACKed): FIN seq numbers are consistent
    fins = [r for r in rows if int(r[4], 16) & 1]
    assert [(f[0], f[1], f[2]) for f in fins] == [
        ("127.0.0.21", str(1 + len(RESPONSE)), str(1 + len(REQUEST))),
        ("127.0.0.87", str(1 + len(REQUEST)), str(2 + len(RESPONSE)))]
    assert rows[-1][:3] == ["127.0.0.21", str(2 + len(RESPONSE)), str(2 + len(REQUEST))]
    # the reset link ends with the client's RST; nothing after it
    rst = fields(capture, "ip.src", "tcp.flags", filt="tcp.port==40002")
    assert rst[-1] == ["127.0.0.87", "0x0014"]
    # the half-closed connection still carries the server's answer after the client's FIN
    half = fields(capture, "ip.src", "tcp.len", "tcp.flags", filt="tcp.port==40003")
    order = [(r[0][-2:], int(r[2], 16) & 1, int(r[1])) for r in half[3:]]
    answer = len(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert order.index(("87", 1, 0)) < order.index(("21", 0, answer))


@needs_tshark
def test_http_and_dns_decoded(capture):
    http = fields(capture, "http.request.method", "http.request.uri",
                  filt="http.request", extra=("-d", "tcp.port==8080,http"))
    assert ["POST", "/cgi-bin/micromsg-bin/newsendmsg"] in http
    dns = fields(capture, "dns.qry.name", filt="dns", extra=("-d", "udp.port==5353,dns"))
    assert dns == [["long.weixin.qq.com"]]


@needs_tshark
def test_addresses_ids_ttl_and_time(capture):
    rows = fields(capture, "frame.time_epoch", "eth.src", "ip.src", "ip.id", "ip.ttl",
                  "tcp.window_size_value")
    times = [float(r[0]) for r in rows]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[0] == pytest.approx(T0, abs=1e-6)
    for r in rows:
        assert r[1] == ":".join(f"{b:02x}" for b in mac_for(r[2]))
        assert r[4] == "64"
        assert r[5] in ("", "65535")
    ids = [int(r[3], 16) for r in rows if r[2] == "127.0.0.87"]
    assert all((b - a) % 65536 == 1 for a, b in zip(ids, ids[1:]))


def test_same_events_same_bytes(tmp_path):
    for name in ("a", "b"):
        with Tap(tmp_path / f"{name}.pcapng", comment="fixed", seed=42) as tap:
            script(tap)
    a, b = ((tmp_path / f"{n}.pcapng").read_bytes() for n in "ab")
    # identical but for the statistics block's time stamp at the end
    isb = int.from_bytes(a[-4:], "little")
    assert isb == int.from_bytes(b[-4:], "little") and a[:-isb] == b[:-isb]


@needs_tshark
def test_small_mss_and_sequence_wrap(tmp_path):
    path = tmp_path / "wrap.pcapng"
    with Tap(path, comment="wrap", mss=536) as tap:
        real = tap._rng.getrandbits
        tap._rng.getrandbits = lambda bits: (1 << 32) - 700 if bits == 32 else real(bits)
        c = tap.tcp_open(PHONE, SHORT, ts=T0)
        tap.tcp_data(c, True, b"a" * 3000, ts=T0 + 0.1)
        tap.tcp_data(c, False, b"b" * 3000, ts=T0 + 0.2)
        tap.tcp_close(c, True, ts=T0 + 0.3)
        tap.tcp_close(c, False, ts=T0 + 0.4)
    assert tshark(path, "-Y", "tcp.analysis.flags") == ""
    assert tshark(path, *CHECKSUMS, "-Y", "tcp.checksum.status==2") == ""
    lens = [int(r[0]) for r in fields(path, "tcp.len") if r[0] != "0"]
    assert max(lens) == 536 and sum(lens) == 6000
    raw = [int(r[0]) for r in fields(path, "tcp.seq_raw")]
    assert max(raw) > (1 << 32) - 700 and min(raw) < 3000   # it wrapped


@needs_tshark
def test_deferred_start_buffers_then_writes(tmp_path):
    path = tmp_path / "late.pcapng"
    tap = Tap(path, max_pending=4)
    c = tap.tcp_open(PHONE, SHORT, ts=T0)          # 3 packets
    tap.tcp_data(c, True, b"hi", ts=T0 + 0.1)       # 2 packets: one is over the bound
    assert not path.exists() and not tap.started
    tap.start({"how": "tap", "manifest": "known now"})
    tap.tcp_close(c, True, ts=T0 + 0.2)
    tap.close()
    cap = read_capture(path)
    assert sum(1 for _ in cap) == 6 and cap.meta["manifest"] == "known now"
    assert cap.stats[0]["ifdrop"] == 1 and cap.stats[0]["ifrecv"] == 7
    assert len(fields(path, "frame.number")) == 6
    # a tap closed before it started writes nothing at all
    never = Tap(tmp_path / "never.pcapng")
    never.tcp_open(PHONE, SHORT)
    never.close()
    assert not (tmp_path / "never.pcapng").exists()


def test_tap_over_an_existing_writer(tmp_path):
    w = PcapngWriter(tmp_path / "w.pcapng", comment={"how": "tap"})
    tap = Tap(w)
    tap.udp(("127.0.0.87", 1000), DNS, b"\0" * 12)
    tap.close()
    assert w.closed and w.packets == 1


def rfc1071(data: bytes) -> int:
    """The Internet checksum the slow way: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_checksum_equals_the_word_by_word_sum():
    rng = random.Random(5)
    cases = [b"\x45", b"\xff\xff", b"\x12\x34\xed\xcb", b"\x00\x06\xff\xf9",
             b"\xff" * 1461, b"\x80\x00" * 3, b"\x00\x01" + b"\x00" * 1459]
    cases += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 1600)))
              for _ in range(300)]
    for data in cases:
        assert checksum_of(ones_sum(data)) == rfc1071(data), data[:16]
        cut = rng.randrange(0, len(data) // 2 + 1) * 2     # parts add up
        assert checksum_of(ones_sum(data[:cut]) + ones_sum(data[cut:])) == rfc1071(data)
