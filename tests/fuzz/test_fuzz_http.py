"""Every CGI at the HTTP level: request lines, headers and bodies built from the pieces an
attacker varies (methods, paths, versions, framings that lie, control characters), some
bytes then changed. The short link answers 200 with a response that decodes, or a 4xx, or
closes: never a 5xx, never a fault."""

from __future__ import annotations

from hypothesis import event, given
from hypothesis import strategies as st

from testbed.lab.addressing import SHORT
from testbed.wire import BY_PATH

from ..fuzzing import budget
from .protobuf import bodies
from .test_fuzz_requests import check_answer
from .wire import http

# a request cut short over TLS waits for the head (or body) deadline: keep them short; the
# handshake keeps the profile's (a fuzz client always finishes it)
LAB_LIMITS = dict(request_head_wall_s=0.5, body_grace_wall_s=0.5, drain_wall_s=0.3,
                  tls_close_wall_s=0.3)
PATHS = sorted(BY_PATH)
METHODS = ["POST", "GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PRI", "post", "CONNECT"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "", "HTTP/2.0", "HTTP/1.x", "HTTP/01.1", "http/1.1"]
TOKENS = st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=12)


@st.composite
def requests(draw) -> tuple[bytes, str]:
    path = draw(st.one_of(st.sampled_from(PATHS),
                          st.sampled_from(PATHS).map(lambda p: p + draw(TOKENS)),
                          TOKENS.map(lambda t: "/" + t)))
    command = BY_PATH.get(path)
    body = draw(bodies(command.request)) if command else draw(st.binary(max_size=100))
    method = draw(st.one_of(st.sampled_from(METHODS), TOKENS))
    version = draw(st.sampled_from(VERSIONS))
    head = [f"{method} {path} {version}".rstrip()]
    if draw(st.integers(0, 9)):   # a Host header, mostly
        head.append(f"Host: {draw(st.sampled_from([SHORT, '', 'x' * 300]))}")
    framing = draw(st.sampled_from(["length", "wrong length", "chunked", "bad chunks",
                                    "both", "none"]))
    event(f"framing: {framing}")
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
    elif framing == "wrong length":
        lie = draw(st.sampled_from(["-1", "abc", "1e3", "9" * 30, str(len(body) + 5), " 1",
                                    "0x10"]))
        head.append(f"Content-Length: {lie}")
    elif framing in ("chunked", "bad chunks", "both"):
        head.append("Transfer-Encoding: chunked")
        if framing == "both":
            head.append(f"Content-Length: {len(body)}")
        size = f"{len(body):x}" if framing != "bad chunks" else draw(
            st.sampled_from(["zz", "-1", "1" * 40, f"{len(body) + 3:x}", ""]))
        body = f"{size}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    for name, value in draw(st.lists(st.tuples(TOKENS, TOKENS), max_size=4)):
        head.append(f"{name}: {value}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    if draw(st.booleans()):   # and a few bytes changed anywhere
        buf = bytearray(raw)
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(buf) - 1),
                                                st.integers(0, 255)), max_size=3)):
            buf[pos] = val
        raw = bytes(buf)
    return raw, path


@budget(2)
@given(req=requests(), tls=st.integers(0, 7))
def test_every_cgi_over_http(fuzz_lab, req, tls):
    raw, path = req
    # plain HTTP ends our side after the request, so one cut short ends at once; over TLS
    # (one in eight) it ends at the lab's short deadlines
    resp = http(fuzz_lab.manifest, raw, tls=tls == 0, half_close=True)
    if not resp:
        event("closed")
        return
    line = resp.split(b"\r\n", 1)[0]
    assert line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), resp[:100]
    status = int(line.split(b" ", 2)[1])
    event(f"status {status}")
    assert status == 200 or 400 <= status < 500 or status == 505, resp[:300]
    if status == 200:
        check_answer(BY_PATH[path], resp.partition(b"\r\n\r\n")[2])
