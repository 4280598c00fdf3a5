"""The end of a session's ladder as plain text: what the pytest plugin prints when a test
fails (the HTML report draws the whole ladder)."""

from __future__ import annotations

from .ladder import build_ladder, message_rows

EXCERPT_ROWS = 25


def ladder_excerpt(analysis, rows: int = EXCERPT_ROWS) -> str:
    """The last `rows` messages of the ladder, a line each: protocol time, the column the
    arrow leaves, the one it reaches (`<->` for a row with its reply), the label and the
    first packet; repeated messages collapsed as in the report (`×N`)."""
    ladder = build_ladder(analysis)
    drawn = list(message_rows(ladder))
    if not drawn:
        return "(no messages on the wire)"
    shown = drawn[-rows:]
    titles = [c.title if c.role != "phone" or not c.subtitle else f"{c.title} {c.subtitle}"
              for c in ladder.columns]
    width = max(len(titles[r.a]) for r in shown)
    lines = [f"... {len(drawn) - len(shown)} earlier messages"] if len(drawn) > len(shown) \
        else []
    for r in shown:
        arrow = "<->" if r.back else "-->"
        lines.append(f"{r.t:10.3f} s  {titles[r.a]:>{width}} {arrow} {titles[r.b]}  "
                     f"{r.label}  (packet {r.packet})")
    return "\n".join(lines)
