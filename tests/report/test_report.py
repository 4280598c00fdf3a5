"""`testbed report`: the HTML page for a real recorded storyboard session, its ladder arrows,
verdicts and heartbeat timeline, escaping of hostile capture text, collapsing of repeats, and
the page as headless Chromium renders it (offline, in a network namespace with only `lo`)."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from testbed.capture import events as ev
from testbed.capture.analyze import Analysis, analyze
from testbed.capture.events import Event
from testbed.client.phone import Phone
from testbed.client.scenarios import run_scenario
from testbed.lab.addressing import LONG, MAPABC, QLOGO, QPIC, SHORT
from testbed.report import build_ladder, build_timeline, render_report, report_main, write_report
from testbed.report.ladder import message_rows
from testbed.report.text import byte_size
from testbed.verify import STATEMENTS, verify_storyboard
from tests.conftest import start_lab

SECRET_NONE = "never-a-password-9f1c"


# ------------------------------------------------------------------ helpers
class Page(HTMLParser):
    """Collects what the tests look at: arrows, verdict rows, ticks, fetching attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.arrows: list[dict] = []
        self.arrow_shapes: list[int] = []
        self.verdicts: list[dict] = []
        self.ticks: list[dict] = []
        self.tags: dict[str, int] = {}
        self.fetching: list[tuple[str, str, str]] = []
        self.body: dict = {}
        self.flow_rows = 0
        self.deaths = 0
        self.reconnects = 0
        self.svgs: dict[str, dict] = {}
        self._in_arrow = 0
        self._in_flow_table = False
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href", "action", "xlink:href", "poster", "data") and value \
                    and not value.startswith("#"):
                self.fetching.append((tag, name, value))
        cls = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if tag == "svg" and a.get("id"):
            self.svgs[a["id"]] = a
        if tag == "g" and "msg" in cls:
            self.arrows.append(a)
            self.arrow_shapes.append(0)
            self._in_arrow = 1
        elif self._in_arrow and tag not in ("line", "polygon", "path", "rect", "text", "title"):
            self._in_arrow += 1
        if self._in_arrow and tag in ("line", "polygon", "path") and "ln" in cls:
            self.arrow_shapes[-1] += 1
        if tag == "tr" and a.get("data-statement") is not None:
            self.verdicts.append(a)
        if tag == "line" and "hb-tick" in cls:
            self.ticks.append(a)
        if tag == "g" and "death" in cls:
            self.deaths += 1
        if tag == "g" and "reconnect" in cls:
            self.reconnects += 1
        if tag == "table" and a.get("id") == "flow-table":
            self._in_flow_table = True
        if tag == "tr" and self._in_flow_table and a.get("data-flow") is not None:
            self.flow_rows += 1

    def handle_endtag(self, tag):
        if tag == "g" and self._in_arrow:
            self._in_arrow -= 1
        if tag == "table":
            self._in_flow_table = False


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


def labels(page: Page) -> list[str]:
    return [a.get("data-label", "") for a in page.arrows]


def assert_self_contained(text: str) -> None:
    page = parse(text)
    assert page.fetching == [], f"attributes that would fetch: {page.fetching[:5]}"
    low = text.lower()
    for bad in ("<link", "@import", "url(", "<img", "<iframe", "<object", "<embed",
                "<base", "<video", "<audio", "<source", "<frame"):
        assert bad not in low, f"{bad!r} in the page"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", low)
    assert "default-src 'none'" in text          # the CSP that forbids any fetch
    assert page.tags.get("script") == 1          # ours, and only ours


# ------------------------------------------------------------------ a real session
async def _record_storyboard(tmp: Path) -> Path:
    path = tmp / "storyboard.pcapng"
    lab = await start_lab(tmp, users=4, record=path, time_scale=1000.0,
                          record_comment_extra={"scenario": "storyboard"})
    try:
        result = await run_scenario("storyboard", lab.manifest, clients=2, seed=7)
    finally:
        await lab.stop()
    assert result.ok, result.to_dict()
    assert not lab.server_errors()
    return path


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A storyboard run (2 phones) recorded by the lab's tap, analysed, verified, rendered."""
    tmp = tmp_path_factory.mktemp("report")
    path = asyncio.run(_record_storyboard(tmp))
    analysis = analyze(str(path), needles=[SECRET_NONE.encode()])
    verdicts = verify_storyboard(analysis, secrets=[SECRET_NONE.encode()])
    out = write_report(tmp / "storyboard.html", analysis, verdicts, secrets_checked=1)
    return {"path": path, "analysis": analysis, "verdicts": verdicts, "html": out,
            "text": out.read_text(encoding="utf-8")}


def test_page_is_self_contained(session):
    text = session["text"]
    assert_self_contained(text)
    assert text.startswith("<!DOCTYPE html>")
    assert 'charset="utf-8"' in text


def test_one_arrow_per_collapsed_message(session):
    page = parse(session["text"])
    ladder = build_ladder(session["analysis"])
    rows = list(message_rows(ladder))
    assert len(page.arrows) == len(rows) == int(page.svgs["ladder-svg"]["data-arrows"])
    assert all(n >= 1 for n in page.arrow_shapes), "an arrow element without its arrow"
    # a few hundred messages stay readable
    assert len(rows) <= 400 and ladder.events > len(rows)
    got = labels(page)
    kinds = [a.get("data-kind") for a in page.arrows]
    # the report's first packet
    assert kinds[0] == ev.DNS_QUERY and got[0] == f"DNS query {LONG}"
    assert any(k == ev.DNS_ANSWER and l.startswith(f"DNS answer {LONG} (2 A)")
               for k, l in zip(kinds, got))
    assert any(k == ev.TCP_SYN and l.startswith("SYN") for k, l in zip(kinds, got))
    assert any(k == ev.TCP_FIN for k in kinds)
    assert f"TLS ClientHello {SHORT}" in got
    tls_flows = [f for f in session["analysis"].flows if f["app"] == "tls"]
    assert kinds.count(ev.TLS_RECORD) == len(tls_flows) == 2     # one collapsed row each
    assert any(l.startswith("TLS records ×") for l in got)
    assert any(l in ("POST /cgi-bin/micromsg-bin/newsync", "POST /cgi-bin/micromsg-bin/newinit")
               for l in got)
    assert any(re.fullmatch(r"NEWSENDMSG seq \d+", l) for l in got)
    assert any(re.fullmatch(r"NEWSENDMSG reply seq \d+", l) for l in got)
    assert "NOTIFY (push)" in got
    assert any(l.startswith("GET /mmhead/") for l in got)
    assert any(l.startswith("GET /mmsns/") for l in got)
    assert any(l.startswith("HTTP 200 image/png") for l in got)
    assert any(l.startswith("HTTP 200 application/octet-stream (newinit") for l in got)
    # heartbeats collapsed: each phone's NOOP / NOOP reply pairs in one row
    noops = [l for l in got if l.startswith("NOOP")]
    assert noops and all(re.fullmatch(r"NOOP ×\d+ ⇄ reply \(every ~\d+ s\)", l) for l in noops), got
    assert sum(int(re.search(r"×(\d+)", l).group(1)) for l in noops) == \
        sum(1 for e in session["analysis"].events if e.kind == ev.FRAME and e.get("noop")
            and not e.get("reply"))
    # a column per phone, named by its user (the two phones share one address): each
    # phone's heartbeats on its own; what carries no uin (DNS, the TLS login) on the
    # address's column; then every host, in the order
    phones = [c for c in ladder.columns if c.role == "phone"]
    assert [c.key for c in ladder.columns[len(phones):]] == ["dns", LONG, SHORT, MAPABC, QLOGO,
                                                             QPIC]
    users = [i for i, c in enumerate(phones) if c.key.startswith("phone:uin:")]
    assert len(users) == 2 and all(re.fullmatch(r"user\d{4}", phones[i].title) for i in users)
    assert sorted({r.a for r in rows if r.label.startswith("NOOP")}) == users
    assert {r.a for r in rows if r.kind == ev.DNS_QUERY} <= set(range(len(phones))) - set(users)
    titles = [c.title for c in ladder.columns]
    assert all(f">{phones[i].title}<" in session["text"] for i in users), titles


def test_verdict_table_lists_every_statement(session):
    page = parse(session["text"])
    assert [v["data-statement"] for v in page.verdicts] == [s.id for s in STATEMENTS]
    for st in STATEMENTS:
        assert st.text.replace("'", "&#x27;") in session["text"]
    # each row says what its verdict says: holds / FAILS / n/a
    want = {v.id: {True: "v-ok", False: "v-fail", None: "v-na"}[v.ok]
            for v in session["verdicts"]}
    assert {r["data-statement"]: r["class"] for r in page.verdicts} == want
    assert sum(v.ok is True for v in session["verdicts"]) >= 10    # a storyboard session
    assert want["2"] == "v-na" and ">n/a<" in session["text"] and ">holds<" in session["text"]
    assert "1 password(s) searched in clear" in session["text"]


def test_heartbeat_timeline(session):
    page = parse(session["text"])
    assert len(page.ticks) >= 3
    tl = build_timeline(session["analysis"])
    assert len(tl.lanes) == 2                          # two phones, one long link each
    for lane in tl.lanes:
        s = lane.stats()
        assert s["noops"] >= 3 and s["answered"] == s["noops"] and s["deaths"] == 0
        assert 250 < s["median_idle_s"] < 450          # protocol time, not wall time
    assert page.deaths == 0 and page.reconnects == 0
    assert int(page.svgs["hb-svg"]["data-ticks"]) == len(page.ticks)


def test_flow_and_dns_tables(session):
    page = parse(session["text"])
    assert page.flow_rows == len(session["analysis"].flows)
    assert 'id="dns-table"' in session["text"]
    for host in (LONG, SHORT, MAPABC, QLOGO, QPIC):
        assert f"<td>{host}</td>" in session["text"]


# ------------------------------------------------------------------ the command
def test_report_main_writes_next_to_the_capture(session, tmp_path, capsys):
    cap = tmp_path / "copy.pcapng"
    shutil.copy(session["path"], cap)
    assert report_main(str(cap), None, [SECRET_NONE]) == 0
    out = Path(f"{cap}.html")
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "1 password(s) searched in clear" in text
    other = tmp_path / "sub" / "r.html"
    assert report_main(str(cap), str(other), []) == 0 and other.exists()


def test_report_main_unreadable_capture(tmp_path, capsys):
    assert report_main(str(tmp_path / "missing.pcapng"), None, []) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "missing.pcapng" in err
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"this is not a capture at all")
    assert report_main(str(junk), None, []) == 2
    assert "not a pcap" in capsys.readouterr().err
    assert not Path(f"{junk}.html").exists()


# ------------------------------------------------------------------ synthetic analyses
PHONE = ("198.18.0.87", 40000)
DNS = ("198.18.0.53", 53)
LONG_ADDR = ("198.18.0.11", 8080)
SHORT_ADDR = ("198.18.0.21", 8080)


def _analysis(events: list[Event], flows: list[dict] = (), meta: dict | None = None) -> Analysis:
    a = Analysis(path="/tmp/synthetic.pcapng")
    a.events = sorted(events, key=lambda e: (e.ts, e.index))
    a.packets = len(events)
    a.first_ts = a.events[0].ts if events else None
    a.last_ts = a.events[-1].ts if events else None
    a.flows = list(flows)
    a.meta = meta if meta is not None else {
        "how": "tap", "profile": "lab-report-2013", "time_scale": 1.0,
        "manifest": {"dns": {"address": DNS[0], "port": 53}, "heartbeat_s": 300,
                     "hosts": {LONG: {"addresses": [LONG_ADDR[0]], "port": 8080},
                               SHORT: {"addresses": [SHORT_ADDR[0]], "port": 8080}}}}
    return a


def _e(ts, kind, flow=None, c2s=True, server=LONG_ADDR, client=PHONE, host="", **fields):
    src, dst = (client, server) if c2s else (server, client)
    return Event(ts, kind, flow, "c2s" if c2s else "s2c", src, dst, host, dict(fields),
                 index=int(ts * 10) + 1)


def _flow(fid, start, end, app="longlink", client=PHONE, server=LONG_ADDR, host=LONG,
          closed="fin"):
    return {"id": fid, "client": f"{client[0]}:{client[1]}", "server": f"{server[0]}:{server[1]}",
            "host": host, "app": app, "kind": "long", "requests": 1, "closed_by": closed,
            "packets_c2s": 1, "packets_s2c": 1, "bytes_c2s": 1, "bytes_s2c": 1,
            "start": start, "end": end, "heartbeat_s": None, "violation": None, "tcp": {}}


def test_hostile_capture_text_is_escaped():
    evil_uri = "/cgi-bin/<script>alert(1)</script>?a=\"b\"&c='d'"
    events = [
        _e(0.0, ev.DNS_QUERY, server=DNS, host="<img src=x onerror=alert(2)>",
           name="<img src=x onerror=alert(2)>"),
        _e(1.0, ev.TCP_SYN, 1, server=SHORT_ADDR, host="evil\x00<b>host</b>"),
        _e(1.1, ev.HTTP_REQUEST, 1, server=SHORT_ADDR, host="evil\x00<b>host</b>",
           method="POST", uri=evil_uri, cgi="<svg onload=alert(3)>"),
        _e(1.2, ev.HTTP_RESPONSE, 1, c2s=False, server=SHORT_ADDR, host="x",
           status="200<script>", content_type="text/html\"><script>alert(4)</script>",
           cgi="</title><script>alert(5)</script>", body_len=3),
        _e(1.3, ev.FRAME, 2, name="</text><script>alert(6)</script>", seq=1, cmd=1,
           reply=False, push=False),
    ]
    flows = [_flow(1, 1.0, 1.3, app="http", server=SHORT_ADDR, host="</td><script>x</script>"),
             _flow(2, 1.3, 1.3)]
    meta = {"how": "<script>alert(7)</script>", "profile": "<b>p</b>", "time_scale": "1",
            "started_utc": "<i>", "manifest": {"hosts": "<not a dict>", "dns": ["bad"]}}
    a = _analysis(events, flows, meta)
    from testbed.verify.expect import Verdict
    verdicts = [Verdict("1", "statement <u>", False, "detail <script>alert(8)</script>", "lab")]
    text = render_report(a, verdicts, title="<script>alert(9)</script>")
    assert_self_contained(text)
    assert "<script>alert" not in text and "<img src=x" not in text and "<svg onload" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "\x00" not in text and "\\x00" in text          # control characters made visible
    page = parse(text)
    assert any("<script>alert(1)</script>" in l for l in labels(page))  # intact once parsed
    assert page.tags.get("script") == 1 and page.tags.get("img") is None


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"),
                                     (12_345, "12.3 kB"), (999_949, "999.9 kB"),
                                     (999_950, "1.0 MB"), (5_600_000, "5.6 MB"),
                                     (3 * 10**9, "3.0 GB"), (None, "?"), ("x", "?")])
def test_one_byte_size_format(n, text):
    assert byte_size(n) == text


def test_sizes_on_the_page_all_read_the_same_way():
    """The flow table and an HTTP response's label give sizes in the one format."""
    flows = [dict(_flow(1, 0.0, 2.0, app="http", server=SHORT_ADDR, host=SHORT),
                  bytes_c2s=12_345, bytes_s2c=5_600_000)]
    events = [_e(0.0, ev.HTTP_REQUEST, 1, server=SHORT_ADDR, host=SHORT, method="POST",
                 uri="/cgi-bin/micromsg-bin/newsync", cgi="newsync"),
              _e(0.1, ev.HTTP_RESPONSE, 1, c2s=False, server=SHORT_ADDR, host=SHORT,
                 status=200, content_type="application/octet-stream", cgi="newsync",
                 body_len=2048)]
    text = render_report(_analysis(events, flows, {"how": "tap"}), [])
    assert "HTTP 200 application/octet-stream (newsync, 2.0 kB)" in labels(parse(text))
    assert "12.3 kB / 5.6 MB" in text


def test_repeats_collapse_and_rows_stay_bounded():
    events, t = [], 0.0
    for i in range(12):                                   # NOOP / reply every 300 s
        events += [_e(t, ev.FRAME, 1, name="NOOP", seq=10 + i, noop=True, reply=False),
                   _e(t + 0.2, ev.FRAME, 1, c2s=False, name="NOOP", seq=10 + i, noop=True,
                      reply=True)]
        t += 300.0
    for i in range(4):                                    # an image in 4 chunks
        events.append(_e(t + i, ev.FRAME, 1, name="UPLOADMSGIMG", seq=40 + i, reply=False,
                         push=False))
    rows = list(message_rows(build_ladder(_analysis(events, [_flow(1, 0.0, t + 4)]))))
    assert [r.label for r in rows] == ["NOOP ×12 ⇄ reply (every ~300 s)",
                                       "UPLOADMSGIMG ×4 — no reply (every ~1.0 s)"]
    assert rows[0].count == 12 and rows[0].back and rows[1].count == 4
    # 1,000 different messages: at most max_rows rows, and one row says what is left out
    many = [_e(float(i), ev.HTTP_REQUEST, 100 + i, server=SHORT_ADDR, method="GET",
               uri=f"/x/{i}") for i in range(1000)]
    ladder = build_ladder(_analysis(many), max_rows=400)
    gaps = [r for r in ladder.rows if r.gap]
    assert len(list(message_rows(ladder))) == 400 and len(gaps) == 1
    assert gaps[0].label.startswith("… 600 more rows") and ladder.omitted == 600
    text = render_report(_analysis(many), [], max_rows=400)
    assert len(parse(text).arrows) == 400 and "… 600 more rows" in text


def test_two_phones_heartbeats_at_the_same_moment_collapse_per_phone():
    """Two phones on the same schedule: their NOOPs and replies interleave (NOOP, NOOP,
    reply, reply) when both beat at once; each phone's heartbeats are still one row."""
    a, b = ("198.18.0.87", 40000), ("198.18.0.88", 40001)
    events, t = [], 0.0
    for i in range(3):
        events += [_e(t, ev.FRAME, 1, client=a, name="NOOP", seq=20 + i, noop=True, reply=False),
                   _e(t + 0.1, ev.FRAME, 2, client=b, name="NOOP", seq=20 + i, noop=True,
                      reply=False),
                   _e(t + 0.2, ev.FRAME, 1, client=a, c2s=False, name="NOOP", seq=20 + i,
                      noop=True, reply=True),
                   _e(t + 0.3, ev.FRAME, 2, client=b, c2s=False, name="NOOP", seq=20 + i,
                      noop=True, reply=True)]
        t += 300.0
    flows = [_flow(1, 0.0, t, client=a), _flow(2, 0.0, t, client=b)]
    rows = list(message_rows(build_ladder(_analysis(events, flows))))
    assert [(r.label, r.a) for r in rows] == [("NOOP ×3 ⇄ reply (every ~300 s)", 0),
                                              ("NOOP ×3 ⇄ reply (every ~300 s)", 1)]
    # phones behind one address share a column: their connections still tell them apart
    one = ("127.0.0.1", 0)
    same = [(_e(e.ts, e.kind, e.flow, c2s=e.direction == "c2s", client=(one[0], 40000 + e.flow),
                **e.fields)) for e in events]
    rows = list(message_rows(build_ladder(_analysis(same, flows))))
    assert [r.label for r in rows] == ["NOOP ×3 ⇄ reply (every ~300 s)"] * 2
    # a frame of the same connection between a request and its reply keeps the order
    kept = [_e(0.0, ev.FRAME, 1, name="NOOP", seq=1, noop=True, reply=False),
            _e(0.1, ev.FRAME, 1, name="NEWSENDMSG", seq=2, reply=False),
            _e(0.2, ev.FRAME, 1, c2s=False, name="NOOP", seq=1, noop=True, reply=True),
            _e(0.3, ev.FRAME, 1, c2s=False, name="NEWSENDMSG", seq=2, reply=True)]
    rows = list(message_rows(build_ladder(_analysis(kept))))
    assert [r.label for r in rows] == ["NOOP seq 1", "NEWSENDMSG seq 2", "NOOP reply seq 1",
                                       "NEWSENDMSG reply seq 2"]


def test_columns_per_phone_and_other_only_when_needed():
    phones = [("198.18.0.87", 40000), ("198.18.0.88", 40001)]
    events = [_e(float(i), ev.TCP_SYN, i, client=p) for i, p in enumerate(phones)]
    ladder = build_ladder(_analysis(events))
    assert [c.title for c in ladder.columns][:3] == ["phone 1", "phone 2", "DNS"]
    assert "other" not in [c.key for c in ladder.columns]
    assert [r.a for r in ladder.rows] == [0, 1] and {r.b for r in ladder.rows} == {3}
    events.append(_e(5.0, ev.TCP_SYN, 9, server=("198.18.0.200", 443), host="evil.example"))
    ladder = build_ladder(_analysis(events))
    assert ladder.columns[-1].key == "other" and ladder.rows[-1].b == len(ladder.columns) - 1
    five = [_e(float(i), ev.TCP_SYN, i, client=(f"198.18.0.{90 + i}", 40000))
            for i in range(5)]
    ladder = build_ladder(_analysis(five))
    assert ladder.columns[0].title == "phones" and {r.a for r in ladder.rows} == {0}


def test_flow_without_fin_is_a_death_and_the_next_a_reconnect():
    events = [_e(0.0, ev.TCP_SYN, 1),
              _e(1.0, ev.FRAME, 1, name="NOOP", seq=1, noop=True, reply=False),
              _e(1.1, ev.FRAME, 1, c2s=False, name="NOOP", seq=1, noop=True, reply=True),
              _e(301.0, ev.FRAME, 1, name="NOOP", seq=2, noop=True, reply=False),
              _e(400.0, ev.TCP_SYN, 2),
              _e(5000.0, ev.DNS_QUERY, server=DNS, name=LONG)]   # the capture goes on
    flows = [_flow(1, 0.0, 301.0, closed=None), _flow(2, 400.0, 401.0, closed=None)]
    tl = build_timeline(_analysis(events, flows))
    (lane,) = tl.lanes
    first, second = lane.links
    assert first.end_kind == "died" and "unanswered" in first.end_note
    assert second.reconnect and second.reconnect_of == 1 and second.reconnect_gap == 99.0
    assert second.end_kind == "died" and "without FIN" in second.end_note
    page = parse(render_report(_analysis(events, flows), []))
    assert page.deaths == 2 and page.reconnects == 1 and len(page.ticks) == 2


async def test_nat_deaths_and_reconnects_on_a_recorded_lab(tmp_path):
    """A 28-minute heartbeat behind a 5-minute carrier NAT: the link dies, the phone
    reconnects, and the timeline shows both."""
    path = tmp_path / "nat.pcapng"
    lab = await start_lab(tmp_path, users=1, record=path, time_scale=5000.0,
                          nat_timeout_s=300.0)
    try:
        u = lab.manifest.users[0]
        phone = Phone(lab.manifest, u["username"], u["password"], clock=lab.clock,
                      policy="fixed:1680")
        await phone.start()
        stop = asyncio.Event()
        task = asyncio.create_task(phone.run(stop))
        deadline = asyncio.get_running_loop().time() + 20
        while phone.metrics.reconnects < 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await task
        await phone.stop(logout=True)
    finally:
        await lab.stop()
    assert phone.metrics.silent_deaths >= 1 and phone.metrics.reconnects >= 1
    a = analyze(str(path))
    tl = build_timeline(a)
    assert tl.nat_timeout_s == 300.0
    links = [k for lane in tl.lanes for k in lane.links]
    assert any(k.end_kind == "died" for k in links) and any(k.reconnect for k in links)
    text = render_report(a, verify_storyboard(a))
    page = parse(text)
    assert page.deaths >= 1 and page.reconnects >= 1 and page.ticks
    assert 'class="hb-tick lost"' in text and "— no reply" in text
    assert_self_contained(text)


# ------------------------------------------------------------------ in a browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_run(netns: str, browser: str, profile: Path, url: str, *extra: str):
    cmd = ["ip", "netns", "exec", netns, browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--disable-quic", f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _png_info(path: Path) -> tuple[int, int, bytes]:
    """(width, height, the decompressed scanlines) of a PNG, with struct and zlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,), ctype = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if ctype == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif ctype == b"IDAT":
            idat += chunk
        elif ctype == b"IEND":
            break
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_page_in_headless_chromium(session, netns, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    url = session["html"].resolve().as_uri()
    shot = tmp_path / "report.png"
    run = _chromium_run(netns, browser, tmp_path / "profile1", url, f"--screenshot={shot}",
                        "--window-size=1400,2000")
    assert shot.exists(), f"no screenshot: {run.stderr[-2000:]}"
    width, height, raw = _png_info(shot)
    assert (width, height) == (1400, 2000)
    assert shot.stat().st_size > 40_000                  # a blank page compresses to ~10 KB
    stride = len(raw) // height
    lines = {raw[i * stride + 1:(i + 1) * stride] for i in range(0, height, 7)}
    assert len(lines) > 50 and len(set(raw)) > 100      # many different rows and values
    dom = _chromium_run(netns, browser, tmp_path / "profile2", url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    expected = len(list(message_rows(build_ladder(session["analysis"]))))
    assert page.body.get("data-rendered") == "ok", page.body
    assert "data-errors" not in page.body, page.body.get("data-errors")
    assert page.body.get("data-arrows") == str(expected) == str(len(page.arrows))
    assert len(page.ticks) >= 3


def test_clicking_an_arrow_shows_its_decoded_fields(session, netns, tmp_path):
    """In a real Chromium: a mouse click on the NEWSENDMSG arrow opens the detail panel with
    the frame's protobuf body as a tree (the chat text in it); the DNS answer's panel lists
    its addresses; the panel closes."""
    from tests.report.cdp import Chromium

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    url = session["html"].resolve().as_uri()
    with Chromium(["ip", "netns", "exec", netns], browser, tmp_path / "profile") as c:
        c.open(url)
        rendered = c.wait_for("document.readyState === 'complete' && "
                              "document.body.getAttribute('data-rendered') !== 'no' && "
                              "document.body.getAttribute('data-rendered')")
        assert rendered == "ok", c.js("document.body.getAttribute('data-errors')")
        assert c.js("document.getElementById('detail').hidden") is True

        def click_row(prefix: str) -> str:
            x, y = c.js(f"""(function () {{
                var g = Array.prototype.find.call(document.querySelectorAll('g.msg'),
                    function (g) {{ return g.getAttribute('data-label').indexOf({prefix!r})
                                    === 0; }});
                g.scrollIntoView({{block: 'center'}});
                var r = g.querySelector('rect.hit').getBoundingClientRect();
                return [r.left + r.width * 0.6, r.top + r.height / 2];
            }})()""")
            c.click(x, y)
            c.wait_for("!document.getElementById('detail').hidden")
            return c.js("document.getElementById('detail-title').innerText + '\\n' + "
                        "document.getElementById('detail-body').innerText")

        text = click_row("NEWSENDMSG seq")
        assert text.startswith("NEWSENDMSG seq")
        for shown in ("fields:", "message:", "msgs:", "content: 你好 user0002, from user0001",
                      "to_user: user0002", "src: ", "packet: "):
            assert shown in text, (shown, text[:2000])
        c.click(*c.js("""(function () {
            var r = document.getElementById('detail-close').getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; })()"""))
        c.wait_for("document.getElementById('detail').hidden")
        text = click_row("DNS answer long.weixin.qq.com")
        answered = session["analysis"].dns[LONG]
        assert "addresses:" in text and all(f": {a}" in text for a in answered), text

        # chat text on the arrow of a message sent in clear
        labels = c.js("Array.prototype.map.call(document.querySelectorAll('g.msg'), "
                      "function (g) { return g.querySelector('text.lb').textContent; })")
        assert any(x.startswith("NEWSENDMSG seq") and "“你好 user0002, from user0001”" in x
                   for x in labels), labels[:40]
        # the filter box: typed into, it dims every row that does not match
        c.click(*c.js("""(function () {
            var f = document.getElementById('filter'); f.scrollIntoView({block: 'center'});
            var r = f.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; })()"""))
        c.send("Input.insertText", {"text": "mapi.mapabc"})
        said = c.wait_for("document.getElementById('filter-count').textContent")
        shown, total = map(int, re.match(r"(\d+) of (\d+) rows match", said).groups())
        dimmed = c.js("document.querySelectorAll('g.msg.dim').length")
        assert total == len(labels) and 0 < shown < total and dimmed == total - shown
        lit = c.js("Array.prototype.map.call(document.querySelectorAll('g.msg:not(.dim)'), "
                   "function (g) { return [g.getAttribute('data-ends'), "
                   "g.getAttribute('data-label')]; })")
        # the host's own arrows, and the DNS messages that name it
        phone_titles = {col.title for col in build_ladder(session["analysis"]).columns
                        if col.role == "phone"}
        assert any(ends.endswith(f" {MAPABC}") and ends[:-len(MAPABC) - 1] in phone_titles
                   for ends, _ in lit), lit
        assert all(MAPABC in ends or MAPABC in label for ends, label in lit), lit
        assert not c.js("document.body.getAttribute('data-errors')")
