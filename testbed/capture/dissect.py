"""Dissectors: in-order stream bytes (from flow reassembly) and UDP payloads into events.

A TCP flow is classified by its first bytes: TLS (a handshake record 0x16 0x03), HTTP (a
request method), the lab's long link (a 16-byte header with header_len 16 and version 1), or
unknown (for example the real client's MMTLS, 0x16 0xf1). Each dissector is incremental and
bounded: a message body is kept only up to `body_limit` bytes (`BODY_KEEP` for display and
decoding; the replayer asks for whole bodies, up to the profile's maximum packet length). A stream reports each message
as `emit(kind, ts, fields, command)`, `command` being the command-table row it found (a
frame's cmd, a CGI path) or None.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from typing import Callable, Optional

import dpkt
import h11

from testbed.wire import FrameDecoder, RemoteProtocolError
from testbed.wire.commands import BY_PATH, NOOP_CMD, Command, command_for_frame, is_push
from testbed.wire.frames import REPLY_OFFSET, is_reply, request_cmd

from . import events as ev
from .events import Kind

BODY_KEEP = 64 * 1024          # bytes of a body kept for decoding and display
HEADER_LIMIT = 64 * 1024       # an HTTP head longer than this is not HTTP we can read
METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
           b"CONNECT ", b"TRACE ")
TLS_CONTENT = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "Application Data"}

#: how a stream reports a message: kind, time, fields and the command-table row (if any)
EmitFields = Callable[[Kind, float, dict, Optional[Command]], None]


def classify(head: bytes) -> Optional[str]:
    """The app of a flow from its first bytes; None while too few bytes are in."""
    if len(head) >= 2 and head[0] == 0x16 and head[1] == 0x03:
        return "tls"
    if head.startswith(METHODS) or head.startswith(b"HTTP/1."):
        return "http"
    if len(head) < 16:
        if any(m.startswith(head) for m in METHODS) or (head and head[0] in (0, 0x16)):
            return None
        return "unknown"
    plen, hlen, ver = struct.unpack_from(">IHH", head)
    if hlen == 16 and ver == 1 and plen >= 16:
        return "longlink"
    return "unknown"


# ---------------------------------------------------------------------- TLS
def client_hello_sni(record: bytes) -> Optional[str]:
    """SNI from a TLS record holding a ClientHello; None if absent or malformed."""
    try:
        if len(record) < 9 or record[0] != 0x16 or record[5] != 1:
            return None
        p = 9 + 2 + 32                       # record(5) + hs header(4), version, random
        sid_len = record[p]
        p += 1 + sid_len
        cs_len = struct.unpack_from(">H", record, p)[0]
        p += 2 + cs_len
        cm_len = record[p]
        p += 1 + cm_len
        ext_total = struct.unpack_from(">H", record, p)[0]
        p += 2
        end = min(len(record), p + ext_total)
        while p + 4 <= end:
            etype, elen = struct.unpack_from(">HH", record, p)
            p += 4
            if etype == 0:                   # server_name
                q = p + 2
                while q + 3 <= p + elen:
                    ntype, nlen = record[q], struct.unpack_from(">H", record, q + 1)[0]
                    if ntype == 0:
                        return record[q + 3:q + 3 + nlen].decode("ascii", "replace")
                    q += 3 + nlen
            p += elen
    except (IndexError, struct.error):
        return None
    return None


class TlsStream:
    """Reads TLS record headers; the first client record's ClientHello gives the SNI.

    Record bodies are skipped as they stream by (only a ClientHello is buffered whole), so
    memory stays at one record header per direction."""

    def __init__(self, emit_fields: EmitFields) -> None:
        self.emit = emit_fields
        self.buf = {"c2s": bytearray(), "s2c": bytearray()}
        self.skip = {"c2s": 0, "s2c": 0}
        self.hello_done = False

    def data(self, direction: str, ts: float, data: bytes) -> None:
        if self.skip[direction]:
            n = min(self.skip[direction], len(data))
            self.skip[direction] -= n
            data = data[n:]
            if not data:
                return
        buf = self.buf[direction]
        buf += data
        while len(buf) >= 5:
            ctype, _ver, length = struct.unpack_from(">BHH", buf)
            hello = ctype == 22 and direction == "c2s" and not self.hello_done
            if hello and len(buf) < 5 + length and length <= HEADER_LIMIT:
                return                      # wait for the whole ClientHello
            if hello:
                self.hello_done = True
                self.emit(ev.TLS_CLIENT_HELLO, ts, {
                    "sni": client_hello_sni(bytes(buf[:5 + length])) or "", "length": length},
                    None)
            else:
                self.emit(ev.TLS_RECORD, ts, {
                    "content_type": ctype, "content_type_name": TLS_CONTENT.get(ctype, "?"),
                    "length": length}, None)
            take = min(len(buf), 5 + length)
            self.skip[direction] = 5 + length - take
            del buf[:take]


# ---------------------------------------------------------------------- HTTP
class HttpReader:
    """The HTTP/1.x messages of one direction, read by h11 (framing by Content-Length,
    chunks and trailers, or the close; 1xx, 204 and 304 without a body).

    The requests are read by an h11 connection in the server's role; the responses by one
    in the client's role, told before each response which request it answers (`method`:
    a HEAD's answer has no body, a CONNECT's 2xx ends HTTP on the flow). Each message is
    read by a connection of its own, so a message that h11 would not let a connection go on
    after (`Connection: close`, HTTP/1.0) does not stop the reading of the next. A message
    h11 refuses stops its direction (`broken`). Each message is a dict: the start line's
    parts, `headers` (lower-case names, the last value of a repeated one), `head_len` (the
    bytes of the head), `body` (its first `body_limit` bytes), `body_len`, `ts` (the time
    of the data that completed its head)."""

    def __init__(self, is_request: bool, body_limit: int = BODY_KEEP) -> None:
        self.is_request = is_request
        self.body_limit = body_limit
        self.broken = False
        self.conn: Optional[h11.Connection] = None   # reading the current message
        self.buffered = 0            # bytes the connection holds while it reads a head
        self.msg: Optional[dict] = None
        self.body = bytearray()

    def _start(self, method: Optional[Callable[[], str]]) -> h11.Connection:
        if self.is_request:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEADER_LIMIT)
        else:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIMIT)
            # the request this response answers, as far as its framing depends on it
            conn.send(h11.Request(method=method() if method else "GET", target="/",
                                  headers=[("Host", "-")]))
            conn.send(h11.EndOfMessage())
        self.conn = conn
        return conn

    def feed(self, ts: float, data: bytes,
             method: Optional[Callable[[], str]] = None) -> list[dict]:
        """The messages `data` completes; `method()` names the request the next response
        answers (responses only; "GET" when none is known)."""
        out: list[dict] = []
        if self.broken or not data:      # (no data would tell h11 the flow has closed)
            return out
        try:
            self._read(ts, data, method, out)
        except (h11.RemoteProtocolError, h11.LocalProtocolError):
            self.broken = True
            self.conn = None
        return out

    def close(self) -> list[dict]:
        """At the end of the flow: a body delimited by the close is complete now."""
        if self.broken or self.conn is None or self.msg is None:
            return []
        out: list[dict] = []
        try:
            self._read(0.0, b"", None, out, closing=True)
        except (h11.RemoteProtocolError, h11.LocalProtocolError):
            return []      # a message cut short by the close is not reported
        finally:
            self.broken = True
        return out

    def _read(self, ts: float, data: bytes, method, out: list, closing: bool = False) -> None:
        # `closing`: `data` is b"", the end of the flow (h11's end of input)
        conn = self.conn
        if conn is None:
            if not data:
                return
            conn = self._start(method)
            self.buffered = 0
        conn.receive_data(data)
        if self.msg is None:
            self.buffered += len(data)
        while True:
            event = conn.next_event()
            kind = type(event)
            if kind is h11.Data:
                self.msg["body_len"] += len(event.data)
                room = self.body_limit - len(self.body)
                if room > 0:
                    self.body += event.data[:room]
            elif kind is h11.Request or kind is h11.Response \
                    or kind is h11.InformationalResponse:
                msg = self._head(event)
                msg["head_len"] = self.buffered - len(conn.trailing_data[0])
                msg["ts"] = ts
                if kind is h11.InformationalResponse:      # 1xx: the answer is yet to come
                    self.buffered -= msg["head_len"]
                    out.append(msg)
                    continue
                self.msg = msg
                self.body = bytearray()
                if conn.their_state is h11.SWITCHED_PROTOCOL:   # a CONNECT's tunnel
                    out.append(self._finish())
                    self.broken = True
                    return
            elif kind is h11.EndOfMessage:
                out.append(self._finish())
                rest = conn.trailing_data[0]
                self.conn = None
                if not rest or closing:
                    return
                conn = self._start(method)
                conn.receive_data(rest)
                self.buffered = len(rest)
            elif event is h11.NEED_DATA:
                return
            else:                       # PAUSED (an upgrade) or closed: HTTP ends here
                self.broken = True
                return

    def _head(self, event) -> dict:
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in event.headers}
        version = "HTTP/" + event.http_version.decode("latin-1")
        if self.is_request:
            return {"method": event.method.decode("latin-1"),
                    "uri": event.target.decode("latin-1"), "version": version,
                    "headers": headers, "body_len": 0}
        return {"version": version, "status": event.status_code,
                "reason": event.reason.decode("latin-1"), "headers": headers, "body_len": 0,
                "body": b""}

    def _finish(self) -> dict:
        msg = self.msg
        msg["body"] = bytes(self.body)
        self.msg = None
        self.body = bytearray()
        return msg


class HttpStream:
    """The HTTP of one flow: requests from the client, responses from the server, each
    response paired with the oldest request still waiting (an interim 1xx leaves it
    waiting)."""

    def __init__(self, emit_fields: EmitFields, body_limit: int = BODY_KEEP) -> None:
        self.emit = emit_fields
        self.req = HttpReader(True, body_limit)
        self.resp = HttpReader(False, body_limit)
        # requests awaiting their response, with their command-table row
        self.pending: list[tuple[dict, Optional[Command]]] = []
        # the methods of the requests whose responses have not begun, for their framing
        self.methods: deque[str] = deque()
        self.requests = 0

    def data(self, direction: str, ts: float, data: bytes) -> None:
        if direction == "c2s":
            for msg in self.req.feed(ts, data):
                self._request(msg)
        else:
            for msg in self.resp.feed(ts, data, self._next_method):
                self._response(msg)

    def _next_method(self) -> str:
        return self.methods.popleft() if self.methods else "GET"

    def close(self) -> None:
        for msg in self.resp.close():
            self._response(msg)

    def _request(self, msg: dict) -> None:
        self.requests += 1
        command = BY_PATH.get(msg["uri"].split("?", 1)[0])
        self.pending.append((msg, command))
        self.methods.append(msg["method"])
        fields = {"method": msg["method"], "uri": msg["uri"], "version": msg["version"],
                  "headers": msg["headers"], "host": msg["headers"].get("host", ""),
                  "body_len": msg["body_len"], "body": msg["body"],
                  "head_len": msg["head_len"]}
        if command is not None:
            fields["cgi"] = command.cgi
            fields["name"] = command.name
        self.emit(ev.HTTP_REQUEST, msg["ts"], fields, command)

    def _response(self, msg: dict) -> None:
        interim = 100 <= msg["status"] < 200 and msg["status"] != 101
        if not self.pending:
            req, command = None, None
        else:   # an interim answer (100 Continue) leaves its request waiting for the real one
            req, command = self.pending[0] if interim else self.pending.pop(0)
        fields = {"status": msg["status"], "reason": msg["reason"], "headers": msg["headers"],
                  "content_type": msg["headers"].get("content-type", ""),
                  "body_len": msg["body_len"], "body": msg["body"], "head_len": msg["head_len"]}
        if req is not None:
            fields["request_uri"] = req["uri"]
            if command is not None:
                fields["cgi"] = command.cgi
                fields["name"] = command.name
        self.emit(ev.HTTP_RESPONSE, msg["ts"], fields, command)


# ---------------------------------------------------------------------- long link
class LongLinkStream:
    """Frames each way with the sans-I/O decoder; names from the command table.

    What a flow's summary needs is kept here whether or not events are wanted: `requests`
    (the client's frames that are not replies), `noop_ts` (when the client sent each NOOP)
    and `violation`. With `emit_fields` None no event is made (the hot path of a capture
    of many long links, analysed for its summary only)."""

    def __init__(self, emit_fields: Optional[EmitFields] = None,
                 body_limit: int = BODY_KEEP) -> None:
        self.emit = emit_fields
        self.body_limit = body_limit
        self.dec = {"c2s": FrameDecoder(), "s2c": FrameDecoder()}
        self.violation: Optional[str] = None
        self.requests = 0
        self.noop_ts: list[float] = []

    def data(self, direction: str, ts: float, data: bytes) -> None:
        dec = self.dec[direction]
        if dec.error is not None:
            return
        try:
            frames = dec.receive_data(data)
        except RemoteProtocolError as exc:
            self.violation = str(exc)
            return
        c2s = direction == "c2s"
        emit = self.emit
        for cmd, seq, body in frames:
            if c2s and cmd < REPLY_OFFSET:
                self.requests += 1
                if cmd == NOOP_CMD:
                    self.noop_ts.append(ts)
            if emit is None:
                continue
            command = command_for_frame(cmd)
            reply = is_reply(cmd)
            push = is_push(cmd, seq) and not c2s
            fields = {"cmd": cmd, "seq": seq, "reply": reply, "push": push,
                      "name": command.name if command else f"cmd {cmd}",
                      "body_len": len(body), "body": body[:self.body_limit],
                      "noop": request_cmd(cmd) == NOOP_CMD}
            if push and len(body) == 4:
                fields["selector"] = int.from_bytes(body, "big")
            emit(ev.FRAME, ts, fields, command)
        if dec.error is not None:
            self.violation = str(dec.error)


# ---------------------------------------------------------------------- DNS
def dns_events(payload: bytes) -> Optional[tuple[Kind, dict]]:
    """(kind, fields) for a DNS message, or None if it does not parse."""
    try:
        msg = dpkt.dns.DNS(payload)
    except Exception:  # noqa: BLE001 - any malformed datagram is simply not DNS to us
        return None
    if not msg.qd:
        return None
    q = msg.qd[0]
    name = q.name.rstrip(".").lower()
    if msg.qr == dpkt.dns.DNS_Q:
        return ev.DNS_QUERY, {"name": name, "qtype": q.type, "id": msg.id}
    addresses, ttls, cnames = [], [], []
    for rr in msg.an:
        try:
            if rr.type == dpkt.dns.DNS_A and len(rr.rdata) == 4:
                addresses.append(str(ipaddress.IPv4Address(rr.rdata)))
                ttls.append(rr.ttl)
            elif rr.type == dpkt.dns.DNS_CNAME:
                cnames.append(getattr(rr, "cname", ""))
        except Exception:  # noqa: BLE001
            continue
    return ev.DNS_ANSWER, {"name": name, "qtype": q.type, "id": msg.id, "rcode": msg.rcode,
                           "addresses": addresses, "ttls": ttls, "cnames": cnames}
