"""`testbed profiles`: the built-in lab profiles."""

from __future__ import annotations

from rich.markup import escape

import dataclasses

from .output import out_console, print_json


def profiles(args) -> int:
    """A table of the built-in profiles (stdout), or every field of each with `--json`."""
    from rich.table import Table

    from testbed.lab.profiles import load_profile, profile_names

    loaded = [load_profile(name) for name in profile_names()]
    if args.json:
        print_json([dataclasses.asdict(p) for p in loaded])
        return 0
    t = Table(title="lab profiles (testbed lab up --profile NAME)")
    for col in ("profile", "heartbeat", "ports", "description"):
        t.add_column(col)
    for p in loaded:
        ports = ", ".join(f"{k} {v}" for k, v in p.unprivileged_ports.items())
        t.add_row(p.name, f"{p.heartbeat_s:g} s", ports, escape(p.description))
    out_console().print(t)
    return 0
