"""Masks: named, typed rules for reply fields that may differ from the recording. A
replayed value passes a mask when:

- `ignore`: always (the field is not compared);
- `present`: it is set (not empty, not zero) exactly where the recorded one was;
- `same-type`: it has the recorded value's type (text, number, list, ...);
- `tolerance N`: it is a number within N of the recorded one;
- `captured KIND` (also `equals-a-captured-value KIND`): it equals the live value an
  earlier reply handed out for the recorded one (the re-binding table's kinds: msg_id,
  cdn_url, ...); the first time a value is seen it is captured;
- `set`: a repeated field holds the same elements in any order (lists compare in order
  otherwise).

Defaults per command live in one table (`DEFAULTS`); the re-binding table
(`testbed.wire.rebinding`) adds a `captured` mask for every field a reply hands out. A mask
file (`--mask PATH`, TOML or JSON) adds to them, one table per command name (`NEWSYNC`,
`GETCONTACT`, ...; `DNS`, `GET` and `NOTIFY` for the exchanges that are not commands, `*`
for all), each entry `"field path" = "mask"`:

    [NEWSYNC]
    "cmd_list[].cmd_buf.content" = "ignore"
    [LBSFIND]
    "contacts" = "set"
    "contacts[].distance_m" = "tolerance 50"

Paths are those of `testbed.replay.tree`; an HTTP reply's status and content type are
`http.status` and `http.content_type`, a plain GET's body is `body`.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Optional

from testbed.wire.choices import Choice, unknown
from testbed.wire.commands import BY_NAME
from testbed.wire.rebinding import KINDS, rebinding

from .tree import field_error, matches, split_path


class MaskType(Choice, what="mask"):
    IGNORE = "ignore"
    PRESENT = "present"
    SAME_TYPE = "same-type"
    TOLERANCE = "tolerance"
    CAPTURED = "captured"
    SET = "set"


ALIASES = {"equals-a-captured-value": MaskType.CAPTURED}
#: what a mask file's paths go into: replies (client replay) or requests (server replay)
REPLY, REQUEST = "reply", "request"


@dataclass(frozen=True)
class Mask:
    """One rule: a path pattern, its type, and the type's argument (a tolerance, a kind)."""

    path: str
    type: MaskType
    arg: Any = None
    origin: str = "default"          # "default", "re-binding" or the mask file's path
    parts: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(map(_freeze, split_path(self.path))))

    @property
    def name(self) -> str:
        """As written in a mask file: `tolerance 50`, `captured msg_id`."""
        return f"{self.type} {self.arg}" if self.arg is not None else str(self.type)

    def covers(self, path_parts: list) -> bool:
        return matches([_thaw(p) for p in self.parts], path_parts)


def _freeze(part):
    return tuple(part) if isinstance(part, list) else part


def _thaw(part):
    return [] if part == () else part


def parse_mask(path: str, text: str, origin: str) -> Mask:
    """`"tolerance 50"` for `path` -> a Mask; ValueError naming what is wrong."""
    words = str(text).split()
    if not words:
        raise ValueError(f"{origin}: {path!r}: an empty mask")
    name = ALIASES.get(words[0], words[0])
    try:
        kind = MaskType(name)
    except ValueError as exc:
        raise ValueError(f"{origin}: {path!r}: {exc}") from None
    args = words[1:]
    if kind is MaskType.TOLERANCE:
        if len(args) != 1:
            raise ValueError(f"{origin}: {path!r}: tolerance takes one number")
        try:
            arg: Any = float(args[0])
        except ValueError:
            raise ValueError(f"{origin}: {path!r}: tolerance {args[0]!r} is not a number") \
                from None
        if arg < 0:
            raise ValueError(f"{origin}: {path!r}: a tolerance is not negative")
    elif kind is MaskType.CAPTURED:
        if len(args) != 1 or args[0] not in KINDS:
            raise ValueError(f"{origin}: {path!r}: captured takes a kind, one of "
                             f"{', '.join(KINDS)}")
        arg = args[0]
    else:
        if args:
            raise ValueError(f"{origin}: {path!r}: {kind} takes no argument")
        arg = None
    return Mask(path, kind, arg, origin)


def _defaults(rows: dict[str, dict[str, str]]) -> dict[str, tuple[Mask, ...]]:
    return {name: tuple(parse_mask(p, m, "default") for p, m in row.items())
            for name, row in rows.items()}


_SYNC = {"cmd_list[].cmd_buf.create_time": "present"}
#: the default masks, per command (and `DNS`, `GET`, `NOTIFY`, `*` for every exchange):
#: server clocks differ from run to run; everything else a fresh lab answers the same
DEFAULTS: dict[str, tuple[Mask, ...]] = _defaults({
    "NEWSYNC": _SYNC,
    "NEWINIT": _SYNC,
    "NEWSENDMSG": {"msgs[].create_time": "present"},
})


#: what the exchanges that are not commands have in their reply trees
NOT_COMMANDS = {"DNS": ("rcode", "addresses", "ttls"), "GET": ("http", "body"),
                "NOTIFY": ("selector",), "*": ()}
_HTTP = ("http", "http.status", "http.content_type")


def path_error(name: str, path: str, side: str = REPLY) -> Optional[str]:
    """Why a mask for exchanges named `name` at `path` could never apply (an unknown
    command, a field its reply, or with `side` REQUEST its request, does not have), or
    None."""
    if side == REQUEST:
        if name == "*":
            return None
        if name in NOT_COMMANDS:
            return (f"[{name}]: server replay matches a {name} by its name or URL alone; a "
                    f"request mask is for a command's request fields")
        command = BY_NAME.get(name)
        if command is None:
            return f"[{name}]: {unknown('command', name, list(BY_NAME) + ['*'])}"
        if command.request is None:
            return f"[{name}] {path!r}: its request has no body"
        err = field_error(command.request, path)
        return None if err is None else f"[{name}] {err}"
    if name in NOT_COMMANDS:
        first = split_path(path)[:1]
        allowed = NOT_COMMANDS[name]
        if allowed and (not first or first[0] not in allowed):
            return f"[{name}] {path!r}: its reply has {', '.join(allowed)}"
        return None
    command = BY_NAME.get(name)
    if command is None:
        return f"[{name}]: {unknown('command', name, list(BY_NAME) + list(NOT_COMMANDS))}"
    if path in _HTTP or command.response is None:
        return None if command.response is not None or path == "body_len" else \
            f"[{name}] {path!r}: its reply has no body (only body_len)"
    err = field_error(command.response, path)
    return None if err is None else f"[{name}] {err}"


def load_mask_file(path: str | os.PathLike, side: str = REPLY) -> dict[str, tuple[Mask, ...]]:
    """The masks of a TOML or JSON mask file, for replies (client replay's `--mask`) or,
    with `side` REQUEST, for requests (server replay's `lab up --mask`: paths into a
    command's request); ValueError with the file's name for a file that is not one."""
    origin = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ValueError(f"{origin}: cannot read the mask file: {exc.strerror}") from None
    try:
        doc = json.loads(raw) if origin.endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{origin}: not a mask file: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{origin}: a mask file is a table of commands")
    out: dict[str, tuple[Mask, ...]] = {}
    for name, row in doc.items():
        if not isinstance(row, dict):
            raise ValueError(f"{origin}: [{name}] is a table of \"path\" = \"mask\"")
        for p in row:
            err = path_error(name, p, side)
            if err is not None:
                raise ValueError(f"{origin}: {err}")
        out[name] = tuple(parse_mask(p, m, origin) for p, m in row.items())
    return out


class MaskSet:
    """The masks in force: the defaults, the re-binding table's, and the mask files'. A
    mask file's mask for a path wins over a default for it."""

    def __init__(self, files: Optional[list[dict[str, tuple[Mask, ...]]]] = None) -> None:
        self.extra: dict[str, list[Mask]] = {}
        for doc in files or []:
            for name, masks in doc.items():
                self.extra.setdefault(name, []).extend(masks)

    def for_exchange(self, name: str) -> list[Mask]:
        """The masks of an exchange named `name` (a command, DNS, GET, NOTIFY), the mask
        files' first (the first that covers a path is the one that applies)."""
        out = self.extra.get(name, []) + self.extra.get("*", [])
        out += list(DEFAULTS.get(name, ()) + DEFAULTS.get("*", ()))
        out += [Mask(f.path, MaskType.CAPTURED, f.kind, "re-binding")
                for f in rebinding(name).hands_out]
        return out

    def for_request(self, name: str) -> list[Mask]:
        """The masks server replay matches a live request of command `name` with (a MaskSet
        of request mask files): the files' first, then every field the client picks afresh
        on each run (the re-binding table's `picks`: its device id, the ids of its messages
        and uploads) is ignored; everything else must be as recorded."""
        out = self.extra.get(name, []) + self.extra.get("*", [])
        return out + [Mask(f.path, MaskType.IGNORE, None, "the client picks it")
                      for f in rebinding(name).picks]

    def listed(self) -> list[dict[str, str]]:
        """The mask files' masks, as JSON: command, path, mask, origin."""
        return [{"command": name, "path": m.path, "mask": m.name, "origin": m.origin}
                for name, masks in self.extra.items() for m in masks]
