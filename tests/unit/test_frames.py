"""Long-link framing (PROTOCOL.md section 2): testbed.wire.frames."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.wire.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from testbed.wire.frames import (DEFAULT_MAX_PACKET_LEN, HEADER_LEN, REPLY_OFFSET, Frame,
                                 FrameDecoder, encode_frame, is_reply, reply_cmd, request_cmd)

from ..fuzzing import budget

# The vectors of PROTOCOL.md section 2, written out as hex, not built with the code under test.
HEARTBEAT_REQUEST = bytes.fromhex("00000010" "0010" "0001" "00000006" "0000000b")
HEARTBEAT_REPLY = bytes.fromhex("00000010" "0010" "0001" "3b9aca06" "0000000b")

# NEWSENDMSG (237 = 0xed), seq 5, a 5-byte body: packet_len 21 = 0x15.
SENDMSG = bytes.fromhex("00000015" "0010" "0001" "000000ed" "00000005") + b"hello"
# NOTIFY push (24 = 0x18), seq 0, 4-byte selector 1.
NOTIFY = bytes.fromhex("00000014" "0010" "0001" "00000018" "00000000" "00000001")
# Reply to NEWSYNC (1000000121 = 0x3b9aca79), seq 0xfffffffe, 0-length body.
NEWSYNC_REPLY_EMPTY = bytes.fromhex("00000010" "0010" "0001" "3b9aca79" "fffffffe")

SENDMSG_F = Frame(237, 5, b"hello")
NOTIFY_F = Frame(24, 0, b"\x00\x00\x00\x01")
NEWSYNC_REPLY_EMPTY_F = Frame(1_000_000_121, 0xFFFFFFFE, b"")

THREE = SENDMSG + NEWSYNC_REPLY_EMPTY + NOTIFY
THREE_F = [SENDMSG_F, NEWSYNC_REPLY_EMPTY_F, NOTIFY_F]


def header(packet_len: int, header_len: int = 16, version: int = 1, cmd: int = 6,
           seq: int = 1) -> bytes:
    return struct.pack(">IHHII", packet_len, header_len, version, cmd, seq)


def feed_chunks(decoder: FrameDecoder, chunks) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(decoder.receive_data(chunk))
    return out


# --------------------------------------------------------------------- constants and Frame

def test_constants_match_the_contract():
    assert HEADER_LEN == 16
    assert REPLY_OFFSET == 1_000_000_000
    assert DEFAULT_MAX_PACKET_LEN == 1024 * 1024
    assert reply_cmd(6) == 1_000_000_006
    assert reply_cmd(205) == 1_000_000_205


def test_reply_and_request_cmd_rules():
    assert Frame(6, 11).body == b""
    assert not is_reply(6) and request_cmd(6) == 6
    assert is_reply(1_000_000_006) and request_cmd(1_000_000_006) == 6
    assert request_cmd(reply_cmd(237)) == 237
    assert is_reply(REPLY_OFFSET - 1) is False
    assert is_reply(REPLY_OFFSET) is True


# --------------------------------------------------------------------- the heartbeat vector

def test_heartbeat_request_encodes_to_the_vector():
    assert encode_frame(6, 11) == HEARTBEAT_REQUEST
    assert encode_frame(6, 11, b"") == HEARTBEAT_REQUEST


def test_heartbeat_reply_encodes_to_the_vector():
    assert encode_frame(reply_cmd(6), 11) == HEARTBEAT_REPLY


def test_heartbeat_vectors_decode():
    dec = FrameDecoder()
    assert dec.receive_data(HEARTBEAT_REQUEST) == [Frame(6, 11, b"")]
    assert dec.buffered == 0
    [reply] = dec.receive_data(HEARTBEAT_REPLY)
    assert reply == Frame(1_000_000_006, 11, b"")
    assert is_reply(reply.cmd) and request_cmd(reply.cmd) == 6
    assert dec.error is None


def test_heartbeat_vector_byte_by_byte():
    dec = FrameDecoder()
    for i, b in enumerate(HEARTBEAT_REQUEST[:-1]):
        assert dec.receive_data(bytes([b])) == []
        assert dec.buffered == i + 1
    assert dec.receive_data(HEARTBEAT_REQUEST[-1:]) == [Frame(6, 11, b"")]
    assert dec.buffered == 0


# --------------------------------------------------------------------- vectors with bodies

@pytest.mark.parametrize("raw, frame", [
    (SENDMSG, SENDMSG_F), (NOTIFY, NOTIFY_F), (NEWSYNC_REPLY_EMPTY, NEWSYNC_REPLY_EMPTY_F),
])
def test_body_vectors_encode_and_decode(raw, frame):
    assert encode_frame(*frame) == raw
    assert FrameDecoder().receive_data(raw) == [frame]


def test_decoded_body_is_bytes_and_independent_of_the_input_buffer():
    dec = FrameDecoder()
    data = bytearray(SENDMSG + NOTIFY[:10])
    [frame] = dec.receive_data(data)
    assert type(frame.body) is bytes
    data[:] = b"\x00" * len(data)          # the caller reuses its buffer
    assert frame == SENDMSG_F
    assert dec.receive_data(NOTIFY[10:]) == [NOTIFY_F]


def test_memoryview_input():
    assert FrameDecoder().receive_data(memoryview(THREE)) == THREE_F


def test_empty_feed_is_harmless():
    dec = FrameDecoder()
    assert dec.receive_data(b"") == []
    dec.receive_data(SENDMSG[:7])
    assert dec.receive_data(b"") == []
    assert dec.buffered == 7
    assert dec.receive_data(SENDMSG[7:]) == [SENDMSG_F]


def test_three_frames_whole():
    dec = FrameDecoder()
    assert dec.receive_data(THREE) == THREE_F
    assert dec.buffered == 0


def test_three_frames_byte_by_byte():
    dec = FrameDecoder()
    out = []
    for i in range(len(THREE)):
        out.extend(dec.receive_data(THREE[i:i + 1]))
        assert dec.buffered < 21
    assert out == THREE_F
    assert dec.buffered == 0


@pytest.mark.parametrize("stream, frames", [
    (SENDMSG + NOTIFY, [SENDMSG_F, NOTIFY_F]),
    (NEWSYNC_REPLY_EMPTY + SENDMSG, [NEWSYNC_REPLY_EMPTY_F, SENDMSG_F]),
    (THREE, THREE_F),
])
def test_split_at_every_offset(stream, frames):
    for i in range(len(stream) + 1):
        dec = FrameDecoder()
        first = dec.receive_data(stream[:i])
        second = dec.receive_data(stream[i:])
        assert first + second == frames, i
        assert dec.buffered == 0


def test_split_at_every_pair_of_offsets():
    n = len(THREE)
    for i, j in itertools.combinations_with_replacement(range(n + 1), 2):
        dec = FrameDecoder()
        out = feed_chunks(dec, [THREE[:i], THREE[i:j], THREE[j:]])
        assert out == THREE_F, (i, j)
        assert dec.buffered == 0


def test_partial_frame_returns_complete_ones_and_keeps_the_rest():
    dec = FrameDecoder()
    assert dec.receive_data(SENDMSG + NOTIFY[:17]) == [SENDMSG_F]
    assert dec.buffered == 17
    assert dec.receive_data(NOTIFY[17:] + NEWSYNC_REPLY_EMPTY[:3]) == [NOTIFY_F]
    assert dec.buffered == 3
    assert dec.receive_data(NEWSYNC_REPLY_EMPTY[3:]) == [NEWSYNC_REPLY_EMPTY_F]
    assert dec.buffered == 0


def test_frame_of_exactly_the_maximum_is_accepted():
    dec = FrameDecoder(max_packet_len=64)
    raw = encode_frame(9, 3, b"x" * 48, max_packet_len=64)
    assert len(raw) == 64
    assert dec.receive_data(raw) == [Frame(9, 3, b"x" * 48)]


def test_default_maximum_frame_is_accepted():
    body = (bytes(range(256)) * (DEFAULT_MAX_PACKET_LEN // 256))[:DEFAULT_MAX_PACKET_LEN - 16]
    assert len(body) == DEFAULT_MAX_PACKET_LEN - 16
    raw = encode_frame(10, 1, body)
    assert len(raw) == DEFAULT_MAX_PACKET_LEN
    assert FrameDecoder().receive_data(raw) == [Frame(10, 1, body)]


# --------------------------------------------------------------------- violations

BAD_HEADERS = [
    pytest.param(header(16, header_len=15), RemoteProtocolError, id="header_len-15"),
    pytest.param(header(16, header_len=17), RemoteProtocolError, id="header_len-17"),
    pytest.param(header(16, header_len=0), RemoteProtocolError, id="header_len-0"),
    pytest.param(header(16, header_len=0xFFFF), RemoteProtocolError, id="header_len-ffff"),
    pytest.param(header(16, version=0), RemoteProtocolError, id="version-0"),
    pytest.param(header(16, version=2), RemoteProtocolError, id="version-2"),
    pytest.param(header(16, version=0x0100), RemoteProtocolError, id="version-256"),
    pytest.param(header(0), RemoteProtocolError, id="packet_len-0"),
    pytest.param(header(15), RemoteProtocolError, id="packet_len-15"),
    pytest.param(header(DEFAULT_MAX_PACKET_LEN + 1), FrameTooLarge, id="packet_len-max+1"),
    pytest.param(header(1 << 30), FrameTooLarge, id="packet_len-1GiB"),
    pytest.param(header(0xFFFFFFFF), FrameTooLarge, id="packet_len-4GiB"),
]


@pytest.mark.parametrize("bad, exc", BAD_HEADERS)
def test_violation_raises_as_soon_as_the_header_is_complete(bad, exc):
    dec = FrameDecoder()
    for i in range(15):
        assert dec.receive_data(bad[i:i + 1]) == []
    assert dec.buffered == 15
    with pytest.raises(exc) as info:
        dec.receive_data(bad[15:16])
    assert isinstance(info.value, RemoteProtocolError)
    assert dec.error is info.value
    assert dec.buffered == 0


@pytest.mark.parametrize("bad, exc", BAD_HEADERS)
def test_violation_with_body_bytes_in_the_same_chunk(bad, exc):
    dec = FrameDecoder()
    with pytest.raises(exc):
        dec.receive_data(bad + b"\x00" * 4096)
    assert dec.buffered == 0
    assert isinstance(dec.error, exc)


@pytest.mark.parametrize("bad", [
    header(16, header_len=15), header(16, version=2), header(15),
])
def test_non_size_violations_are_not_frame_too_large(bad):
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().receive_data(bad)
    assert not isinstance(info.value, FrameTooLarge)


def test_header_claiming_one_gibibyte_buffers_nothing():
    dec = FrameDecoder()
    bad = header(1 << 30, cmd=9)
    assert dec.receive_data(bad[:10]) == []
    assert dec.buffered == 10
    with pytest.raises(FrameTooLarge):
        dec.receive_data(bad[10:] + b"A" * 65536)
    assert dec.buffered == 0
    # and later bytes are not buffered either
    with pytest.raises(FrameTooLarge):
        dec.receive_data(b"A" * 65536)
    assert dec.buffered == 0


@pytest.mark.parametrize("maxlen", [16, 17, 64, 1000])
def test_configurable_small_maximum(maxlen):
    ok = encode_frame(6, 1, b"z" * (maxlen - 16), max_packet_len=maxlen)
    dec = FrameDecoder(max_packet_len=maxlen)
    assert dec.max_packet_len == maxlen
    assert dec.receive_data(ok) == [Frame(6, 1, b"z" * (maxlen - 16))]
    with pytest.raises(FrameTooLarge):
        dec.receive_data(header(maxlen + 1))
    assert dec.buffered == 0


def test_small_maximum_rejects_what_the_default_accepts():
    raw = encode_frame(6, 1, b"y" * 100)
    assert FrameDecoder().receive_data(raw) == [Frame(6, 1, b"y" * 100)]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_packet_len=100).receive_data(raw)


@pytest.mark.parametrize("bad, exc", BAD_HEADERS)
def test_good_frames_before_a_bad_header_are_returned_first(bad, exc):
    dec = FrameDecoder()
    frames = dec.receive_data(SENDMSG + NEWSYNC_REPLY_EMPTY + bad + b"\x00" * 100)
    assert frames == [SENDMSG_F, NEWSYNC_REPLY_EMPTY_F]
    assert isinstance(dec.error, exc)
    assert dec.buffered == 0
    with pytest.raises(exc) as info:
        dec.receive_data(b"")
    assert info.value is dec.error


def test_good_frames_before_a_bad_header_across_chunks():
    dec = FrameDecoder()
    assert dec.receive_data(SENDMSG[:9]) == []
    frames = dec.receive_data(SENDMSG[9:] + NOTIFY + header(16, version=7))
    assert frames == [SENDMSG_F, NOTIFY_F]
    assert dec.error is not None
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(HEARTBEAT_REQUEST)


def test_partial_bad_header_after_good_frames_is_not_yet_an_error():
    dec = FrameDecoder()
    bad = header(16, header_len=20)
    assert dec.receive_data(SENDMSG + bad[:15]) == [SENDMSG_F]
    assert dec.error is None
    assert dec.buffered == 15
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(bad[15:])


def test_decoder_is_poisoned_after_a_violation():
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        dec.receive_data(header(16, version=2))
    first = info.value
    for data in (b"", HEARTBEAT_REQUEST, THREE, b"\x00"):
        with pytest.raises(RemoteProtocolError) as again:
            dec.receive_data(data)
        assert again.value is first
        assert dec.buffered == 0
    assert dec.error is first


def test_fresh_decoder_has_no_error():
    dec = FrameDecoder()
    assert dec.error is None
    assert dec.buffered == 0


def test_decoders_are_independent():
    bad = FrameDecoder()
    good = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        bad.receive_data(header(3))
    assert good.receive_data(HEARTBEAT_REQUEST) == [Frame(6, 11)]
    assert good.error is None


# --------------------------------------------------------------------- encode_frame refusals

def test_encode_refuses_oversize_default():
    with pytest.raises(LocalProtocolError):
        encode_frame(9, 1, b"\x00" * (DEFAULT_MAX_PACKET_LEN - 15))
    assert len(encode_frame(9, 1, b"\x00" * (DEFAULT_MAX_PACKET_LEN - 16))) == \
        DEFAULT_MAX_PACKET_LEN


@pytest.mark.parametrize("maxlen", [16, 32, 100])
def test_encode_refuses_oversize_configured(maxlen):
    assert len(encode_frame(9, 1, b"a" * (maxlen - 16), max_packet_len=maxlen)) == maxlen
    with pytest.raises(LocalProtocolError):
        encode_frame(9, 1, b"a" * (maxlen - 15), max_packet_len=maxlen)


@pytest.mark.parametrize("cmd, seq", [
    (-1, 0), (1 << 32, 0), (0, -1), (0, 1 << 32), (-(1 << 40), 1), (1, 1 << 64),
])
def test_encode_refuses_out_of_range_cmd_or_seq(cmd, seq):
    with pytest.raises(LocalProtocolError):
        encode_frame(cmd, seq)


def test_encode_accepts_the_32_bit_extremes():
    raw = encode_frame(0xFFFFFFFF, 0xFFFFFFFF)
    assert raw == bytes.fromhex("00000010 0010 0001 ffffffff ffffffff".replace(" ", ""))
    raw = encode_frame(0, 0)
    assert raw == bytes.fromhex("00000010 0010 0001 00000000 00000000".replace(" ", ""))


def test_local_and_remote_errors_are_distinct():
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert issubclass(FrameTooLarge, RemoteProtocolError)


# --------------------------------------------------------------------- property tests

def reference_parse(stream: bytes, maxlen: int) -> tuple[list[Frame], bool]:
    """A whole-stream parser written independently of FrameDecoder."""
    frames = []
    pos = 0
    while len(stream) - pos >= 16:
        plen, hlen, ver, cmd, seq = struct.unpack(">IHHII", stream[pos:pos + 16])
        if hlen != 16 or ver != 1 or plen < 16 or plen > maxlen:
            return frames, True
        if len(stream) - pos < plen:
            break
        frames.append(Frame(cmd, seq, stream[pos + 16:pos + plen]))
        pos += plen
    return frames, False


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(set(min(c, len(data)) for c in cuts))
    chunks, prev = [], 0
    for p in points + [len(data)]:
        chunks.append(data[prev:p])
        prev = p
    return chunks


def run_decoder(dec: FrameDecoder, chunks: list[bytes]):
    """Feed chunks; returns (frames, raised). Checks the buffering bound after every call."""
    out: list[Frame] = []
    for chunk in chunks:
        try:
            got = dec.receive_data(chunk)
        except RemoteProtocolError:
            assert dec.buffered == 0
            return out, True
        # anything held is a header prefix or a partial frame under the limit
        assert dec.buffered < max(dec.max_packet_len, 16)
        out.extend(got)
        if dec.error is not None:
            with pytest.raises(RemoteProtocolError):
                dec.receive_data(b"")
            return out, True
    return out, False


PROP = budget(3)


@PROP
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=20),
       maxlen=st.sampled_from([16, 20, 64, 300, DEFAULT_MAX_PACKET_LEN]))
def test_random_bytes_only_raise_remote_protocol_error(data, cuts, maxlen):
    dec = FrameDecoder(max_packet_len=maxlen)
    # any exception but RemoteProtocolError propagates out of run_decoder and fails the test
    frames, raised = run_decoder(dec, split(data, cuts))
    ref_frames, ref_error = reference_parse(data, maxlen)
    assert frames == ref_frames
    assert raised == ref_error


frame_st = st.builds(
    Frame,
    cmd=st.one_of(st.sampled_from([6, 24, 71, 121, 205, 237, 1_000_000_006, 1_000_000_237]),
                  st.integers(0, 0xFFFFFFFF)),
    seq=st.integers(0, 0xFFFFFFFF),
    body=st.binary(max_size=80),
)


@PROP
@given(frames=st.lists(frame_st, max_size=8), data=st.data())
def test_valid_frame_sequences_round_trip_through_any_split(frames, data):
    stream = b"".join(encode_frame(*f) for f in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    dec = FrameDecoder()
    got, raised = run_decoder(dec, split(stream, cuts))
    assert not raised
    assert got == frames
    assert dec.buffered == 0
    assert dec.error is None


@PROP
@given(frames=st.lists(frame_st, min_size=1, max_size=6), data=st.data())
def test_corrupted_streams_agree_with_the_reference(frames, data):
    """Valid frames with a byte changed or the stream cut: the incremental decoder returns
    exactly what a whole-stream parse does, and raises exactly when it finds a violation."""
    stream = bytearray(b"".join(encode_frame(*f) for f in frames))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    stream = bytes(stream[:data.draw(st.integers(0, len(stream)))])
    maxlen = data.draw(st.sampled_from([64, 100, DEFAULT_MAX_PACKET_LEN]))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    dec = FrameDecoder(max_packet_len=maxlen)
    got, raised = run_decoder(dec, split(stream, cuts))
    ref_frames, ref_error = reference_parse(stream, maxlen)
    assert got == ref_frames
    assert raised == ref_error
    if not raised:
        consumed = sum(16 + len(f.body) for f in ref_frames)
        assert dec.buffered == len(stream) - consumed


def test_whole_frame_reads_one_whole_frame_and_nothing_else():
    """`whole_frame` says a segment's command when the segment is exactly one good frame
    and nothing is held, as receive_data would decode it; else None and nothing changed."""
    d = FrameDecoder(max_packet_len=64)
    assert d.whole_frame(SENDMSG) == 237 and d.whole_frame(HEARTBEAT_REPLY) == 1000000006
    assert d.buffered == 0
    for other in (SENDMSG[:-1], SENDMSG + HEARTBEAT_REQUEST, SENDMSG[:10], b"",
                  encode_frame(6, 1, b"x" * 60, max_packet_len=100)):      # over 64 bytes
        assert d.whole_frame(other) is None
    assert d.receive_data(SENDMSG[:10]) == [] and d.whole_frame(SENDMSG) is None
    assert d.receive_data(SENDMSG[10:]) == [SENDMSG_F]          # what was held is whole
    bad = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        bad.receive_data(b"\x00\x00\x00\x10\x00\x11" + b"\x00" * 10)
    assert bad.whole_frame(SENDMSG) is None                      # a poisoned decoder
