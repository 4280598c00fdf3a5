"""From a capture to its `Sessions` (testbed.replay.model): one pass over the analyser's
events pairs requests with their replies, then the exchanges are told apart by client.

Who an exchange belongs to comes from what it carries: a CGI or long-link request's
`BaseRequest` (uin and session key), a long link's IDENTIFY for every frame on that link
(heartbeats and pushes too). A TLS login is encrypted: it is given to the session whose key
is first used after it (the latest login not yet given away that was over before that first
use), so a user who logged in twice has two logins. The user name of a uin comes from a
reply that names it: the ModUserInfo of an initial sync (newinit, newsync) or getprofile's
profile, or a login seen in clear. DNS queries and plain GETs carry nobody's name: they are
given to a client only where one source address was used by one client alone.
"""

from __future__ import annotations

from typing import Optional

from google.protobuf.message import DecodeError

from testbed.capture import events as ev
from testbed.capture.analyze import Analysis, analyze
from testbed.capture.events import Event, Kind
from testbed.lab.addressing import SHORT
from testbed.lab.profiles import load_profile
from testbed.wire import DEFAULT_MAX_PACKET_LEN, pb
from testbed.wire.commands import BY_NAME, CMD_ITEM_TYPES, ITEM_MOD_USER_INFO, NOOP_CMD

from .model import Client, Connection, Exchange, ExchangeKind, Message, Sessions

MANUALAUTH = BY_NAME["MANUALAUTH"]
#: requests after which the lab pushes: a message stored (a text, an upload, a friend
#: request), a friend added, a link identified that has logs to sync
PUSH_CAUSES = frozenset({"NEWSENDMSG", "UPLOADMSGIMG", "UPLOADVOICE", "UPLOADVIDEO",
                         "VERIFYUSER", "IDENTIFY"})
NOT_LAB_STREAM = ("not the lab's protocol: its first bytes are neither TLS, HTTP, DNS nor a "
                  "long-link frame (a later client's MMTLS, say), so there is nothing to send "
                  "again")


def body_limit_for(meta: Optional[dict]) -> int:
    """The maximum packet length of the profile a capture's comment names (1 MiB when it
    names none, or one this testbed does not know)."""
    name = (meta or {}).get("profile")
    if name:
        try:
            return load_profile(name).max_packet_len
        except (ValueError, OSError):
            pass
    return DEFAULT_MAX_PACKET_LEN


def load_sessions(path: str, *, body_limit: Optional[int] = None) -> Sessions:
    """Read a capture (pcap or pcapng) and build its sessions. Bodies are kept whole up to
    `body_limit` bytes (default: the recorded profile's maximum packet length). Raises
    `CaptureError` or `OSError` only for a file that cannot be read at all."""
    from testbed.capture.packets import read_capture

    if body_limit is None:
        with read_capture(path) as cap:
            meta = cap.meta if isinstance(cap.meta, dict) else None
        body_limit = body_limit_for(meta)
    analysis = analyze(str(path), body_limit=body_limit)
    return build_sessions(analysis, body_limit)


def build_sessions(a: Analysis, body_limit: int) -> Sessions:
    """The sessions of an analysis whose events kept bodies up to `body_limit` bytes."""
    meta = a.meta or {}
    s = Sessions(path=a.path, time_scale=a.time_scale, made_by=meta.get("how"),
                 recorded_manifest=meta.get("manifest") if isinstance(meta.get("manifest"),
                                                                      dict) else None,
                 body_limit=body_limit, dns={k: list(v) for k, v in a.dns.items()})
    if a.truncated:
        s.problems.append(f"the capture is truncated ({a.error}): what follows the damage "
                          f"is not in it")
    _Builder(s, a).run()
    return s


class _Builder:
    """One pass over the events, then attribution."""

    def __init__(self, s: Sessions, a: Analysis) -> None:
        self.s = s
        self.a = a
        self.t0 = a.first_ts or 0.0
        self.scale = a.time_scale
        self.dns_pending: dict[tuple, Exchange] = {}
        self.http_pending: dict[int, list[Exchange]] = {}
        self.long_pending: dict[tuple[int, int], Exchange] = {}
        self.tls: dict[int, Exchange] = {}
        self.tls_asked: dict[int, bool] = {}

    # ------------------------------------------------------------------ helpers
    def message(self, e: Event) -> Message:
        return Message(e.index, (e.ts - self.t0) * self.scale, e)

    def add(self, kind: ExchangeKind, e: Event, **kw) -> Exchange:
        src = e.src if e.direction == "c2s" else e.dst
        x = Exchange(len(self.s.exchanges) + 1, kind, e.host, e.flow, source=src[0], **kw)
        self.s.exchanges.append(x)
        return x

    def connection(self, e: Event) -> Optional[Connection]:
        if e.flow is None:
            return None
        c = self.s.connections.get(e.flow)
        if c is None:
            client, server = (e.src, e.dst) if e.direction == "c2s" else (e.dst, e.src)
            c = Connection(e.flow, e.host, "", tuple(client), tuple(server),
                           (e.ts - self.t0) * self.scale)
            self.s.connections[e.flow] = c
        if e.host and not c.host:
            c.host = e.host
        return c

    # ------------------------------------------------------------------ the pass
    def run(self) -> None:
        for e in self.a.events:
            handler = _HANDLERS.get(e.kind)
            if handler is not None:
                handler(self, e)
        self.unknown_flows()
        self.s.exchanges.sort(key=lambda x: (x.start, x.frame, x.index))
        last_request: Optional[int] = None
        last_cause: Optional[int] = None
        for i, x in enumerate(self.s.exchanges, 1):
            x.index = i
            if x.kind is ExchangeKind.PUSH:
                # what the server was answering when it pushed: the last request before it
                # that makes the lab push, else the last request, on any connection
                x.trigger = last_cause or last_request
            elif x.request is not None and x.kind is not ExchangeKind.DNS:
                last_request = i
                if x.command is not None and x.command.name in PUSH_CAUSES:
                    last_cause = i
        Attribution(self.s).run()

    def on_tcp(self, e: Event) -> None:
        c = self.connection(e)
        if c is None:
            return
        if e.kind in (Kind.TCP_FIN, Kind.TCP_RST) and e.direction == "c2s" \
                and c.closed_by_client is None:
            c.closed_by_client = (e.ts - self.t0) * self.scale

    def on_dns(self, e: Event) -> None:
        client = e.src if e.kind == Kind.DNS_QUERY else e.dst
        key = (e.get("id"), e.get("name"), tuple(client), e.flow)
        if e.kind == Kind.DNS_QUERY:
            self.dns_pending[key] = self.add(ExchangeKind.DNS, e, request=self.message(e))
            self.dns_pending[key].host = e.get("name", "")
            return
        x = self.dns_pending.pop(key, None)
        if x is None:
            x = self.add(ExchangeKind.DNS, e, reason="a DNS answer to no query in the capture")
            x.host = e.get("name", "")
        x.reply = self.message(e)

    def on_hello(self, e: Event) -> None:
        c = self.connection(e)
        c.app = "tls"
        host = e.get("sni") or e.host
        if host == SHORT:
            x = self.add(ExchangeKind.LOGIN, e, request=self.message(e), command=MANUALAUTH)
        else:
            x = self.add(ExchangeKind.OTHER, e, request=self.message(e),
                         reason=f"TLS to {host or 'a host without a name'}: encrypted, and "
                                f"not the lab's login (only manualauth goes over TLS)")
        x.host = host or x.host
        self.tls[e.flow] = x

    def on_tls_record(self, e: Event) -> None:
        x = self.tls.get(e.flow)
        if x is None:
            return
        if e.get("content_type") == 23:      # application data: the login's request, reply
            if e.direction == "c2s":
                self.tls_asked[e.flow] = True
            elif self.tls_asked.get(e.flow):
                x.reply = self.message(e)    # the last answer to client data

    def on_http_request(self, e: Event) -> None:
        c = self.connection(e)
        c.app = "http"
        msg = self.message(e)
        command = e.command
        f = e.fields
        if command is MANUALAUTH:
            x = self.add(ExchangeKind.LOGIN, e, request=msg, command=command)
        elif command is not None:
            x = self.add(ExchangeKind.CGI, e, request=msg, command=command)
            x.reason = self.body_problem(msg, command.request, command.name, "request")
        elif f.get("method") == "GET":
            x = self.add(ExchangeKind.HTTP, e, request=msg)
        else:
            x = self.add(ExchangeKind.HTTP, e, request=msg,
                         reason=f"{f.get('method')} {f.get('uri', '')[:60]} is no command of "
                                f"the lab's (an encrypted CGI of a later client?): its body "
                                f"cannot be sent again")
        self.http_pending.setdefault(e.flow, []).append(x)

    def on_http_response(self, e: Event) -> None:
        status = e.get("status", 0)
        if 100 <= status < 200 and status != 101:
            return                       # 100 Continue: the real answer follows
        pending = self.http_pending.get(e.flow) or []
        if not pending:
            return
        x = pending.pop(0)
        x.reply = self.message(e)

    def on_frame(self, e: Event) -> None:
        c = self.connection(e)
        c.app = "longlink"
        f = e.fields
        msg = self.message(e)
        if e.direction == "c2s":
            if f.get("reply"):
                return                   # a client does not answer; nothing to replay
            command = e.command
            noop = f.get("noop") or f.get("cmd") == NOOP_CMD
            x = self.add(ExchangeKind.HEARTBEAT if noop else ExchangeKind.LONG, e,
                         request=msg, command=command)
            if command is None:
                x.reason = f"cmd {f.get('cmd')} is no command of the lab's"
            elif not noop:
                x.reason = self.body_problem(msg, command.request, command.name, "request")
            self.long_pending[(e.flow, f.get("seq"))] = x
            return
        if f.get("push"):
            x = self.add(ExchangeKind.PUSH, e, reply=msg, command=e.command)
            if "selector" not in f:
                x.reason = f"a NOTIFY of {f.get('body_len')} bytes (a selector is 4)"
            return
        if f.get("reply"):
            x = self.long_pending.pop((e.flow, f.get("seq")), None)
            if x is not None:
                x.reply = msg

    @staticmethod
    def body_problem(msg: Message, cls, name: str, what: str) -> Optional[str]:
        """Why a recorded body cannot be sent again, or None."""
        f = msg.event.fields
        if not msg.whole:
            return (f"its {what} body of {f.get('body_len')} bytes was kept in part (the "
                    f"limit is the profile's maximum packet length)")
        if cls is None:
            return None
        try:
            cls.FromString(msg.body)
        except (DecodeError, ValueError):
            return (f"its {what} body does not decode as {name}'s {what} (encrypted, or a "
                    f"later client's?)")
        return None

    def unknown_flows(self) -> None:
        """A flow whose stream is not the lab's protocol: one exchange saying so."""
        syn = {e.flow: e for e in self.a.events if e.kind == Kind.TCP_SYN}
        for row in self.a.flows:
            if row["app"] != "unknown":
                continue
            first = syn.get(row["id"])
            t = (row["start"] - self.t0) * self.scale
            frame = first.index if first is not None else 0
            fake = Event(row["start"], Kind.TCP_SYN, row["id"], "c2s",
                         _addr(row["client"]), _addr(row["server"]), row["host"], {}, frame)
            x = self.add(ExchangeKind.OTHER, fake, reason=NOT_LAB_STREAM)
            x.request = Message(frame, t, fake)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port) if port.isdigit() else 0


_HANDLERS = {
    Kind.TCP_SYN: _Builder.on_tcp, Kind.TCP_FIN: _Builder.on_tcp, Kind.TCP_RST: _Builder.on_tcp,
    Kind.DNS_QUERY: _Builder.on_dns, Kind.DNS_ANSWER: _Builder.on_dns,
    Kind.TLS_CLIENT_HELLO: _Builder.on_hello, Kind.TLS_RECORD: _Builder.on_tls_record,
    Kind.HTTP_REQUEST: _Builder.on_http_request, Kind.HTTP_RESPONSE: _Builder.on_http_response,
    Kind.FRAME: _Builder.on_frame,
}


def base_of(x: Exchange) -> Optional[pb.BaseRequest]:
    """The `BaseRequest` a recorded request carries, or None."""
    if x.request is None or x.command is None or x.command.request is None:
        return None
    msg = x.request.event.message()
    if msg is None or not hasattr(msg, "base") or not msg.HasField("base"):
        return None
    return msg.base


class Attribution:
    """Who each exchange belongs to, the user names, and each session's login."""

    def __init__(self, s: Sessions) -> None:
        self.s = s

    def run(self) -> None:
        s = self.s
        first_use: dict[bytes, Exchange] = {}
        key_uin: dict[bytes, int] = {}
        link_owner: dict[int, tuple[int, bytes]] = {}
        for x in s.exchanges:
            base = base_of(x)
            if base is not None and base.uin:
                x.client, x.session_key = base.uin, bytes(base.session_key)
                if x.session_key and x.session_key not in first_use:
                    first_use[x.session_key] = x
                    key_uin[x.session_key] = base.uin
                if x.kind is ExchangeKind.LONG and x.flow not in link_owner \
                        and x.command is not None and x.command.name == "IDENTIFY":
                    link_owner[x.flow] = (base.uin, x.session_key)
        for x in s.exchanges:        # every frame of a link is its identified user's
            if x.kind in (ExchangeKind.LONG, ExchangeKind.HEARTBEAT, ExchangeKind.PUSH) \
                    and x.client is None and x.flow in link_owner:
                x.client, x.session_key = link_owner[x.flow]
        for flow, (uin, _key) in link_owner.items():
            if flow in s.connections:
                s.connections[flow].client_uin = uin
        for x in s.exchanges:
            if x.client is not None and x.client not in s.clients:
                s.clients[x.client] = Client(x.client)
        for key, x in sorted(first_use.items(), key=lambda kv: kv[1].index):
            s.clients[key_uin[key]].sessions.append(key)
        self.usernames()
        self.logins(first_use, key_uin)
        self.by_address()
        self.without_login(first_use)
        for x in s.exchanges:
            if x.client is not None:
                s.clients[x.client].exchanges.append(x)

    def usernames(self) -> None:
        for x in self.s.exchanges:
            if x.client is None or x.reply is None or x.command is None:
                continue
            client = self.s.clients[x.client]
            if client.username:
                continue
            name = profile_name(x)
            if name:
                client.username = name
                client.username_from = f"{x.command.name} reply, frame {x.reply.frame}"

    def logins(self, first_use: dict[bytes, Exchange], key_uin: dict[bytes, int]) -> None:
        logins = [x for x in self.s.exchanges if x.kind is ExchangeKind.LOGIN]
        taken: set[int] = set()
        given: set[bytes] = set()
        for login in logins:          # a login in clear says whose session it began
            clear = login_in_clear(login)
            if clear is None:
                continue
            username, uin, key = clear
            if uin and key in first_use:
                taken.add(login.index)
                given.add(key)
                login.client, login.session_key = uin, key
                client = self.s.clients[uin]
                if not client.username and username:
                    client.username = username
                    client.username_from = f"MANUALAUTH in clear, frame {login.frame}"
        for key, used in sorted(first_use.items(), key=lambda kv: kv[1].index):
            if key in given:
                continue
            free = [x for x in logins if x.index < used.index and x.index not in taken
                    and x.reason is None]
            # the latest login over before the first use; else the latest begun before it
            done = [x for x in free if x.end <= used.start]
            if not (done or free):
                continue
            login = (done or free)[-1]
            taken.add(login.index)
            login.client, login.session_key = key_uin[key], key
        for x in logins:
            if x.index not in taken and x.reason is None:
                x.reason = ("a login whose session no later request used (it failed, or the "
                            "capture ends first): nobody to log in as")

    def by_address(self) -> None:
        """DNS and plain GETs: a client's where one address was used by one client alone."""
        owners: dict[str, set[int]] = {}
        for x in self.s.exchanges:
            if x.client is not None and x.source:
                owners.setdefault(x.source, set()).add(x.client)
        for x in self.s.exchanges:
            if x.client is None and x.kind in (ExchangeKind.DNS, ExchangeKind.HTTP):
                who = owners.get(x.source, set())
                if len(who) == 1:
                    x.client = next(iter(who))

    def without_login(self, first_use: dict[bytes, Exchange]) -> None:
        """A session whose key no login in the capture handed out cannot be replayed."""
        logged_in = {x.session_key for x in self.s.exchanges
                     if x.kind is ExchangeKind.LOGIN and x.session_key}
        for x in self.s.exchanges:
            if x.reason is None and x.session_key and x.session_key not in logged_in \
                    and x.kind is not ExchangeKind.LOGIN:
                first = first_use[x.session_key]
                x.reason = (f"no login in the capture: the session of uin {x.client}, first "
                            f"used at frame {first.frame}, began before the capture did")


def profile_name(x: Exchange) -> Optional[str]:
    """The user name a reply to the client's own request names, or None: newinit's or
    newsync's ModUserInfo, getprofile's profile."""
    msg = x.reply.event.message() if x.reply is not None else None
    if msg is None:
        return None
    if isinstance(msg, pb.GetProfileResponse) and msg.HasField("profile"):
        return msg.profile.username or None
    if isinstance(msg, pb.NewSyncResponse):
        for item in msg.cmd_list:
            if item.cmd_id == ITEM_MOD_USER_INFO:
                try:
                    info = CMD_ITEM_TYPES[ITEM_MOD_USER_INFO].FromString(item.cmd_buf)
                except (DecodeError, ValueError):
                    continue
                if info.username:
                    return info.username
    return None


def login_in_clear(x: Exchange) -> Optional[tuple[str, int, bytes]]:
    """(user name, uin, session key) of a manualauth seen in clear (a CGI over plain
    HTTP; uin and key 0 and b"" without its reply), or None."""
    if x.request is None or x.request.event.kind != ev.HTTP_REQUEST:
        return None
    req = x.request.event.message()
    resp = x.reply.event.message() if x.reply is not None else None
    if req is None:
        return None
    return req.username, getattr(resp, "uin", 0), bytes(getattr(resp, "session_key", b""))
