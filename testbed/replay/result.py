"""What a replay found: one row per exchange, the JSON document, the table, the exit status.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from testbed.wire.choices import Choice

from .compare import Difference
from .masks import Mask
from .model import Exchange
from .tree import jsonable, show


class Status(Choice, what="replay status"):
    MATCH = "match"              # every field as recorded
    MASKED = "masked"            # equal once masks let some differences pass
    DIFF = "diff"                # a field differs
    MISSING = "missing"          # no live reply (or push) came
    UNEXPECTED = "unexpected"    # the lab sent what the capture does not have
    SKIPPED = "skipped"          # not replayed: its reason says why


@dataclass
class Row:
    """The outcome of one recorded exchange (or one unexpected live message)."""

    status: Status
    exchange: Optional[Exchange] = None
    diffs: list[Difference] = field(default_factory=list)
    masked: list[tuple[str, Mask]] = field(default_factory=list)
    detail: str = ""
    host: str = ""
    command: str = ""
    client: str = ""                 # the recorded user (name or uin) it was replayed for

    @property
    def index(self) -> Optional[int]:
        return self.exchange.index if self.exchange else None

    @property
    def frame(self) -> Optional[int]:
        """The recorded frame a difference is in: the reply's, else the request's."""
        x = self.exchange
        if x is None:
            return None
        return x.reply.frame if x.reply is not None else x.frame

    def to_dict(self) -> dict[str, Any]:
        x = self.exchange
        return {"exchange": self.index, "frame": self.frame,
                "request_frame": x.frame if x else None, "status": str(self.status),
                "kind": str(x.kind) if x else None, "host": self.host,
                "command": self.command, "client": self.client,
                "t": round(x.start, 6) if x else None, "detail": self.detail,
                "diffs": [diff_dict(self, d) for d in self.diffs],
                "masked": [{"path": p, "mask": m.name, "origin": m.origin}
                           for p, m in self.masked]}


def diff_dict(row: Row, d: Difference) -> dict[str, Any]:
    return {"exchange": row.index, "frame": row.frame, "host": row.host,
            "command": row.command, "path": d.path, "recorded": jsonable(d.recorded, d.path),
            "replayed": jsonable(d.replayed, d.path), "note": d.note}


@dataclass
class ReplayResult:
    capture: str
    pace: str
    rows: list[Row] = field(default_factory=list)
    opened: list[tuple[str, str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    substituted: int = 0
    faults: Optional[dict] = None       # the plan, its seed, and what it did (`--fault`)

    def by(self, status: Status) -> list[Row]:
        return [r for r in self.rows if r.status is status]

    @property
    def recorded(self) -> list[Row]:
        return [r for r in self.rows if r.exchange is not None]

    @property
    def replayed(self) -> int:
        """Exchanges sent again (everything recorded but the skipped)."""
        return sum(1 for r in self.recorded if r.status is not Status.SKIPPED)

    @property
    def diffs(self) -> list[dict]:
        return [diff_dict(r, d) for r in self.rows for d in r.diffs]

    @property
    def first_divergence(self) -> Optional[Row]:
        for r in self.rows:
            if r.status in (Status.DIFF, Status.MISSING, Status.UNEXPECTED):
                return r
        return None

    def masks_used(self) -> list[dict]:
        """Every mask that let a difference pass, with how often."""
        seen: Counter = Counter()
        for r in self.rows:
            for path, m in r.masked:
                key = (r.command, m.path or "(whole reply)", m.name, m.origin)
                seen[key] += 1
        return [{"command": c, "path": p, "mask": n, "origin": o, "times": seen[(c, p, n, o)]}
                for (c, p, n, o) in sorted(seen)]

    def exit_status(self, strict: bool = False) -> int:
        """1 on any diff or missing reply (and with `strict` on an unused or unexpected
        exchange), 1 when nothing at all could be replayed, else 0."""
        if self.by(Status.DIFF) or self.by(Status.MISSING):
            return 1
        if strict and (self.by(Status.SKIPPED) or self.by(Status.UNEXPECTED)):
            return 1
        if self.recorded and not self.replayed:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """The `--json` document."""
        rec = self.recorded
        first = self.first_divergence
        return {
            "capture": self.capture, "pace": self.pace,
            "exchanges": len(rec), "replayed": self.replayed,
            "matched": len(self.by(Status.MATCH)), "masked": len(self.by(Status.MASKED)),
            "diffs": self.diffs,
            "missing": [r.to_dict() for r in self.by(Status.MISSING)],
            "unused": [{"exchange": r.index, "frame": r.frame, "host": r.host,
                        "command": r.command, "reason": r.detail}
                       for r in self.by(Status.SKIPPED)],
            "unexpected": [{"host": r.host, "command": r.command, "detail": r.detail,
                            "after": r.index} for r in self.by(Status.UNEXPECTED)],
            "first_divergence": None if first is None else first.to_dict(),
            "masks": self.masks_used(),
            "rebound": self.substituted,
            "warnings": list(self.warnings),
            "targets": sorted({f"{a}:{p}" for _, a, p in self.opened}),
            "faults": self.faults,
            "wall_s": round(self.wall_s, 3),
            "rows": [r.to_dict() for r in self.rows],
        }


def render(result: ReplayResult, console) -> None:
    """The table, one row per exchange, then the first divergence and the masks used."""
    from rich.markup import escape
    from rich.table import Table

    style = {Status.MATCH: "green", Status.MASKED: "cyan", Status.DIFF: "red",
             Status.MISSING: "red", Status.UNEXPECTED: "yellow", Status.SKIPPED: "dim"}
    t = Table(title=f"replay of {escape(result.capture)} ({result.pace})")
    for col, kw in (("#", {"justify": "right"}), ("frame", {"justify": "right"}),
                    ("t (s)", {"justify": "right"}), ("client", {}), ("host", {}),
                    ("exchange", {}), ("result", {}), ("detail", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for r in result.rows:
        x = r.exchange
        t.add_row(str(r.index or ""), str(r.frame or ""),
                  f"{x.start:.1f}" if x else "", escape(r.client), escape(_short(r.host)),
                  escape(r.command), f"[{style[r.status]}]{r.status}[/]", escape(summary(r)))
    console.print(t)
    counts = Counter(str(r.status) for r in result.rows)
    console.print(", ".join(f"{counts.get(str(s), 0)} {s}" for s in Status)
                  + f" ({result.replayed} of {len(result.recorded)} exchanges replayed in "
                    f"{result.wall_s:.1f} s)", markup=False, highlight=False)
    first = result.first_divergence
    if first is not None:
        where = f"exchange {first.index}, frame {first.frame}" if first.exchange else \
            f"after exchange {first.index}" if first.index else "live"
        console.print(f"first divergence: {where}, {first.command} on {first.host}: "
                      f"{summary(first)}", markup=False, highlight=False)
    used = result.masks_used()
    if used:
        console.print("masks used: " + "; ".join(
            f"{m['command']} {m['path']} {m['mask']} ({m['origin']}) x{m['times']}"
            for m in used), markup=False, highlight=False)
    if result.faults is not None:
        f = result.faults
        console.print(f"faults: {', '.join(f['plan'])} (seed {f['seed']}): "
                      + ("; ".join(f"{a['fault']} at {a['t']:.1f} s ({a['what']} #{a['n']})"
                                   for a in f["applied"]) or "none applied"),
                      markup=False, highlight=False)
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False, highlight=False)


def summary(r: Row) -> str:
    if r.diffs:
        d = r.diffs[0]
        more = f" (+{len(r.diffs) - 1} more)" if len(r.diffs) > 1 else ""
        return (f"{d.path}: recorded {show(d.recorded, d.path)}, replayed "
                f"{show(d.replayed, d.path)}{more}")
    if r.masked and not r.detail:
        return "masked: " + ", ".join(sorted({f"{p} {m.name}" for p, m in r.masked}))[:200]
    return r.detail


def _short(host: str) -> str:
    return host.replace(".weixin.qq.com", "")


def render_server_report(report: dict, console) -> None:
    """Server replay's report (`ServerScript.report()`) as a table: what no live request
    matched, and what the capture has that nobody asked for; then the counts."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"server replay of {escape(report['capture'])}")
    for col, kw in (("", {}), ("t (s)", {"justify": "right"}), ("user", {}), ("where", {}),
                    ("request", {}), ("detail", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for m in report["unmatched"]:
        t.add_row(f"[red]unmatched ({m['action']})[/]", f"{m['t']:.1f}", escape(m["user"] or ""),
                  m["door"], escape(m["request"]), escape(m["detail"]))
    for x in report["never_asked"]:
        t.add_row("[yellow]never asked[/]", f"{x['t']:.1f}", escape(x["user"] or ""),
                  escape(_short(x["host"])), escape(x["command"]),
                  f"exchange {x['exchange']}, frame {x['frame']}")
    for x in report["pushes_never_sent"]:
        t.add_row("[yellow]push not sent[/]", f"{x['t']:.1f}", escape(x["user"] or ""),
                  "long", "NOTIFY", escape(f"exchange {x['exchange']}: {x['why']}"))
    if t.row_count:
        console.print(t)
    if report.get("masks"):
        console.print("request masks: " + "; ".join(
            f"{m['command']} {m['path']} {m['mask']} ({m['origin']})" for m in report["masks"]),
            markup=False, highlight=False)
    console.print(f"{report['answered']} of {report['replayable']} recorded requests answered, "
                  f"{len(report['unmatched'])} live requests unmatched "
                  f"({report['unmatched_policy']}), {report['pushes_sent']} of "
                  f"{report['pushes']} pushes sent, {report['heartbeats_recorded']} recorded "
                  f"heartbeats (answered by the link itself), "
                  f"{len(report['not_replayable'])} recorded exchanges not replayable",
                  markup=False, highlight=False)
