"""Replies as trees of plain values, so a recorded one and a live one compare field by field.

A protobuf message becomes a dict of its fields (every scalar, default values included, so a
field that went from 3 to 0 shows; a sub-message only where it is set), repeated fields
lists; a sync item's `cmd_buf` is decoded as the message its `cmd_id` names, so a path goes
into it (`cmd_list[2].cmd_buf.content`). An HTTP reply is `http.status` and
`http.content_type`, then a CGI's response fields beside them, or a plain GET's `body`: JSON
as its values, an image as its SHA-256 and length, other text as text. A DNS answer is
its rcode, TTLs and the lab host each address belongs to (the address itself differs
from lab to lab).

Paths are dotted field names with `[i]` for the i-th element of a repeated field; a pattern
(in masks and the re-binding table) may write `[]` for any element.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable, Iterator, Optional

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from testbed.wire.commands import CMD_ITEM_TYPES

REDACTED = "(password: not shown)"
SECRET_FIELDS = frozenset({"password"})
_BIG_BYTES = 64                   # bytes shown as a digest beyond this length


def message_tree(msg: Optional[Message]) -> Any:
    """A protobuf message as a dict of plain values (None stays None)."""
    if msg is None:
        return None
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                out[fd.name] = [message_tree(v) for v in value]
            else:
                out[fd.name] = list(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            out[fd.name] = message_tree(value) if msg.HasField(fd.name) else None
        else:
            out[fd.name] = value
    if "cmd_id" in out and "cmd_buf" in out:      # a sync item: its body decoded
        out["cmd_buf"] = _cmd_item(out["cmd_id"], out["cmd_buf"])
    return out


def _cmd_item(cmd_id: int, buf: bytes) -> Any:
    cls = CMD_ITEM_TYPES.get(cmd_id)
    if cls is None:
        return buf
    try:
        return message_tree(cls.FromString(buf))
    except (DecodeError, ValueError):
        return buf


def decode_body(cls, body: bytes) -> Any:
    """A body decoded as `cls` (a protobuf class) into a tree; raw bytes when it does not
    decode, None when `cls` is None and the body is empty."""
    if cls is None:
        return None if not body else body
    try:
        return message_tree(cls.FromString(body))
    except (DecodeError, ValueError):
        return body


def http_body_tree(content_type: str, body: bytes) -> Any:
    """A plain HTTP body by its type: JSON values, an image's digest, text."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype.endswith("json"):
        try:
            return json.loads(body)
        except ValueError:
            pass
    if ctype.startswith("text/") or ctype.endswith("json"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return digest(body)


def digest(body: bytes) -> dict[str, Any]:
    """Bytes compared by their SHA-256 (an image, media chunks)."""
    return {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}


def dns_tree(rcode: int, addresses: list[str], ttls: list[int],
             host_of: Callable[[str], Optional[str]]) -> dict[str, Any]:
    """A DNS answer with each address as the lab host it belongs to, or the address itself
    where no host has it. (CNAMEs are not compared: the lab answers none.)"""
    return {"rcode": rcode, "addresses": [host_of(a) or a for a in addresses],
            "ttls": list(ttls)}


# ---------------------------------------------------------------------- paths
_PART = re.compile(r"([^.\[\]]+)|\[(\d*|[A-Za-z_]\w*)\]")


def split_path(pattern: str) -> list[Any]:
    """`a.b[].c[2]` -> ['a', 'b', [], 'c', 2]: names, `[]` (any element), indices, and
    `[name]` (any element, keyed by its field `name`) as ('key', name)."""
    parts: list[Any] = []
    for name, index in _PART.findall(pattern):
        if name:
            parts.append(name)
        elif index == "":
            parts.append([])
        elif index.isdigit():
            parts.append(int(index))
        else:
            parts.append(("key", index))
    return parts


def walk(tree: Any, parts: list[Any], path: str = "") -> Iterator[tuple[str, Any, dict]]:
    """(concrete path, value, keys) of every value a split pattern reaches in a tree;
    `keys` holds the key fields of the keyed elements on the way."""
    yield from _walk(tree, parts, path, {})


def _walk(node: Any, parts: list[Any], path: str, keys: dict) -> Iterator[tuple[str, Any, dict]]:
    if not parts:
        yield path, node, keys
        return
    head, rest = parts[0], parts[1:]
    if isinstance(head, str):
        if isinstance(node, dict) and head in node:
            yield from _walk(node[head], rest, f"{path}.{head}" if path else head, keys)
        return
    if not isinstance(node, list):
        return
    if isinstance(head, int):
        if head < len(node):
            yield from _walk(node[head], rest, f"{path}[{head}]", keys)
        return
    for i, item in enumerate(node):
        k = keys
        if isinstance(head, tuple) and isinstance(item, dict):
            k = {**keys, head[1]: item.get(head[1])}
        yield from _walk(item, rest, f"{path}[{i}]", k)


def matches(pattern_parts: list[Any], path_parts: list[Any]) -> bool:
    """A concrete path (split) is one the pattern (split) names."""
    if len(pattern_parts) != len(path_parts):
        return False
    for p, q in zip(pattern_parts, path_parts):
        if isinstance(p, str):
            if p != q:
                return False
        elif isinstance(p, int):
            if p != q:
                return False
        elif not isinstance(q, int):   # [] or [key]: any element
            return False
    return True


def field_error(cls, pattern: str) -> Optional[str]:
    """Why `pattern` names no field of the protobuf class `cls` (as its tree has it: a sync
    item's `cmd_buf` holds any of the item types), or None when it names one."""
    desc = cls.DESCRIPTOR
    fd = None
    for part in split_path(pattern):
        if isinstance(part, str):
            if fd is not None and fd.is_repeated:
                return f"{pattern}: {fd.name} is repeated: write {fd.name}[] or {fd.name}[N]"
            if fd is not None and fd.name == "cmd_buf":
                found = [t.DESCRIPTOR.fields_by_name[part] for t in CMD_ITEM_TYPES.values()
                         if part in t.DESCRIPTOR.fields_by_name]
                names = sorted({f.name for t in CMD_ITEM_TYPES.values()
                                for f in t.DESCRIPTOR.fields})
                if not found:
                    return _no_field(pattern, part, "a sync item", names)
                fd, desc = found[0], found[0].message_type
                continue
            if desc is None:
                return f"{pattern}: {fd.name} has no fields"
            if part not in desc.fields_by_name:
                return _no_field(pattern, part, desc.name, list(desc.fields_by_name))
            fd = desc.fields_by_name[part]
            desc = fd.message_type
        else:
            if fd is None or not fd.is_repeated:
                return f"{pattern}: {fd.name if fd else 'the root'} is not repeated"
            if isinstance(part, tuple) and (desc is None or part[1] not in desc.fields_by_name):
                return f"{pattern}: the elements of {fd.name} have no field {part[1]}"
            fd = _Element(fd)
    return None


class _Element:
    """An element of a repeated field, for `field_error`'s walk."""

    def __init__(self, fd) -> None:
        self.name, self.is_repeated, self.message_type = fd.name, False, fd.message_type


def _no_field(pattern: str, part: str, where: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(part, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{pattern}: {where} has no field {part!r}{hint}"


# ---------------------------------------------------------------------- display
def show(value: Any, path: str = "") -> str:
    """A value for a table or JSON: strings and numbers as they are, long bytes as a
    digest, a password never."""
    if path.rsplit(".", 1)[-1] in SECRET_FIELDS:
        return REDACTED
    if isinstance(value, (bytes, bytearray)):
        if len(value) > _BIG_BYTES:
            return f"sha256:{hashlib.sha256(value).hexdigest()[:16]}… ({len(value)} bytes)"
        try:
            text = value.decode("utf-8")
            if text.isprintable():
                return repr(text)[1:-1] if text else "b''"
        except UnicodeDecodeError:
            pass
        return value.hex()
    if value is None:
        return "(absent)"
    if isinstance(value, (dict, list)):
        text = json.dumps(redact(value), ensure_ascii=False, default=_jsonable)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def redact(tree: Any) -> Any:
    """A tree without passwords."""
    if isinstance(tree, dict):
        return {k: REDACTED if k in SECRET_FIELDS else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return show(value)
    return str(value)


def jsonable(value: Any, path: str = "") -> Any:
    """A value for `--json`: plain JSON types, bytes shown as by `show`, no password."""
    if path.rsplit(".", 1)[-1] in SECRET_FIELDS:
        return REDACTED
    if isinstance(value, (bytes, bytearray)):
        return show(value)
    if isinstance(value, dict):
        return {k: jsonable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return str(value)
    return value


# ---------------------------------------------------------------------- replies
def long_reply_tree(command, body: bytes) -> Any:
    """A long-link reply: its body as the command's response (a NOOP's: its length)."""
    if command is None or command.response is None:
        return {"body_len": len(body)}
    return decode_body(command.response, body)


def http_reply_tree(status: int, content_type: str, body: bytes, command=None) -> dict:
    """An HTTP reply: `http` (status, content type), then a CGI's response message's fields
    beside it, or a plain GET's `body` by its content type."""
    out: dict[str, Any] = {"http": {"status": status, "content_type": content_type}}
    decoded = decode_body(command.response, body) if command is not None and status == 200 \
        else None
    if isinstance(decoded, dict):
        out.update(decoded)
    else:
        out["body"] = http_body_tree(content_type, body)
    return out


def push_tree(selector: Optional[int]) -> dict:
    return {"selector": selector}


def recorded_reply(x, host_of: Callable[[str], Optional[str]]) -> Any:
    """The tree of an exchange's recorded reply (None when the capture has none)."""
    from .model import ExchangeKind

    if x.reply is None:
        return None
    f = x.reply.event.fields
    if x.kind is ExchangeKind.DNS:
        return dns_tree(f.get("rcode", 0), f.get("addresses", []), f.get("ttls", []),
                        host_of)
    if x.kind in (ExchangeKind.CGI, ExchangeKind.HTTP):
        return http_reply_tree(f.get("status", 0), f.get("content_type", ""),
                               f.get("body", b""), x.command)
    if x.kind is ExchangeKind.PUSH:
        return push_tree(f.get("selector"))
    if x.kind in (ExchangeKind.LONG, ExchangeKind.HEARTBEAT):
        return long_reply_tree(x.command, f.get("body", b""))
    return None
