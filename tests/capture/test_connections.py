"""A capture read again for a few connections: their segments, and when each end last took
in what the other sent (what the storyboard's statement 16 asks of a long link a phone gave
up)."""

from __future__ import annotations

from testbed.capture.connections import last_acknowledged, segments_of

from .builders import ACK, FIN, PSH, RST, Conn, segments_pcap


def test_what_a_closed_connections_kernel_sends_is_not_a_use(tmp_path):
    old = Conn(client=("198.18.137.87", 40000), server=("198.19.0.11", 8080), t0=10.0)
    other = Conn(client=("198.18.137.87", 40002), server=("198.19.0.11", 8080), t0=10.5)
    segs = old.handshake() + [old.c(b"upload")]
    reply = old.s(b"reply", ts=10.9)
    used = old.c(b"more", ts=11.0)                 # it acknowledges the reply: the last use
    segs += [reply, used]
    # the phone gives the connection up with bytes in its send buffer and opens the next
    segs += other.handshake()
    # its kernel goes on: the rest of the buffer (never sent before) with the FIN, a resend
    # of what was not acknowledged, the server's FIN acknowledged, a reset for late data
    flushed = old.c(b"buffered", flags=ACK | PSH | FIN, ts=11.2)
    resent = old.c(b"more", seq=used.seq, ts=11.3)
    server_fin = old.s(flags=ACK | FIN, ts=11.35)
    fin_acked = old.c(ts=11.36)
    late = old.s(b"late reply", seq=server_fin.seq, ts=11.4, advance=False)
    reset = old.c(flags=RST, ts=11.401)
    segs += [flushed, resent, server_fin, fin_acked, late, reset]
    path = tmp_path / "late.pcap"
    path.write_bytes(segments_pcap(sorted(segs, key=lambda s: s.ts)))
    pair = ("198.18.137.87:40000", "198.19.0.11:8080")
    assert len(segments_of(str(path), [pair])) == 12   # the other connection left out
    last = last_acknowledged(str(path), [pair])
    assert fin_acked.ack == server_fin.seq + 1
    assert last[pair] == used.ts        # not the flush, the resend, the FIN's ACK, the reset
    # the server took in the phone's bytes up to the flush's: it acknowledged the FIN's
    assert last[(pair[1], pair[0])] == server_fin.ts
    assert ("198.18.137.87:40002", "198.19.0.11:8080") not in last


def test_a_connection_whose_peer_sent_nothing_has_no_use_to_tell(tmp_path):
    c = Conn(client=("198.18.137.87", 40000), server=("198.19.0.11", 8080), t0=10.0)
    segs = c.handshake() + [c.c(b"hello", ts=10.2), c.s(ts=10.3)]
    path = tmp_path / "quiet.pcap"
    path.write_bytes(segments_pcap(segs))
    pair = ("198.18.137.87:40000", "198.19.0.11:8080")
    last = last_acknowledged(str(path), [pair])
    assert pair not in last                         # the handshake's ACK takes in no data
    assert last[(pair[1], pair[0])] == 10.3
