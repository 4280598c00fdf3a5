"""`testbed analyze`'s flow rows on generated captures: kinds, requests, heartbeats, counts."""

from __future__ import annotations

import struct

import pytest

from testbed.capture.analyze import analyze

from .builders import ACK, FIN, PSH, RST, SYN, Conn, segments_pcap
from .tshark import Reference, available, per_direction, tshark_per_direction


def write(tmp_path, segs, name="f.pcap"):
    p = tmp_path / name
    p.write_bytes(segments_pcap([s._replace(index=i + 1) for i, s in enumerate(segs)]))
    return p


def only_flow(path):
    a = analyze(str(path))
    assert len(a.flows) == 1, a.flows
    return a.flows[0]


def tls_record(ctype: int, body: bytes) -> bytes:
    return struct.pack(">BHH", ctype, 0x0303, len(body)) + body


def client_hello(sni: str) -> bytes:
    name = sni.encode()
    ext = struct.pack(">HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack(">H", len(ext)) + ext)
    return tls_record(22, b"\x01" + struct.pack(">I", len(body))[1:] + body)


def close(c: Conn) -> list:
    return [c.c(flags=FIN | ACK), c.s(flags=FIN | ACK), c.c()]


def test_a_connection_reset_before_any_request_is_other(tmp_path):
    """The losing connection of a race: SYN, SYN-ACK, RST. It carried no exchange."""
    c = Conn(server=("198.18.0.2", 80))
    segs = c.handshake()[:2] + [c.c(flags=RST | ACK)]
    row = only_flow(write(tmp_path, segs))
    assert (row["kind"], row["app"], row["requests"], row["closed_by"]) == \
        ("other", "none", 0, "rst")


def test_a_bare_handshake_closed_with_fin_is_other(tmp_path):
    c = Conn()
    row = only_flow(write(tmp_path, c.handshake() + close(c)))
    assert row["kind"] == "other" and row["closed_by"] == "fin"


def test_one_http_exchange_then_fin_is_short(tmp_path):
    c = Conn()
    segs = c.handshake() + [c.c(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                            c.s(b"HTTP/1.1 204 No Content\r\n\r\n")] + close(c)
    row = only_flow(write(tmp_path, segs))
    assert (row["kind"], row["app"], row["requests"]) == ("short", "http", 1)


def test_a_tls_login_is_short_not_long(tmp_path):
    """A TLS 1.3 login: the handshake's three flights and the closing alerts are no
    exchanges; the one request answered is (as the lab's manualauth over TLS)."""
    c = Conn(server=("198.18.0.2", 443), step=0.001)
    segs = c.handshake()
    segs.append(c.c(client_hello("short.weixin.qq.com")))
    segs.append(c.s(tls_record(22, bytes(122)) + tls_record(20, b"\x01")
                    + tls_record(23, bytes(23)) + tls_record(23, bytes(673))
                    + tls_record(23, bytes(95)) + tls_record(23, bytes(69))))
    segs.append(c.c(tls_record(20, b"\x01") + tls_record(23, bytes(69))))   # Finished
    segs.append(c.c(tls_record(23, bytes(303))))                            # the request
    segs.append(c.s(tls_record(23, bytes(250)) + tls_record(23, bytes(250))))  # tickets
    segs.append(c.s(tls_record(23, bytes(263))))                            # the answer
    segs.append(c.s(tls_record(23, bytes(19))))                             # close_notify
    segs.append(c.c(tls_record(23, bytes(19))))
    segs += close(c)
    a = analyze(str(write(tmp_path, segs)))
    (row,) = a.flows
    assert (row["kind"], row["app"], row["requests"], row["host"]) == \
        ("short", "tls", 1, "short.weixin.qq.com")
    # three requests on one TLS connection make it long
    c = Conn(server=("198.18.0.2", 443), step=0.001)
    segs = c.handshake() + [c.c(client_hello("x.example")), c.s(tls_record(22, bytes(90)))]
    for _ in range(3):
        segs += [c.c(tls_record(23, bytes(100))), c.s(tls_record(23, bytes(200)))]
    row = only_flow(write(tmp_path, segs + close(c), "three.pcap"))
    assert (row["kind"], row["requests"]) == ("long", 3)


def test_heartbeat_of_empty_acks(tmp_path):
    """A push link kept alive by the client's empty ACKs every 45 s, each answered by one
    from the server (tshark calls both duplicate ACKs), as Google's port 5228 link."""
    c = Conn(server=("198.18.0.2", 5228), step=0.05)
    segs = c.handshake() + [c.c(b"hello"), c.s(b"welcome")]
    t = segs[-1].ts
    for i in range(8):
        t += 45.0
        segs += [c.c(ts=t), c.s(ts=t + 0.05)]
    row = only_flow(write(tmp_path, segs))
    assert row["heartbeat_s"] == pytest.approx(45.0, abs=0.1)
    assert row["kind"] == "long" and row["tcp"]["duplicate_ack"] >= 14


def test_heartbeat_of_keep_alives(tmp_path):
    c = Conn(server=("198.18.0.2", 443), step=0.05)
    segs = c.handshake() + [c.c(b"\x17\x03\x03\x00\x01x"), c.s(b"\x17\x03\x03\x00\x01y")]
    t = segs[-1].ts
    for _ in range(6):
        t += 30.0
        segs += [c.c(seq=c.cseq - 1, advance=False, ts=t), c.s(ts=t + 0.05)]
    row = only_flow(write(tmp_path, segs))
    assert row["heartbeat_s"] == pytest.approx(30.0, abs=0.1) and row["kind"] == "long"
    assert row["tcp"]["keep_alive"] == 6


def test_duplicate_acks_of_a_loss_are_no_heartbeat(tmp_path):
    """Bursts of duplicate ACKs while data is lost come without a silence before them."""
    c = Conn(step=0.001)
    segs = c.handshake()
    for _ in range(6):
        lost = c.sseq
        c.sseq += 100                                 # lost on the way
        for _ in range(4):
            segs += [c.s(b"y" * 100), c.c(ack=lost)]
        segs += [c.s(b"x" * 100, seq=lost, advance=False), c.c()]
        c.ts += 1.0
    row = only_flow(write(tmp_path, segs))
    assert row["tcp"]["duplicate_ack"] >= 18 and row["heartbeat_s"] is None


def test_counts_include_packets_after_the_close(tmp_path):
    """The last ACK after both FINs, and a FIN sent again after a RST, count in the row."""
    c = Conn()
    segs = c.handshake() + [c.c(b"GET / HTTP/1.1\r\n\r\n"), c.s(b"HTTP/1.1 204 No\r\n\r\n")]
    segs += close(c)                                  # the flow ends at the second FIN
    d = Conn(client=("198.18.0.1", 40001), t0=segs[-1].ts + 1)
    rst = d.handshake() + [d.c(b"x"), d.s(flags=RST | ACK)]
    rst += [d.c(flags=FIN | ACK, ts=rst[-1].ts + 0.2)]
    p = write(tmp_path, segs + rst)
    a = analyze(str(p))
    rows = {r["client"]: r for r in a.flows}
    assert (rows["198.18.0.1:40000"]["packets_c2s"], rows["198.18.0.1:40000"]["packets_s2c"]) \
        == (5, 3)
    assert (rows["198.18.0.1:40001"]["packets_c2s"], rows["198.18.0.1:40001"]["packets_s2c"]) \
        == (4, 2)
    assert rows["198.18.0.1:40000"]["end"] == pytest.approx(segs[-1].ts, abs=1e-6)
    assert rows["198.18.0.1:40000"]["data_segments_c2s"] == 1
    if available():
        assert per_direction(a.flows) == tshark_per_direction(Reference(p))


@pytest.mark.parametrize("flags", [PSH | ACK, ACK, SYN])
def test_the_row_is_made_once_per_flow(tmp_path, flags):
    c = Conn()
    segs = c.handshake() + [c.c(b"a"), c.s(b"b")] + close(c) + [c.c(b"z", flags=flags)]
    a = analyze(str(write(tmp_path, segs)))
    assert len(a.flows) == (2 if flags == SYN else 1)
