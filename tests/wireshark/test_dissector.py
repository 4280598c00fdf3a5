"""wireshark/wechat_longlink.lua under tshark: captures made with the tap carry long-link
frames (several per segment, split across segments, NOTIFY, NOOP, violations), and the demo
capture agrees with testbed.capture.analyze frame for frame."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from testbed.capture.tap import Tap
from testbed.wire import BY_CMD, REPLY_OFFSET, encode_frame, error_body, notify_body, pb

REPO = Path(__file__).resolve().parents[2]
LUA = REPO / "wireshark" / "wechat_longlink.lua"
PROTO_DIR = REPO / "testbed" / "wire"
TSHARK = shutil.which("tshark")

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed "
                                                       "(apt-get install tshark)")

#: the protobuf hand-off: mm.proto on the search path, its fields as pbf.* filter fields
PB = ("-o", f'uat:protobuf_search_paths:"{PROTO_DIR}","TRUE"',
      "-o", "protobuf.preload_protos:TRUE", "-o", "protobuf.pbf_as_hf:TRUE")

PHONE = "127.0.0.87"
LONG = ("127.0.0.11", 8080)
SHORT = ("127.0.0.21", 8080)
T0 = 1_370_000_000.0
HELLO = "你好"

_ROOT_WARNING = re.compile(r'^Running as user "root" and group "root"\. This could be '
                           r'dangerous\.$')


# ---------------------------------------------------------------------- tshark
def tshark(path: Path, *args: str, pb_opts: bool = False) -> str:
    """tshark with the dissector loaded; fails on an exit code, any stderr but the root
    warning (a Lua load error is printed there) or a Lua runtime error in the output."""
    cmd = [TSHARK, "-n", "-r", str(path), "-X", f"lua_script:{LUA}",
           *(PB if pb_opts else ()), *args]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}: {p.stderr}"
    extra = [ln for ln in p.stderr.splitlines() if ln.strip() and not _ROOT_WARNING.match(ln)]
    assert not extra, f"tshark printed on stderr: {extra}"
    assert "Lua: Error" not in p.stdout and "Lua Error" not in p.stdout, p.stdout
    return p.stdout


def fields(path: Path, *names: str, filt: str | None = None, pb_opts: bool = False,
           extra: tuple = ()) -> list[list[str]]:
    args = [*extra, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]
    for n in names:
        args += ["-e", n]
    if filt:
        args += ["-Y", filt]
    out = tshark(path, *args, pb_opts=pb_opts)
    return [ln.split("\t") for ln in out.splitlines() if ln.strip()]


def assert_no_lua_errors(path: Path, *, pb_opts: bool = False, extra: tuple = ()) -> None:
    msgs = fields(path, "_ws.expert.message", filt="_ws.expert", pb_opts=pb_opts, extra=extra)
    bad = [m for row in msgs for m in row[0].split("|") if m.startswith("Lua Error")]
    assert not bad, bad


# ---------------------------------------------------------------------- bodies
def send_req(seq_text: str = HELLO, pad: int = 0) -> bytes:
    return pb.NewSendMsgRequest(
        base=pb.BaseRequest(session_key=b"k" * 16, uin=1, device_id=b"d" * 16,
                            client_version=0x25000000, device_type="android-17"),
        msgs=[pb.MicroMsgRequest(to_user="user0002", content=seq_text + "x" * pad, msg_type=1,
                                 create_time=1370000000, client_msg_id="c-1")],
    ).SerializeToString()


def send_resp(new_msg_id: int = 4242) -> bytes:
    return pb.NewSendMsgResponse(
        base=pb.BaseResponse(ret=0),
        msgs=[pb.MicroMsgResponse(ret=0, to_user="user0002", client_msg_id="c-1",
                                  new_msg_id=new_msg_id, create_time=1370000001)],
    ).SerializeToString()


def sync_req() -> bytes:
    return pb.NewSyncRequest(base=pb.BaseRequest(uin=1), selector=7,
                             key_buf=pb.SyncKey(keys=[pb.KeyVal(key=1, val=3)])).SerializeToString()


def sync_resp() -> bytes:
    item = pb.AddMsg(new_msg_id=4242, from_user="user0001", to_user="user0002", msg_type=1,
                     content=HELLO, create_time=1370000000).SerializeToString()
    return pb.NewSyncResponse(base=pb.BaseResponse(ret=0),
                              cmd_list=[pb.CmdItem(cmd_id=5, cmd_buf=item)],
                              key_buf=pb.SyncKey(keys=[pb.KeyVal(key=1, val=4)])
                              ).SerializeToString()


def header(packet_len: int, header_len: int, version: int, cmd: int, seq: int) -> bytes:
    return struct.pack(">IHHII", packet_len, header_len, version, cmd, seq)


def http_exchange(tap: Tap, port: int, t: float, first: int = 0) -> None:
    """One short-link CGI on port 8080 of the short host (HTTP on the long link's port);
    `first`: send the request's first bytes in a segment of their own."""
    body = send_req()
    req = (b"POST /cgi-bin/micromsg-bin/newsendmsg HTTP/1.1\r\nHost: short.weixin.qq.com\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
           + body)
    resp_body = send_resp()
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(resp_body) + resp_body)
    c = tap.tcp_open((PHONE, port), SHORT, ts=t)
    if first:
        tap.tcp_data(c, True, req[:first], ts=t + 0.0005)
        req = req[first:]
    tap.tcp_data(c, True, req, ts=t + 0.001)
    tap.tcp_data(c, False, resp, ts=t + 0.002)
    tap.tcp_close(c, False, ts=t + 0.003)
    tap.tcp_close(c, True, ts=t + 0.004)


# ---------------------------------------------------------------------- captures
@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Port 8080, MSS 1460: three requests in one segment, four answers (a NOTIFY among
    them) in one segment, a NOTIFY push alone, a NOOP pair, an unknown command answered with
    an error, and a short-link HTTP exchange on the same port number."""
    path = tmp_path_factory.mktemp("ws") / "mixed.pcapng"
    with Tap(path, comment={"how": "tap", "test": "mixed"}, seed=1) as tap:
        t = T0
        http_exchange(tap, 40000, t)
        c = tap.tcp_open((PHONE, 40001), LONG, ts=t + 0.01)
        tap.tcp_data(c, True, encode_frame(6, 1) + encode_frame(237, 2, send_req())
                     + encode_frame(121, 3, sync_req()), ts=t + 0.02)
        tap.tcp_data(c, False, encode_frame(6 + REPLY_OFFSET, 1)
                     + encode_frame(237 + REPLY_OFFSET, 2, send_resp())
                     + encode_frame(24, 0, notify_body(1))
                     + encode_frame(121 + REPLY_OFFSET, 3, sync_resp()), ts=t + 0.03)
        tap.tcp_data(c, False, encode_frame(24, 0, notify_body(5)), ts=t + 1)
        tap.tcp_data(c, True, encode_frame(6, 11), ts=t + 300)
        tap.tcp_data(c, False, encode_frame(6 + REPLY_OFFSET, 11), ts=t + 300.01)
        tap.tcp_data(c, True, encode_frame(999, 12, b"\x0a\x00"), ts=t + 301)
        tap.tcp_data(c, False, encode_frame(999 + REPLY_OFFSET, 12, error_body(-1)),
                     ts=t + 301.01)
        tap.tcp_close(c, True, ts=t + 302)
        tap.tcp_close(c, False, ts=t + 302.01)
    return path


SPLIT_PAD = 80   # makes the NEWSENDMSG frame 3 segments long at MSS 64


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """MSS 64: one NEWSENDMSG frame over three segments, its reply over two."""
    path = tmp_path_factory.mktemp("ws") / "split.pcapng"
    frame = encode_frame(237, 12, send_req(pad=SPLIT_PAD))
    assert 128 < len(frame) <= 192, len(frame)
    with Tap(path, comment={"how": "tap", "test": "split"}, mss=64, seed=2) as tap:
        c = tap.tcp_open((PHONE, 40002), LONG, ts=T0)
        tap.tcp_data(c, True, frame, ts=T0 + 0.01)
        tap.tcp_data(c, False, encode_frame(237 + REPLY_OFFSET, 12, send_resp()), ts=T0 + 0.02)
        tap.tcp_close(c, True, ts=T0 + 0.03)
        tap.tcp_close(c, False, ts=T0 + 0.04)
    return path


# ---------------------------------------------------------------------- mixed
@pytest.fixture(scope="module")
def mixed_rows(mixed):
    return fields(mixed, "frame.number", "tcp.srcport", "wechat_ll.cmd_name", "wechat_ll.seq",
                  "wechat_ll.is_reply", "wechat_ll.cmd", "_ws.col.Info", filt="wechat_ll")


def test_frames_several_per_segment(mixed_rows):
    got = [(r[1], r[2], r[3], r[4]) for r in mixed_rows]
    assert got == [
        ("40001", "NOOP|NEWSENDMSG|NEWSYNC", "1|2|3", "0|0|0"),
        ("8080", "NOOP|NEWSENDMSG|NOTIFY|NEWSYNC", "1|2|0|3", "1|1|0|1"),
        ("8080", "NOTIFY", "0", "0"),
        ("40001", "NOOP", "11", "0"),
        ("8080", "NOOP", "11", "1"),
        ("40001", "cmd 999", "12", "0"),
        ("8080", "cmd 999", "12", "1"),
    ]
    assert mixed_rows[1][5] == "1000000006|1000000237|24|1000000121"


def test_info_column(mixed_rows):
    assert [r[6] for r in mixed_rows] == [
        "NOOP seq 1, NEWSENDMSG seq 2, NEWSYNC seq 3",
        "NOOP reply seq 1, NEWSENDMSG reply seq 2, NOTIFY selector 0x1, NEWSYNC reply seq 3",
        "NOTIFY selector 0x5",
        "NOOP seq 11",
        "NOOP reply seq 11",
        "cmd 999 seq 12",
        "cmd 999 reply seq 12",
    ]


def test_notify_selector_and_body(mixed):
    rows = fields(mixed, "wechat_ll.selector", "wechat_ll.body", "wechat_ll.request_cmd",
                  filt="wechat_ll.cmd == 24 && !(wechat_ll.cmd == 1000000006)")
    assert [r[0] for r in rows] == ["0x00000005"]
    assert rows[0][1] == "00000005" and rows[0][2] == "24"
    all_sel = fields(mixed, "wechat_ll.selector", filt="wechat_ll.selector")
    assert [r[0] for r in all_sel] == ["0x00000001", "0x00000005"]


def test_filters_and_columns(mixed):
    lines = tshark(mixed, "-Y", 'wechat_ll.cmd_name == "NEWSENDMSG"').splitlines()
    assert len(lines) == 2 and all(" WeChat-LL " in ln for ln in lines)
    assert "NEWSENDMSG seq 2" in lines[0] and "NEWSENDMSG reply seq 2" in lines[1]
    lines = tshark(mixed, "-Y", "wechat_ll.request_cmd == 6 && wechat_ll.is_reply == 1"
                   ).splitlines()
    assert len(lines) == 2 and "NOOP reply seq 1" in lines[0] and "NOOP reply seq 11" in lines[1]


def test_unknown_command_is_flagged(mixed):
    rows = fields(mixed, "wechat_ll.seq", "_ws.expert.message", filt="wechat_ll.unknown_cmd")
    assert [r[0] for r in rows] == ["12", "12"]
    assert "Command 999 is not in the command table" in rows[0][1]
    assert "Command 1000000999 is not in the command table" in rows[1][1]


def test_http_on_the_same_port_still_http(mixed):
    """The short link shares port 8080 (on other addresses): it still goes to HTTP, with
    its body reassembled, and never to the long-link dissector."""
    rows = fields(mixed, "ip.src", "http.request.method", "http.request.uri",
                  "http.response.code", filt="http")
    assert [r[1:] for r in rows] == [["POST", "/cgi-bin/micromsg-bin/newsendmsg", ""],
                                     ["", "", "200"]]
    assert fields(mixed, "frame.number", filt=f"wechat_ll && ip.addr == {SHORT[0]}") == []


def test_http_starting_with_a_tiny_segment(tmp_path):
    """Fewer than 8 bytes cannot tell a long link from HTTP: the port dissector waits for
    the next segment, then hands the whole request to HTTP."""
    path = tmp_path / "tiny.pcapng"
    with Tap(path, comment={"how": "tap", "test": "tiny"}, seed=6) as tap:
        http_exchange(tap, 40000, T0, first=3)
    rows = fields(path, "http.request.method", "http.request.uri", "tcp.segment.count",
                  filt="http.request")
    assert rows == [["POST", "/cgi-bin/micromsg-bin/newsendmsg", "2"]]
    assert fields(path, "frame.number", filt="wechat_ll") == []


def test_no_lua_errors(mixed, split):
    assert_no_lua_errors(mixed)
    assert_no_lua_errors(split)
    assert_no_lua_errors(mixed, pb_opts=True)


# ---------------------------------------------------------------------- split
def test_frame_split_over_three_segments(split):
    data = fields(split, "frame.number", "tcp.srcport", "tcp.len", filt="tcp.len > 0")
    client = [r for r in data if r[1] == "40002"]
    assert len(client) == 3 and all(int(r[2]) <= 64 for r in client)
    rows = fields(split, "frame.number", "wechat_ll.cmd_name", "wechat_ll.seq",
                  "wechat_ll.packet_len", "tcp.segment.count", "_ws.col.Info", filt="wechat_ll")
    frame = encode_frame(237, 12, send_req(pad=SPLIT_PAD))
    assert rows[0] == [client[-1][0], "NEWSENDMSG", "12", str(len(frame)), "3",
                       "NEWSENDMSG seq 12"]
    assert rows[1][1:3] == ["NEWSENDMSG", "12"] and rows[1][5] == "NEWSENDMSG reply seq 12"
    assert len(rows) == 2
    # the first two segments are reassembled into the third (known in the second pass)
    ins = fields(split, "frame.number", "tcp.reassembled_in", filt="tcp.srcport == 40002 && "
                 "tcp.len > 0 && !wechat_ll", extra=("-2",))
    assert [r[1] for r in ins] == [client[-1][0], client[-1][0]]


def test_protobuf_handoff(split, mixed):
    rows = fields(split, "wechat_ll.msg_type", "pbf.testbed.mm.MicroMsgRequest.content",
                  "pbf.testbed.mm.MicroMsgResponse.new_msg_id",
                  "pbf.testbed.mm.BaseRequest.device_type", filt="wechat_ll", pb_opts=True)
    assert rows == [
        ["testbed.mm.NewSendMsgRequest", HELLO + "x" * SPLIT_PAD, "", "android-17"],
        ["testbed.mm.NewSendMsgResponse", "", "4242", ""],
    ]
    rows = fields(mixed, "wechat_ll.seq", "wechat_ll.msg_type", "protobuf.message.name",
                  "pbf.testbed.mm.MicroMsgRequest.content", "pbf.testbed.mm.AddMsg.content",
                  "pbf.testbed.mm.BaseResponse.ret", filt="wechat_ll", pb_opts=True)
    assert rows[0][1] == "testbed.mm.NewSendMsgRequest|testbed.mm.NewSyncRequest"
    assert rows[0][3] == HELLO
    assert rows[1][1] == ("testbed.mm.NewSendMsgResponse|testbed.mm.NewSyncResponse")
    # the AddMsg inside a CmdItem is bytes: the AddMsg content is not decoded, but the
    # NewSyncResponse is
    assert "testbed.mm.NewSyncResponse" in rows[1][2].split("|")
    # the error reply to an unknown command decodes as {1: BaseResponse{ret: -1}}
    assert rows[-1][1] == "testbed.mm.ErrorResponse" and rows[-1][5] == "-1"


def test_protobuf_filter_on_content(split):
    out = tshark(split, "-Y", f'pbf.testbed.mm.MicroMsgRequest.content contains "{HELLO}"',
                 pb_opts=True)
    assert len(out.splitlines()) == 1 and "NEWSENDMSG seq 12" in out


def test_without_search_path_no_errors(split):
    """Without mm.proto the Protobuf dissector still runs (unnamed fields), and ours is
    unchanged."""
    rows = fields(split, "wechat_ll.cmd_name", "wechat_ll.msg_type", "protobuf.field.number",
                  filt="wechat_ll")
    assert [r[:2] for r in rows] == [["NEWSENDMSG", "testbed.mm.NewSendMsgRequest"],
                                     ["NEWSENDMSG", "testbed.mm.NewSendMsgResponse"]]
    assert [r[2] for r in rows] == ["1|2", "1|2"]   # base and msgs, unnamed, not opened
    rows = fields(split, "wechat_ll.cmd_name", "protobuf.field.number", filt="wechat_ll",
                  extra=("-o", "wechat_ll.protobuf:FALSE"))
    assert [r[1] for r in rows] == ["", ""]


# ---------------------------------------------------------------------- chopped streams
def stream_frames(rng: random.Random) -> list[tuple[bool, bytes, str, int]]:
    """(from_client, frame, name, seq): a session of every long-link command."""
    out = []
    seq = 100
    for cmd in (205, 6, 237, 121, 71, 9, 19, 39, 10, 20, 40, 237, 6):
        seq += 1
        size = rng.choice([0, 1, 15, 16, 17, 300, 1459, 1460, 1461, 4000])
        body = send_req(pad=size) if cmd == 237 else (b"\x12" + bytes([min(size, 127)])
                                                      + b"a" * min(size, 127) if size else b"")
        if cmd == 6:
            body = b""
        out.append((True, encode_frame(cmd, seq, body), BY_CMD[cmd].name, seq))
        if cmd == 121:
            out.append((False, encode_frame(24, 0, notify_body(3)), "NOTIFY", 0))
        rbody = b"" if cmd == 6 else error_body(0) + b"\x12" + bytes([min(size, 100)]) \
            + b"r" * min(size, 100)
        out.append((False, encode_frame(cmd + REPLY_OFFSET, seq, rbody), BY_CMD[cmd].name, seq))
    return out


@pytest.mark.parametrize("port", [8080, 9000], ids=["port-8080", "heuristic-9000"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chopped_stream_reassembles(tmp_path, port, seed):
    """Every frame of both directions, cut at random places (1-byte pieces, a header cut in
    two, several frames and a partial one in one chunk), comes out once, in order."""
    rng = random.Random(seed)
    frames = stream_frames(rng)
    path = tmp_path / "chopped.pcapng"
    with Tap(path, comment={"how": "tap", "test": "chopped"}, seed=seed) as tap:
        c = tap.tcp_open((PHONE, 41000), ("127.0.0.11", port), ts=T0)
        t = T0
        for from_client in (True, False):
            data = b"".join(f for fc, f, _, _ in frames if fc == from_client)
            pos = 0
            first = True
            while pos < len(data):
                # the port dissector waits for 8 bytes to decide; the heuristic needs 8
                n = (3 if port == 8080 else 10) if first else \
                    rng.choice([1, 3, 7, 16, 20, 33, 100, 700, 1500, 3000])
                first = False
                t += 0.001
                tap.tcp_data(c, from_client, data[pos:pos + n], ts=t)
                pos += n
        tap.tcp_close(c, True, ts=t + 0.01)
        tap.tcp_close(c, False, ts=t + 0.02)
    rows = fields(path, "tcp.srcport", "wechat_ll.cmd_name", "wechat_ll.seq",
                  filt="wechat_ll")
    got = {True: [], False: []}
    for r in rows:
        names, seqs = r[1].split("|"), r[2].split("|")
        got[r[0] == "41000"] += list(zip(names, map(int, seqs)))
    for from_client in (True, False):
        assert got[from_client] == [(n, s) for fc, _, n, s in frames if fc == from_client]
    assert fields(path, "frame.number", filt="_ws.expert.severity >= 6291456 || "
                  "_ws.malformed") == []   # nothing at warning level or above
    assert_no_lua_errors(path)


def test_chopped_stream_without_tcp_reassembly(tmp_path):
    """With TCP reassembly off, every frame whose header is whole in one segment is shown
    (complete or [partial]), in order, and the segments that continue a frame, or a cut
    header, are not mistaken for violations."""
    rng = random.Random(7)
    frames = stream_frames(rng)
    path = tmp_path / "chopped.pcapng"
    with Tap(path, comment={"how": "tap", "test": "chopped"}, seed=7) as tap:
        c = tap.tcp_open((PHONE, 41000), LONG, ts=T0)
        t = T0
        for from_client in (True, False):
            data = b"".join(f for fc, f, _, _ in frames if fc == from_client)
            pos = 0
            while pos < len(data):
                n = 10 if pos == 0 else rng.choice([1, 3, 7, 16, 20, 33, 100, 700, 3000])
                t += 0.001
                tap.tcp_data(c, from_client, data[pos:pos + n], ts=t)
                pos += n
        tap.tcp_close(c, True, ts=t + 0.01)
    off = ("-o", "tcp.desegment_tcp_streams:FALSE")
    for passes in ((), ("-2",)):
        rows = fields(path, "tcp.srcport", "wechat_ll.cmd_name", "wechat_ll.seq",
                      filt="wechat_ll.seq", extra=off + passes)
        for from_client in (True, False):
            got = [(n, int(s)) for r in rows if (r[0] == "41000") == from_client
                   for n, s in zip(r[1].split("|"), r[2].split("|"))]
            want = iter([(n, s) for fc, _, n, s in frames if fc == from_client])
            assert all(g in want for g in got), got          # an ordered subsequence
            assert len(got) >= len(frames) // 4
        assert fields(path, "frame.number", extra=off + passes,
                      filt="wechat_ll.violation.version || wechat_ll.violation.header_len || "
                           "wechat_ll.violation.packet_len_short || "
                           "wechat_ll.violation.packet_len_large || "
                           "wechat_ll.after_violation || wechat_ll.unknown_cmd") == []
        assert fields(path, "frame.number", filt="wechat_ll.continuation",
                      extra=off + passes)
    assert_no_lua_errors(path, extra=off)


# ---------------------------------------------------------------------- violations
VIOLATIONS = {
    "version": (header(16, 16, 2, 237, 2), "Protocol violation: version 2 != 1"),
    "header_len": (header(16, 17, 1, 237, 2), "Protocol violation: header_len 17 != 16"),
    "packet_len_short": (header(8, 16, 1, 237, 2), "Protocol violation: packet_len 8 < 16"),
    "packet_len_large": (header((1 << 20) + 1, 16, 1, 237, 2),
                         "Protocol violation: packet_len 1048577 exceeds the maximum 1048576"),
}


def violation_capture(path: Path, bad: bytes) -> None:
    """A good NOOP pair, then the client's bad header (with junk after it, in one segment),
    more junk in a later segment, and the server closing at once."""
    with Tap(path, comment={"how": "tap", "test": "violation"}, seed=3) as tap:
        c = tap.tcp_open((PHONE, 40003), LONG, ts=T0)
        tap.tcp_data(c, True, encode_frame(6, 1), ts=T0 + 0.01)
        tap.tcp_data(c, False, encode_frame(6 + REPLY_OFFSET, 1), ts=T0 + 0.02)
        tap.tcp_data(c, True, bad + b"junk" * 5, ts=T0 + 0.03)
        tap.tcp_data(c, True, b"more junk after the violation", ts=T0 + 0.04)
        tap.tcp_close(c, False, ts=T0 + 0.05)
        tap.tcp_close(c, True, ts=T0 + 0.06)


@pytest.mark.parametrize("passes", [(), ("-2",)], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("kind", sorted(VIOLATIONS))
def test_violation_expert_info(tmp_path, kind, passes):
    bad, message = VIOLATIONS[kind]
    path = tmp_path / f"{kind}.pcapng"
    violation_capture(path, bad)
    rows = fields(path, "frame.number", "_ws.expert.message", "_ws.expert.severity",
                  "_ws.expert.group", "wechat_ll.version", "wechat_ll.header_len",
                  "wechat_ll.packet_len", "_ws.col.Info",
                  filt=f"wechat_ll.violation.{kind}", extra=passes)
    assert len(rows) == 1, rows
    msgs = rows[0][1].split("|")
    assert message in msgs
    i = msgs.index(message)
    assert rows[0][2].split("|")[i] == "8388608"     # PI_ERROR
    assert rows[0][3].split("|")[i] == "117440512"   # PI_MALFORMED
    assert rows[0][7] == message
    plen, hlen, ver = struct.unpack(">IHH", bad[:8])
    assert rows[0][4:7] == [str(ver), str(hlen), str(plen)]
    # the same through `-Y _ws.expert`, as a reader would look for it
    expert = fields(path, "frame.number", "_ws.expert.message", filt="_ws.expert",
                    extra=passes)
    assert any(message in r[1].split("|") for r in expert)
    # the good frames before it are dissected; the later junk is not framed again
    frames = fields(path, "wechat_ll.cmd_name", "wechat_ll.seq", filt="wechat_ll.seq",
                    extra=passes)
    assert [r[:2] for r in frames][:2] == [["NOOP", "1"], ["NOOP", "1"]]
    after = fields(path, "frame.number", "_ws.col.Info", filt="wechat_ll.after_violation",
                   extra=passes)
    assert len(after) == 1 and int(after[0][0]) > int(rows[0][0])
    assert after[0][1] == "data after a protocol violation"
    assert_no_lua_errors(path)


def test_max_packet_len_preference(tmp_path):
    path = tmp_path / "big.pcapng"
    with Tap(path, comment={"how": "tap", "test": "big"}, seed=4) as tap:
        c = tap.tcp_open((PHONE, 40004), LONG, ts=T0)
        tap.tcp_data(c, True, encode_frame(9, 1, b"\x3a\x00" + b"z" * 1998), ts=T0 + 0.01)
        tap.tcp_close(c, True, ts=T0 + 0.02)
    rows = fields(path, "wechat_ll.cmd_name", "wechat_ll.packet_len", filt="wechat_ll")
    assert rows == [["UPLOADMSGIMG", "2016"]]
    rows = fields(path, "_ws.expert.message", filt="wechat_ll.violation.packet_len_large",
                  extra=("-o", "wechat_ll.max_packet_len:1000"))
    assert len(rows) == 1
    assert "Protocol violation: packet_len 2016 exceeds the maximum 1000" in rows[0][0]


# ---------------------------------------------------------------------- ports
@pytest.fixture(scope="module")
def other_port(tmp_path_factory) -> Path:
    """The long link on port 9000, and HTTP on 8080 beside it."""
    path = tmp_path_factory.mktemp("ws") / "port9000.pcapng"
    with Tap(path, comment={"how": "tap", "test": "port"}, seed=5) as tap:
        http_exchange(tap, 40000, T0)
        c = tap.tcp_open((PHONE, 40005), ("127.0.0.11", 9000), ts=T0 + 0.1)
        tap.tcp_data(c, True, encode_frame(6, 7), ts=T0 + 0.11)
        tap.tcp_data(c, False, encode_frame(6 + REPLY_OFFSET, 7), ts=T0 + 0.12)
        tap.tcp_close(c, True, ts=T0 + 0.13)
        tap.tcp_close(c, False, ts=T0 + 0.14)
    return path


def test_heuristic_finds_the_long_link_on_any_port(other_port):
    rows = fields(other_port, "tcp.dstport", "wechat_ll.cmd_name", "wechat_ll.seq",
                  filt="wechat_ll")
    assert rows == [["9000", "NOOP", "7"], ["40005", "NOOP", "7"]]
    assert len(fields(other_port, "http.request.uri", filt="http.request")) == 1


def test_port_preference(other_port):
    off = ("-o", "wechat_ll.heuristic:FALSE")
    assert fields(other_port, "frame.number", filt="wechat_ll", extra=off) == []
    rows = fields(other_port, "wechat_ll.cmd_name", "wechat_ll.seq", filt="wechat_ll",
                  extra=off + ("-o", "wechat_ll.port:9000"))
    assert rows == [["NOOP", "7"], ["NOOP", "7"]]
    # HTTP gets its port back when ours moves away
    assert len(fields(other_port, "http.request.uri", filt="http.request",
                      extra=off + ("-o", "wechat_ll.port:9000"))) == 1


def test_fields_and_protocol_registered():
    out = subprocess.run([TSHARK, "-G", "fields", "-X", f"lua_script:{LUA}"],
                         check=False, capture_output=True, text=True, timeout=120).stdout
    names = {ln.split("\t")[2] for ln in out.splitlines() if ln.startswith("F\t")}
    for f in ("packet_len", "header_len", "version", "cmd", "cmd_name", "is_reply",
              "request_cmd", "seq", "selector", "body", "msg_type"):
        assert f"wechat_ll.{f}" in names
    protos = subprocess.run([TSHARK, "-G", "protocols", "-X", f"lua_script:{LUA}"],
                            check=False, capture_output=True, text=True, timeout=120).stdout
    assert "WeChat 2013 long link\tWECHAT_LL\twechat_ll" in protos.splitlines()


# ---------------------------------------------------------------------- the demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The repo's demo session (`testbed demo`): ~10 s; its capture and its analysis."""
    out = tmp_path_factory.mktemp("demo")
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "demo", "--out", str(out)],
                       cwd=REPO, check=False, capture_output=True, text=True, timeout=240)
    path = out / "demo.pcapng"
    if not path.is_file():
        pytest.fail(f"demo wrote no capture (exit {p.returncode}): {p.stdout[-2000:]}"
                    f"{p.stderr[-2000:]}")
    from testbed.capture.analyze import analyze

    analysis = analyze(str(path))
    host = analysis.meta["manifest"]["hosts"]["long.weixin.qq.com"]
    return path, analysis, host


def test_demo_every_frame_known(demo):
    path, analysis, host = demo
    opts = ("-o", f"wechat_ll.port:{host['port']}")
    rows = fields(path, "frame.number", "wechat_ll.cmd_name", "wechat_ll.seq",
                  "wechat_ll.is_reply", filt="wechat_ll", extra=opts)
    assert rows
    known = {c.name for c in BY_CMD.values()}
    tshark_frames = []
    for r in rows:
        names = r[1].split("|")
        assert set(names) <= known, r
        tshark_frames += zip(names, map(int, r[2].split("|")), (x == "1" for x in r[3].split("|")))
    ours = [e for e in analysis.events if e.kind == "frame"]
    assert Counter((n, s, rep) for n, s, rep in tshark_frames) == \
        Counter((e.fields["name"], e.fields["seq"], e.fields["reply"]) for e in ours)
    sends = sum(1 for n, _, _ in tshark_frames if n == "NEWSENDMSG")
    assert sends > 0
    assert sends == sum(1 for e in ours if e.fields["name"] == "NEWSENDMSG")
    # every long-link payload segment is a frame or part of one
    addrs = " || ".join(f"ip.addr == {a}" for a in host["addresses"])
    # (two passes: only then do the earlier segments know where they were reassembled)
    loose = fields(path, "frame.number", extra=opts + ("-2",),
                   filt=f"({addrs}) && tcp.port == {host['port']} && tcp.len > 0 && "
                        "!wechat_ll && !tcp.reassembled_in")
    assert loose == []
    assert fields(path, "frame.number", filt="wechat_ll.unknown_cmd || "
                  "wechat_ll.violation.version || wechat_ll.violation.header_len || "
                  "wechat_ll.after_violation", extra=opts) == []


def test_demo_http_and_protobuf(demo):
    path, analysis, host = demo
    opts = ("-o", f"wechat_ll.port:{host['port']}")
    http = fields(path, "http.request.uri", filt="http.request", extra=opts)
    assert len(http) == sum(1 for e in analysis.events if e.kind == "http_request")
    rows = fields(path, "wechat_ll.msg_type", "protobuf.message.name", filt="wechat_ll.msg_type",
                  extra=opts, pb_opts=True)
    assert rows
    for r in rows:
        # each frame's message type is among the protobuf messages dissected in the packet
        assert set(r[0].split("|")) <= set(r[1].split("|")), r
    # (the synthetic JPEGs of the image CDN are malformed JPEG, with or without us)
    assert fields(path, "frame.number", filt="_ws.malformed && wechat_ll", extra=opts,
                  pb_opts=True) == []
    assert_no_lua_errors(path, pb_opts=True, extra=opts)
    contents = fields(path, "pbf.testbed.mm.MicroMsgRequest.content",
                      filt="pbf.testbed.mm.MicroMsgRequest.content", extra=opts, pb_opts=True)
    sent = [e.message() for e in analysis.events
            if e.kind == "frame" and e.fields["name"] == "NEWSENDMSG" and not e.fields["reply"]]
    assert sorted(r[0] for r in contents) == sorted(m.msgs[0].content for m in sent if m)


# ---------------------------------------------------------------------- installed
def test_personal_plugin_and_config_files(tmp_path, split):
    """As README.md says: the script in the personal Lua plugins folder, the search path
    in the personal `protobuf_search_paths` file, the Protobuf options in `preferences`;
    no command-line options at all."""
    home = tmp_path / "home"
    plugins = home / ".local" / "lib" / "wireshark" / "plugins"
    config = home / ".config" / "wireshark"
    plugins.mkdir(parents=True)
    config.mkdir(parents=True)
    (plugins / LUA.name).symlink_to(LUA)
    (config / "protobuf_search_paths").write_text(f'"{PROTO_DIR}","TRUE"\n')
    (config / "preferences").write_text("protobuf.pbf_as_hf: TRUE\n"
                                        "protobuf.preload_protos: TRUE\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CONFIG_HOME", "WIRESHARK_CONFIG_DIR")}
    env["HOME"] = str(home)
    p = subprocess.run([TSHARK, "-n", "-r", str(split), "-Y", "wechat_ll", "-T", "fields",
                        "-e", "wechat_ll.cmd_name", "-e", "wechat_ll.seq",
                        "-e", "pbf.testbed.mm.MicroMsgRequest.content"],
                       check=False, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert [ln.split("\t") for ln in p.stdout.splitlines()] == [
        ["NEWSENDMSG", "12", HELLO + "x" * SPLIT_PAD], ["NEWSENDMSG", "12", ""]]
