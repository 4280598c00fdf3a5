"""Protocol events: what a capture says happened, in the order it happened.

Every dissector turns bytes into `Event`s; the verifier, the report and `testbed analyze`
read nothing else. An event is small and plain: a kind (`Kind`), a time, the flow it belongs
to, the direction, a dict of fields (which fields each kind has: `FIELDS`), and for a
long-link frame or a CGI request or response the command-table row the dissector found for it
(`command`), so that decoding its body or replaying it needs no second lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from google.protobuf.message import DecodeError

from testbed.wire.choices import Choice
from testbed.wire.commands import Command, Door


class Kind(Choice, what="event kind"):
    """What an event is; its value is the string `analyze --json` writes."""

    DNS_QUERY = "dns_query"
    DNS_ANSWER = "dns_answer"
    TCP_SYN = "tcp_syn"
    TCP_SYNACK = "tcp_synack"
    TCP_FIN = "tcp_fin"
    TCP_RST = "tcp_rst"
    TLS_CLIENT_HELLO = "tls_client_hello"
    TLS_RECORD = "tls_record"
    HTTP_REQUEST = "http_request"
    HTTP_RESPONSE = "http_response"
    FRAME = "frame"              # a long-link frame


DNS_QUERY, DNS_ANSWER = Kind.DNS_QUERY, Kind.DNS_ANSWER
TCP_SYN, TCP_SYNACK, TCP_FIN, TCP_RST = Kind.TCP_SYN, Kind.TCP_SYNACK, Kind.TCP_FIN, Kind.TCP_RST
TLS_CLIENT_HELLO, TLS_RECORD = Kind.TLS_CLIENT_HELLO, Kind.TLS_RECORD
HTTP_REQUEST, HTTP_RESPONSE = Kind.HTTP_REQUEST, Kind.HTTP_RESPONSE
FRAME = Kind.FRAME

DIRECTIONS = ("c2s", "s2c")

_HTTP = {"headers": dict, "body_len": int, "body": bytes, "head_len": int,
         "cgi": str, "name": str}       # cgi and name: only for a path of the command table
_DNS = {"name": str, "qtype": int, "id": int}

#: The fields of each kind of event and their types. Some appear only where they apply:
#: `cgi`, `name` and `request_uri` on HTTP only for the command table's paths (and a
#: response only once its request was seen), a frame's `selector` only on a NOTIFY push.
FIELDS: dict[Kind, dict[str, type]] = {
    Kind.DNS_QUERY: _DNS,
    Kind.DNS_ANSWER: {**_DNS, "rcode": int, "addresses": list, "ttls": list, "cnames": list},
    Kind.TCP_SYN: {}, Kind.TCP_SYNACK: {}, Kind.TCP_FIN: {}, Kind.TCP_RST: {},
    Kind.TLS_CLIENT_HELLO: {"sni": str, "length": int},
    Kind.TLS_RECORD: {"content_type": int, "content_type_name": str, "length": int},
    Kind.HTTP_REQUEST: {"method": str, "uri": str, "version": str, "host": str, **_HTTP},
    Kind.HTTP_RESPONSE: {"status": int, "reason": str, "content_type": str,
                         "request_uri": str, **_HTTP},
    Kind.FRAME: {"cmd": int, "seq": int, "reply": bool, "push": bool, "noop": bool,
                 "name": str, "body_len": int, "body": bytes, "selector": int},
}


@dataclass(slots=True)
class Event:
    ts: float
    kind: Kind
    flow: Optional[int] = None          # flow id (TCP) or None (UDP)
    direction: str = ""                 # "c2s" or "s2c"
    src: tuple[str, int] = ("", 0)
    dst: tuple[str, int] = ("", 0)
    host: str = ""                      # the lab host name, where known
    fields: dict[str, Any] = field(default_factory=dict)
    index: int = 0                      # packet number (1-based) where it was seen
    command: Optional[Command] = None   # the command-table row of a frame or CGI message

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def door(self) -> Optional[Door]:
        """The door a message came through, where the capture shows it: the long link for a
        frame, the short link for a CGI request or response in clear. (What crosses the TLS
        door is encrypted: no event has that door.)"""
        if self.kind == Kind.FRAME:
            return Door.LONG
        if self.command is not None:
            return Door.SHORT
        return None

    def message(self):
        """The protobuf body decoded as its command's request or response (a long-link frame,
        or a CGI request or response); None when there is no such body or it does not
        decode."""
        command = self.command
        if command is None:
            return None
        f = self.fields
        if self.kind == Kind.FRAME:
            if f.get("push"):
                return None
            cls = command.response if f.get("reply") else command.request
        else:
            cls = command.response if self.kind == Kind.HTTP_RESPONSE else command.request
        body = f.get("body", b"")
        if cls is None or len(body) < f.get("body_len", len(body)):
            return None      # no body type, or the body was kept only in part
        try:
            return cls.FromString(body)
        except (DecodeError, ValueError):
            return None

    def to_dict(self, decode: bool = True) -> dict:
        """JSON-ready: bodies as their decoded protobuf (or their length)."""
        fields = {k: v for k, v in self.fields.items() if k != "body"}
        if decode:
            msg = self.message()
            if msg is not None:
                from google.protobuf.json_format import MessageToDict   # with the messages

                fields["message"] = MessageToDict(msg, preserving_proto_field_name=True)
        return {"ts": self.ts, "kind": str(self.kind), "label": self.label(), "flow": self.flow,
                "direction": self.direction, "src": f"{self.src[0]}:{self.src[1]}",
                "dst": f"{self.dst[0]}:{self.dst[1]}", "host": self.host,
                "packet": self.index, "fields": fields}

    def label(self) -> str:
        """A short human label: `POST /cgi-bin/micromsg-bin/newsync`, `NEWSENDMSG seq 12`."""
        f = self.fields
        if self.kind == FRAME:
            name = f.get("name", f"cmd {f.get('cmd')}")
            if f.get("push"):
                return f"{name} (push)"
            return f"{name}{' reply' if f.get('reply') else ''} seq {f.get('seq')}"
        if self.kind == HTTP_REQUEST:
            return f"{f.get('method')} {f.get('uri')}"
        if self.kind == HTTP_RESPONSE:
            return f"HTTP {f.get('status')} {f.get('content_type', '')}".strip()
        if self.kind == DNS_QUERY:
            return f"DNS query {f.get('name')}"
        if self.kind == DNS_ANSWER:
            n = len(f.get("addresses", ()))
            return f"DNS answer {f.get('name')} ({n} A)" if not f.get("rcode") else \
                f"DNS answer {f.get('name')} rcode {f.get('rcode')}"
        if self.kind == TLS_CLIENT_HELLO:
            return f"TLS ClientHello {f.get('sni', '')}".strip()
        if self.kind == TLS_RECORD:
            return f"TLS {f.get('content_type_name', 'record')}"
        return _TCP_LABELS.get(self.kind, self.kind)


_TCP_LABELS = {TCP_SYN: "SYN", TCP_SYNACK: "SYN-ACK", TCP_FIN: "FIN", TCP_RST: "RST"}
