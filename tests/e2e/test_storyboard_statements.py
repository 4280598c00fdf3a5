"""Each storyboard verdict stands on its evidence: the storyboard scenario's capture shows
every function statements 15 and 16 name, and the same capture with one of them taken out
(its connections' packets, or its frames) fails the statement naming what is missing; counts
are checked against the phones the capture's comment says; the wire statements hold on
hand-made captures that show them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Callable

import pytest

from testbed.capture.analyze import analyze
from testbed.capture.packets import Segment, decode, read_capture
from testbed.capture.pcapng_writer import PcapngWriter
from testbed.cli import main
from testbed.client.scenarios import run_scenario
from testbed.lab.addressing import SHORT
from testbed.verify import verify_storyboard
from testbed.wire import pb
from testbed.verify.storyboard import SHORT_FUNCTIONS, scenario_comment

from ..capture.builders import Conn, pcap_bytes, segments_pcap
from ..capture.json_contract import assert_valid
from ..conftest import start_lab

PHONES = 2
PASSWORDS = ["pass0001", "pass0002"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """The storyboard, two phones that start as strangers, recorded by the tap."""
    tmp = tmp_path_factory.mktemp("storyboard")
    path = tmp / "storyboard.pcapng"

    async def record():
        lab = await start_lab(tmp, users=PHONES, time_scale=1000.0, friends="none",
                              record=path, record_comment_extra=scenario_comment(PHONES, 3))
        try:
            r = await run_scenario("storyboard", lab.manifest, clients=PHONES, seed=3,
                                   local_addr=lab.config.plan.phone)
        finally:
            await lab.stop()
        assert r.ok, r.to_dict()
        assert not lab.server_errors()

    asyncio.run(record())
    return path


def verdicts_of(path: Path, capsys) -> tuple[int, dict]:
    args = ["verify", str(path), "--storyboard", "--json"]
    for pw in PASSWORDS:
        args += ["--secret", pw]
    rc = main(args)
    doc = json.loads(capsys.readouterr().out)
    return rc, {v["id"]: v for v in doc["verdicts"]}


def copy_without(src: Path, dst: Path, drop: Callable[[object], bool],
                 comment: dict | None = None) -> Path:
    """`src` rewritten to `dst` without the packets `drop` picks (given the decoded
    packet), its section comment kept unless `comment` replaces it."""
    meta = analyze(str(src), keep_events=False).meta
    with PcapngWriter(dst, comment=comment or meta) as out:
        for pkt in read_capture(str(src)):
            if not drop(decode(pkt)):
                out.write(pkt.ts, pkt.data, pkt.origlen)
    return dst


def connections(path: Path, pick: Callable[[dict], bool]) -> set[tuple]:
    """The 4-tuples (both ways) of the flows `pick` selects."""
    found = set()
    for f in analyze(str(path)).flows:
        if pick(f):
            (ca, cp), (sa, sp) = (x.rsplit(":", 1) for x in (f["client"], f["server"]))
            found |= {(ca, int(cp), sa, int(sp)), (sa, int(sp), ca, int(cp))}
    return found


def in_connections(tuples: set[tuple]) -> Callable[[object], bool]:
    return lambda item: type(item) is Segment and \
        (item.src, item.sport, item.dst, item.dport) in tuples


def test_the_storyboard_shows_every_function_and_verifies(capture, capsys):
    rc, v = verdicts_of(capture, capsys)
    assert rc == 0, {k: x["detail"] for k, x in v.items() if x["ok"] is False}
    assert all(x["ok"] for x in v.values() if x["scope"] == "lab")
    detail = v["15"]["detail"]
    for name in ["login"] + [n for n, _ in SHORT_FUNCTIONS]:
        assert f"{name}: " in detail, (name, detail)
    for cgi in ("getcontact", "verifyuser", "newsync", "batchgetheadimg", "logout",
                "statreport"):
        assert cgi in detail
    for part in ("send text: NEWSENDMSG", "receive text: NEWSYNC", "images: UPLOADMSGIMG",
                 "voice: UPLOADVOICE", "video: UPLOADVIDEO", "DOWNLOADVIDEO"):
        assert part in v["16"]["detail"], part
    assert "2 TLS logins" in v["4"]["detail"] and "2 passwords searched" in v["4"]["detail"]
    assert "from 2 phones" in v["9"]["detail"] and "by 2 phones" in v["11"]["detail"]


def test_the_storyboard_capture_is_valid_analyze_json(capture, capsys):
    assert main(["analyze", str(capture), "--json", "--events", "--radio", "lte-2012"]) == 0
    assert_valid(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("function", ["login"] + [n for n, _ in SHORT_FUNCTIONS])
def test_statement_15_fails_naming_a_missing_function(function, capture, tmp_path, capsys):
    """The capture without the connections that carried one function of the short link."""
    cgis = dict(SHORT_FUNCTIONS).get(function)
    gone = {e.flow for e in analyze(str(capture)).events
            if e.host == SHORT and (e.get("cgi") in cgis if cgis else e.kind == "tls_client_hello")}
    assert gone
    cut = copy_without(capture, tmp_path / "cut.pcapng",
                       in_connections(connections(capture, lambda f: f["id"] in gone)))
    rc, v = verdicts_of(cut, capsys)
    assert rc == 1 and v["15"]["ok"] is False
    missing = v["15"]["detail"].split(";")[0]
    assert missing.startswith("missing: ") and function in missing, v["15"]["detail"]
    others = [n for n in ["login"] + [n for n, _ in SHORT_FUNCTIONS] if n != function]
    assert not any(f"{n} (" in missing for n in others), missing


@pytest.mark.parametrize("names, part", [
    (("NEWSENDMSG",), "send text"), (("UPLOADVOICE",), "voice"),
    (("DOWNLOADVIDEO",), "video"), (("GETMSGIMG",), "images")])
def test_statement_16_fails_naming_a_missing_function(names, part, capture):
    """The analysis without the frames of one long-link command."""
    a = analyze(str(capture))
    a.events = [e for e in a.events if e.get("name") not in names]
    v = {x.id: x for x in verify_storyboard(a)}["16"]
    assert v.ok is False and v.detail.startswith("missing: ") and f"{part} (" in v.detail, \
        v.detail


def test_counts_are_checked_against_the_phones_the_comment_says(capture, tmp_path, capsys):
    meta = analyze(str(capture), keep_events=False).meta
    three = copy_without(capture, tmp_path / "three.pcapng", lambda item: False,
                         comment={**meta, **scenario_comment(3)})
    rc, v = verdicts_of(three, capsys)
    assert rc == 1
    assert "2 TLS logins for the 3 phones" in v["4"]["detail"]
    assert "2 phones with a long link, the capture was made with 3" in v["16"]["detail"]
    assert "2 of the 3 phones kept their long link alive" in v["17"]["detail"]
    assert "from 2 of the 3 phones" in v["9"]["detail"]
    assert "2 of the 3 phones logged out" in v["15"]["detail"]
    # the same capture saying nothing of its scenario: no counts to check against
    bare = copy_without(capture, tmp_path / "bare.pcapng", lambda item: False,
                        comment={k: val for k, val in meta.items() if k != "scenario"})
    assert verdicts_of(bare, capsys)[0] == 0


def test_a_phone_whose_texts_are_gone_fails_statement_9(capture):
    a = analyze(str(capture))
    first = next(e for e in a.events if e.get("name") == "NEWSENDMSG" and not e.get("reply"))
    sender = first.message().base.uin
    a.events = [e for e in a.events if not (e.get("name") in ("NEWSENDMSG", "newsendmsg")
                                            and isinstance(e.message(), pb.NewSendMsgRequest)
                                            and e.message().base.uin == sender)]
    v = {x.id: x for x in verify_storyboard(a)}["9"]
    assert v.ok is False and "1 of the 2 phones" in v.detail


def test_people_found_must_have_sent_a_location_first(capture):
    a = analyze(str(capture))
    first = next(e for e in a.events if e.get("cgi") == "lbsfind")
    a.events = [e for e in a.events if e.flow != first.flow]
    v = {x.id: x for x in verify_storyboard(a)}["11"]
    assert v.ok is False and "whose location the capture never shows being sent" in v.detail


def test_a_location_counts_if_sent_before_the_answer_that_lists_it(capture):
    """Phones that ask at once (the compose lab's) are answered in any order: a finder's
    request may come before the location of the one it finds, its answer after."""
    a = analyze(str(capture))
    finds = [e for e in a.events if e.kind == "http_request" and e.get("cgi") == "lbsfind"]
    answers = {e.flow: e for e in a.events if e.kind == "http_response"
               and e.flow in {f.flow for f in finds}}
    lister = next(f for f in finds if answers[f.flow].message().contacts)
    listed = answers[lister.flow].message().contacts[0].username
    located = next(f for f in finds if f is not lister and f.index < lister.index)
    assert located.message().base.uin != lister.message().base.uin   # the other phone's
    # the finder's request moved to just before the other's location (its answer stays)
    a.events.remove(lister)
    a.events.insert(a.events.index(located), lister)
    lister.index = located.index - 1
    v = {x.id: x for x in verify_storyboard(a)}["11"]
    assert v.ok, v.detail
    assert f"lists {listed}" in v.detail
    # every other location moved after the answer: none was known when it was answered
    last = max(e.index for e in a.events)
    for i, f in enumerate(f for f in finds if f is not lister):
        a.events.remove(f)
        a.events.append(f)
        f.index = last + 1 + i
    v = {x.id: x for x in verify_storyboard(a)}["11"]
    assert v.ok is False and f"lists {listed}, whose location the capture never shows " \
        "being sent before it" in v.detail


def test_an_avatar_no_answer_gave_fails_statement_12(capture):
    a = analyze(str(capture))
    a.events = [e for e in a.events if e.get("cgi") not in ("lbsfind", "batchgetheadimg")]
    v = {x.id: x for x in verify_storyboard(a)}["12"]
    assert v.ok is False and "for a URL no server answer gave" in v.detail


def test_a_fin_nobody_acknowledged_fails_statement_7(capture, tmp_path, capsys):
    """The short connections' peers fall silent after the first FIN: nothing acknowledges
    it."""
    a = analyze(str(capture))
    short = {f["id"] for f in a.flows if f["host"] == SHORT and f["kind"] == "short"}
    first_fin = {}
    for e in a.events:
        if e.kind == "tcp_fin" and e.flow in short:
            first_fin.setdefault(e.flow, e)
    # the packets the other side sent after it, by their (src, sport, dst, dport)
    after = {(e.dst[0], e.dst[1], e.src[0], e.src[1]): e.index for e in first_fin.values()}

    def silent(item) -> bool:
        key = type(item) is Segment and (item.src, item.sport, item.dst, item.dport)
        return key in after and item.index > after[key]

    rc, v = verdicts_of(copy_without(capture, tmp_path / "silent.pcapng", silent), capsys)
    assert rc == 1 and v["7"]["ok"] is False
    assert f"{len(short)} of {len(short)} short connections' first FIN not acknowledged" \
        in v["7"]["detail"]


# ------------------------------------------------------------------ the wire statements
def lost_segment_capture(path: Path, resent_after: list[float]) -> Path:
    """A connection whose 100-byte segment (packet 4) is sent again after each wait in
    `resent_after` (seconds from the one before), then acknowledged."""
    c = Conn(step=0.001)
    segs = c.handshake()
    lost = c.c(b"x" * 100)
    segs.append(lost)
    t = lost.ts
    for wait in resent_after:
        t += wait
        segs.append(lost._replace(ts=t))
    segs.append(c.s(ts=t + 0.01))
    path.write_bytes(segments_pcap([s._replace(index=i + 1) for i, s in enumerate(segs)]))
    return path


def test_statement_8_a_retransmission_timer_backing_off(tmp_path):
    rto = lost_segment_capture(tmp_path / "rto.pcap", [0.2, 0.4])
    v = {x.id: x for x in verify_storyboard(analyze(str(rto)))}["8"]
    assert v.ok is True, v.detail
    assert "packets 4, 5 and 6 (again after 0.2 s, then 0.4 s)" in v.detail
    assert "acknowledged in packet 7" in v.detail
    # sent again once, or again after waits that do not grow: no timer backing off
    for waits in ([0.2], [0.4, 0.2]):
        path = lost_segment_capture(tmp_path / "other.pcap", waits)
        v = {x.id: x for x in verify_storyboard(analyze(str(path)))}["8"]
        assert v.ok is None and f"{len(waits)} retransmissions, none" in v.detail, v.detail


def arp(op: int, sender: str, target: str) -> bytes:
    import socket
    body = (b"\x00\x01\x08\x00\x06\x04" + op.to_bytes(2, "big") + b"\x02\x00\x00\x00\x00\x01"
            + socket.inet_aton(sender) + bytes(6) + socket.inet_aton(target))
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x06" + body


def test_statement_2_an_arp_request_and_its_reply(tmp_path):
    hotspot, phone = "192.168.137.1", "192.168.137.87"
    path = tmp_path / "arp.pcap"
    path.write_bytes(pcap_bytes([(1.0, arp(1, hotspot, phone)), (1.1, arp(2, phone, hotspot))]))
    v = {x.id: x for x in verify_storyboard(analyze(str(path)))}["2"]
    assert v.ok is True and v.detail == (f"packet 1: {hotspot} asks for {phone}; packet 2: "
                                         f"{phone} replies")
    path.write_bytes(pcap_bytes([(1.0, arp(1, hotspot, phone))]))
    v = {x.id: x for x in verify_storyboard(analyze(str(path)))}["2"]
    assert v.ok is None and "none answered" in v.detail
