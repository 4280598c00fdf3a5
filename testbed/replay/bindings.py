"""Re-binding at run time: recorded values paired with the live ones a lab handed out, and
recorded requests rewritten to carry the live values (the table: `testbed.wire.rebinding`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from google.protobuf.message import DecodeError, Message

from testbed.wire.commands import CMD_ITEM_TYPES
from testbed.wire.rebinding import PER_CLIENT, Field, rebinding

from .tree import split_path

Scope = tuple


@dataclass
class Bindings:
    """recorded value -> live value, per kind (and per recorded client and key for the
    kinds that are numbered per user, like sync keys)."""

    values: dict[tuple[str, Scope, Any], Any] = field(default_factory=dict)
    substituted: int = 0            # values put into requests

    @staticmethod
    def scope(kind: str, client: Optional[int], keys: dict) -> Scope:
        if kind in PER_CLIENT:
            return (client, *sorted(keys.items()))
        return ()

    def get(self, kind: str, scope: Scope, recorded: Any) -> Any:
        return self.values.get((kind, scope, _key(recorded)))

    def bind(self, kind: str, scope: Scope, recorded: Any, live: Any) -> None:
        self.values[(kind, scope, _key(recorded))] = live

    def known(self, kind: str, scope: Scope, recorded: Any) -> bool:
        return (kind, scope, _key(recorded)) in self.values

    def live_for(self, kind: str, recorded: Any, client: Optional[int] = None,
                 keys: Optional[dict] = None) -> Any:
        """The live value bound to a recorded one (the recorded one when none is)."""
        found = self.values.get((kind, self.scope(kind, client, keys or {}), _key(recorded)))
        return recorded if found is None else found

    # ------------------------------------------------------------------ requests
    def rewrite(self, name: str, msg: Message, client: Optional[int],
                fields: Optional[tuple[Field, ...]] = None) -> int:
        """Put the bound values into a decoded message (in place) at `fields` (default: the
        request fields the command's row of the table `carries`); returns how many fields
        changed."""
        changed = 0
        for f in rebinding(name).carries if fields is None else fields:
            changed += _rewrite(msg, split_path(f.path), {}, lambda value, keys, f=f:
                                self._live(f, value, client, keys))
        self.substituted += changed
        return changed

    def rewrite_url(self, url: str) -> str:
        """A plain GET's URL with a live URL bound to the recorded one (an avatar, an image
        on the CDN)."""
        for f in rebinding("GET").carries:
            live = self.live_for(f.kind, url)
            if live != url:
                self.substituted += 1
                return live
        return url

    def _live(self, f: Field, value: Any, client: Optional[int], keys: dict) -> Any:
        return self.values.get((f.kind, self.scope(f.kind, client, keys), _key(value)))


def _key(value: Any) -> Any:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else value


def _rewrite(node: Message, parts: list, keys: dict, live) -> int:
    """Walk a protobuf message along split path parts; at the end, replace each value that
    `live(value, keys)` has a substitute for."""
    head, rest = parts[0], parts[1:]
    if not isinstance(head, str) or not hasattr(node, head):
        return 0
    if not rest:
        value = getattr(node, head)
        new = live(value, keys)
        if new is not None and new != value:
            setattr(node, head, new)
            return 1
        return 0
    sub = getattr(node, head)
    nxt = rest[0]
    if isinstance(nxt, str):
        if isinstance(sub, bytes):
            return _rewrite_item(node, head, sub, rest, keys, live)
        if not node.HasField(head):
            return 0
        return _rewrite(sub, rest, keys, live)
    # a repeated field: [] or [key] (every element), or an index
    items = list(range(len(sub))) if not isinstance(nxt, int) else \
        ([nxt] if nxt < len(sub) else [])
    changed = 0
    for i in items:
        item = sub[i]
        if isinstance(item, Message):
            k = {**keys, nxt[1]: getattr(item, nxt[1])} if isinstance(nxt, tuple) else keys
            if len(rest) > 1:
                changed += _rewrite(item, rest[1:], k, live)
        elif len(rest) == 1:          # a repeated scalar: replace the element itself
            new = live(item, keys)
            if new is not None and new != item:
                sub[i] = new
                changed += 1
    return changed



def _rewrite_item(node: Message, head: str, buf: bytes, rest: list, keys: dict, live) -> int:
    """A sync item's `cmd_buf`: decoded as the message its `cmd_id` names, rewritten, and
    encoded again (as `testbed.replay.tree` shows it: a path goes into it)."""
    cls = CMD_ITEM_TYPES.get(getattr(node, "cmd_id", None))
    if cls is None:
        return 0
    try:
        item = cls.FromString(buf)
    except (DecodeError, ValueError):
        return 0
    changed = _rewrite(item, rest, keys, live)
    if changed:
        setattr(node, head, item.SerializeToString())
    return changed
