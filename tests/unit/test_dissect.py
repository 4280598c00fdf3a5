"""Stream dissectors fed whole, byte by byte and split at every offset."""

from __future__ import annotations

import ssl
import struct

import pytest

from testbed.capture import events as ev
from testbed.capture.dissect import (HttpStream, LongLinkStream, TlsStream, classify,
                                     client_hello_sni, dns_events)
from testbed.wire import BY_NAME, dns, encode_frame, pb


def collect(stream_cls):
    """(kind, fields, command) for each message the stream reports."""
    out = []
    return out, stream_cls(lambda kind, ts, fields, command: out.append((kind, fields, command)))


REQ = (b"POST /cgi-bin/micromsg-bin/newsync HTTP/1.1\r\nHost: short.weixin.qq.com:8080\r\n"
       b"Content-Length: 5\r\n\r\nhello"
       b"GET /mmhead/abc/96 HTTP/1.1\r\nHost: wx.qlogo.cn\r\n\r\n"
       b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\nuntil-close")


def run_http(splits):
    out, s = collect(HttpStream)
    for direction, data in (("c2s", REQ), ("s2c", RESP)):
        pos = 0
        for cut in splits(len(data)):
            s.data(direction, 1.0, data[pos:cut])
            pos = cut
        s.data(direction, 1.0, data[pos:])
    s.close()
    return out


@pytest.mark.parametrize("how", ["whole", "bytewise", "every-offset"])
def test_http_requests_and_responses(how):
    if how == "every-offset":
        results = [run_http(lambda n, k=k: [min(k, n)]) for k in range(0, len(RESP) + 1, 7)]
        assert all(r == results[0] for r in results)
        out = results[0]
    else:
        out = run_http((lambda n: []) if how == "whole" else (lambda n: range(1, n)))
    reqs = [f for k, f, _ in out if k == ev.HTTP_REQUEST]
    resps = [f for k, f, _ in out if k == ev.HTTP_RESPONSE]
    # the command-table row of a CGI path travels with the request and with its response
    assert [c for _, _, c in out] == [BY_NAME["NEWSYNC"], None, None,
                                      BY_NAME["NEWSYNC"], None, None, None]
    assert [(r["method"], r["uri"]) for r in reqs] == [
        ("POST", "/cgi-bin/micromsg-bin/newsync"), ("GET", "/mmhead/abc/96"), ("HEAD", "/x")]
    assert reqs[0]["body"] == b"hello" and reqs[0]["cgi"] == "newsync"
    assert [r["status"] for r in resps] == [200, 304, 200, 200]
    assert resps[0]["body"] == b"abcde" and resps[0]["cgi"] == "newsync"
    assert resps[1]["body_len"] == 0
    assert resps[2]["body_len"] == 0          # the answer to HEAD carries no body
    assert resps[3]["body"] == b"until-close"  # delimited by the end of the flow


def test_http_garbage_is_not_fatal():
    out, s = collect(HttpStream)
    s.data("c2s", 0, b"NOT HTTP AT ALL\r\n\r\n" + b"x" * 100)
    s.data("s2c", 0, b"\x00" * 70_000)
    s.close()
    assert out == []


def test_tls_client_hello_sni_split_anywhere():
    ctx = ssl.create_default_context()
    inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outb, server_hostname="short.weixin.qq.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outb.read()
    assert client_hello_sni(hello) == "short.weixin.qq.com"
    assert classify(hello[:16]) == "tls"
    for cut in range(1, len(hello), 13):
        out, s = collect(TlsStream)
        s.data("c2s", 0, hello[:cut])
        s.data("c2s", 0, hello[cut:] + b"\x17\x03\x03\x00\x05" + b"abcde")
        assert [(k, c) for k, _, c in out] == [(ev.TLS_CLIENT_HELLO, None),
                                                (ev.TLS_RECORD, None)]
        assert out[0][1]["sni"] == "short.weixin.qq.com"
    assert client_hello_sni(b"\x16\x03\x01\x00\x05\x01\x00") is None   # truncated: no crash


def test_long_link_frames_and_violation():
    body = pb.NewSendMsgRequest(msgs=[pb.MicroMsgRequest(content="你好")]).SerializeToString()
    stream = (encode_frame(237, 7, body) + encode_frame(6, 8) +
              struct.pack(">IHHII", 16, 16, 2, 6, 9))          # version 2: a violation
    assert classify(stream[:16]) == "longlink"
    for cut in range(len(stream) + 1):
        out, s = collect(LongLinkStream)
        s.data("c2s", 0, stream[:cut])
        s.data("c2s", 0, stream[cut:])
        assert [(f["name"], f["seq"]) for _, f, _ in out] == [("NEWSENDMSG", 7), ("NOOP", 8)]
        assert [c for _, _, c in out] == [BY_NAME["NEWSENDMSG"], BY_NAME["NOOP"]]
        assert s.violation and "version" in s.violation
    out, s = collect(LongLinkStream)
    s.data("s2c", 0, encode_frame(24, 0, b"\x00\x00\x00\x01"))
    s.data("s2c", 0, encode_frame(999 + 1_000_000_000, 3))
    assert out[0][1]["push"] and out[0][1]["selector"] == 1 and out[0][2] is BY_NAME["NOTIFY"]
    assert out[1][1]["name"] == "cmd 1000000999" and out[1][2] is None   # not in the table



def test_long_link_counts_without_events_are_the_counts_with_them():
    """Without events a segment of one whole frame is read from its header: the requests,
    NOOP times and violation are what the decoder finds, however the bytes are cut."""
    frames = [encode_frame(6, 1), encode_frame(237, 2, b"x" * 40),
              encode_frame(6 + 1_000_000_000, 1), encode_frame(6, 3), struct.pack(">IHHII", 16, 16, 2, 6, 9), encode_frame(6, 4)]
    for cuts in ([], [3], [16, 17], [20, 60, 61]):
        whole = b"".join(frames)
        pieces = [whole[a:b] for a, b in zip([0] + cuts, cuts + [len(whole)])] if cuts \
            else frames
        streams = [LongLinkStream(), collect(LongLinkStream)[1]]
        for i, piece in enumerate(pieces):
            for st in streams:
                st.data("c2s", float(i), piece)
        counted, full = streams
        assert (counted.requests, counted.noop_ts, counted.violation) == \
            (full.requests, full.noop_ts, full.violation)
        assert full.requests == 3 and len(full.noop_ts) == 2 and "version" in full.violation


def test_classify_and_dns():
    assert classify(b"\x16\xf1\x04\x00" + b"\x00" * 20) == "unknown"    # MMTLS
    assert classify(b"PO") is None and classify(b"GET /") == "http"
    q = dns.build_query("long.weixin.qq.com", 9)
    assert dns_events(q) == (ev.DNS_QUERY, {"name": "long.weixin.qq.com", "qtype": 1, "id": 9})
    a = dns.build_response(dns.parse_query(q), ["127.0.0.11", "127.0.0.12"])
    kind, fields = dns_events(a)
    assert kind == ev.DNS_ANSWER and fields["addresses"] == ["127.0.0.11", "127.0.0.12"]
    assert dns_events(b"\xff" * 7) is None


def test_http_interim_trailers_no_body_and_cut_short():
    """A request is reported once its body is in (after the 100 Continue that asked for the
    body), with the time of its head; chunked trailers; 204 has no body even with
    bytes after it; HTTP/1.0 and `Connection: close` do not stop the next message being
    read; a body the close cuts short is not reported."""
    out, times = [], []

    def emit(kind, ts, fields, command):
        out.append((kind, fields, command))
        times.append(ts)
    s = HttpStream(emit)
    s.data("c2s", 1.0, b"POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 3\r\n\r\n")
    s.data("s2c", 2.0, b"HTTP/1.1 100 Continue\r\n\r\n")
    s.data("c2s", 3.0, b"abc" + b"GET /b HTTP/1.0\r\nConnection: close\r\n\r\n"
                       b"DELETE /c HTTP/1.1\r\nHost: h\r\n\r\n"
                       b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n")
    s.data("s2c", 4.0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"2\r\nxy\r\n0\r\nX-Trailer: 1\r\n\r\n"
                       b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                       b"HTTP/1.1 204 No Content\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    s.close()
    reqs = [(f["method"], f["uri"], f["body"]) for k, f, _ in out if k == ev.HTTP_REQUEST]
    assert reqs == [("POST", "/a", b"abc"), ("GET", "/b", b""), ("DELETE", "/c", b""),
                    ("GET", "/d", b"")]
    resps = [(f["status"], f.get("request_uri"), f["body"], f["head_len"])
             for k, f, _ in out if k == ev.HTTP_RESPONSE]
    assert resps == [(100, None, b"", 25), (200, "/a", b"xy", 47), (200, "/b", b"ok", 57),
                     (204, "/c", b"", 27)]          # /d's answer was cut short by the close
    assert times == [2.0, 1.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0]


def test_http_head_too_long_stops_that_direction_only():
    out, s = collect(HttpStream)
    s.data("c2s", 0, b"GET /x HTTP/1.1\r\nHost: h\r\nX-Long: " + b"a" * 70_000)
    s.data("c2s", 0, b"\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    s.data("s2c", 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [(k, f.get("uri"), f.get("request_uri")) for k, f, _ in out] == [
        (ev.HTTP_RESPONSE, None, None)]
