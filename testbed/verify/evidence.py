"""What the storyboard's verdicts stand on: requests paired with their answers, the phone
that sent each one, and packet numbers to name.

A *party* is one phone as a capture shows it: the client address its connections came from
and the uin its requests carry in clear. Counting by party, not by connection, is what lets
a verdict say "each of the two phones": a relay's second leg of the same connection comes
from another address, so it never passes for a phone of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional

from google.protobuf.message import DecodeError

from testbed.capture import events as ev
from testbed.capture.events import Event
from testbed.wire import pb

from .expect import CaptureView


class Party(NamedTuple):
    """One phone: the address it sent from and its uin."""

    address: str
    uin: int

    def __str__(self) -> str:
        return f"uin {self.uin} at {self.address}"


@dataclass
class Exchange:
    """A request (a CGI over HTTP, or a long-link frame) and its answer, if one came."""

    request: Event
    response: Optional[Event]

    @property
    def ret(self) -> Optional[int]:
        """The answer's `BaseResponse.ret` (0: done), None without an answer."""
        return None if self.response is None else response_ret(self.response)

    @property
    def ok(self) -> bool:
        return self.ret == 0

    @property
    def party(self) -> Optional[Party]:
        return party_of(self.request)

    def packets(self) -> str:
        """"packet 12 -> 14": the request's packet and the answer's."""
        answer = f" -> {self.response.index}" if self.response is not None else " (unanswered)"
        return f"packet {self.request.index}{answer}"


def party_of(request: Event) -> Optional[Party]:
    """Who sent a request: its client address, and the uin of its body's BaseRequest."""
    msg = request.message()
    base = getattr(msg, "base", None) if msg is not None else None
    if base is None or not isinstance(base, pb.BaseRequest) or not base.uin:
        return None
    return Party(request.src[0], base.uin)


def response_ret(response: Event) -> Optional[int]:
    """`ret` of a response body's BaseResponse (field 1), read from the body's start so that
    a body kept only in part (a large download) still tells it."""
    msg = response.message()
    if msg is not None:
        return msg.base.ret if msg.HasField("base") else 0
    body = response.get("body", b"")
    if not body or body[0] != 0x0A:          # field 1, length-delimited
        return None
    size, at = _varint(body, 1)
    if size is None or at + size > len(body):
        return None
    try:
        return pb.BaseResponse.FromString(body[at:at + size]).ret
    except (DecodeError, ValueError):
        return None


def _varint(data: bytes, at: int) -> tuple[Optional[int], int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None, at


def http_exchanges(view: CaptureView, host: Optional[str] = None,
                   cgis: Optional[Iterable[str]] = None) -> list[Exchange]:
    """The HTTP requests to `host` (any host when None) for the CGIs named in `cgis` (every
    request when None), each with the response that followed it on its connection
    (responses answer requests in order)."""
    wanted = None if cgis is None else set(cgis)
    pending: dict[int, list[Exchange]] = {}
    out: list[Exchange] = []
    for e in view.events:
        if e.kind == ev.HTTP_REQUEST:
            x = Exchange(e, None)
            pending.setdefault(e.flow, []).append(x)    # every request takes its answer
            if (host is None or e.host == host) and (wanted is None or e.get("cgi") in wanted):
                out.append(x)
        elif e.kind == ev.HTTP_RESPONSE and pending.get(e.flow):
            pending[e.flow].pop(0).response = e
    return out


def frame_exchanges(view: CaptureView, names: Iterable[str]) -> list[Exchange]:
    """Long-link requests named in `names` (client to server), each with the reply of the
    same seq on the same connection."""
    wanted = set(names)
    waiting: dict[tuple, Exchange] = {}
    out: list[Exchange] = []
    for e in view.events:
        if e.kind != ev.FRAME or e.get("push") or e.get("name") not in wanted:
            continue
        key = (e.flow, e.get("seq"))
        if not e.get("reply") and e.direction == "c2s":
            x = Exchange(e, None)
            out.append(x)
            waiting[key] = x
        elif e.get("reply") and key in waiting:
            waiting.pop(key).response = e
    return out


def usernames(view: CaptureView) -> dict[int, str]:
    """uin -> username, where a sync answer (newinit or newsync, either door) carried the
    phone's own profile back to the uin that asked."""
    found: dict[int, str] = {}
    for x in http_exchanges(view, cgis=("newinit", "newsync")) + \
            frame_exchanges(view, ("NEWSYNC",)):
        p = x.party
        msg = x.response.message() if x.response is not None else None
        if p is None or msg is None:
            continue
        for item in msg.cmd_list:
            if item.cmd_id == 1:                     # ModUserInfo: the phone's own profile
                try:
                    found[p.uin] = pb.ModUserInfo.FromString(item.cmd_buf).username
                except (DecodeError, ValueError):
                    pass
    return found


def delivered(x: Exchange) -> list[pb.AddMsg]:
    """The messages a sync answer delivered."""
    msg = x.response.message() if x.response is not None else None
    if msg is None or not hasattr(msg, "cmd_list"):
        return []
    out = []
    for item in msg.cmd_list:
        if item.cmd_id == 5:                         # AddMsg
            try:
                out.append(pb.AddMsg.FromString(item.cmd_buf))
            except (DecodeError, ValueError):
                pass
    return out


def numbers(indices: Iterable[int], most: int = 4) -> str:
    """"packet 7", "packets 7, 9 and 12", "packets 7, 9, 12, 15, … (9 in all)"."""
    idx = sorted(indices)
    if not idx:
        return "no packet"
    if len(idx) == 1:
        return f"packet {idx[0]}"
    if len(idx) <= most:
        return f"packets {', '.join(map(str, idx[:-1]))} and {idx[-1]}"
    return f"packets {', '.join(map(str, idx[:most]))}, … ({len(idx)} in all)"


def by_address(items: Iterable[str]) -> str:
    """"127.0.0.87: 2, 127.0.0.88: 1": how many of something each client address had."""
    counts: dict[str, int] = {}
    for a in items:
        counts[a] = counts.get(a, 0) + 1
    return ", ".join(f"{a}: {n}" for a, n in sorted(counts.items()))
