"""Server replay's script: a capture's recorded replies, handed to the live requests that
match them (sans-I/O: the lab's doors ask, `mocks.replay` answers through them).

A live request is matched by what it is and what it says, the way mitmproxy's server replay
keys a request by its method, URL and body minus ignore lists, but on decoded messages: a
command's request is matched against the recorded requests of the same command in the same
recorded session, field by field, with the fields the client picks afresh on every run let
differ (`MaskSet.for_request`: its device id, the ids of its messages and uploads), and
what the request mask files (`lab up --mask`) say may differ. The
first unused recorded request that matches takes it, so repeated requests are answered in
recorded order. A GET is matched by host and path with its query, a DNS query by name.

State is per session. A login is matched by user name to that user's next recorded login;
the lab logs the user in for real (a fresh session key, which the client uses from then
on), and the script maps the live key to the recorded session, whose requests it matches.
Re-binding runs the other way from client replay: a value the client picked (a
`client_msg_id`) is bound to the recorded one it stands for when its request is matched, and
every later recorded reply that echoes the recorded value carries the live one.

A recorded push is due when its trigger (the request the lab was answering when it pushed)
is answered. What no recorded request matches is a miss; what the capture has and nobody
asked for stays unused. `report()` lists both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from google.protobuf.message import Message as ProtoMessage

from testbed.wire.choices import Choice
from testbed.wire.commands import Command
from testbed.wire.rebinding import rebinding

from .bindings import Bindings
from .compare import compare
from .masks import MaskSet
from .model import Exchange, ExchangeKind, Sessions
from .tree import message_tree, show, split_path, walk

#: kinds of exchange a live request can take (heartbeats are answered by the link itself)
ASKED_KINDS = frozenset({ExchangeKind.DNS, ExchangeKind.LOGIN, ExchangeKind.CGI,
                         ExchangeKind.HTTP, ExchangeKind.LONG})


class Unmatched(Choice, what="unmatched policy"):
    """What a request that no recorded one matches gets."""

    FAIL = "fail"          # an error reply (and a line of the report)
    FORWARD = "forward"    # the lab's own stateful service answers it
    ERROR = "error"        # the connection is closed without an answer


@dataclass(frozen=True)
class Push:
    """A recorded NOTIFY that is due: to the recorded client's link, with its selector."""

    client: int
    session_key: bytes
    selector: int
    exchange: Exchange
    trigger: Exchange


@dataclass
class Answer:
    """A live request's recorded exchange, its reply (with live values put back in; None
    for GETs, DNS and a login, which the caller builds) and the pushes it makes due."""

    exchange: Exchange
    reply: Optional[ProtoMessage] = None
    pushes: list[Push] = field(default_factory=list)


@dataclass(frozen=True)
class Miss:
    """No recorded request matches: why, in words."""

    detail: str


class ServerScript:
    """The recorded replies of `sessions`, for a lab to answer a client under test with."""

    def __init__(self, sessions: Sessions, unmatched: Unmatched = Unmatched.FAIL,
                 masks: Optional[MaskSet] = None) -> None:
        self.s = sessions
        self.unmatched = Unmatched(unmatched)
        self.masks = masks or MaskSet()
        self.used: dict[int, float] = {}                  # exchange index -> live time
        self.reserved: set[int] = set()                   # logins under way
        self.misses: list[dict[str, Any]] = []
        self.pushes_sent: dict[int, float] = {}            # push index -> live time
        self.pushes_lost: dict[int, str] = {}              # push index -> why not sent
        self.live_sessions: dict[bytes, bytes] = {}        # live key -> recorded key
        self.live_uins: dict[int, int] = {}                # recorded uin -> the lab's uin
        self.to_live = Bindings()        # values the client picked: recorded -> live
        self._trees: dict[int, Any] = {}
        self.logins: dict[str, list[Exchange]] = {}
        self.requests: dict[tuple[bytes, str], list[Exchange]] = {}
        self.gets: dict[tuple[str, str], list[Exchange]] = {}
        self.dns: dict[str, list[Exchange]] = {}
        self.by_trigger: dict[int, list[Exchange]] = {}
        self.heartbeats = 0
        for x in sessions.exchanges:
            self._index(x)

    def _index(self, x: Exchange) -> None:
        if x.kind is ExchangeKind.HEARTBEAT:
            self.heartbeats += 1
        if not x.replayable:
            return
        if x.kind is ExchangeKind.LOGIN:
            name = self.username(x.client)
            if name:
                self.logins.setdefault(name, []).append(x)
        elif x.kind in (ExchangeKind.CGI, ExchangeKind.LONG) and x.command is not None \
                and x.reply is not None:
            self.requests.setdefault((x.session_key, x.command.name), []).append(x)
        elif x.kind is ExchangeKind.HTTP and x.reply is not None:
            f = x.request.event.fields
            host = (f.get("host") or x.host).split(":")[0]
            self.gets.setdefault((host, f.get("uri", "")), []).append(x)
        elif x.kind is ExchangeKind.DNS and x.reply is not None:
            self.dns.setdefault(x.host.rstrip(".").lower(), []).append(x)
        elif x.kind is ExchangeKind.PUSH and x.trigger is not None \
                and x.reply.event.get("selector") is not None:
            self.by_trigger.setdefault(x.trigger, []).append(x)

    # ------------------------------------------------------------------ who
    def username(self, uin: Optional[int]) -> Optional[str]:
        c = self.s.clients.get(uin) if uin is not None else None
        return c.username if c is not None else None

    @property
    def usernames(self) -> list[str]:
        """The recorded users a client under test can log in as."""
        return sorted(self.logins)

    def session_of(self, live_key: bytes) -> Optional[bytes]:
        """The recorded session a live session key stands for (None: not a replayed one)."""
        return self.live_sessions.get(bytes(live_key))

    def client_of(self, live_key: bytes) -> Optional[int]:
        rec = self.session_of(live_key)
        if rec is None:
            return None
        return next((uin for uin, c in self.s.clients.items() if rec in c.sessions), None)

    # ------------------------------------------------------------------ logins
    def login(self, username: str) -> Optional[Exchange]:
        """The next recorded login of `username`, reserved (None: the capture has no more);
        `logged_in` or `release` it once the lab's own login is over."""
        for x in self.logins.get(username, ()):
            if x.index not in self.used and x.index not in self.reserved:
                self.reserved.add(x.index)
                return x
        return None

    def logged_in(self, x: Exchange, live_key: bytes, live_uin: int, now: float) -> None:
        """The lab logged the user in: its live session stands for the recorded one."""
        self.reserved.discard(x.index)
        self.used[x.index] = now
        self.live_sessions[bytes(live_key)] = x.session_key
        self.live_uins[x.client] = live_uin
        self.to_live.bind("session_key", (), x.session_key, bytes(live_key))

    def release(self, x: Exchange) -> None:
        """The lab's own login failed: the recorded one is free again."""
        self.reserved.discard(x.index)

    # ------------------------------------------------------------------ commands
    def answer(self, command: Command, request: ProtoMessage, live_key: bytes, door: str,
               now: float) -> Answer | Miss:
        """The recorded exchange a live request of a replayed session takes, or why none."""
        rec_key = self.session_of(live_key)
        if rec_key is None:
            return Miss("its session is not one of the capture's (no recorded login "
                        "began it)")
        name = command.name
        candidates = [x for x in self.requests.get((rec_key, name), ())
                      if x.index not in self.used]
        who = self.username(self.client_of(live_key)) or "this session"
        if not candidates:
            n = len(self.requests.get((rec_key, name), ()))
            return Miss(f"{who} has no recorded {name} left ({n} in the capture, all "
                        f"answered)" if n else f"the capture has no {name} of {who}")
        live = type(request)()
        live.CopyFrom(request)
        to_recorded = Bindings()
        to_recorded.bind("session_key", (), bytes(live_key), rec_key)
        to_recorded.rewrite(name, live, None)
        live_tree = message_tree(live)
        masks = self.masks.for_request(name)
        nearest = None
        same_door = [x for x in candidates if _door(x) == door]
        for x in same_door + [x for x in candidates if _door(x) != door]:
            outcome = compare(self.recorded_request(x), live_tree, masks, Bindings())
            if outcome.equal:
                return self._take(x, live_tree, now)
            if nearest is None or len(outcome.diffs) < len(nearest[1].diffs):
                nearest = (x, outcome)
        x, outcome = nearest
        d = outcome.diffs[0]
        return Miss(f"{len(candidates)} recorded {name} of {who} left, none the same: the "
                    f"nearest (exchange {x.index}, frame {x.frame}) differs at {d.path}: "
                    f"recorded {show(d.recorded, d.path)}, live {show(d.replayed, d.path)}")

    def recorded_request(self, x: Exchange) -> Any:
        tree = self._trees.get(x.index)
        if tree is None:
            tree = self._trees[x.index] = message_tree(x.request.event.message())
        return tree

    def _take(self, x: Exchange, live_tree: Any, now: float) -> Answer:
        self.used[x.index] = now
        name = x.command.name
        row = rebinding(name)
        recorded = self.recorded_request(x)
        for f in row.picks:           # what the client picked stands for the recorded pick
            parts = split_path(f.path)
            live_values = {p: v for p, v, _ in walk(live_tree, parts)}
            for path, value, _ in walk(recorded, parts):
                if value and path in live_values and live_values[path] != value:
                    self.to_live.bind(f.kind, (), value, live_values[path])
        reply = x.reply.event.message()
        if reply is not None:
            self.to_live.rewrite(name, reply, x.client, fields=row.echoes)
        return Answer(x, reply, self.due_pushes(x, now))

    def due_pushes(self, x: Exchange, now: float) -> list[Push]:
        """The recorded pushes `x` triggered (each once)."""
        out = []
        for p in self.by_trigger.get(x.index, ()):
            if p.index in self.pushes_sent or p.index in self.pushes_lost or p.client is None:
                continue
            self.pushes_sent[p.index] = now
            out.append(Push(p.client, p.session_key, p.reply.event.get("selector"), p, x))
        return out

    def push_lost(self, push: Push, why: str) -> None:
        """A due push could not be sent (`why`): the report lists it with the unsent."""
        self.pushes_sent.pop(push.exchange.index, None)
        self.pushes_lost[push.exchange.index] = why

    # ------------------------------------------------------------------ GET and DNS
    def answer_get(self, host: str, uri: str, now: float) -> Optional[Exchange]:
        """The next recorded GET of `host` with this path and query."""
        for x in self.gets.get((host.split(":")[0].lower(), uri), ()):
            if x.index not in self.used:
                self.used[x.index] = now
                return x
        return None

    def answer_dns(self, name: str, now: float) -> Optional[Exchange]:
        """The next recorded query for `name`."""
        for x in self.dns.get(name.rstrip(".").lower(), ()):
            if x.index not in self.used:
                self.used[x.index] = now
                return x
        return None

    # ------------------------------------------------------------------ the report
    def missed(self, door: str, what: str, now: float, detail: str, *,
               user: Optional[str] = None, action: Optional[str] = None) -> None:
        """A live request that no recorded one matched, and what was done with it."""
        self.misses.append({"t": round(now, 3), "door": door, "request": what,
                            "user": user, "action": str(action or self.unmatched),
                            "detail": detail})

    def never_asked(self) -> list[Exchange]:
        """Replayable recorded requests no live one took."""
        return [x for x in self.s.exchanges if x.replayable and x.kind in ASKED_KINDS
                and x.index not in self.used and (x.kind is not ExchangeKind.LOGIN
                                                  or self.username(x.client))]

    def pushes_never_sent(self) -> list[Exchange]:
        return [x for xs in self.by_trigger.values() for x in xs
                if x.index not in self.pushes_sent]

    def report(self) -> dict[str, Any]:
        """JSON-ready: what was answered, never asked for, and unmatched."""
        def row(x: Exchange) -> dict[str, Any]:
            return {"exchange": x.index, "frame": x.frame, "t": round(x.start, 3),
                    "kind": str(x.kind), "command": x.name, "host": x.host,
                    "user": self.username(x.client)}
        asked = [x for x in self.s.exchanges if x.replayable and x.kind in ASKED_KINDS]
        return {
            "capture": self.s.path, "unmatched_policy": str(self.unmatched),
            "masks": self.masks.listed(),
            "recorded": len(self.s.exchanges), "replayable": len(asked),
            "answered": sum(1 for x in asked if x.index in self.used),
            "pushes": sum(len(v) for v in self.by_trigger.values()),
            "pushes_sent": len(self.pushes_sent),
            "heartbeats_recorded": self.heartbeats,
            "never_asked": [row(x) for x in self.never_asked()],
            "pushes_never_sent": [dict(row(x), trigger=x.trigger,
                                       why=self.pushes_lost.get(x.index, "its trigger was "
                                                                "never asked for"))
                                  for x in self.pushes_never_sent()],
            "unmatched": list(self.misses),
            "not_replayable": [dict(row(x), reason=x.reason) for x in self.s.exchanges
                               if not x.replayable],
        }


def _door(x: Exchange) -> str:
    return "long" if x.kind is ExchangeKind.LONG else "short"
