"""Protocol events: what a capture says happened, in the order it happened.

Every dissector turns bytes into `Event`s; the verifier, the report and `testbed analyze`
read nothing else. An event is small and plain: a kind, a time, the flow it belongs to, the
direction, and a dict of fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# kinds
DNS_QUERY = "dns_query"
DNS_ANSWER = "dns_answer"
TCP_SYN = "tcp_syn"
TCP_SYNACK = "tcp_synack"
TCP_ACK = "tcp_handshake_ack"
TCP_FIN = "tcp_fin"
TCP_RST = "tcp_rst"
TLS_CLIENT_HELLO = "tls_client_hello"
TLS_RECORD = "tls_record"
HTTP_REQUEST = "http_request"
HTTP_RESPONSE = "http_response"
FRAME = "frame"              # a long-link frame
KEEPALIVE = "tcp_keepalive"


@dataclass
class Event:
    ts: float
    kind: str
    flow: Optional[int] = None          # flow id (TCP) or None (UDP)
    direction: str = ""                 # "c2s" or "s2c"
    src: tuple[str, int] = ("", 0)
    dst: tuple[str, int] = ("", 0)
    host: str = ""                      # the lab host name, where known
    fields: dict[str, Any] = field(default_factory=dict)
    index: int = 0                      # packet number (1-based) where it was seen

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def message(self):
        """The protobuf body decoded with the command table (a long-link frame, or a CGI
        request or response); None when there is no such body or it does not decode."""
        from google.protobuf.message import DecodeError

        from testbed.wire.commands import BY_CGI, command_for_frame

        f = self.fields
        command, reply = None, False
        if self.kind == FRAME:
            if f.get("push"):
                return None
            command, reply = command_for_frame(f.get("cmd", 0)), bool(f.get("reply"))
        elif self.kind in (HTTP_REQUEST, HTTP_RESPONSE) and f.get("cgi"):
            command, reply = BY_CGI.get(f["cgi"]), self.kind == HTTP_RESPONSE
        if command is None:
            return None
        cls = command.response if reply else command.request
        body = f.get("body", b"")
        if cls is None or len(body) < f.get("body_len", len(body)):
            return None      # no body type, or the body was kept only in part
        try:
            return cls.FromString(body)
        except (DecodeError, ValueError):
            return None

    def to_dict(self, decode: bool = True) -> dict:
        """JSON-ready: bodies as their decoded protobuf (or their length)."""
        from google.protobuf.json_format import MessageToDict

        fields = {k: v for k, v in self.fields.items() if k != "body"}
        if decode:
            msg = self.message()
            if msg is not None:
                fields["message"] = MessageToDict(msg, preserving_proto_field_name=True)
        return {"ts": self.ts, "kind": self.kind, "label": self.label(), "flow": self.flow,
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
        return {TCP_SYN: "SYN", TCP_SYNACK: "SYN-ACK", TCP_ACK: "ACK", TCP_FIN: "FIN",
                TCP_RST: "RST", KEEPALIVE: "keep-alive"}.get(self.kind, self.kind)
