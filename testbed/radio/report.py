"""The radio part of `testbed analyze CAPTURE --radio PROFILE`: a JSON section and a table,
with one plain sentence per client and profile."""

from __future__ import annotations

from typing import Sequence

from testbed.capture.analyze import Analysis

from .model import percent
from .profile import RadioProfile
from .timeline import capture_costs


def radio_section(path: str, analysis: Analysis, profiles: Sequence[RadioProfile]) -> dict:
    """The `"radio"` object of `testbed analyze --json`: the profiles used (parameters and
    sources) and, per client and profile, the cost and its summary sentence."""
    by_name = {p.name: p for p in profiles}
    clients = []
    for who, costs in capture_costs(path, profiles, analysis).items():
        for name, cost in costs.items():
            row = {"client": who, **cost.to_dict(),
                   "summary": cost.describe(by_name[name], who)}
            clients.append(row)
    return {"profiles": [p.summary() for p in profiles], "clients": clients}


def print_radio(console, section: dict) -> None:
    """The section as a table per profile, then the sentences."""
    from rich.table import Table

    for prof in section["profiles"]:
        rows = [c for c in section["clients"] if c["profile"] == prof["name"]]
        t = Table(title=f"radio: {prof['name']} ({prof['technology']}: "
                        f"{prof['state_machine']})")
        for col in ("client", "packets up/down", "wake-ups", "by server", "promotions",
                    "radio on s", "tail s", "signalling msgs", "energy J", "battery",
                    "battery a day"):
            t.add_column(col)
        for c in rows:
            day = c["battery_share_per_day"]
            t.add_row(c["client"], f"{c['packets_c2s']}/{c['packets_s2c']}",
                      str(c["wakeups"]), str(c["server_wakeups"]), str(c["promotions"]),
                      f"{c['radio_on_s']:.1f}", f"{c['tail_s']:.1f}",
                      str(c["signalling_messages"]), f"{c['energy_j']:.2f}",
                      percent(c["battery_share"]), "" if day is None else percent(day))
        console.print(t)
    if not section["clients"]:
        console.print("radio: no client traffic in this capture")
    for c in section["clients"]:
        console.print(c["summary"], markup=False, highlight=False, soft_wrap=True)
