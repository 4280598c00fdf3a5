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


def test_one_exchange_lived_a_minute_is_long_only_if_it_lived_a_wall_second(tmp_path):
    """At time scale 1000 a slow request of 80 wall ms lives 80 protocol s: still short; a
    connection held a wall minute at time scale 1 is long."""
    c = Conn(step=0.020)
    segs = c.handshake() + [c.c(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                            c.s(b"HTTP/1.1 204 No Content\r\n\r\n")] + close(c)
    path = write(tmp_path, segs)
    a = analyze(str(path), time_scale=1000.0)
    assert [(f["kind"], f["requests"]) for f in a.flows] == [("short", 1)]
    c = Conn(step=0.020)
    segs = c.handshake() + [c.c(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                            c.s(b"HTTP/1.1 204 No Content\r\n\r\n"), c.c(ts=c.ts + 61.0)] \
        + close(c)
    row = only_flow(write(tmp_path, segs, "held.pcap"))
    assert (row["kind"], row["requests"]) == ("long", 1)


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



def test_ended_flows_are_kept_as_their_rows(tmp_path, monkeypatch):
    """On a capture longer than the linger, a flow that ended long ago is only its row
    (memory follows the open flows), and the document is the one keeping every flow gives:
    late ACKs within the linger count. A segment on a 4-tuple long forgotten is a new flow."""
    from testbed.capture import analyze as analyze_module
    from testbed.capture.analyze import LINGER_S, Analyzer
    from testbed.capture.packets import read_capture

    segs = []
    for i in range(40):
        c = Conn(client=("198.18.0.1", 41000 + i), t0=100.0 + 20 * i)
        segs += c.handshake() + [c.c(b"GET / HTTP/1.1\r\n\r\n"),
                                 c.s(b"HTTP/1.1 204 No\r\n\r\n")] + close(c)
        segs.append(c.c(ts=c.ts + 30))                # a late ACK
    first = Conn(client=("198.18.0.1", 41000))
    segs.append(first.c(ts=100.0 + 20 * 40 + LINGER_S))
    segs.sort(key=lambda s: s.ts)
    p = write(tmp_path, segs)
    a = Analyzer(keep_events=False)
    a.feed_packets(read_capture(str(p)))
    # the flows ended in the last LINGER_S capture seconds, and the open one
    assert len(a.table._map) <= 2 * (LINGER_S / 20 + 2)
    doc = a.finish().summary()
    assert len(doc["flows"]) == 41 and doc["flows"][-1]["kind"] == "other"
    assert [(f["packets_c2s"], f["packets_s2c"]) for f in doc["flows"][:40]] == [(6, 3)] * 40
    monkeypatch.setattr(analyze_module, "LINGER_S", 1e9)
    kept = Analyzer(keep_events=False)
    kept.feed_packets(read_capture(str(p)))
    doc_kept = kept.finish().summary()
    assert len(kept.table._map) == 2 * 40
    assert doc_kept["flows"][1:40] == doc["flows"][1:40]
    assert doc_kept["flows"][0]["packets_c2s"] == 7  # the segment long after: the same flow

# ------------------------------------------------------------------------ DNS over TCP
def dns_message(qid: int, name: str, answers=(), cname: str = "") -> bytes:
    import dpkt
    msg = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    if answers or cname:
        msg.op = 0x8180                               # a response, RD and RA set
        owner = name
        if cname:
            msg.an.append(dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_CNAME, ttl=60,
                                          cname=cname))
            owner = cname
        for a in answers:
            msg.an.append(dpkt.dns.DNS.RR(name=owner, type=dpkt.dns.DNS_A, ttl=300,
                                          rdata=bytes(int(x) for x in a.split("."))))
    return bytes(msg)


def framed(msg: bytes) -> bytes:
    return struct.pack(">H", len(msg)) + msg


def test_dns_over_tcp(tmp_path):
    """Length-prefixed messages, split across segments and two in one segment: the
    answers land in the `dns` section and the events carry the flow, as over UDP."""
    q1, q2 = dns_message(1, "long.weixin.qq.com"), dns_message(2, "short.weixin.qq.com")
    a1 = dns_message(1, "long.weixin.qq.com", ["198.18.0.11", "198.18.0.12"])
    a2 = dns_message(2, "short.weixin.qq.com", ["198.18.0.21"], cname="s.example")
    c = Conn(server=("198.18.0.53", 53), step=0.001)
    segs = c.handshake()
    segs += [c.c(framed(q1)[:1]), c.c(framed(q1)[1:9]), c.c(framed(q1)[9:] + framed(q2))]
    both = framed(a1) + framed(a2)
    segs += [c.s(both[:40]), c.s(both[40:])] + close(c)
    p = write(tmp_path, segs)
    a = analyze(str(p))
    assert a.dns == {"long.weixin.qq.com": ["198.18.0.11", "198.18.0.12"],
                     "short.weixin.qq.com": ["198.18.0.21"]}
    (row,) = a.flows
    assert (row["app"], row["requests"], row["kind"]) == ("dns", 2, "short")   # one burst
    dns = [(e.kind, e.direction, e.flow, e.host) for e in a.events if e.kind.startswith("dns")]
    assert dns == [("dns_query", "c2s", 0, "long.weixin.qq.com"),
                   ("dns_query", "c2s", 0, "short.weixin.qq.com"),
                   ("dns_answer", "s2c", 0, "long.weixin.qq.com"),
                   ("dns_answer", "s2c", 0, "short.weixin.qq.com")]
    answer = [e for e in a.events if e.kind == "dns_answer"][1]
    assert answer.get("cnames") == ["s.example"] and answer.index == 8   # completed there
    if available():
        from .tshark import run
        # tshark reassembles the same messages: both queries completed in frame 6, both
        # answers in frame 8
        out = run(["-r", str(p), "-Y", "dns", "-T", "fields", "-e", "frame.number",
                   "-e", "dns.flags.response", "-e", "dns.qry.name", "-e", "dns.a"])
        theirs = [line.split("\t") for line in out.splitlines()]
        assert [(t[0], t[1]) for t in theirs] == [("6", "0,0"), ("8", "1,1")]
        assert set(theirs[1][2].split(",")) == set(a.dns)
        assert sorted(theirs[1][3].split(",")) == sorted(x for v in a.dns.values() for x in v)
        assert {e.index for e in a.events if e.kind == "dns_answer"} == {8}
        assert {e.index for e in a.events if e.kind == "dns_query"} == {6}


def test_dns_over_tcp_bounded_and_partial(tmp_path):
    """A message cut off by the end of the capture, and garbage, give no answer and no
    error; a stream that is not DNS on port 53 is read as DNS and yields nothing."""
    c = Conn(server=("198.18.0.53", 53), step=0.001)
    segs = c.handshake() + [c.c(framed(dns_message(7, "x.example"))[:-3]),
                            c.s(b"\xff\xff" + b"junk" * 10)]
    a = analyze(str(write(tmp_path, segs)))
    assert a.dns == {} and a.error is None
    assert [e.kind for e in a.events if e.kind.startswith("dns")] == []


def test_fin_acks_name_the_packet_that_acknowledged_each_fin(tmp_path):
    """The closing FIN, the other side's ACK of it (even after the flow has ended), and a
    FIN nobody acknowledged."""
    c = Conn()
    segs = c.handshake() + [c.c(b"GET / HTTP/1.0\r\n\r\n"), c.s(b"HTTP/1.0 200 OK\r\n\r\n")]
    segs += [c.s(flags=FIN | ACK), c.c(flags=FIN | ACK), c.s()]    # packets 6, 7, 8
    assert only_flow(write(tmp_path, segs))["fin_acks"] == {"c2s": 8, "s2c": 7}
    c = Conn()
    segs = c.handshake() + [c.c(b"x"), c.c(flags=FIN | ACK, ack=c.sseq)]
    segs.append(c.s(ack=c.cseq - 1))      # acknowledges the data, not the FIN
    assert only_flow(write(tmp_path, segs, "half.pcap"))["fin_acks"] == {"c2s": None,
                                                                         "s2c": None}
