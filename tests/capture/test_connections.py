"""A capture read again for a few connections: their segments, and when each end last sent
bytes it had not sent before (what the storyboard's statement 16 asks of a long link a
phone gave up)."""

from __future__ import annotations

from testbed.capture.connections import last_new_data, segments_of

from .builders import RST, Conn, segments_pcap


def test_resends_and_resets_after_a_connection_is_given_up_are_not_a_use(tmp_path):
    old = Conn(client=("198.18.137.87", 40000), server=("198.19.0.11", 8080), t0=10.0)
    other = Conn(client=("198.18.137.87", 40002), server=("198.19.0.11", 8080), t0=10.5)
    segs = old.handshake() + [old.c(b"upload"), old.s()]
    used = old.c(b"more", ts=11.0)                  # the phone's last write to it
    segs += [used, *other.handshake()]               # ...then it opens the next one
    # its kernel resends what was not acknowledged; the server's late reply gets a reset
    resent = old.c(b"more", seq=used.seq, ts=11.3)
    late = old.s(b"late reply", ts=11.4)
    reset = old.c(flags=RST, ts=11.401)
    segs += [resent, late, reset]
    path = tmp_path / "late.pcap"
    path.write_bytes(segments_pcap(sorted(segs, key=lambda s: s.ts)))
    pair = ("198.18.137.87:40000", "198.19.0.11:8080")
    assert len(segments_of(str(path), [pair])) == 9   # the other connection left out
    last = last_new_data(str(path), [pair])
    assert last[pair] == used.ts                      # not the resend's 11.3, the reset's 11.401
    assert last[(pair[1], pair[0])] == late.ts
    assert ("198.18.137.87:40002", "198.19.0.11:8080") not in last
