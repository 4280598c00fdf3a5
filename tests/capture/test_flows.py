"""FlowTable: flow identity, client/server, reassembly, gaps, ends, UDP conversations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.capture.flows import FlowTable, TcpFlow

from ..fuzzing import budget
from .builders import ACK, FIN, PSH, RST, SYN, Conn, datagram


class Recorder:
    def __init__(self, **kw) -> None:
        self.data: dict[tuple[int, str], bytearray] = {}
        self.gaps: list[tuple[int, str, int]] = []
        self.ended: list[TcpFlow] = []
        self.chunks: list[tuple[int, str, float, bytes]] = []
        self.table = FlowTable(on_data=self.on_data, on_flow_end=self.ended.append,
                               on_gap=lambda f, d, ts, n: self.gaps.append((f.id, d, n)), **kw)

    def on_data(self, flow, d, ts, data):
        self.data.setdefault((flow.id, d), bytearray()).extend(data)
        self.chunks.append((flow.id, d, ts, data))

    def feed(self, segs):
        for s in segs:
            self.table.feed(s)
        return self

    def stream(self, fid=0, d="c2s") -> bytes:
        return bytes(self.data.get((fid, d), b""))


def test_handshake_data_both_ways_fin_close():
    c = Conn()
    segs = c.handshake() + [c.c(b"GET / HTTP/1.1\r\n"), c.c(b"\r\n"), c.s(b"HTTP/1.1 200 OK"),
                            c.c(), c.c(flags=FIN | ACK), c.s(flags=FIN | ACK), c.c()]
    r = Recorder().feed(segs)
    (flow,) = r.table.flows
    assert flow.client == ("198.18.0.1", 40000) and flow.server == ("198.18.0.2", 80)
    assert r.stream(0, "c2s") == b"GET / HTTP/1.1\r\n\r\n"
    assert r.stream(0, "s2c") == b"HTTP/1.1 200 OK"
    assert flow.syn_seen and flow.synack_seen and flow.closed_by == "fin"
    assert flow.closer == "client" and flow.fin_first == "client"
    assert flow.ended and r.ended == [flow]            # ended at the second FIN
    assert (flow.packets_c2s, flow.packets_s2c) == (7, 3)   # the last ACK still counts
    assert (flow.bytes_c2s, flow.bytes_s2c) == (18, 15)
    assert flow.packets == {"c2s": 7, "s2c": 3} and flow.gaps == 0
    assert flow.first_ts == segs[0].ts and flow.last_ts == segs[-1].ts
    assert flow.fin_c2s_ts == segs[-3].ts and flow.fin_s2c_ts == segs[-2].ts
    assert not r.table.open
    r.table.close()
    assert r.ended == [flow]                           # reported once
    summary = flow.summary()
    assert summary["delivered_c2s"] == 18 and summary["closed_by"] == "fin"


def test_retransmissions_and_overlaps_deliver_once():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"abcdef")
    b = c.c(b"ghij")
    segs = hs + [a, a._replace(index=99), b,
                 c.c(b"cdefghijKL", seq=a.seq + 2, advance=False),    # overlaps old and new
                 c.c(b"ijKLMN", seq=b.seq + 2, advance=False)]
    r = Recorder().feed(segs)
    assert r.stream() == b"abcdefghijKLMN"
    assert r.table.flows[0].gaps == 0


def test_out_of_order_is_held_and_delivered_in_order():
    c = Conn()
    hs = c.handshake()
    parts = [c.c(bytes([65 + i]) * 3) for i in range(6)]
    order = [parts[0], parts[3], parts[2], parts[5], parts[1], parts[4]]
    r = Recorder().feed(hs + order)
    assert r.stream() == b"AAABBBCCCDDDEEEFFF"
    # nothing delivered before the hole at B was filled
    assert [ch[3] for ch in r.chunks][:2] == [b"AAA", b"BBB"]


def test_mid_connection_start_without_handshake():
    c = Conn(client=("198.18.0.5", 51000), server=("198.18.0.9", 443))
    first = c.s(b"late server data")            # the capture starts here
    r = Recorder().feed([first, c.c(b"client data"), c.s(b"!")])
    (flow,) = r.table.flows
    assert flow.client == ("198.18.0.5", 51000)    # the ephemeral port, not the first sender
    assert not flow.syn_seen
    assert r.stream(0, "s2c") == b"late server data!" and r.stream(0, "c2s") == b"client data"
    r.table.close()
    assert r.ended == [flow] and flow.closed_by is None


def test_equal_ports_first_sender_is_client():
    c = Conn(client=("198.18.0.7", 5000), server=("198.18.0.8", 5000))
    r = Recorder().feed([c.s(b"x"), c.c(b"y")])
    assert r.table.flows[0].client == ("198.18.0.8", 5000)


def test_synack_first_makes_its_receiver_the_client():
    c = Conn()
    c.c(flags=SYN, ack=0)                          # not captured
    r = Recorder().feed([c.s(flags=SYN | ACK), c.c(), c.c(b"hi")])
    flow = r.table.flows[0]
    assert flow.client == c.client and not flow.syn_seen and flow.synack_seen
    assert r.stream() == b"hi"


def test_missing_segment_is_a_gap_at_close():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"1111")
    c.c(b"2222")                                   # never captured
    b = c.c(b"3333")
    r = Recorder().feed(hs + [a, b])
    assert r.stream() == b"1111"                    # held, waiting for the hole
    r.table.close()
    assert r.stream() == b"11113333"
    assert r.gaps == [(0, "c2s", 4)] and r.table.flows[0].gaps == 4


def test_hole_already_acked_by_peer_is_skipped_at_once():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"1111")
    c.c(b"2222")                                   # lost from the capture, not from the wire
    ack = c.s()                                    # the server ACKs all 8 bytes
    b = c.c(b"3333")
    r = Recorder().feed(hs + [a, ack, b])
    assert r.stream() == b"11113333" and r.gaps == [(0, "c2s", 4)]


def test_hole_skipped_when_ack_arrives_after_the_data():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"1111")
    c.c(b"2222")
    b = c.c(b"3333")
    ack = c.s()
    r = Recorder().feed(hs + [a, b])
    assert r.stream() == b"1111"
    r.feed([ack])
    assert r.stream() == b"11113333" and r.table.flows[0].gaps == 4


def test_buffer_limit_skips_the_gap():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"a" * 10)
    c.c(b"b" * 10)
    rest = [c.c(b"c" * 100) for _ in range(5)]
    r = Recorder(max_buffer=250).feed(hs + [a] + rest[:2])
    assert r.stream() == b"a" * 10                 # 200 bytes held, waiting
    r.feed(rest[2:3])                              # 300 held > 250: skip the hole
    assert r.stream() == b"a" * 10 + b"c" * 300
    assert r.gaps == [(0, "c2s", 10)]
    r.feed(rest[3:])
    assert r.stream() == b"a" * 10 + b"c" * 500


def test_rst_ends_flow_and_says_who():
    c = Conn()
    r = Recorder().feed(c.handshake() + [c.c(b"x"), c.s(flags=RST | ACK)])
    flow = r.table.flows[0]
    assert flow.closed_by == "rst" and flow.closer == "server" and flow.rst_ts is not None
    assert r.ended == [flow]
    r.feed([c.c(b"late")])                         # still this flow, counted, not delivered
    assert len(r.table.flows) == 1 and flow.packets_c2s == 4 and r.stream() == b"x"


def test_reused_four_tuple_is_a_new_flow():
    c = Conn()
    first = c.handshake() + [c.c(b"one"), c.c(flags=FIN | ACK), c.s(flags=FIN | ACK), c.c()]
    c2 = Conn(cisn=900_000, sisn=7_000_000, t0=200.0)
    second = c2.handshake() + [c2.c(b"two")]
    r = Recorder().feed(first + second)
    assert [f.id for f in r.table.flows] == [0, 1]
    assert r.stream(0) == b"one" and r.stream(1) == b"two"
    assert r.table.flows[0].ended and not r.table.flows[1].ended
    assert r.table.flows[1].packets_c2s == 3


def test_new_syn_on_open_flow_ends_the_old_one():
    c = Conn()
    r = Recorder().feed(c.handshake() + [c.c(b"abc")])
    c2 = Conn(cisn=555_555, t0=300.0)
    r.feed([c2.c(flags=SYN, ack=0)])
    assert len(r.table.flows) == 2 and r.ended == [r.table.flows[0]]
    assert r.table.flows[0].closed_by is None


def test_retransmitted_syn_is_the_same_flow():
    c = Conn()
    syn = c.c(flags=SYN, ack=0)
    r = Recorder().feed([syn, syn._replace(index=2, ts=syn.ts + 1)])
    assert len(r.table.flows) == 1 and r.table.flows[0].packets_c2s == 2


def test_sequence_wraparound():
    c = Conn(cisn=0xFFFFFFF0)
    hs = c.handshake()
    parts = [c.c(bytes([97 + i]) * 8) for i in range(5)]      # crosses 2**32
    r = Recorder().feed(hs + [parts[0], parts[2], parts[1], parts[4], parts[3]])
    assert r.stream() == b"".join(bytes([97 + i]) * 8 for i in range(5))
    assert r.table.flows[0].gaps == 0


def test_snaplen_cut_payload_counts_as_gap():
    c = Conn()
    hs = c.handshake()
    full = c.c(b"z" * 100)
    cut = full._replace(payload=full.payload[:30])            # seglen stays 100
    r = Recorder().feed(hs + [cut, c.c(b"after")])
    assert r.stream() == b"z" * 30 + b"after" and r.gaps == [(0, "c2s", 70)]


def test_fin_with_data_and_late_fin_completion():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"aaa")
    b = c.c(b"bbb")
    fin = c.c(b"ccc", flags=FIN | ACK | PSH)
    sfin = c.s(flags=FIN | ACK, ack=a.seq + 3)     # the server has only seen "aaa"
    r = Recorder().feed(hs + [a, fin, sfin])
    assert not r.table.flows[0].ended               # both FINs, but c2s still has a hole
    r.feed([b])
    assert r.stream() == b"aaabbbccc" and r.table.flows[0].ended
    assert r.table.flows[0].closed_by == "fin" and r.table.flows[0].gaps == 0


def test_fin_acked_over_a_hole_ends_the_flow():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"aaa")
    c.c(b"bbb")                                    # never captured
    fin = c.c(b"ccc", flags=FIN | ACK | PSH)
    sfin = c.s(flags=FIN | ACK)                    # ACKs everything, FIN included
    r = Recorder().feed(hs + [a, fin, sfin])
    flow = r.table.flows[0]
    assert flow.ended and r.stream() == b"aaaccc" and flow.gaps == 3


def test_udp_conversations():
    t = FlowTable()
    got = []
    t.on_datagram = lambda conv, d, dg: got.append((conv.id, d))
    t.feed(datagram(1, 1.0, "198.18.0.1", 5353, "198.18.0.2", 53, b"query"))
    t.feed(datagram(2, 1.1, "198.18.0.2", 53, "198.18.0.1", 5353, b"answer!"))
    t.feed(datagram(3, 1.2, "198.18.0.1", 5354, "198.18.0.2", 53, b"q2"))
    assert len(t.udp) == 2
    conv = t.udp[(("198.18.0.1", 5353), ("198.18.0.2", 53))]
    assert (conv.packets_ab, conv.packets_ba, conv.bytes_ab, conv.bytes_ba) == (1, 1, 5, 7)
    assert conv.a == ("198.18.0.1", 5353) and conv.client == conv.a
    assert conv.summary()["packets_ba"] == 1
    assert got == [(0, "c2s"), (0, "s2c"), (1, "c2s")]
    t.feed(None)
    with pytest.raises(TypeError):
        t.feed("not a segment")


def test_flow_memory_is_bounded_by_open_flows():
    """Thousands of flows that end holding out-of-order data: none of it is kept after the
    end (each held 20 kB; what stays per flow is its small summary)."""
    import tracemalloc
    ended = []
    t = FlowTable(on_data=lambda *a: None, on_flow_end=ended.append)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        c = Conn(client=("198.18.1.1", 10000 + i), t0=float(i))
        segs = c.handshake() + [c.c(bytes([i % 251]) * 500)]
        c.cseq += 1000                                  # a hole the capture never fills
        segs += [c.c(bytes([i % 241]) * 1000) for _ in range(20)]
        segs += [c.s(flags=RST | ACK, ack=c.cseq - 21000)]
        for s in segs:
            t.feed(s)
        assert len(t.open) == 0
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(t.flows) == 2000 and len(ended) == 2000
    assert all(f.gaps == 1000 and f.delivered_c2s == 20500 for f in t.flows)
    assert kept / 2000 < 8000, kept / 2000             # 20 kB each if held data stayed


@budget(1.5)
@given(st.data())
def test_any_arrival_order_with_duplicates_reassembles(data):
    """Shuffled, duplicated and overlapping segments always give back the original bytes."""
    payload = data.draw(st.binary(min_size=1, max_size=400))
    c = Conn(cisn=data.draw(st.integers(0, 0xFFFFFFFF)))
    hs = c.handshake()
    base = c.cseq
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(payload)), max_size=12))))
    bounds = [0] + [x for x in cuts if x < len(payload)] + [len(payload)]
    segs = [c.c(payload[a:b], seq=(base + a) & 0xFFFFFFFF, advance=False)
            for a, b in zip(bounds, bounds[1:])]
    extra = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1),
                                         st.integers(1, 50)), max_size=5))
    for a, n in extra:                              # overlapping retransmissions
        segs.append(c.c(payload[a:a + n], seq=(base + a) & 0xFFFFFFFF, advance=False))
    order = data.draw(st.permutations(segs))
    r = Recorder(max_buffer=1 << 20).feed(hs + list(order))
    r.table.close()
    assert r.stream() == payload
    assert r.table.flows[0].gaps == 0


def test_linger_forgets_ended_flows():
    t = FlowTable(keep_flows=False, linger=60.0)
    ended = []
    t.on_flow_end = ended.append
    for i in range(2000):
        c = Conn(client=("198.18.1.1", 10000 + i), t0=float(i))
        for s in c.handshake() + [c.c(b"x"), c.c(flags=FIN | ACK), c.s(flags=FIN | ACK),
                                  c.c()]:
            t.feed(s)
    assert len(ended) == 2000 and t.flows == [] and not t.open
    assert len(t._map) <= 2 * 62                  # only the last minute's flows
    assert t.n_flows == 2000 and t.totals() == {}


def _table_outcome(path, fast: bool):
    """Everything a FlowTable reports on a capture, fed by `Capture.scan` with its fast
    path (`feed_frame` on the read buffer) or packet by packet through `decode` + `feed`;
    and how many frames the fast path took."""
    from testbed.capture.packets import decode, read_capture
    rec = Recorder(linger=5.0, keep_flows=True)
    t = rec.table
    analysed = []
    t.on_analysis = lambda flow, seg, flags: analysed.append((flow.id, seg.index, flags))
    taken = [0]

    def take(*frame):
        ok = t.feed_frame(*frame)
        taken[0] += ok
        return ok

    def other(pkt):
        item = decode(pkt)
        if item is not None:
            t.feed(item)
    read_capture(path).scan(other, take if fast else None)
    t.close()
    return ([f.summary() for f in t.flows], [(f.id, f.end_index) for f in rec.ended],
            t.handshakes, t.totals(), rec.chunks, rec.gaps, analysed), taken[0]


def test_fast_path_reports_what_the_segments_do(tmp_path):
    """Frames taken from the read buffer by `feed_frame` change a flow exactly as their
    Segments fed one by one do: summaries, ends, handshakes, analysis flags, stream bytes
    and their times, gaps; on every hand-made scenario and on hostile random sequences."""
    from .builders import segments_pcap
    from .scenarios import SCENARIOS, adversarial, build
    runs = [build(name)[0] for name in SCENARIOS] + [adversarial(seed, 600) for seed in (1, 2, 3)]
    c = Conn()
    lab = c.handshake()                   # a long link's small frames, each ACKed: plain
    for k in range(100):
        lab += [c.c(b"n" * 16), c.s(), c.s(b"r" * (16 + k)), c.c()]
    runs.append(lab + [c.c(flags=FIN | ACK), c.s(flags=FIN | ACK), c.c()])
    c = Conn()
    hs = c.handshake()
    first, _missed, third = c.c(b"a" * 100), c.c(b"b" * 100), c.c(b"c" * 100)
    runs.append(hs + [first, third, c.s(), c.c(b"d" * 10), c.s(), c.s(b"e"), c.c()])
    took = 0
    for i, segs in enumerate(runs):
        p = tmp_path / f"{i}.pcap"
        p.write_bytes(segments_pcap(segs))
        fast, n = _table_outcome(p, True)
        slow, none = _table_outcome(p, False)
        assert fast == slow, i
        assert none == 0
        took += n
    assert took > 400                     # the fast path was taken, the long link's at least
