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

import struct
from typing import Callable, Optional

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
class HttpDirection:
    """An incremental, lenient HTTP/1.x message reader for one direction.

    Not h11: a reader on h11 (two connections per flow, the request side telling the
    response side each method) gave the very same events on every capture the tests and
    benchmarks read, but took ~140 us per request and response against ~12 us here, and
    analyze() of the benchmark's lab-protocol capture 2.5 times as long; the issue that asked
    for it allowed 10% (the commit "HTTP dissection on h11" has it, tests/unit/test_dissect.py
    the cases it settled: 1xx, 204/304, HEAD, chunked with trailers, close-delimited
    bodies)."""

    def __init__(self, is_request: bool, body_limit: int = BODY_KEEP) -> None:
        self.is_request = is_request
        self.body_limit = body_limit
        self.buf = bytearray()
        self.state = "head"
        self.msg: Optional[dict] = None
        self.remaining = 0
        self.body = bytearray()
        self.body_len = 0
        self.chunked = False
        self.broken = False
        self.ts = 0.0
        self.no_body_next: list[bool] = []   # responses to HEAD carry no body

    def feed(self, ts: float, data: bytes) -> list[dict]:
        out: list[dict] = []
        if self.broken:
            return out
        self.buf += data
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > HEADER_LIMIT:
                        self.broken = True
                    return out
                head = bytes(self.buf[:end])
                del self.buf[:end + 4]
                self.ts = ts
                msg = self._parse_head(head)
                if msg is None:
                    self.broken = True
                    return out
                msg["head_len"] = end + 4
                self.msg = msg
                self.body = bytearray()
                self.body_len = 0
                te = msg["headers"].get("transfer-encoding", "").lower()
                cl = msg["headers"].get("content-length")
                self.chunked = "chunked" in te
                status = msg.get("status", 0)
                # one entry per request, taken for every response, so they stay paired
                interim = 100 <= status < 200 and status != 101   # 100 Continue: more to come
                head_reply = (not self.is_request and not interim and bool(self.no_body_next)
                              and self.no_body_next.pop(0))
                no_body = not self.is_request and (100 <= status < 200 or
                                                   status in (204, 304) or head_reply)
                if self.chunked and not no_body:
                    self.state = "chunk-size"
                elif cl is not None and cl.strip().isdigit() and not no_body:
                    self.remaining = int(cl)
                    self.state = "body" if self.remaining else "done"
                elif self.is_request or no_body:
                    self.state = "done"
                else:
                    self.remaining = -1     # until the connection closes
                    self.state = "body"
            if self.state == "body":
                if self.remaining < 0:
                    self._take(bytes(self.buf))
                    self.buf.clear()
                    return out
                if not self._consume():
                    return out
                self.state = "done"
            if self.state == "chunk-size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return out
                size_text = bytes(self.buf[:end]).split(b";")[0].strip()
                del self.buf[:end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self.broken = True
                    return out
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size
                    self.state = "chunk"
            if self.state == "chunk":
                if not self._consume():
                    return out
                self.state = "chunk-end"
            if self.state == "chunk-end":
                if len(self.buf) < 2:
                    return out
                del self.buf[:2]
                self.state = "chunk-size"
                continue
            if self.state == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return out
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                if line:
                    continue
                self.state = "done"
            if self.state == "done":
                out.append(self._finish())
                self.state = "head"
                if not self.buf:
                    return out

    def close(self) -> list[dict]:
        """At the end of the flow: a body delimited by the close is complete now."""
        if self.state == "body" and self.remaining < 0 and self.msg is not None:
            self.state = "head"
            return [self._finish()]
        return []

    def _consume(self) -> bool:
        """Take up to `remaining` body bytes from the buffer; True once all have come."""
        n = min(self.remaining, len(self.buf))
        self._take(bytes(self.buf[:n]))
        del self.buf[:n]
        self.remaining -= n
        return not self.remaining

    def _take(self, data: bytes) -> None:
        self.body_len += len(data)
        room = self.body_limit - len(self.body)
        if room > 0:
            self.body += data[:room]

    def _finish(self) -> dict:
        msg = self.msg
        msg["body"] = bytes(self.body)
        msg["body_len"] = self.body_len
        msg["ts"] = self.ts
        self.msg = None
        return msg

    def _parse_head(self, head: bytes) -> Optional[dict]:
        lines = head.split(b"\r\n")
        try:
            start = lines[0].decode("latin-1")
        except Exception:  # noqa: BLE001
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        parts = start.split(" ", 2)
        if self.is_request:
            if len(parts) < 3 or not parts[2].startswith("HTTP/"):
                return None
            return {"method": parts[0], "uri": parts[1], "version": parts[2], "headers": headers}
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return None
        return {"version": parts[0], "status": int(parts[1]),
                "reason": parts[2] if len(parts) > 2 else "", "headers": headers}


class HttpStream:
    def __init__(self, emit_fields: EmitFields, body_limit: int = BODY_KEEP) -> None:
        self.emit = emit_fields
        self.req = HttpDirection(True, body_limit)
        self.resp = HttpDirection(False, body_limit)
        # requests awaiting their response, with their command-table row
        self.pending: list[tuple[dict, Optional[Command]]] = []
        self.requests = 0

    def data(self, direction: str, ts: float, data: bytes) -> None:
        if direction == "c2s":
            for msg in self.req.feed(ts, data):
                self._request(msg)
        else:
            for msg in self.resp.feed(ts, data):
                self._response(msg)

    def close(self) -> None:
        for msg in self.resp.close():
            self._response(msg)

    def _request(self, msg: dict) -> None:
        self.requests += 1
        command = BY_PATH.get(msg["uri"].split("?", 1)[0])
        self.pending.append((msg, command))
        self.resp.no_body_next.append(msg["method"] == "HEAD")
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

    # slots: thousands of these are each touched by a few segments in turn, and an object
    # without a __dict__ is fewer cache lines to fetch
    __slots__ = ("emit", "body_limit", "dec", "violation", "requests", "noop_ts")

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
        if self.emit is None:
            # One whole frame in the segment, as a phone sends them, and only counts wanted:
            # its header says all (the decoder would copy the body into a Frame)
            cmd = dec.whole_frame(data)
            if cmd is not None:
                if cmd < REPLY_OFFSET and direction == "c2s":
                    self.requests += 1
                    if cmd == NOOP_CMD:
                        self.noop_ts.append(ts)
                return
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
    # imported with the first DNS message: dpkt loads every protocol it knows (a third of
    # the start-up of `testbed analyze`), and a capture of TCP alone needs none of it
    import ipaddress

    import dpkt

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
