"""The frame decoder through a live long link: streams of good frames, bad headers, bytes at
random and frames cut short, split anywhere. What comes back is a stream of whole reply
frames (cmd + 1000000000); the server closes the link once our side ends or it sees a
violation, and keeps serving others."""

from __future__ import annotations

import socket

from hypothesis import event, given
from hypothesis import strategies as st

from testbed.wire import encode_frame, pb
from testbed.wire.frames import HEADER, REPLY_OFFSET, FrameDecoder

from ..fuzzing import budget
from .wire import LongLinkClient

CMDS = [6, 205, 237, 121, 71, 9, 10, 24, 999, 0, 1_000_000_006, 0xFFFFFFFF]


@st.composite
def pieces(draw) -> bytes:
    kind = draw(st.sampled_from(["frame", "bad header", "random", "cut frame", "huge"]))
    event(kind)
    cmd, seq = draw(st.sampled_from(CMDS)), draw(st.integers(0, 0xFFFFFFFF))
    body = draw(st.binary(max_size=60))
    if kind == "frame":
        return encode_frame(cmd, seq, body)
    if kind == "bad header":
        return HEADER.pack(draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFF)),
                           draw(st.integers(0, 0xFFFF)), cmd, seq) + body
    if kind == "cut frame":
        f = encode_frame(cmd, seq, body)
        return f[:draw(st.integers(1, len(f) - 1))]
    if kind == "huge":
        return HEADER.pack(draw(st.integers(1 << 20, 0xFFFFFFFF)), 16, 1, cmd, seq) + body
    return draw(st.binary(min_size=1, max_size=80))


@budget(1)
@given(stream=st.lists(pieces(), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 64), max_size=6))
def test_any_stream_gets_whole_replies_then_a_close(fuzz_lab, stream, cuts):
    link = LongLinkClient(fuzz_lab.manifest)
    data = b"".join(stream)
    try:
        pos = 0
        for n in cuts:
            link.sock.sendall(data[pos:pos + n])
            pos += n
        link.sock.sendall(data[pos:])
        link.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass   # it closed on a violation already
    got = b""
    try:
        while chunk := link.sock.recv(65536):
            got += chunk
        event("closed")
    except ConnectionError:
        event("reset")
    finally:
        link.close()
    decoder = FrameDecoder()
    frames = decoder.receive_data(got)
    assert decoder.buffered == 0, "a reply cut short"
    assert all(f.cmd >= REPLY_OFFSET for f in frames)
    event(f"{min(len(frames), 5)}+ replies" if len(frames) >= 5 else f"{len(frames)} replies")
    # and the lab still answers a new link
    other = LongLinkClient(fuzz_lab.manifest, 1)
    try:
        assert other.request(6, b"").cmd == 6 + REPLY_OFFSET
    finally:
        other.close()


def test_an_identify_with_a_body_of_garbage_is_answered(fuzz_lab):
    link = LongLinkClient(fuzz_lab.manifest)
    try:
        reply = link.request(205, b"\xff" * 10)
        assert pb.IdentifyResponse.FromString(reply.body).base.ret == -2
    finally:
        link.close()
