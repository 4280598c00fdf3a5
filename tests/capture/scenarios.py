"""Hand-made TCP sequences, one per `tcp.analysis` rule, with the flags each segment gets.

Every scenario is a list of (Segment, expected filter names); `build(name)` renumbers the
segments 1..n (frame numbers, as if written to a file). The expectations were written from
the flags' descriptions in the Wireshark User's Guide; the tshark agreement test also runs
tshark over each one written as pcap.
"""

from __future__ import annotations

from typing import Callable

from .builders import ACK, FIN, PSH, RST, SYN, Conn

RTX = {"retransmission"}


def retransmission():
    c = Conn()
    hs = c.handshake()                          # first RTT 20 ms: the out-of-order limit
    a = c.c(b"a" * 100)
    b = c.c(b"b" * 100)
    late = a._replace(ts=b.ts + 0.2)
    return [(s, set()) for s in hs] + [(a, set()), (b, set()), (late, RTX)]


def out_of_order_and_lost():
    c = Conn(step=0.0005)                       # no handshake: the limit is 3 ms
    a = c.c(b"a" * 100)
    b = c.c(b"b" * 100)
    cc = c.c(b"c" * 100)
    b = b._replace(ts=cc.ts + 0.001)            # arrives 1 ms after the segment beyond it
    return [(a, set()), (cc, {"lost_segment"}), (b, {"out_of_order"})]


def fast_retransmission_and_dup_acks():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"a" * 100)
    b = c.c(b"b" * 100)                         # lost on the wire, retransmitted below
    cc = c.c(b"c" * 100)
    d = c.c(b"d" * 100)
    ack_a = c.s(ack=b.seq)
    dup1 = c.s(ack=b.seq)
    dup2 = c.s(ack=b.seq)
    dup3 = c.s(ack=b.seq)
    fast = b._replace(ts=dup3.ts + 0.001)
    return ([(s, set()) for s in hs] + [(a, set()), (cc, {"lost_segment"}), (d, set()),
            (ack_a, set()), (dup1, {"duplicate_ack"}), (dup2, {"duplicate_ack"}),
            (dup3, {"duplicate_ack"}), (fast, {"retransmission", "fast_retransmission"})])


def keep_alive():
    c = Conn(step=1.0)
    hs = c.handshake()
    a = c.c(b"hello")
    ack = c.s()
    ka0 = c.c(seq=c.cseq - 1, advance=False, ts=ack.ts + 45)
    ka_ack = c.s(ts=ka0.ts + 0.01)
    ka1 = c.c(b"\x00", seq=c.cseq - 1, advance=False, ts=ka_ack.ts + 45)
    ka1_ack = c.s(ts=ka1.ts + 0.01)
    return [(s, set()) for s in hs] + [(a, set()), (ack, set()), (ka0, {"keep_alive"}),
                                       (ka_ack, {"keep_alive_ack"}), (ka1, {"keep_alive"}),
                                       (ka1_ack, {"keep_alive_ack"})]


def zero_window():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"a" * 100)
    zw = c.s(win=0)
    probe = c.c(b"p", advance=False)
    probe_ack = c.s(win=0)
    update = c.s(win=4000)
    b = c.c(b"p" + b"b" * 99)
    return [(s, set()) for s in hs] + [
        (a, set()), (zw, {"zero_window"}), (probe, {"zero_window_probe"}),
        (probe_ack, {"zero_window", "zero_window_probe_ack"}),
        (update, {"window_update"}), (b, set())]


def ack_of_unseen_segment():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"a" * 100)
    c.c(b"b" * 100)                             # not in the capture
    cc = c.c(b"c" * 100)
    ack = c.s()
    return [(s, set()) for s in hs] + [(a, set()), (cc, {"lost_segment"}),
                                       (ack, {"ack_lost_segment"})]


def spurious_retransmission():
    c = Conn()
    hs = c.handshake()
    a = c.c(b"a" * 100)
    ack = c.s()
    again = a._replace(ts=ack.ts + 0.3)
    return [(s, set()) for s in hs] + [(a, set()), (ack, set()),
                                       (again, {"retransmission", "spurious_retransmission"})]


def syn_retransmission_and_port_reuse():
    c = Conn()
    syn = c.c(flags=SYN, ack=0)
    syn2 = syn._replace(ts=syn.ts + 1.0)
    rest = [c.s(flags=SYN | ACK, ts=syn2.ts + 0.01), c.c(), c.c(b"x" * 10),
            c.c(flags=FIN | ACK), c.s(flags=FIN | ACK), c.c()]
    c2 = Conn(cisn=77_000_000, sisn=88_000_000, t0=rest[-1].ts + 5)
    reuse = c2.c(flags=SYN, ack=0)
    return ([(syn, set()), (syn2, RTX)] + [(s, set()) for s in rest]
            + [(reuse, {"reused_ports"}), (c2.s(flags=SYN | ACK), set()), (c2.c(), set())])


def window_full():
    c = Conn()
    hs = c.handshake()                          # no window scale options: scale known (none)
    ack = c.s(win=300)                          # same seq/ack as the SYN-ACK, new window
    a = c.c(b"a" * 200)
    b = c.c(b"b" * 100)                         # reaches lastack + 300 exactly
    return [(s, set()) for s in hs] + [(ack, {"window_update"}), (a, set()),
                                       (b, {"window_full"})]


def wraparound():
    c = Conn(cisn=0xFFFFFF00, sisn=0xFFFFFFF0)
    hs = c.handshake()
    segs = [c.c(b"w" * 100) for _ in range(4)]  # crosses 2**32 in the middle
    late = segs[1]._replace(ts=segs[-1].ts + 0.5)
    acks = c.s()
    return ([(s, set()) for s in hs] + [(s, set()) for s in segs]
            + [(late, RTX), (acks, set())])


def rst_and_mid_stream_start():
    c = Conn(client=("198.18.0.3", 50123), server=("198.18.0.4", 8080))
    a = c.s(b"mid-stream")
    b = c.c(b"reply")
    rst = c.s(flags=RST | ACK, seq=c.sseq + 1000, advance=False)    # RST: never "lost"
    return [(a, set()), (b, set()), (rst, set())]


SCENARIOS: dict[str, Callable] = {f.__name__: f for f in (
    retransmission, out_of_order_and_lost, fast_retransmission_and_dup_acks, keep_alive,
    zero_window, ack_of_unseen_segment, spurious_retransmission,
    syn_retransmission_and_port_reuse, window_full, wraparound, rst_and_mid_stream_start)}


def build(name: str):
    """(segments renumbered 1..n, {frame number: expected filter names})."""
    pairs = SCENARIOS[name]()
    segs = [s._replace(index=i + 1) for i, (s, _) in enumerate(pairs)]
    expected = {i + 1: names for i, (_, names) in enumerate(pairs) if names}
    return segs, expected


__all__ = ["SCENARIOS", "build", "ACK", "PSH"]


def adversarial(seed: int, n: int = 1500):
    """Random, hostile sequences over a few reused 4-tuples: data, pure ACKs, zero windows,
    replays of recent segments, jumps ahead, keep-alives, FINs, RSTs, new SYNs, ISNs near
    2**32, gaps from 0.1 ms to 2 s. Segments renumbered 1..n; no expectations: tshark's
    answer is the reference."""
    import random

    from .builders import FIN, RST, SYN, Conn
    rnd = random.Random(seed)
    conns: list[Conn] = []
    segs = []
    t = 1000.0
    for _ in range(n):
        if not conns or rnd.random() < 0.01:
            port = rnd.choice([40000, 40001, 40002, 40003])
            c = Conn(client=("198.18.0.1", port), server=("198.18.0.2", 80),
                     cisn=rnd.choice([rnd.getrandbits(32), 0xFFFFFF00, 0, 1]),
                     sisn=rnd.getrandbits(32))
            conns.append(c)
            if rnd.random() < 0.8:
                segs += c.handshake()
        c = rnd.choice(conns)
        t += rnd.choice([0.0001, 0.001, 0.002, 0.005, 0.03, 0.3, 2.0])
        c.ts = t - c.step
        r = rnd.random()
        client = rnd.random() < 0.6
        side = c.c if client else c.s
        base = c.cseq if client else c.sseq
        if r < 0.35:
            s = side(bytes(rnd.randrange(1, 300)), win=rnd.choice([1000, 1000, 0, 500]))
        elif r < 0.55:
            s = side(win=rnd.choice([1000, 1000, 1000, 0, 2000]))
        elif r < 0.62 and segs:
            s = rnd.choice(segs[-20:])
        elif r < 0.68:
            s = side(bytes(rnd.randrange(1, 300)), advance=False,
                     seq=(base + rnd.randrange(1, 3000)) & 0xFFFFFFFF)
        elif r < 0.72:
            s = side(rnd.choice([b"", b"\x00"]), seq=(base - 1) & 0xFFFFFFFF, advance=False)
        elif r < 0.75:
            s = side(b"", flags=FIN | ACK)
        elif r < 0.77:
            s = side(b"", flags=RST | ACK)
        elif r < 0.80:
            s = side(flags=SYN, ack=0) if client else side(flags=SYN | ACK)
        elif r < 0.85:
            s = side(b"z", seq=base, advance=False, win=0)
        else:
            s = side(bytes(rnd.randrange(1, 1400)))
        segs.append(s._replace(ts=t))
    return [s._replace(index=i + 1) for i, s in enumerate(segs)]
