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
