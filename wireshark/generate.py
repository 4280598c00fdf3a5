#!/usr/bin/env python3
"""Render the Lua command table of `wechat_longlink.lua` from `testbed/wire/commands.py`.

The dissector carries its own copy of the long-link command table (cmd -> name, request
message type, response message type) between two marker comments. This script rewrites
that block from `COMMANDS`, so the command table stays the one table of the project:

    python wireshark/generate.py           # rewrite the block in wechat_longlink.lua
    python wireshark/generate.py --check   # exit 1 if the committed block is stale

`tests/wireshark/test_generate.py` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "wechat_longlink.lua"

BEGIN = "-- BEGIN GENERATED COMMAND TABLE"
END = "-- END GENERATED COMMAND TABLE"


def _commands():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from testbed.wire.commands import COMMANDS

    return COMMANDS


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _type_name(msg) -> str:
    """Fully qualified protobuf name (`testbed.mm.NewSendMsgRequest`), or nil."""
    return "nil" if msg is None else _lua_str(msg.DESCRIPTOR.full_name)


def render_block(commands: Iterable | None = None) -> str:
    """The Lua text between the markers (markers included), one row per long-link cmd."""
    rows = sorted((c for c in (commands if commands is not None else _commands())
                   if c.cmd is not None), key=lambda c: c.cmd)
    lines = [BEGIN,
             "-- Rendered by wireshark/generate.py from testbed/wire/commands.py (COMMANDS).",
             "-- Do not edit by hand: run `python wireshark/generate.py`.",
             "local COMMANDS = {"]
    for c in rows:
        push = ", push_only = true" if c.push_only else ""
        lines.append(f"    [{c.cmd}] = {{ name = {_lua_str(c.name)}, "
                     f"request = {_type_name(c.request)}, "
                     f"response = {_type_name(c.response)}{push} }},")
    lines += ["}"]
    from testbed.wire import pb  # (importable once _commands() has set sys.path)

    lines += ["-- every response starts with BaseResponse: what an error reply decodes as",
              f"local ERROR_RESPONSE = {_type_name(pb.ErrorResponse)}", END]
    return "\n".join(lines)


def splice(text: str, block: str) -> str:
    """`text` with everything from the BEGIN marker line to the END marker line replaced."""
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < 0 or stop < start:
        raise ValueError(f"markers {BEGIN!r} ... {END!r} not found in the Lua file")
    return text[:start] + block + text[stop + len(END):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if the Lua table is not current")
    ap.add_argument("--lua", type=Path, default=LUA, help=f"the dissector (default {LUA})")
    args = ap.parse_args(argv)
    old = args.lua.read_text(encoding="utf-8")
    new = splice(old, render_block())
    if args.check:
        if new != old:
            print(f"{args.lua}: command table is stale; run python wireshark/generate.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.lua.write_text(new, encoding="utf-8")
        print(f"{args.lua}: command table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
