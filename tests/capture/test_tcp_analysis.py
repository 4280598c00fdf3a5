"""The tcp.analysis flags on hand-made segment sequences (what tshark gives each one)."""

from __future__ import annotations

import pytest

from testbed.capture import tcp_analysis as ta
from testbed.capture.flows import FlowTable
from testbed.capture.tcp_analysis import (FILTERS, TcpAnalyzer, describe, filter_names,
                                          names)

from .builders import ACK, FIN, Conn
from .scenarios import SCENARIOS, build


def analyse(segs):
    a = TcpAnalyzer(keep=True)
    a.feed_all(segs)
    got = {}
    for index, flags in a.per_packet:
        n = set(filter_names(flags))
        if n:
            got[index] = n
    return a, got


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_flags(name):
    segs, expected = build(name)
    _, got = analyse(segs)
    assert got == expected


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_flow_table_counts_match_the_analyzer(name):
    segs, expected = build(name)
    table = FlowTable()
    for s in segs:
        table.feed(s)
    table.close()
    want = {}
    for names_ in expected.values():
        for n in names_:
            want[n] = want.get(n, 0) + 1
    assert table.totals() == want
    per_flow = {}
    for f in table.flows:
        for k, v in f.analysis.items():
            per_flow[k] = per_flow.get(k, 0) + v
    assert per_flow == want


def test_retransmission_filter_matches_all_three_kinds():
    assert FILTERS["retransmission"] == (ta.RETRANSMISSION | ta.FAST_RETRANSMISSION
                                         | ta.SPURIOUS_RETRANSMISSION)
    assert filter_names(ta.FAST_RETRANSMISSION) == ("retransmission", "fast_retransmission")
    assert filter_names(ta.SPURIOUS_RETRANSMISSION) == ("retransmission",
                                                        "spurious_retransmission")
    assert names(ta.KEEP_ALIVE | ta.DUPLICATE_ACK) == ["duplicate_ack", "keep_alive"]
    assert describe(ta.RETRANSMISSION) == "[TCP Retransmission]"
    assert describe(0) is None


def test_keep_alive_is_never_a_retransmission():
    c = Conn(step=1.0)
    segs = c.handshake() + [c.c(b"data"), c.s()]
    ka = c.c(b"\x00", seq=c.cseq - 1, advance=False)          # 1 byte, one before next seq
    _, got = analyse(segs + [ka])
    assert got == {len(segs) + 1: {"keep_alive"}}


def test_keep_alive_ack_is_not_a_duplicate_ack():
    segs, expected = build("keep_alive")
    _, got = analyse(segs)
    assert all("duplicate_ack" not in v for v in got.values())


def test_dup_ack_needs_same_window():
    c = Conn()
    segs = c.handshake() + [c.c(b"x" * 10), c.s(), c.s(win=999), c.s(win=999)]
    _, got = analyse(segs)
    assert got == {len(segs) - 1: {"window_update"}, len(segs): {"duplicate_ack"}}


def test_fast_retransmission_needs_it_within_20ms():
    segs, expected = build("fast_retransmission_and_dup_acks")
    slow = segs[:-1] + [segs[-1]._replace(ts=segs[-2].ts + 0.021)]
    _, got = analyse(slow)
    assert got[len(slow)] == {"retransmission"}


def test_out_of_order_limit_is_the_handshake_rtt():
    c = Conn(step=0.010)
    hs = c.handshake()                               # SYN->ACK: 20 ms
    a, b, cc = c.c(b"a" * 10), c.c(b"b" * 10), c.c(b"c" * 10)
    fast = b._replace(ts=cc.ts + 0.015)             # 15 ms after the highest: out of order
    slow = b._replace(ts=cc.ts + 0.025)             # 25 ms: a retransmission

    def renumber(segs):
        return [s._replace(index=i + 1) for i, s in enumerate(segs)]

    _, got = analyse(renumber(hs + [a, cc, fast]))
    assert got == {5: {"lost_segment"}, 6: {"out_of_order"}}
    _, got = analyse(renumber(hs + [a, cc, slow]))
    assert got == {5: {"lost_segment"}, 6: {"retransmission"}}


def test_counts_by_filter():
    segs, _ = build("fast_retransmission_and_dup_acks")
    a, _ = analyse(segs)
    assert a.counts == {"duplicate_ack": 3, "retransmission": 1, "fast_retransmission": 1,
                        "lost_segment": 1}
    assert a.counts["zero_window"] == 0 and a.conversations == 1


def test_one_way_capture_stops_counting_fins_after_10000_waiting_segments():
    """A side with 10,000 segments nobody acknowledged (a one-way capture): its FIN no longer
    moves the expected sequence number, so the FIN sent again is not a retransmission and
    the data after it is "previous segment not captured" (tshark 4.0 does the same)."""
    c = Conn(step=0.0001)
    segs = c.handshake() + [c.c(b"x" * 10) for _ in range(ta.MAX_WAITING + 50)]
    fin = c.c(flags=FIN | ACK)
    segs += [fin, fin._replace(ts=fin.ts + 0.5), c.c(b"y" * 10, ts=fin.ts + 0.6)]
    segs = [s._replace(index=i + 1) for i, s in enumerate(segs)]
    _, got = analyse(segs)
    n = len(segs)
    assert {k: v for k, v in got.items() if k > n - 3} == {n: {"lost_segment"}}
    # with an ACK now and then the FIN counts: sent again, it is a retransmission
    c = Conn(step=0.0001)
    segs = c.handshake()
    for i in range(ta.MAX_WAITING + 50):
        segs.append(c.c(b"x" * 10))
        if i % 1000 == 999:
            segs.append(c.s())
    fin = c.c(flags=FIN | ACK)
    segs += [fin, fin._replace(ts=fin.ts + 0.5), c.c(b"y" * 10, ts=fin.ts + 0.6)]
    segs = [s._replace(index=i + 1) for i, s in enumerate(segs)]
    _, got = analyse(segs)
    n = len(segs)
    assert {k: v for k, v in got.items() if k > n - 3} == {n - 1: {"retransmission"}}


def test_a_stalled_sender_counts_as_having_sent_duplicate_acks():
    """Once one side acknowledges data of the other that was never captured while that
    other side sends nothing new, its retransmission at the ACKed number within 20 ms is a
    fast retransmission, without any duplicate ACK seen (tshark 4.0 flags exactly this)."""
    c = Conn(step=0.001)
    hs = c.handshake()
    s1 = c.s(b"s" * 50)
    a = c.c(b"a" * 100)
    b = c.c(b"b" * 100)
    ack_a = c.s(ack=a.seq + 100)
    unseen = c.c(ack=c.sseq + 500)                # ACKs server data never captured
    again = b._replace(ts=unseen.ts + 0.001)      # seq == the server's last ACK, 2 ms later
    segs = [x._replace(index=i + 1) for i, x in enumerate(hs + [s1, a, b, ack_a, unseen,
                                                                 again])]
    _, got = analyse(segs)
    assert got == {8: {"ack_lost_segment"}, 9: {"retransmission", "fast_retransmission"}}
