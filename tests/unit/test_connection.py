"""The sans-I/O long-link connection (testbed.wire.connection), in the h11 manner: each
vector fed whole, byte by byte and split at every offset gives the same events and bytes;
hostile input raises only RemoteProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.wire import (BY_CMD, BY_NAME, ClientConnection, LocalProtocolError,
                          RemoteProtocolError, Ret, ServerConnection, ConnectionState, pb)
from testbed.wire.connection import (FrameTimeout, IdleTimeout, Push, Rejected, Reply,
                                     Request, Stray, TimedOut, WrongReply)

from ..fuzzing import budget

# PROTOCOL.md section 2, written out as hex rather than built with the code under test
HEARTBEAT_REQUEST = bytes.fromhex("00000010" "0010" "0001" "00000006" "0000000b")
HEARTBEAT_REPLY = bytes.fromhex("00000010" "0010" "0001" "3b9aca06" "0000000b")
NOTIFY_1 = bytes.fromhex("00000014" "0010" "0001" "00000018" "00000000" "00000001")


def frame(cmd: int, seq: int, body: bytes = b"", header_len: int = 16, version: int = 1,
          packet_len: int | None = None) -> bytes:
    plen = 16 + len(body) if packet_len is None else packet_len
    return struct.pack(">IHHII", plen, header_len, version, cmd, seq) + body


def ret_of(body: bytes) -> int:
    return pb.ErrorResponse.FromString(body).base.ret


def split_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        plen, _, _, cmd, seq = struct.unpack_from(">IHHII", data, pos)
        out.append((cmd, seq, data[pos + 16:pos + plen]))
        pos += plen
    return out


def chunkings(data: bytes):
    """Whole; byte by byte; and split in two at every offset."""
    yield "whole", [data]
    yield "bytes", [data[i:i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield f"split@{i}", [data[:i], data[i:]]


def feed_server(chunks, identified: bool = False, now: float = 0.0):
    conn = ServerConnection()
    if identified:
        conn.identify()
    events, out = [], b""
    for chunk in chunks:
        events += conn.receive_data(chunk, now)
        out += conn.data_to_send()
    return conn, events, out


def identify_body() -> bytes:
    return pb.IdentifyRequest(base=pb.BaseRequest(uin=7, session_key=b"k" * 16)) \
        .SerializeToString()


# ====================================================================== server side

def test_heartbeat_vector_is_answered_with_the_reply_vector():
    for name, chunks in chunkings(HEARTBEAT_REQUEST):
        conn, events, out = feed_server(chunks)
        assert (events, out) == ([], HEARTBEAT_REPLY), name
        assert conn.frames_received == 1 and conn.frames_sent == 1
        assert conn.at_frame_boundary


def test_the_reply_appears_only_once_the_last_byte_is_in():
    conn = ServerConnection()
    for b in HEARTBEAT_REQUEST[:-1]:
        assert conn.receive_data(bytes([b]), 0.0) == []
        assert conn.data_to_send() == b""
        assert not conn.at_frame_boundary
    assert conn.receive_data(HEARTBEAT_REQUEST[-1:], 0.0) == []
    assert conn.data_to_send() == HEARTBEAT_REPLY


# A stream that exercises every rule of section 2, in the contract's check order.
CHECKS = (frame(999, 1)                         # 1. unknown command: -1
          + frame(24, 2, b"\0\0\0\1")           # 1. the push-only NOTIFY as a request: -1
          + frame(1_000_000_006, 3)             # 1. a reply cmd sent as a request: -1,
                                                #    in reply cmd 2000000006 like any
          + frame(121, 4, b"\xff\xff")          # 2. before IDENTIFY, even a bad body: -13
          + frame(6, 5)                         # NOOP is allowed before IDENTIFY
          + frame(205, 6, b"\xff\xff\xff")      # 3. IDENTIFY that does not decode: -2
          + frame(6, 7, b"x")                   # 3. a NOOP takes no body: -2
          + frame(205, 8, identify_body()))     # a request for the service


def test_request_checks_in_the_contracts_order_at_every_split():
    want = None
    for name, chunks in chunkings(CHECKS):
        conn, events, out = feed_server(chunks)
        got = (events, out)
        if want is None:
            want = got
        assert got == want, name
    events, out = want
    replies = split_frames(out)
    assert [(c, s) for c, s, _ in replies] == [
        (1_000_000_999, 1), (1_000_000_024, 2), (2_000_000_006, 3), (1_000_000_121, 4),
        (1_000_000_006, 5), (1_000_000_205, 6), (1_000_000_006, 7)]
    assert [ret_of(b) for _, s, b in replies if s != 5] == [-1, -1, -1, -13, -2, -2]
    assert replies[4][2] == b""   # the NOOP's reply is empty
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert [(e.cmd, e.seq, e.ret) for e in rejected] == [
        (999, 1, Ret.SERVER_FAULT), (24, 2, Ret.SERVER_FAULT),
        (1_000_000_006, 3, Ret.SERVER_FAULT), (121, 4, Ret.SESSION_INVALID),
        (205, 6, Ret.BAD_ARGUMENT), (6, 7, Ret.BAD_ARGUMENT)]
    [req] = [e for e in events if isinstance(e, Request)]
    assert (req.command.name, req.seq) == ("IDENTIFY", 8)
    assert req.message.base.uin == 7


def test_identified_link_takes_every_request_and_checks_bodies():
    good = pb.NewSyncRequest(selector=7).SerializeToString()
    data = frame(121, 1, good) + frame(121, 2, b"\xff\xff\xff") + frame(237, 3)
    for name, chunks in chunkings(data):
        conn, events, out = feed_server(chunks, identified=True)
        assert [type(e) for e in events] == [Request, Rejected, Request], name
        assert events[0].message.selector == 7
        assert events[2].command.name == "NEWSENDMSG"
        assert [(c, s, ret_of(b)) for c, s, b in split_frames(out)] == [
            (1_000_000_121, 2, Ret.BAD_ARGUMENT)]


def test_unidentify_goes_back_to_noop_and_identify_only():
    conn = ServerConnection()
    conn.identify()
    assert [type(e) for e in conn.receive_data(frame(237, 1), 0.0)] == [Request]
    conn.unidentify()
    [ev] = conn.receive_data(frame(237, 2), 0.0)
    assert isinstance(ev, Rejected) and ev.ret == Ret.SESSION_INVALID


def test_replies_and_pushes_are_encoded_from_the_table():
    conn = ServerConnection()
    [req] = conn.receive_data(frame(205, 9, identify_body()), 0.0)
    assert conn.send_reply(req.command, req.seq, b"ok") == frame(1_000_000_205, 9, b"ok")
    with pytest.raises(LocalProtocolError):
        conn.send_push(1)       # nothing is pushed to a link that has not identified
    conn.identify()
    assert conn.send_push(1) == NOTIFY_1
    with pytest.raises(LocalProtocolError):
        conn.send_reply(BY_NAME["MANUALAUTH"], 1)   # a short-link-only row
    with pytest.raises(LocalProtocolError):
        conn.send_reply(BY_NAME["NOTIFY"], 1)       # push only: never a reply
    with pytest.raises(LocalProtocolError):
        conn.send_push(1 << 32)


@pytest.mark.parametrize("bad", [
    frame(6, 1, header_len=20), frame(6, 1, version=2), frame(6, 1, packet_len=15),
    frame(6, 1, packet_len=(1 << 20) + 1)], ids=["header_len", "version", "short", "long"])
def test_violation_after_good_frames(bad):
    conn = ServerConnection()
    [ev] = conn.receive_data(frame(6, 1) + frame(999, 2) + bad, 0.0)
    assert (type(ev), ev.seq, ev.ret) == (Rejected, 2, Ret.SERVER_FAULT)
    assert conn.state is ConnectionState.ERROR and isinstance(conn.error, RemoteProtocolError)
    # the frames before the bad header are answered; then nothing more
    assert [(c, s) for c, s, _ in split_frames(conn.data_to_send())] == [
        (1_000_000_006, 1), (1_000_000_999, 2)]
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(frame(6, 3), 0.0)
    with pytest.raises(LocalProtocolError):
        conn.send_reply(BY_CMD[6], 3)


def test_violation_first_raises_at_once():
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(frame(6, 1, version=9), 0.0)
    assert conn.state is ConnectionState.ERROR and conn.data_to_send() == b""


def test_idle_timeout_is_a_timer_on_passed_in_time():
    conn = ServerConnection(idle_timeout=660.0, now=100.0)
    assert conn.get_timer() == 760.0
    assert conn.handle_timer(759.9) == []
    conn.receive_data(HEARTBEAT_REQUEST, 500.0)
    assert conn.get_timer() == 1160.0
    conn.noops_answered(3, 600.0)           # the owner's fast path keeps the clock too
    assert conn.get_timer() == 1260.0 and conn.frames_received == 4
    assert conn.handle_timer(1259.0) == []
    assert conn.handle_timer(1260.0) == [IdleTimeout(660.0)]
    assert conn.state is ConnectionState.CLOSED and conn.get_timer() is None
    # a closed connection drops what still arrives and refuses to send
    assert conn.receive_data(HEARTBEAT_REQUEST, 1300.0) == [] and conn.data_to_send() == b""
    conn.identify()
    with pytest.raises(LocalProtocolError):
        conn.send_push(1)


def test_no_idle_timeout_means_no_timer():
    conn = ServerConnection()
    assert conn.get_timer() is None and conn.handle_timer(1e12) == []


def test_a_cmd_whose_reply_cmd_cannot_fit_32_bits_is_a_violation():
    top = 0xFFFFFFFF - 1_000_000_000              # the last cmd whose reply fits
    conn = ServerConnection()
    events = conn.receive_data(frame(6, 1) + frame(top, 2) + frame(top + 1, 3)
                               + frame(6, 4), 0.0)
    assert [(type(e), e.seq) for e in events] == [(Rejected, 2)]
    assert conn.state is ConnectionState.ERROR and isinstance(conn.error, RemoteProtocolError)
    # what came before is answered (the NOOP, and -1 in reply cmd 0xFFFFFFFF); then nothing
    assert [(c, s) for c, s, _ in split_frames(conn.data_to_send())] == [
        (1_000_000_006, 1), (0xFFFFFFFF, 2)]
    assert conn.frames_sent == 2 and not conn.at_frame_boundary
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(frame(6, 5), 0.0)


def test_a_frame_begun_must_be_complete_by_the_frame_deadline():
    conn = ServerConnection(idle_timeout=660.0, frame_timeout=30.0, now=0.0)
    assert conn.get_timer() == 660.0              # nothing held: only idleness counts
    # a frame dripped one byte per protocol second: each byte restarts the idle clock, but
    # the frame's deadline runs from its first byte
    data = frame(121, 1, b"x" * 40)
    for t in range(31):
        assert conn.receive_data(data[t:t + 1], float(10 + t)) == []
        assert conn.get_timer() == 40.0
    assert conn.handle_timer(39.9) == []
    assert conn.handle_timer(40.0) == [FrameTimeout(30.0, 31)]
    assert conn.state is ConnectionState.CLOSED and conn.get_timer() is None


def test_a_frame_completed_in_time_clears_its_deadline_and_the_next_gets_its_own():
    conn = ServerConnection(idle_timeout=660.0, frame_timeout=30.0)
    conn.identify()
    first, second = frame(121, 1, b"\x10\x07"), frame(121, 2, b"\x10\x07")
    conn.receive_data(first[:5], 1.0)
    assert conn.get_timer() == 31.0
    # the first completes at 20 s and the second begins in the same read
    [req] = conn.receive_data(first[5:] + second[:3], 20.0)
    assert req.seq == 1 and conn.get_timer() == 50.0
    [req] = conn.receive_data(second[3:], 49.0)
    assert req.seq == 2 and conn.get_timer() == 49.0 + 660.0 and conn.at_frame_boundary
    assert conn.handle_timer(100.0) == []


def test_an_owner_that_stopped_reading_restarts_the_frame_deadline():
    conn = ServerConnection(frame_timeout=30.0)
    conn.receive_data(HEARTBEAT_REQUEST[:4], 0.0)
    conn.restart_frame_deadline(25.0)               # the owner's own backlog, not the peer
    assert conn.get_timer() == 55.0 and conn.handle_timer(40.0) == []
    conn.receive_data(HEARTBEAT_REQUEST[4:], 41.0)
    assert conn.get_timer() is None and conn.data_to_send() == HEARTBEAT_REPLY


# ====================================================================== client side

def test_client_heartbeat_vectors_at_every_split():
    for name, chunks in chunkings(HEARTBEAT_REPLY):
        conn = ClientConnection(first_seq=11)
        seq, data = conn.send_request(6)
        assert (seq, data) == (11, HEARTBEAT_REQUEST)
        assert conn.pending == {11: 6}
        events = [e for c in chunks for e in conn.receive_data(c)]
        assert events == [Reply(6, 11, b"")], name
        assert conn.pending == {}


def test_pushes_replies_and_strays_at_every_split():
    stream = (NOTIFY_1                                   # a push
              + frame(1_000_000_121, 2, b"sync")          # reply to seq 2
              + frame(1_000_000_237, 1, b"?")             # seq 1 was NOOP: wrong cmd
              + frame(1_000_000_006, 1)                   # seq 1 is settled: stray
              + frame(24, 0, b"\0\1")                     # a NOTIFY with a 2-byte body
              + frame(24, 5, b"\0\0\0\1")                 # cmd 24 with seq 5: no push
              + frame(71, 9))                             # a request from the server
    want = None
    for name, chunks in chunkings(stream):
        conn = ClientConnection()
        assert conn.send_request(6)[0] == 1
        assert conn.send_request(121, b"req")[0] == 2
        events = [e for c in chunks for e in conn.receive_data(c)]
        if want is None:
            want = events
        assert events == want, name
    assert want[:3] == [Push(1), Reply(121, 2, b"sync"),
                        WrongReply(1, 1_000_000_006, 1_000_000_237, b"?")]
    assert [(type(e), e.frame.cmd) for e in want[3:]] == [
        (Stray, 1_000_000_006), (Stray, 24), (Stray, 24), (Stray, 71)]
    assert want[1].command.name == "NEWSYNC"


def test_client_refuses_what_it_must_not_send():
    conn = ClientConnection()
    conn.send_request(6, seq=4)
    with pytest.raises(LocalProtocolError):
        conn.send_request(6, seq=4)                 # seq 4 is still pending
    with pytest.raises(LocalProtocolError):
        conn.send_request(1_000_000_006)            # a reply cmd is not a request
    with pytest.raises(LocalProtocolError):
        conn.send_request(6, b"x" * (1 << 20))      # over the maximum frame
    seq, data = conn.send_request(999)              # unknown commands may be probed
    assert data == frame(999, seq)


def test_client_seq_wraps_at_32_bits():
    conn = ClientConnection(first_seq=0xFFFFFFFF)
    assert [conn.next_seq() for _ in range(3)] == [0xFFFFFFFF, 0, 1]


def test_request_deadlines_and_late_replies():
    conn = ClientConnection()
    s1, _ = conn.send_request(6, deadline=20.0)
    s2, _ = conn.send_request(121, deadline=10.0)
    s3, _ = conn.send_request(237)                  # no deadline
    assert conn.get_timer() == 10.0
    assert conn.handle_timer(9.99) == []
    assert conn.handle_timer(15.0) == [TimedOut(121, s2)]
    assert conn.get_timer() == 20.0
    assert conn.handle_timer(25.0) == [TimedOut(6, s1)]
    assert conn.get_timer() is None and conn.pending == {s3: 237}
    # the server answers late: nobody waits any more
    [late] = conn.receive_data(frame(1_000_000_006, s1))
    assert isinstance(late, Stray) and late.frame.seq == s1
    conn.forget(s3)
    assert isinstance(conn.receive_data(frame(1_000_000_237, s3))[0], Stray)


def test_client_close_abandons_pending_requests():
    conn = ClientConnection()
    seqs = [conn.send_request(6)[0] for _ in range(3)]
    assert conn.close() == seqs
    assert conn.state is ConnectionState.CLOSED and conn.pending == {}
    assert conn.receive_data(frame(1_000_000_006, seqs[0])) == []
    with pytest.raises(LocalProtocolError):
        conn.send_request(6)


def test_client_violation():
    conn = ClientConnection()
    seq, _ = conn.send_request(6)
    events = conn.receive_data(frame(1_000_000_006, seq) + frame(6, 0, header_len=8))
    assert events == [Reply(6, seq, b"")]
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"")


def test_client_and_server_talk_to_each_other():
    client, server = ClientConnection(), ServerConnection()
    seq, data = client.send_request(205, identify_body())
    [req] = server.receive_data(data, 0.0)
    server.identify()
    resp = pb.IdentifyResponse(base=pb.BaseResponse(ret=0)).SerializeToString()
    out = server.send_reply(req.command, req.seq, resp) + server.send_push(5)
    _, noop = client.send_request(6)
    assert server.receive_data(noop, 0.0) == []
    out += server.data_to_send()
    events = client.receive_data(out)
    assert events[:2] == [Reply(205, seq, resp), Push(5)]
    assert isinstance(events[2], Reply) and events[2].cmd == 6 and client.pending == {}


# ====================================================================== hostile input

chunked_bytes = st.lists(st.binary(max_size=64), max_size=12)
# headers that pass the framing checks, with random cmd/seq/body: exercise every rule
framed = st.lists(st.tuples(st.sampled_from([6, 24, 71, 121, 205, 237, 9, 999, 0,
                                              1_000_000_006, 1_000_000_121, 0xFFFFFFFF]),
                            st.integers(0, 0xFFFFFFFF), st.binary(max_size=40)), max_size=8)


def _only_remote_errors(feed) -> None:
    try:
        feed()
    except RemoteProtocolError:
        pass


@budget(3)
@given(chunked_bytes, st.booleans())
def test_server_hostile_bytes_raise_only_remote_protocol_error(chunks, identified):
    conn = ServerConnection(max_packet_len=256)
    if identified:
        conn.identify()

    def feed():
        for c in chunks:
            conn.receive_data(c, 0.0)
            conn.data_to_send()
    _only_remote_errors(feed)
    assert conn._decoder.buffered <= 256


@budget(3)
@given(framed, st.booleans())
def test_server_hostile_frames_are_all_answered(frames, identified):
    conn = ServerConnection()
    if identified:
        conn.identify()
    events = conn.receive_data(b"".join(frame(c, s, b) for c, s, b in frames), 0.0)
    replies = split_frames(conn.data_to_send())
    requests = [e for e in events if isinstance(e, Request)]
    # every frame is either answered at once or handed over: none is lost, none twice; up
    # to a cmd whose reply cmd cannot fit, a violation that ends the connection
    upto = next((i for i, (c, _, _) in enumerate(frames) if c > 0xFFFFFFFF - 1_000_000_000),
                len(frames))
    assert len(replies) + len(requests) == upto
    assert (conn.error is not None) == (upto < len(frames))
    # and each reply carries its request's cmd + 1000000000
    assert {c for c, _, _ in replies} <= {c + 1_000_000_000 for c, _, _ in frames[:upto]}


@budget(3)
@given(chunked_bytes, framed)
def test_client_hostile_input_raises_only_remote_protocol_error(chunks, frames):
    conn = ClientConnection()
    for _ in range(3):
        conn.send_request(6, deadline=1.0)

    def feed():
        conn.receive_data(b"".join(frame(c, s, b) for c, s, b in frames))
        for c in chunks:
            conn.receive_data(c)
    _only_remote_errors(feed)
    conn.handle_timer(2.0)
    assert conn.pending == {}
