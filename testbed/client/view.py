"""What a phone shows its user, as plain JSON: its profile, contacts, messages (in the order
they arrived), the people nearby it last found and their avatars (by SHA-256). `testbed
emulate --views` prints every phone's; server replay's tests compare it with what a capture's
replies held (`testbed.replay.views`), so both are made here, from the same parts."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from testbed.wire import pb

from .session import SyncState


def _plain(msg: Optional[Message]) -> Optional[dict[str, Any]]:
    if msg is None:
        return None
    return MessageToDict(msg, preserving_proto_field_name=True)


def phone_view(username: str, uin: int, state: SyncState,
               nearby: Optional[pb.LbsFindResponse], avatars: dict[str, bytes]) -> dict:
    """One phone's view: `avatars` are the bodies fetched for the people nearby."""
    return {
        "username": username,
        "uin": uin,
        "profile": _plain(state.profile),
        "contacts": {name: _plain(c) for name, c in sorted(state.contacts.items())},
        "messages": [_plain(m) for m in state.messages],
        "nearby": None if nearby is None else [_plain(c) for c in nearby.contacts],
        "avatars": {name: hashlib.sha256(body).hexdigest()
                    for name, body in sorted(avatars.items())},
    }
