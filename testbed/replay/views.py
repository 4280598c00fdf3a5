"""What a capture's replies showed each recorded phone, as `testbed.client.view` makes a
live phone's view: the profile, contacts and messages its newinit and newsync answers held
(applied in the capture's order, as the phone applies them), the people nearby of its last
lbsfind and the avatars fetched for them. A server replay that drives a phone through a
recorded session ends with the phone showing this."""

from __future__ import annotations

from typing import Optional

from testbed.client.session import SyncState
from testbed.client.view import phone_view
from testbed.wire import pb

from .model import Exchange, ExchangeKind, Sessions

SYNCS = frozenset({"NEWINIT", "NEWSYNC"})


def recorded_views(sessions: Sessions) -> list[dict]:
    """One view per recorded client with a user name, in the order of their uins."""
    out = []
    for uin, client in sorted(sessions.clients.items()):
        if client.username is None:
            continue
        state = SyncState()
        nearby: Optional[pb.LbsFindResponse] = None
        found_at = 0
        for x in client.exchanges:
            if x.command is None or x.reply is None:
                continue
            msg = x.reply.event.message()
            if msg is None:
                continue
            if x.command.name in SYNCS:
                state.apply(msg)
            elif x.command.name == "LBSFIND" and x.request.event.message().opcode == 1:
                nearby, found_at = msg, x.index
        avatars = _avatars(sessions, nearby, found_at) if nearby is not None else {}
        out.append(phone_view(client.username, uin, state, nearby, avatars))
    return out


def _avatars(sessions: Sessions, nearby: pb.LbsFindResponse, after: int) -> dict[str, bytes]:
    """The avatar each person nearby got: the first GET of their avatar URL after the
    lbsfind (a GET names nobody, so it is found by its URL)."""
    gets: dict[str, Exchange] = {}
    for x in sessions.exchanges[after:]:
        if x.kind is ExchangeKind.HTTP and x.request is not None and x.reply is not None:
            f = x.request.event.fields
            url = f"http://{(f.get('host') or x.host).split(':')[0]}{f.get('uri', '')}"
            gets.setdefault(url, x)
    out = {}
    for c in nearby.contacts:
        x = gets.get(c.avatar_url)
        if x is not None:
            f = x.reply.event.fields
            out[c.username] = f.get("body", b"") if f.get("status") == 200 else b""
    return out
