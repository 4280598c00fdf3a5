"""The heartbeat timeline's model: each long link's NOOPs, deaths and reconnects, in protocol
time.

A lane is one phone's chain of long links: a link that ends (dies, is reset or closed) and a
later link from the same client address that starts after it are drawn on the same lane,
the later one as a reconnect. On each link:

* a beat per NOOP the phone sends, with the idle time before it (protocol seconds since the
  previous frame on the link, the quantity a carrier NAT's idle timeout is compared with) and
  whether the server answered it;
* the end: closed with FIN (by whom), reset (RST), died (the last NOOP went unanswered, or the
  flow stopped without FIN or RST long before the capture ended), or still open when the
  capture ended.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

from testbed.capture import events as ev

OPEN_GRACE = 1.5     # a link silent for less than this many heartbeat intervals at the end
#                      of the capture is "open", not dead


@dataclass
class Beat:
    t: float                  # protocol seconds since the first packet
    seq: object
    answered: bool
    idle: Optional[float]     # protocol seconds since the previous frame on the link
    answer_t: Optional[float] = None


@dataclass
class Link:
    flow: int
    client: str
    server: str
    host: str
    start: float
    end: float                # where the drawn link ends (close, reset, death)
    last: float               # its last packet
    beats: list[Beat] = field(default_factory=list)
    activity: list[float] = field(default_factory=list)   # other frames
    end_kind: str = "open"    # "fin-phone", "fin-server", "rst", "died", "open"
    end_note: str = ""
    reconnect_of: Optional[int] = None
    reconnect_gap: Optional[float] = None
    reconnect: bool = False   # started after its predecessor died / was reset or closed

    @property
    def died(self) -> bool:
        return self.end_kind in ("died", "rst")


@dataclass
class Lane:
    client: str
    links: list[Link] = field(default_factory=list)

    @property
    def beats(self) -> list[Beat]:
        return [b for link in self.links for b in link.beats]

    def stats(self) -> dict:
        beats = self.beats
        idles = [b.idle for b in beats if b.idle is not None]
        med = statistics.median(idles) if idles else None
        return {
            "links": len(self.links), "noops": len(beats),
            "answered": sum(b.answered for b in beats),
            "median_idle_s": med,
            "wakeups_per_day": round(86400 / med) if med else None,
            "deaths": sum(link.died for link in self.links),
            "reconnects": sum(link.reconnect for link in self.links),
        }


@dataclass
class Timeline:
    lanes: list[Lane]
    duration: float           # protocol seconds covered by the capture
    nat_timeout_s: Optional[float] = None
    heartbeat_s: Optional[float] = None

    @property
    def beats(self) -> int:
        return sum(len(lane.beats) for lane in self.lanes)


def _num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def build_timeline(analysis) -> Timeline:
    meta = getattr(analysis, "meta", None)
    manifest = meta.get("manifest") if isinstance(meta, dict) else None
    manifest = manifest if isinstance(manifest, dict) else {}
    nat = manifest.get("nat")
    nat_timeout = _num(nat.get("idle_timeout_s")) if isinstance(nat, dict) else None
    expected = _num(manifest.get("heartbeat_s"))
    scale = getattr(analysis, "time_scale", 1.0) or 1.0
    events = list(getattr(analysis, "events", None) or [])
    first = getattr(analysis, "first_ts", None)
    if first is None:
        first = events[0].ts if events else 0.0
    duration = max(0.0, float(getattr(analysis, "duration", 0.0) or 0.0) * scale)

    def pt(ts: float) -> float:
        return (ts - first) * scale

    flows = [f for f in (getattr(analysis, "flows", None) or [])
             if isinstance(f, dict) and f.get("app") == "longlink"]
    ids = {f.get("id") for f in flows}
    per_flow: dict = {i: [] for i in ids}
    for e in events:
        if e.flow in per_flow:
            per_flow[e.flow].append(e)

    links: list[Link] = []
    for f in flows:
        evs = per_flow.get(f.get("id"), [])
        start = pt(f.get("start", first))
        last = pt(f.get("end", f.get("start", first)))
        link = Link(flow=f.get("id"), client=str(f.get("client", "")).rsplit(":", 1)[0],
                    server=str(f.get("server", "")), host=str(f.get("host", "")),
                    start=start, end=last, last=last)
        prev: Optional[float] = None
        replies: dict = {}
        for e in evs:
            if e.kind == ev.FRAME and e.direction == "s2c" and e.fields.get("noop") and \
                    e.fields.get("reply"):
                replies.setdefault(e.fields.get("seq"), pt(e.ts))
        last_s2c = max((pt(e.ts) for e in evs if e.kind == ev.FRAME and e.direction == "s2c"),
                       default=None)
        for e in evs:
            t = pt(e.ts)
            if e.kind == ev.TCP_SYN:
                prev = t
            if e.kind != ev.FRAME:
                continue
            noop = bool(e.fields.get("noop"))
            if noop and e.direction == "c2s" and not e.fields.get("reply"):
                ans = replies.get(e.fields.get("seq"))
                answered = ans is not None and ans >= t
                link.beats.append(Beat(t, e.fields.get("seq"), answered,
                                       None if prev is None else t - prev,
                                       ans if answered else None))
            elif not noop:
                link.activity.append(t)
            prev = t
        # how it ended
        closes = [e for e in evs if e.kind in (ev.TCP_FIN, ev.TCP_RST)]
        unanswered = bool(link.beats) and not link.beats[-1].answered and \
            (last_s2c is None or last_s2c < link.beats[-1].t)
        if unanswered:
            after = [e for e in closes if pt(e.ts) >= link.beats[-1].t]
            link.end_kind = "died"
            if after:
                link.end = pt(after[0].ts)
                who = "the phone" if after[0].direction == "c2s" else "the server"
                how = "RST" if after[0].kind == ev.TCP_RST else "FIN"
                link.end_note = (f"NOOP unanswered; {how} from {who} "
                                 f"{link.end - link.beats[-1].t:.0f} s later")
            else:
                link.end = last
                link.end_note = "NOOP unanswered; no FIN or RST"
        elif closes:
            c = closes[0]
            link.end = pt(c.ts)
            if c.kind == ev.TCP_RST:
                link.end_kind = "rst"
                link.end_note = f"reset by {'the phone' if c.direction == 'c2s' else 'the server'}"
            else:
                link.end_kind = "fin-phone" if c.direction == "c2s" else "fin-server"
                link.end_note = f"closed by {'the phone' if c.direction == 'c2s' else 'the server'}"
        else:
            grace = (expected or 300.0) * OPEN_GRACE
            if duration - last <= grace:
                link.end_kind = "open"
                link.end = duration
                link.end_note = "open when the capture ended"
            else:
                link.end_kind = "died"
                link.end_note = "stopped without FIN or RST"
        links.append(link)

    # chain the links into lanes: a link that starts after another of the same client ended
    links.sort(key=lambda k: (k.start, k.flow))
    lanes: list[Lane] = []
    for link in links:
        best: Optional[Lane] = None
        for lane in lanes:
            prev_link = lane.links[-1]
            if lane.client == link.client and prev_link.end_kind != "open" and \
                    prev_link.end <= link.start + 1e-9:
                if best is None or prev_link.end > best.links[-1].end:
                    best = lane
        if best is None:
            lanes.append(Lane(link.client, [link]))
            continue
        prev_link = best.links[-1]
        link.reconnect_of = prev_link.flow
        link.reconnect_gap = link.start - prev_link.end
        link.reconnect = prev_link.end_kind in ("died", "rst", "fin-server")
        best.links.append(link)
    return Timeline(lanes, duration, nat_timeout, expected)
