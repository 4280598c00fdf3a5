"""The session model: what a capture says each recorded client did, as replayable exchanges.

A capture becomes a `Sessions`: every exchange the clients had with the lab's hosts, in the
order of the capture (DNS, the TLS login, CGI requests over the short link, plain HTTP GETs
to the location service and the CDNs, long-link requests, heartbeats and server pushes),
each with the capture frame numbers and protocol times of its messages, whole bodies (the
analyser's events, kept up to the profile's maximum packet length), the command-table row
it was decoded with, and the recorded client (uin) it belongs to. What cannot be replayed
carries its `reason` (an encrypted stream of a later client, a session whose login is not in
the capture); nothing in a capture makes building the model fail.

`testbed.replay.sessions.load_sessions(path)` builds it; the client replayer sends it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from testbed.capture.events import Event
from testbed.wire.choices import Choice
from testbed.wire.commands import Command


class ExchangeKind(Choice, what="exchange kind"):
    """What an exchange is; its value is the string `--json` writes."""

    DNS = "dns"                 # a query to the lab's resolver and its answer
    LOGIN = "login"             # manualauth: over TLS its bodies are encrypted
    CGI = "cgi"                 # a command over the short link: POST and its response
    HTTP = "http"               # a plain GET: the location service, the avatar and image CDNs
    LONG = "long"               # a command over the long link: request frame and its reply
    HEARTBEAT = "heartbeat"     # a NOOP over the long link and its reply
    PUSH = "push"               # a NOTIFY from the server (no request: it has a trigger)
    OTHER = "other"             # a stream that is not the lab's protocol (never replayable)


@dataclass(frozen=True, slots=True)
class Message:
    """One recorded message: where it is in the capture and the event that holds it."""

    frame: int          # the capture's frame (packet) number that completed it, 1-based
    t: float            # protocol seconds since the capture's first packet
    event: Event        # the analyser's event: kind, fields (whole body), command

    @property
    def body(self) -> bytes:
        return self.event.fields.get("body", b"")

    @property
    def whole(self) -> bool:
        """The body was kept whole (not cut at the analyser's body limit)."""
        f = self.event.fields
        return len(f.get("body", b"")) >= f.get("body_len", 0)


@dataclass(slots=True)
class Exchange:
    """A request and its reply (or a push, which has no request), as recorded."""

    index: int                          # 1-based, in the order of the capture
    kind: ExchangeKind
    host: str                           # the lab host name ("" where the capture never says)
    flow: Optional[int]                 # the capture's flow (TCP connection); None for UDP DNS
    request: Optional[Message] = None
    reply: Optional[Message] = None
    command: Optional[Command] = None   # the command-table row (CGI, long link, login)
    client: Optional[int] = None        # the recorded uin it belongs to (None: cannot tell)
    session_key: bytes = b""            # the recorded session it ran in
    trigger: Optional[int] = None       # a push: the index of the exchange that caused it
    reason: Optional[str] = None        # why it cannot be replayed (None: it can)
    source: str = ""                    # the recorded client's address

    @property
    def start(self) -> float:
        """Protocol time of its first message (the request; a push's own time)."""
        first = self.request or self.reply
        return first.t if first is not None else 0.0

    @property
    def end(self) -> float:
        """Protocol time the exchange was over in the capture (its reply; a request never
        answered counts as over when it was sent)."""
        last = self.reply or self.request
        return last.t if last is not None else 0.0

    @property
    def frame(self) -> int:
        """The frame of its first message."""
        first = self.request or self.reply
        return first.frame if first is not None else 0

    @property
    def replayable(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        """What it is, in a word or two: `NEWSYNC`, `DNS long.weixin.qq.com`, `GET /v3/...`."""
        if self.command is not None:
            return self.command.name
        if self.kind is ExchangeKind.DNS and self.request is not None:
            return f"DNS {self.request.event.get('name', '')}"
        if self.kind is ExchangeKind.HTTP and self.request is not None:
            f = self.request.event.fields
            return f"{f.get('method', 'GET')} {f.get('uri', '')}"
        if self.kind is ExchangeKind.PUSH:
            return "NOTIFY"
        if self.kind is ExchangeKind.LOGIN:
            return "MANUALAUTH"
        return str(self.kind)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, without bodies."""
        return {"exchange": self.index, "kind": str(self.kind), "frame": self.frame,
                "reply_frame": self.reply.frame if self.reply else None,
                "t": round(self.start, 6), "host": self.host, "flow": self.flow,
                "command": self.name, "client": self.client, "trigger": self.trigger,
                "reason": self.reason}


@dataclass(slots=True)
class Connection:
    """A recorded TCP connection (flow) that exchanges ran on."""

    flow: int
    host: str
    app: str                            # tls, http, longlink, dns, unknown
    client: tuple[str, int]
    server: tuple[str, int]
    opened: float                       # protocol time of its SYN (or first data)
    closed_by_client: Optional[float] = None   # protocol time of the client's FIN or RST
    client_uin: Optional[int] = None    # a long link: who identified on it


@dataclass(slots=True)
class Client:
    """A recorded user: its uin, its user name where a reply told it, its sessions."""

    uin: int
    username: Optional[str] = None
    username_from: str = ""             # the exchange kind and frame that told the name
    sessions: list[bytes] = field(default_factory=list)   # session keys, by first use
    exchanges: list[Exchange] = field(default_factory=list)


@dataclass
class Sessions:
    """Every exchange of a capture, in order, and who had them."""

    path: str
    time_scale: float
    made_by: Optional[str]              # "tap", "sniffer", or None (someone else's capture)
    recorded_manifest: Optional[dict]   # the lab manifest the capture's comment records
    body_limit: int                     # bytes of a body kept (the profile's max packet length)
    exchanges: list[Exchange] = field(default_factory=list)
    clients: dict[int, Client] = field(default_factory=dict)
    connections: dict[int, Connection] = field(default_factory=dict)
    dns: dict[str, list[str]] = field(default_factory=dict)   # recorded name -> addresses
    problems: list[str] = field(default_factory=list)         # about the capture as a whole

    def __iter__(self) -> Iterator[Exchange]:
        return iter(self.exchanges)

    def __len__(self) -> int:
        return len(self.exchanges)

    @property
    def replayable(self) -> list[Exchange]:
        return [x for x in self.exchanges if x.reason is None]

    def host_of(self, address: str) -> Optional[str]:
        """The lab host a recorded address belonged to: the recorded manifest says, else a
        recorded DNS answer."""
        hosts = (self.recorded_manifest or {}).get("hosts") or {}
        for name, h in hosts.items():
            if address in (h.get("addresses") or ()):
                return name
        for name, addrs in self.dns.items():
            if address in addrs:
                return name
        return None

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the clients and their exchanges, without bodies."""
        return {
            "capture": self.path, "time_scale": self.time_scale, "made_by": self.made_by,
            "exchanges": len(self.exchanges), "replayable": len(self.replayable),
            "problems": list(self.problems),
            "clients": [{"uin": c.uin, "username": c.username, "username_from": c.username_from,
                         "sessions": len(c.sessions),
                         "exchanges": [x.index for x in c.exchanges]}
                        for c in self.clients.values()],
            "list": [x.describe() for x in self.exchanges],
        }
