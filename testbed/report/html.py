"""`testbed report`: one self-contained HTML page for a capture.

The page fetches nothing: styles and the one script are inline, the diagrams are inline SVG,
no fonts, no images, and a Content-Security-Policy (`default-src 'none'`, the style and the
script allowed by their hashes only) makes the browser refuse anything else, so text from a
hostile capture that slipped past escaping still could not load or run anything. Every
string that comes from the capture (labels, hosts, URIs, addresses, verdict details) goes
through `html.escape` after control characters are made visible (`text.clean`).

Sections: a summary header; the storyboard verdicts; the heartbeat timeline of every long
link (NOOPs at their protocol times, idle intervals, deaths, reconnects); the ladder diagram
(a column per host, an arrow per message, repeats collapsed); the flow table (sortable); DNS.

The inline script counts the ladder's arrows, keeps labels inside the drawing, makes the
tables sortable and a click on an arrow highlight its connection; it sets
`data-rendered="ok"` on `<body>` when done and records any script error in `data-errors`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .decoded import decoded_rows, fields_attr
from .ladder import Ladder, Row, build_ladder
from .text import byte_size, clean
from .timeline import Timeline, build_timeline

__all__ = ["render_report", "write_report"]

# ---------------------------------------------------------------- geometry (px)
WIDTH = 1250                # the drawings' width
LADDER_X0 = 200             # the first lifeline
LADDER_RIGHT = 90           # room right of the last lifeline for labels
ROW_H = 26
IDLE_H = 20
MORE_H = 30
HEAD_H = 46
HB_X0 = 200
HB_RIGHT = 40
HB_LANE_H = 78
HB_AXIS_H = 28
MAX_TABLE_ROWS = 2000       # flows / DNS names listed
MAX_LANES = 40              # long links (chains of reconnects) drawn in the timeline
CHAR_W = 6.6                # average width of a 12 px character, for layout estimates

SHORT_TITLES = {"long.weixin.qq.com": "long", "short.weixin.qq.com": "short",
                "mapi.mapabc.com": "mapabc", "wx.qlogo.cn": "qlogo", "mmsns.qpic.cn": "qpic"}


def esc(value: Any, limit: Optional[int] = None) -> str:
    """Capture text, printable and escaped for HTML text or a quoted attribute."""
    return html.escape(clean(value, limit), quote=True)


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return esc(value)


def _human_s(seconds: float) -> str:
    """300 -> '5 min', 7231 -> '2 h 0 min', 42.5 -> '42.5 s'."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60} min"


# ---------------------------------------------------------------- the ladder
def _col_x(ladder: Ladder) -> list[float]:
    n = len(ladder.columns)
    if n <= 1:
        return [LADDER_X0]
    step = (WIDTH - LADDER_RIGHT - LADDER_X0) / (n - 1)
    return [LADDER_X0 + i * step for i in range(n)]


def _arrow(x1: float, x2: float, y: float, cls: str, dashed: bool = False,
           width: float = 1.6) -> str:
    """A horizontal arrow from x1 to x2 (a small loop when they are the same column)."""
    if abs(x2 - x1) < 1:
        return (f'<path class="ln {cls}" d="M{x1:.1f},{y - 5:.1f} h26 v10 h-22" fill="none" '
                f'stroke-width="{width}"/>'
                f'<polygon class="ah {cls}" points="{x1:.1f},{y + 5:.1f} {x1 + 7:.1f},'
                f'{y + 1.5:.1f} {x1 + 7:.1f},{y + 8.5:.1f}"/>')
    d = 1 if x2 > x1 else -1
    xs, xe = x1 + 3 * d, x2 - 3 * d
    tip = xe
    base = tip - 8 * d
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return (f'<line class="ln {cls}" x1="{xs:.1f}" y1="{y:.1f}" x2="{base:.1f}" y2="{y:.1f}" '
            f'stroke-width="{width}"{dash}/>'
            f'<polygon class="ah {cls}" points="{tip:.1f},{y:.1f} {base:.1f},{y - 4:.1f} '
            f'{base:.1f},{y + 4:.1f}"/>')


def _idle_threshold(rows: Sequence[Row]) -> float:
    gaps = [b.t - a.t for a, b in zip(rows, rows[1:]) if b.t > a.t and not (a.gap or b.gap)]
    med = statistics.median(gaps) if gaps else 0.0
    return max(30.0, 10 * med)


def _flows_attr(row: Row) -> str:
    return " ".join(str(int(f)) for f in row.flows if isinstance(f, int))


def _flow_tag(row: Row) -> str:
    flows = [f for f in row.flows if isinstance(f, int)]
    if not flows:
        return "udp" if row.kind.startswith("dns") else ""
    if len(flows) == 1:
        return f"#{flows[0]}"
    return f"#{flows[0]}+{len(flows) - 1}"


def _chat_text(doc: Optional[dict]) -> str:
    """The text of a chat message a row carries in clear (a NEWSENDMSG's, a sync's first),
    else ""."""
    message = ((doc or {}).get("fields") or {}).get("message")
    if not isinstance(message, dict):
        return ""
    for key in ("msgs", "add_msgs"):
        for m in message.get(key) or []:
            if isinstance(m, dict) and m.get("content") and m.get("msg_type", 1) == 1:
                return clean(m["content"], 60)
    return ""


def render_ladder(ladder: Ladder, decoded: Optional[dict[int, dict]] = None) -> str:
    """The ladder as SVG; `decoded`: {row position: its event decoded}, carried by the row
    for the detail panel (`testbed.report.decoded`)."""
    decoded = decoded or {}
    xs = _col_x(ladder)
    step = xs[1] - xs[0] if len(xs) > 1 else 200
    use_short = step < 150
    # --- the sticky header: one box per column
    head = [f'<svg class="ladder-head" width="{WIDTH}" height="{HEAD_H}" '
            f'viewBox="0 0 {WIDTH} {HEAD_H}" role="img" aria-label="hosts">',
            '<text class="th" x="78" y="27" text-anchor="end">t (s)</text>',
            '<text class="th" x="88" y="27">flow</text>']
    for col, x in zip(ladder.columns, xs):
        title = SHORT_TITLES.get(col.title, col.title) if use_short else col.title
        w = min(step - 8, max(74.0, CHAR_W * max(len(title), len(col.subtitle)) + 16))
        head.append(f'<g class="col col-{esc(col.role)}" data-col="{esc(col.key)}">'
                    f'<title>{esc(col.title)} {esc(col.subtitle)}</title>'
                    f'<rect x="{x - w / 2:.1f}" y="4" width="{w:.1f}" height="38" rx="6"/>'
                    f'<text class="ct" x="{x:.1f}" y="20" text-anchor="middle">'
                    f'{esc(title, 28)}</text>'
                    f'<text class="cs" x="{x:.1f}" y="35" text-anchor="middle">'
                    f'{esc(col.subtitle, 30)}</text></g>')
    head.append("</svg>")

    # --- the rows
    body: list[str] = []
    y = 0.0
    threshold = _idle_threshold(ladder.rows)
    prev: Optional[Row] = None
    arrows = 0
    for i, row in enumerate(ladder.rows):
        if row.gap:
            body.append(f'<g class="more" transform="translate(0,{y:.1f})">'
                        f'<rect class="band" x="0" y="2" width="{WIDTH}" '
                        f'height="{MORE_H - 4}" rx="4"/>'
                        f'<text x="{WIDTH / 2:.1f}" y="{MORE_H / 2 + 4:.1f}" '
                        f'text-anchor="middle">{esc(row.label)}</text></g>')
            y += MORE_H
            prev = None
            continue
        if prev is not None and row.t - (prev.end_t or prev.t) > threshold:
            idle = row.t - (prev.end_t or prev.t)
            body.append(f'<g class="idle" transform="translate(0,{y:.1f})">'
                        f'<text x="78" y="{IDLE_H / 2 + 4:.1f}" text-anchor="end">'
                        f'⋯</text>'
                        f'<text x="{LADDER_X0 + 10:.1f}" y="{IDLE_H / 2 + 4:.1f}">'
                        f'{esc(_human_s(idle))} without a message</text></g>')
            y += IDLE_H
        xa, xb = xs[row.a], xs[row.b]
        cls = f"s-{row.style}" if row.style else "s-other"
        label = row.label
        said = _chat_text(decoded.get(i))
        shown = clean(f"{label} “{said}”" if said and not row.collapsed else label, 96)
        ends = " ".join(ladder.columns[k].title for k in (row.a, row.b))
        tip = html.escape("\n".join(clean(d, 300) for d in [label, *row.detail]), quote=True)
        classes = f"msg {cls}" + (" collapsed" if row.collapsed else "")
        body.append(
            f'<g class="{classes}" data-kind="{esc(row.kind)}" data-label="{esc(label)}" '
            f'data-count="{row.count}" data-flows="{esc(_flows_attr(row))}" '
            f'data-ends="{esc(ends)}" '
            f'data-t="{row.t:.3f}" data-i="{i}"'
            + (f' data-fields="{html.escape(fields_attr(decoded[i]), quote=True)}"'
               if i in decoded else "")
            + f' transform="translate(0,{y:.1f})">'
            f'<title>{tip}</title>'
            f'<rect class="hit" x="0" y="0" width="{WIDTH}" height="{ROW_H}"/>'
            f'<text class="tt" x="78" y="17" text-anchor="end">{row.t:.1f}</text>'
            f'<text class="ft" x="88" y="17">{esc(_flow_tag(row))}</text>'
            + _arrow(xa, xb, 17.5, cls, width=2.6 if row.collapsed else 1.6)
            + (_arrow(xb, xa, 22.5, cls, dashed=True, width=1.1) if row.back else "")
            + f'<text class="lb" x="{min(xa, xb) + 9:.1f}" y="11.5">{esc(shown)}</text></g>')
        arrows += 1
        y += ROW_H
        prev = row
    if not arrows:
        body.append(f'<text class="empty" x="{LADDER_X0 + 10}" y="24">no message in this '
                    f'capture</text>')
        y = 40.0
    height = max(y, 40)
    lifelines = []
    for col, x in zip(ladder.columns, xs):
        lifelines.append(f'<line class="life life-{esc(col.role)}" x1="{x:.1f}" y1="0" '
                         f'x2="{x:.1f}" y2="{height:.1f}"/>')
    svg = (f'<svg id="ladder-svg" class="ladder" width="{WIDTH}" height="{height:.0f}" '
           f'viewBox="0 0 {WIDTH} {height:.0f}" data-arrows="{arrows}" '
           f'role="img" aria-label="ladder diagram">'
           + "".join(lifelines) + "".join(body) + "</svg>")
    return f'<div class="sticky">{"".join(head)}</div>{svg}'


# ---------------------------------------------------------------- heartbeat timeline
def _nice_step(span: float, max_ticks: int = 12) -> float:
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400):
        if span / s <= max_ticks:
            return s
    return 86400 * math.ceil(span / 86400 / max_ticks)


def _tick_label(t: float, step: float) -> str:
    if t == 0:
        return "0"
    if step >= 3600 and t % 3600 == 0:
        return f"{int(t // 3600)} h"
    if step >= 60:
        return f"{int(t // 60)} min" if t % 60 == 0 else f"{t / 60:.1f} min"
    return f"{t:g} s"


def _bins(beats, X, px: float = 3.0) -> list[list]:
    """Beats grouped so that no two ticks are drawn closer than `px` pixels."""
    groups: list[list] = []
    last_x = None
    for b in beats:
        x = X(b.t)
        if groups and last_x is not None and x - last_x < px:
            groups[-1].append(b)
        else:
            groups.append([b])
            last_x = x
    return groups


def render_timeline(tl: Timeline) -> str:
    if not tl.lanes:
        return '<p class="none">No long-link connection in this capture: no heartbeat to show.</p>'
    span = max(tl.duration, max(link.end for lane in tl.lanes for link in lane.links), 1.0)
    x0, x1 = HB_X0, WIDTH - HB_RIGHT

    def X(t: float) -> float:
        return x0 + (x1 - x0) * max(0.0, min(t, span)) / span

    lanes = tl.lanes[:MAX_LANES]
    out: list[str] = [""]          # the <svg> tag, once the ticks are counted
    ticks = 0
    height = HB_AXIS_H + HB_LANE_H * len(lanes) + 6
    step = _nice_step(span)
    t = 0.0
    while t <= span + 1e-9:
        x = X(t)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{HB_AXIS_H - 6}" x2="{x:.1f}" '
                   f'y2="{height - 4}"/><text class="ax" x="{x:.1f}" y="{HB_AXIS_H - 10}" '
                   f'text-anchor="middle">{esc(_tick_label(t, step))}</text>')
        t += step
    out.append(f'<text class="ax" x="12" y="{HB_AXIS_H - 10}">protocol time →</text>')
    for li, lane in enumerate(lanes):
        y0 = HB_AXIS_H + li * HB_LANE_H
        ybar = y0 + 38
        flows = ", ".join(f"#{link.flow}" for link in lane.links)
        out.append(f'<g class="lane" data-client="{esc(lane.client)}">'
                   f'<text class="ln1" x="12" y="{ybar - 4}">long link · {esc(lane.client, 22)}'
                   f'</text><text class="ln2" x="12" y="{ybar + 12}">'
                   f'{esc(clean(flows, 30))}</text>')
        for link in lane.links:
            xs_, xe = X(link.start), X(link.end)
            kind = "alive"
            out.append(f'<line class="bar bar-{kind}" x1="{xs_:.1f}" y1="{ybar}" '
                       f'x2="{max(xe, xs_ + 1):.1f}" y2="{ybar}">'
                       f'<title>flow #{link.flow}: {link.start:.1f} … {link.end:.1f} s, '
                       f'{esc(link.end_note)}</title></line>')
            lost = [b for b in link.beats if not b.answered]
            if link.died and lost:
                out.append(f'<line class="bar bar-lost" x1="{X(lost[-1].t):.1f}" y1="{ybar}" '
                           f'x2="{max(xe, X(lost[-1].t) + 1):.1f}" y2="{ybar}"><title>NOOP '
                           f'unanswered: the link is dead from here</title></line>')
            for x in sorted({round(X(t) / 3) * 3 for t in link.activity}):
                out.append(f'<circle class="act" cx="{x:.1f}" cy="{ybar}" r="2"/>')
            if link.reconnect_of is not None:
                what = "reconnect" if link.reconnect else "new link"
                near_end = xs_ > x1 - 130
                anchor = ' text-anchor="end"' if near_end else ""
                out.append(f'<g class="reconnect" data-flow="{link.flow}">'
                           f'<title>{what} {link.reconnect_gap:.1f} s after flow '
                           f'#{link.reconnect_of} ended</title>'
                           f'<circle cx="{xs_:.1f}" cy="{ybar}" r="5"/>'
                           f'<text x="{xs_ + (6 if near_end else 4):.1f}" y="{ybar + 22}"'
                           f'{anchor}>↻ {what} +{link.reconnect_gap:.1f} s</text></g>')
            prev_x = None
            for group in _bins(link.beats, X):
                b = next((g for g in group if not g.answered), group[-1])
                bx = X(b.t)
                cls = "ok" if all(g.answered for g in group) else "lost"
                over = tl.nat_timeout_s is not None and b.idle is not None and \
                    b.idle > tl.nat_timeout_s
                tip = (f"NOOP seq {clean(b.seq, 12)} at {b.t:.1f} s, "
                       + (f"{b.idle:.1f} s idle before it, " if b.idle is not None else "")
                       + ("answered" if b.answered else "NOT answered"))
                if len(group) > 1:
                    lost_n = sum(not g.answered for g in group)
                    tip = (f"{len(group)} NOOPs from {group[0].t:.1f} to {group[-1].t:.1f} s, "
                           f"{lost_n} not answered")
                out.append(f'<line class="hb-tick {cls}" data-t="{b.t:.3f}" '
                           f'data-beats="{len(group)}" x1="{bx:.1f}" y1="{ybar - 13}" '
                           f'x2="{bx:.1f}" y2="{ybar + 13}"><title>{esc(tip)}</title></line>')
                ticks += 1
                if b.idle is not None and len(group) == 1:
                    ax = X(b.t - b.idle)
                    text = f"{b.idle:.0f} s"
                    if bx - ax >= len(text) * CHAR_W + 6 and (prev_x is None or ax >= prev_x - 1):
                        out.append(f'<line class="span" x1="{ax:.1f}" y1="{ybar - 19}" '
                                   f'x2="{bx:.1f}" y2="{ybar - 19}"/>'
                                   f'<text class="iv{" over" if over else ""}" '
                                   f'x="{(ax + bx) / 2:.1f}" y="{ybar - 23}" '
                                   f'text-anchor="middle">{esc(text)}</text>')
                prev_x = bx
            if link.died:
                out.append(f'<g class="death" data-flow="{link.flow}"><title>flow #{link.flow} '
                           f'died at {link.end:.1f} s: {esc(link.end_note)}</title>'
                           f'<path d="M{xe - 6:.1f},{ybar - 6} l12,12 M{xe - 6:.1f},'
                           f'{ybar + 6} l12,-12"/>'
                           f'<text x="{xe - 4:.1f}" y="{ybar - 22}" text-anchor="end">'
                           f'× died</text></g>')
            elif link.end_kind == "open":
                out.append(f'<polygon class="open" points="{xe:.1f},{ybar} {xe - 8:.1f},'
                           f'{ybar - 5} {xe - 8:.1f},{ybar + 5}"><title>open when the capture '
                           f'ended</title></polygon>')
            else:
                out.append(f'<line class="close" x1="{xe:.1f}" y1="{ybar - 7}" x2="{xe:.1f}" '
                           f'y2="{ybar + 7}"><title>flow #{link.flow}: {esc(link.end_note)} at '
                           f'{link.end:.1f} s</title></line>')
        out.append("</g>")
    out.append("</svg>")
    out[0] = (f'<svg id="hb-svg" class="hb" width="{WIDTH}" height="{height}" '
              f'viewBox="0 0 {WIDTH} {height}" data-ticks="{ticks}" data-beats="{tl.beats}" '
              f'role="img" aria-label="heartbeat timeline">')
    if len(tl.lanes) > len(lanes):
        out.append(f'<p class="warn">… {len(tl.lanes) - len(lanes)} more long links not '
                   f'drawn.</p>')
    # --- per lane numbers
    rows = []
    for lane in tl.lanes[:MAX_TABLE_ROWS]:
        s = lane.stats()
        med = s["median_idle_s"]
        rows.append(
            f"<tr><td>{esc(lane.client)}</td><td>{esc(', '.join(f'#{k.flow}' for k in lane.links), 80)}"
            f"</td><td class=n>{s['noops']}</td><td class=n>{s['answered']}</td>"
            f"<td class=n>{'' if med is None else f'{med:.1f}'}</td>"
            f"<td class=n>{'' if s['wakeups_per_day'] is None else s['wakeups_per_day']}</td>"
            f"<td class=n>{s['deaths']}</td><td class=n>{s['reconnects']}</td></tr>")
    notes = []
    if tl.heartbeat_s:
        notes.append(f"profile heartbeat: {tl.heartbeat_s:g} s")
    if tl.nat_timeout_s:
        notes.append(f"carrier NAT idle timeout: {tl.nat_timeout_s:g} s "
                     f"(idle intervals longer than that in red)")
    else:
        notes.append("no carrier NAT in this lab")
    legend = ('<p class="legend"><span class="k tick-ok"></span>NOOP answered '
              '<span class="k tick-lost"></span>NOOP unanswered '
              '<span class="k dot"></span>other frames '
              '<span class="sym dead">×</span>link died '
              '<span class="sym re">↻</span>reconnect '
              '<span class="sym">|</span>closed with FIN — ' + esc("; ".join(notes)) + "</p>")
    table = ('<table class="small"><thead><tr><th>phone</th><th>links</th><th>NOOPs</th>'
             '<th>answered</th><th>median idle (s)</th><th>wake-ups / day</th><th>deaths</th>'
             '<th>reconnects</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
    return legend + '<div class="scroll">' + "".join(out) + "</div>" + table


# ---------------------------------------------------------------- tables
def render_verdicts(verdicts: Sequence[Any]) -> str:
    if not verdicts:
        return '<p class="none">No verdicts.</p>'
    rows = []
    for v in verdicts:
        ok = getattr(v, "ok", None)
        word, cls = {True: ("holds", "ok"), False: ("FAILS", "fail")}.get(ok, ("n/a", "na"))
        rows.append(f'<tr class="v-{cls}" data-statement="{esc(getattr(v, "id", ""))}">'
                    f'<td class=n>{esc(getattr(v, "id", ""))}</td>'
                    f'<td><span class="scope">{esc(getattr(v, "scope", ""))}</span></td>'
                    f'<td>{esc(getattr(v, "statement", ""))}</td>'
                    f'<td><span class="pill {cls}">{word}</span></td>'
                    f'<td class="detail">{esc(getattr(v, "detail", ""), 400)}</td></tr>')
    return ('<table id="verdict-table" class="sortable"><thead><tr><th data-type="num">#</th>'
            '<th>scope</th><th>statement</th><th>verdict</th><th>detail</th></tr></thead>'
            '<tbody>' + "".join(rows) + "</tbody></table>")


def render_flows(analysis) -> str:
    flows = [f for f in (getattr(analysis, "flows", None) or []) if isinstance(f, dict)]
    if not flows:
        return '<p class="none">No TCP flow in this capture.</p>'
    first = getattr(analysis, "first_ts", None) or 0.0
    scale = getattr(analysis, "time_scale", 1.0) or 1.0
    rows = []
    shown = flows if len(flows) <= MAX_TABLE_ROWS else flows[:MAX_TABLE_ROWS]
    for f in shown:
        try:
            start = (float(f.get("start")) - first) * scale
            lasted = (float(f.get("end")) - float(f.get("start"))) * scale
        except (TypeError, ValueError):
            start = lasted = float("nan")
        tcp = f.get("tcp") if isinstance(f.get("tcp"), dict) else {}
        notes = [f"{k} {v}" for k, v in sorted(tcp.items()) if v]
        if f.get("violation"):
            notes.insert(0, f"violation: {f.get('violation')}")
        hb = f.get("heartbeat_s")

        def cell(v: Any, sort: Any = None, cls: str = "") -> str:
            sv = v if sort is None else sort
            c = f' class="{cls}"' if cls else ""
            return f'<td{c} data-v="{esc(sv, 80)}">{esc(v, 80)}</td>'
        rows.append(
            f'<tr data-flow="{esc(f.get("id"))}">' + cell(f.get("id"), cls="n")
            + cell(f.get("client")) + cell(f.get("server")) + cell(f.get("host"))
            + cell(f.get("app")) + cell(f.get("kind")) + cell(f.get("requests"), cls="n")
            + cell(f"{f.get('packets_c2s')} / {f.get('packets_s2c')}",
                   (f.get("packets_c2s") or 0) + (f.get("packets_s2c") or 0), "n")
            + cell(f"{byte_size(f.get('bytes_c2s'))} / {byte_size(f.get('bytes_s2c'))}",
                   (f.get("bytes_c2s") or 0) + (f.get("bytes_s2c") or 0), "n")
            + cell(f"{start:.1f}", f"{start:.6f}", "n") + cell(f"{lasted:.1f}", f"{lasted:.6f}", "n")
            + cell("" if hb is None else hb, -1 if hb is None else hb, "n")
            + cell(f.get("closed_by") or "—") + cell("; ".join(notes)) + "</tr>")
    head = "".join(f'<th data-type="{t}">{h}</th>' for h, t in (
        ("#", "num"), ("client", "text"), ("server", "text"), ("host", "text"),
        ("app", "text"), ("kind", "text"), ("requests", "num"), ("packets ↑/↓", "num"),
        ("bytes ↑/↓", "num"), ("start (s)", "num"), ("lasted (s)", "num"),
        ("heartbeat (s)", "num"), ("closed by", "text"), ("notes", "text")))
    more = (f'<p class="warn">… {len(flows) - len(shown)} more flows not listed.</p>'
            if len(shown) < len(flows) else "")
    return (f'<div class="scroll"><table id="flow-table" class="sortable small"><thead><tr>'
            f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}')


def render_dns(analysis) -> str:
    names: dict[str, dict] = {}
    for e in getattr(analysis, "events", None) or []:
        if e.kind in ("dns_query", "dns_answer"):
            n = names.setdefault(clean(e.fields.get("name", ""), 120),
                                 {"q": 0, "a": 0, "addrs": [], "rcode": set()})
            if e.kind == "dns_query":
                n["q"] += 1
            else:
                n["a"] += 1
                if e.fields.get("rcode"):
                    n["rcode"].add(clean(e.fields.get("rcode"), 8))
    for name, addrs in (getattr(analysis, "dns", None) or {}).items():
        n = names.setdefault(clean(name, 120), {"q": 0, "a": 0, "addrs": [], "rcode": set()})
        n["addrs"] = list(addrs or [])
    if not names:
        return '<p class="none">No DNS in this capture.</p>'
    items = list(names.items())
    more = (f'<p class="warn">… {len(items) - MAX_TABLE_ROWS} more names not listed.</p>'
            if len(items) > MAX_TABLE_ROWS else "")
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(', '.join(clean(a, 60) for a in v['addrs'][:16]))}"
        f"</td><td class=n>{v['q']}</td><td class=n>{v['a']}</td>"
        f"<td>{esc(', '.join(sorted(v['rcode'])))}</td></tr>"
        for name, v in items[:MAX_TABLE_ROWS])
    return ('<table id="dns-table" class="small"><thead><tr><th>name</th><th>addresses (A)</th>'
            '<th>queries</th><th>answers</th><th>errors</th></tr></thead><tbody>'
            + rows + "</tbody></table>" + more)


# ---------------------------------------------------------------- the page
def _summary(analysis, verdicts: Sequence[Any], secrets_checked: int, ladder: Ladder) -> str:
    meta = getattr(analysis, "meta", None)
    meta = meta if isinstance(meta, dict) else {}
    how = meta.get("how")
    made = {"tap": "the in-process tap (packets synthesised from the lab's connections)",
            "sniffer": "a sniffer (real packets from an interface)"}.get(
        how, f"{clean(how, 20)}" if how else "unknown (no testbed comment in the file)")
    scale = getattr(analysis, "time_scale", 1.0) or 1.0
    wall = float(getattr(analysis, "duration", 0.0) or 0.0)
    path = str(getattr(analysis, "path", ""))
    counts = {True: 0, False: 0, None: 0}
    for v in verdicts:
        counts[getattr(v, "ok", None) if getattr(v, "ok", None) in (True, False) else None] += 1
    started = meta.get("started_utc") or ""
    items = [
        ("file", f'<span title="{esc(path)}">{esc(os.path.basename(path) or path, 80)}</span>'),
        ("made by", esc(made)),
        ("profile", esc(meta.get("profile") or "—")),
        ("time scale", f"×{esc(_num(scale, '{:g}'))}" + (" (protocol time = wall time × scale)"
                                                         if scale != 1 else "")),
        ("packets", f"{esc(getattr(analysis, 'packets', 0))}"),
        ("duration", f"{esc(_human_s(wall * scale))} protocol"
                     + (f" ({wall:.3f} s wall)" if scale != 1 else "")),
        ("flows", f"{len(getattr(analysis, 'flows', []) or [])} TCP"),
        ("messages", f"{ladder.events} events → {len(list(r for r in ladder.rows if not r.gap))}"
                     f" rows in the ladder"),
        ("started", esc(started, 40) if started else "—"),
        ("secrets", f"{secrets_checked} password(s) searched in clear" if secrets_checked
         else "none given (pass --secret to search for passwords in clear)"),
    ]
    grid = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    pills = (f'<a class="pill ok" href="#verdicts">{counts[True]} hold</a> '
             f'<a class="pill fail" href="#verdicts">{counts[False]} fail</a> '
             f'<a class="pill na" href="#verdicts">{counts[None]} n/a</a>')
    warn = []
    if getattr(analysis, "error", None):
        warn.append(f"The capture is damaged: {esc(analysis.error, 300)}; what could be read "
                    f"is shown.")
    if getattr(analysis, "truncated", False):
        warn.append("The capture ends in the middle of a packet (truncated).")
    drops = getattr(analysis, "drops", None) or {}
    if isinstance(drops, dict) and any(v for v in drops.values() if isinstance(v, int)):
        warn.append(f"The kernel dropped packets while capturing: {esc(drops, 200)}.")
    warn_html = "".join(f'<p class="warn">{w}</p>' for w in warn)
    return (f'<dl class="meta">{grid}</dl><p class="verdict-line">Storyboard: {pills}</p>'
            + warn_html)


STYLE = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#f6f8fa;--card:#fff;
--dns:#8250df;--tcp:#6e7781;--tls:#0f766e;--http:#0969da;--frame:#1a7f37;--push:#bc4c00;
--noop:#9a6700;--rst:#cf222e;--ok:#1a7f37;--fail:#cf222e;--na:#6e7781}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Helvetica Neue",Arial,sans-serif}
main{max-width:1380px;margin:0 auto;padding:14px 18px 40px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:17px;margin:0 0 8px}
header .sub{color:var(--muted);margin:0 0 10px}
nav{position:sticky;top:0;z-index:5;background:var(--bg);padding:6px 0;border-bottom:1px solid var(--line);margin-bottom:12px}
nav a{margin-right:16px;color:var(--http);text-decoration:none;font-weight:600}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:0 0 16px}
section>p.intro{color:var(--muted);margin:-4px 0 10px}
dl.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:6px 18px;margin:0 0 8px}
dl.meta div{display:flex;gap:8px}dl.meta dt{color:var(--muted);min-width:84px}dl.meta dd{margin:0;font-weight:500}
.pill{display:inline-block;border-radius:10px;padding:0 9px;font-weight:600;font-size:12px;text-decoration:none;color:#fff}
.pill.ok{background:var(--ok)}.pill.fail{background:var(--fail)}.pill.na{background:#8c959f}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px}
.none{color:var(--muted);font-style:italic}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600;position:relative}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th.asc::after{content:" ▲";font-size:10px}table.sortable th.desc::after{content:" ▼";font-size:10px}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.small td,table.small th{font-size:12.5px;padding:3px 7px}
tr.v-fail td{background:#ffebe9}tr.v-na td{color:var(--muted)}
td.detail{font-size:12.5px;color:#424a53;max-width:520px;overflow-wrap:anywhere}
.scope{font-size:11px;border:1px solid var(--line);border-radius:8px;padding:0 6px;color:var(--muted)}
#flow-table td{font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
.legend{font-size:12.5px;color:var(--muted);margin:0 0 8px}
.legend .k{display:inline-block;width:18px;height:0;border-top:3px solid;vertical-align:middle;margin:0 4px 0 12px}
.legend .k:first-child{margin-left:0}
.k.dns{border-color:var(--dns)}.k.tcp{border-color:var(--tcp)}.k.tls{border-color:var(--tls)}
.k.http{border-color:var(--http)}.k.frame{border-color:var(--frame)}.k.push{border-color:var(--push)}
.k.noop{border-color:var(--noop)}.k.rst{border-color:var(--rst)}
.k.tick-ok{width:0;height:14px;border-top:0;border-left:3px solid var(--ok)}
.k.tick-lost{width:0;height:14px;border-top:0;border-left:3px solid var(--rst)}
.k.dot{width:6px;height:6px;border:0;border-radius:3px;background:#8c959f}
.sym{margin:0 4px 0 12px;font-weight:700}.sym.dead{color:var(--rst)}.sym.re{color:var(--http)}
.sticky{position:sticky;top:36px;z-index:3;background:var(--card);border-bottom:1px solid var(--line)}
svg text{font-family:inherit}
.ladder-head rect{fill:#f6f8fa;stroke:#afb8c1}
.ladder-head .col-phone rect{fill:#ddf4ff;stroke:#54aeff}
.ladder-head .col-dns rect{fill:#fbefff;stroke:#c297ff}
.ladder-head .ct{font-size:12px;font-weight:700;fill:var(--fg)}
.ladder-head .cs{font-size:10.5px;fill:var(--muted)}
.ladder-head .th{font-size:11px;fill:var(--muted);font-weight:600}
.life{stroke:#d8dee4;stroke-width:1.2}.life-phone{stroke:#9ecbff;stroke-width:1.6}
.msg .hit{fill:transparent}.msg:hover .hit{fill:#eef6ff}.msg.sel .hit{fill:#fff3c4}
.msg.collapsed .hit{fill:#fbf8ef}.msg.collapsed:hover .hit{fill:#eef6ff}
.msg .tt{font-size:11.5px;fill:var(--muted);font-variant-numeric:tabular-nums}
.msg .ft{font-size:11px;fill:#8c959f}
.msg .lb{font-size:12px;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.msg.collapsed .lb{font-weight:600}
.msg{cursor:pointer}
.ln{fill:none}
.s-dns .ln{stroke:var(--dns)}.s-dns .ah{fill:var(--dns)}.s-dns .lb{fill:#6639ba}
.s-tcp .ln,.s-fin .ln,.s-other .ln{stroke:var(--tcp)}.s-tcp .ah,.s-fin .ah,.s-other .ah{fill:var(--tcp)}
.s-tcp .lb,.s-fin .lb,.s-other .lb{fill:#57606a}
.s-tls .ln{stroke:var(--tls)}.s-tls .ah{fill:var(--tls)}.s-tls .lb{fill:var(--tls)}
.s-http .ln{stroke:var(--http)}.s-http .ah{fill:var(--http)}.s-http .lb{fill:#0550ae}
.s-frame .ln{stroke:var(--frame)}.s-frame .ah{fill:var(--frame)}.s-frame .lb{fill:#116329}
.s-push .ln{stroke:var(--push)}.s-push .ah{fill:var(--push)}.s-push .lb{fill:#953800}
.s-noop .ln{stroke:var(--noop)}.s-noop .ah{fill:var(--noop)}.s-noop .lb{fill:#7d4e00}
.s-lost .ln{stroke:var(--rst)}.s-lost .ah{fill:var(--rst)}.s-lost .lb{fill:var(--rst);font-weight:600}
.s-rst .ln{stroke:var(--rst)}.s-rst .ah{fill:var(--rst)}.s-rst .lb{fill:var(--rst);font-weight:700}
.idle text{font-size:11.5px;fill:var(--muted);font-style:italic}
.more .band{fill:#fff8c5;stroke:#d4a72c}.more text{font-size:12.5px;fill:#7d4e00;font-weight:600}
.hb .grid{stroke:#eaeef2}.hb .ax{font-size:11px;fill:var(--muted)}
.hb .ln1{font-size:12px;font-weight:600;fill:var(--fg)}.hb .ln2{font-size:11px;fill:var(--muted)}
.hb .bar{stroke-width:6;stroke-linecap:round}.hb .bar-alive{stroke:#aceebb}.hb .bar-lost{stroke:#ff8182}
.hb .act{fill:#8c959f}
.hb .hb-tick{stroke-width:2.5}.hb .hb-tick.ok{stroke:var(--ok)}.hb .hb-tick.lost{stroke:var(--rst)}
.hb .span{stroke:#afb8c1;stroke-dasharray:2 2}
.hb .iv{font-size:11px;fill:#424a53}.hb .iv.over{fill:var(--rst);font-weight:700}
.hb .death path{stroke:var(--rst);stroke-width:3}.hb .death text{font-size:11px;fill:var(--rst);font-weight:700}
.hb .reconnect circle{fill:#fff;stroke:var(--http);stroke-width:2}
.hb .reconnect text{font-size:11px;fill:var(--http)}
.hb .close{stroke:#57606a;stroke-width:2.5}.hb .open{fill:var(--frame)}
footer{color:var(--muted);font-size:12px;text-align:center}
#detail{position:fixed;top:12px;right:12px;width:min(460px,40vw);max-height:85vh;overflow:auto;
background:#fff;border:1px solid #d0d7de;border-radius:8px;box-shadow:0 4px 18px #0002;
padding:10px 14px;font-size:12.5px;z-index:10}
.msg.dim{opacity:.15}.filter{font-size:13px;margin:0 0 8px}#filter-count{color:var(--muted)}
#detail[hidden]{display:none}#detail h3{margin:0 24px 8px 0;font-size:14px;word-break:break-all}
#detail-close{position:absolute;top:6px;right:8px;border:0;background:none;font-size:18px;cursor:pointer}
#detail ul{list-style:none;margin:0;padding-left:14px;border-left:1px solid #eaeef2}
#detail>div>ul{padding-left:0;border:0}#detail .k{color:#57606a}#detail .v{word-break:break-all}
"""

SCRIPT = """
(function () {
  var body = document.body;
  function note(msg) {
    var old = body.getAttribute('data-errors') || '';
    body.setAttribute('data-errors', old + (old ? ' | ' : '') + String(msg));
  }
  window.onerror = function (msg, src, line) { note(msg + ' (line ' + line + ')'); };
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var num = th.getAttribute('data-type') === 'num';
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        function key(r) {
          var c = r.cells[col];
          var v = c ? (c.getAttribute('data-v') || c.textContent) : '';
          return num ? (parseFloat(v) || 0) : v.toLowerCase();
        }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  function highlight(arrows, g) {
    var flows = (g.getAttribute('data-flows') || '').split(' ').filter(Boolean);
    var on = !g.classList.contains('sel');
    arrows.forEach(function (a) { a.classList.remove('sel'); });
    if (!on || !flows.length) { return; }
    arrows.forEach(function (a) {
      var fs = (a.getAttribute('data-flows') || '').split(' ');
      if (flows.some(function (f) { return fs.indexOf(f) >= 0; })) { a.classList.add('sel'); }
    });
  }
  function tree(value) {
    if (value === null || typeof value !== 'object') {
      var span = document.createElement('span');
      span.className = 'v';
      span.textContent = value === null ? 'null' : String(value);
      return span;
    }
    var ul = document.createElement('ul');
    Object.keys(value).forEach(function (k) {
      var li = document.createElement('li');
      var key = document.createElement('span');
      key.className = 'k';
      key.textContent = k + ': ';
      li.appendChild(key);
      li.appendChild(tree(value[k]));
      ul.appendChild(li);
    });
    return ul;
  }
  function show(g) {
    var raw = g.getAttribute('data-fields');
    var doc = raw ? JSON.parse(raw) : null;
    var panel = document.getElementById('detail');
    if (!panel) { return; }
    document.getElementById('detail-title').textContent = g.getAttribute('data-label');
    var bodyEl = document.getElementById('detail-body');
    bodyEl.textContent = '';
    bodyEl.appendChild(doc ? tree(doc) : document.createTextNode('no decoded fields'));
    panel.hidden = false;
  }
  try {
    var closer = document.getElementById('detail-close');
    if (closer) {
      closer.addEventListener('click', function () {
        document.getElementById('detail').hidden = true;
      });
    }
    var svg = document.getElementById('ladder-svg');
    var arrows = Array.prototype.slice.call(document.querySelectorAll('#ladder-svg g.msg'));
    var expected = svg ? parseInt(svg.getAttribute('data-arrows'), 10) : 0;
    var width = svg ? svg.viewBox.baseVal.width : 0;
    var broken = 0, clipped = 0;
    arrows.forEach(function (g) {
      if (!g.querySelector('.ln') || !g.getAttribute('data-label')) { broken++; }
      var lb = g.querySelector('text.lb');
      if (lb && lb.getComputedTextLength) {
        var x = parseFloat(lb.getAttribute('x'));
        var text = lb.textContent;
        while (text.length > 8 && x + lb.getComputedTextLength() > width - 4) {
          text = text.slice(0, -2);
          lb.textContent = text + '…';
          clipped++;
        }
      }
      g.addEventListener('click', function () { highlight(arrows, g); show(g); });
    });
    var filter = document.getElementById('filter');
    if (filter) {
      filter.addEventListener('input', function () {
        var q = filter.value.trim().toLowerCase();
        var shown = 0;
        arrows.forEach(function (a) {
          var hay = (a.getAttribute('data-label') + ' ' + a.getAttribute('data-ends') + ' ' +
                     (a.getAttribute('data-fields') || '')).toLowerCase();
          var on = !q || hay.indexOf(q) >= 0;
          a.classList.toggle('dim', !on);
          if (on) { shown++; }
        });
        document.getElementById('filter-count').textContent =
          q ? shown + ' of ' + arrows.length + ' rows match' : '';
      });
    }
    Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), sortable);
    body.setAttribute('data-arrows', String(arrows.length));
    body.setAttribute('data-clipped', String(clipped));
    body.setAttribute('data-rendered', (arrows.length === expected && !broken) ? 'ok' : 'mismatch');
  } catch (e) {
    note(e && e.message ? e.message : e);
    body.setAttribute('data-rendered', 'error');
  }
})();
"""


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def render_report(analysis, verdicts: Iterable[Any], *, title: Optional[str] = None,
                  secrets_checked: int = 0, max_rows: int = 400) -> str:
    """The report page for an analysed capture and its storyboard verdicts."""
    verdicts = list(verdicts or [])
    ladder = build_ladder(analysis, max_rows=max_rows)
    timeline = build_timeline(analysis)
    path = str(getattr(analysis, "path", "") or "")
    if title is None:
        title = f"testbed report — {os.path.basename(path) or 'capture'}"
    csp = (f"default-src 'none'; style-src '{_hash(STYLE)}'; script-src '{_hash(SCRIPT)}'; "
           f"img-src 'none'; font-src 'none'; connect-src 'none'; base-uri 'none'; "
           f"form-action 'none'")
    omitted = (f" {ladder.omitted} rows in the middle are left out to keep the page readable."
               if ladder.omitted else "")
    legend = ('<p class="legend">' + "".join(
        f'<span class="k {k}"></span>{t}' for k, t in (
            ("dns", "DNS"), ("tcp", "TCP (SYN · SYN-ACK · ACK, FIN)"), ("tls", "TLS"),
            ("http", "HTTP"), ("frame", "long-link frame"), ("push", "push"),
            ("noop", "heartbeat (NOOP)"), ("rst", "RST, request without reply")))
        + " — dashed: the answer in the same row; bold: a collapsed run of repeats. "
          "Hover an arrow for details; click it to see its decoded fields (the protobuf "
          "body as a tree, HTTP headers, DNS answers) and highlight its connection.</p>")
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from testbed import __version__
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(title, 200)}</title><style>{STYLE}</style></head>",
        '<body data-rendered="no"><main>',
        f'<header><h1>{esc(title, 200)}</h1><p class="sub">What the capture shows, message '
        f'by message, against the 2013 lab report\'s storyboard. Times are protocol seconds '
        f'since the first packet.</p>',
        _summary(analysis, verdicts, secrets_checked, ladder), "</header>",
        '<nav><a href="#verdicts">Verdicts</a><a href="#heartbeat">Heartbeat</a>'
        '<a href="#ladder">Ladder</a><a href="#flows">Flows</a><a href="#dns">DNS</a></nav>',
        '<section id="verdicts"><h2>Storyboard verdicts</h2><p class="intro">Each observation '
        'of the lab report checked against this capture: (lab) statements must hold on a '
        'loopback lab, (wire) ones need real links and are n/a on a tap capture.</p>',
        render_verdicts(verdicts), "</section>",
        '<section id="heartbeat"><h2>Heartbeat timeline</h2><p class="intro">Every long '
        'link on a protocol-time axis: a tick per NOOP, the idle time before it, deaths and '
        'reconnects.</p>', render_timeline(timeline), "</section>",
        f'<section id="ladder"><h2>Ladder diagram</h2><p class="intro">{ladder.events} events '
        f'as {sum(1 for r in ladder.rows if not r.gap)} rows: a column per host, an arrow '
        f'per message; repeated exchanges are collapsed into one row.{omitted}</p>',
        legend, '<p class="filter"><label>Filter <input id="filter" type="search" '
        'placeholder="host, command, CGI, user or text" size="40"></label> '
        '<span id="filter-count"></span></p>',
        render_ladder(ladder, decoded_rows(analysis, ladder.rows)),
        '<aside id="detail" hidden><button type="button" id="detail-close" '
        'aria-label="close">×</button><h3 id="detail-title"></h3>'
        '<div id="detail-body"></div></aside>',
        "</section>",
        '<section id="flows"><h2>Flows</h2><p class="intro">Every TCP connection (click a '
        'header to sort). Start and duration in protocol seconds; ↑ from the client, ↓ from '
        'the server.</p>', render_flows(analysis), "</section>",
        '<section id="dns"><h2>DNS</h2>', render_dns(analysis), "</section>",
        f"<footer>wechat-testbed {esc(__version__)} · generated {generated} · "
        f"self-contained: this page loads nothing from anywhere</footer>",
        f"</main><script>{SCRIPT}</script></body></html>\n",
    ])


def write_report(path, analysis, verdicts: Iterable[Any], **kw) -> Path:
    """Render and write the page (atomically); returns its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(analysis, verdicts, **kw)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
