"""Server replay as a user runs it: `testbed lab up --replay CAPTURE` answers the project's own
emulator with a golden capture's recorded replies, and the phones end up showing what the
capture's replies held."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from testbed.replay import load_sessions
from testbed.replay.golden import GOLDENS, run_session
from testbed.replay.views import recorded_views

GOLDEN = Path(__file__).resolve().parents[2] / "captures" / "golden"


def _without_client_ids(views: list[dict]) -> list[dict]:
    """The views without the ids the phones pick afresh on every run (`client_msg_id`):
    the only thing that legitimately differs from the recording."""
    out = []
    for v in views:
        v = json.loads(json.dumps(v))
        for m in v["messages"]:
            m.pop("client_msg_id", None)
        out.append(v)
    return out


def _client_ids(views: list[dict]) -> set[str]:
    return {m["client_msg_id"] for v in views for m in v["messages"] if "client_msg_id" in m}


def test_server_replay_drives_the_emulator_through_the_storyboard(tmp_path):
    g = GOLDENS["storyboard"]          # seed 283 at k = 200, 2 users, 2 phones
    capture = GOLDEN / g.file
    report_path = tmp_path / "report.json"
    run = run_session(g, tmp_path, lab_args=["--replay", str(capture),
                                             "--report", str(report_path)],
                      emulate_args=["--views"])
    live = sorted(run.result["views"], key=lambda v: v["uin"])
    recorded = recorded_views(load_sessions(str(capture)))
    assert [v["username"] for v in live] == ["user0001", "user0002"]
    # every message (texts, the friend request's answer, image, voice, video with their
    # digests), every contact, the profile, the people nearby and their avatars: as recorded
    assert all(v["messages"] and v["contacts"] and v["nearby"] and v["avatars"]
               for v in recorded)
    assert _without_client_ids(live) == _without_client_ids(recorded)
    # the ids the phones picked were put back where the recorded replies echo them
    live_ids, recorded_ids = _client_ids(live), _client_ids(recorded)
    assert len(live_ids) == len(recorded_ids) > 0
    assert not live_ids & recorded_ids
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in live_ids)

    report = json.loads(report_path.read_text())
    assert report["unmatched"] == []
    assert report["never_asked"] == []
    assert report["pushes_never_sent"] == []
    assert report["answered"] == report["replayable"] > 80
    assert report["pushes_sent"] == report["pushes"] == 12
    log = run.lab_log.read_text()
    assert "server replay of" in log and "0 live requests unmatched (fail)" in log
    assert f"{report['answered']} of {report['replayable']} recorded requests answered" in log


# --------------------------------------------------------------------- in one process
import aiohttp
import pytest

from testbed.client.resolver import Resolver
from testbed.client.session import RequestFailed, Session
from testbed.client.web import WebClient
from testbed.lab.addressing import MAPABC, QLOGO
from testbed.wire import pb
from testbed.wire.dns import RCODE_NOERROR, RCODE_REFUSED

from ..conftest import start_lab

CHAT = GOLDEN / "chat.pcapng"
RECORDED_TEXT = "你好 user0002, from user0001"      # chat.pcapng's first text (exchange 13)


async def _replay_lab(tmp_path, unmatched="fail", capture=CHAT, users=3):
    return await start_lab(tmp_path, users=users, time_scale=100, replay=capture,
                           unmatched=unmatched)


async def _logged_in(lab, i: int = 0) -> Session:
    u = lab.manifest.users[i]
    s = Session(lab.manifest, u["username"], u["password"])
    await s.login()
    return s


async def test_a_request_matches_minus_what_the_client_picks_and_repeats_go_in_order(tmp_path):
    lab = await _replay_lab(tmp_path)
    try:
        recorded = load_sessions(str(CHAT))
        a, b = await _logged_in(lab, 0), await _logged_in(lab, 1)
        # the lab's own login: a fresh session key, the recorded uin
        rec_keys = {x.session_key for x in recorded.exchanges if x.session_key}
        assert a.uin == 1 and b.uin == 2 and a.session_key not in rec_keys
        await a.init()
        await b.init()
        assert a.sync_state.profile.username == "user0001"
        await a.connect_long()
        await b.connect_long()
        await a.sync()
        await b.sync()
        pushed = b.link.notifies[:]
        # another client_msg_id and device id than recorded: the same request all the same
        out = await a.send_text("user0002", RECORDED_TEXT, client_msg_id="f" * 32)
        assert out.client_msg_id == "f" * 32            # the recorded reply echoes ours
        rec_send = next(x for x in recorded.exchanges if x.name == "NEWSENDMSG")
        assert out.new_msg_id == rec_send.reply.event.message().msgs[0].new_msg_id
        for _ in range(200):                              # the recorded push, to b's link
            if len(b.link.notifies) > len(pushed):
                break
            await asyncio.sleep(0.01)
        assert len(b.link.notifies) == len(pushed) + 1
        await b.sync()
        got = b.sync_state.messages[-1]
        assert (got.content, got.client_msg_id) == (RECORDED_TEXT, "f" * 32)
        # a second newinit: the capture had one, already answered
        again = await a.cgi("newinit", pb.NewSyncRequest(base=a.base()), check=False)
        assert again.base.ret == -1 and "no recorded NEWINIT left" in again.base.errmsg
        # one letter off: the nearest recorded request and where it differs
        with pytest.raises(RequestFailed, match="not in the replayed capture"):
            await a.send_text("user0002", RECORDED_TEXT + "!", door="short")
        miss = lab.script.report()["unmatched"][-1]
        assert (miss["door"], miss["request"], miss["user"], miss["action"]) == \
            ("short", "NEWSENDMSG", "user0001", "fail")
        assert "differs at msgs[0].content" in miss["detail"]
        assert "exchange 24" in miss["detail"]            # user0001's next recorded send
        for s in (a, b):
            await s.close()
    finally:
        await lab.stop()


@pytest.mark.parametrize("policy", ["fail", "forward", "error"])
async def test_what_the_capture_does_not_have_gets_what_unmatched_says(tmp_path, policy):
    lab = await _replay_lab(tmp_path, policy)
    try:
        a = await _logged_in(lab, 0)
        # a CGI the capture never had, over the short link
        if policy == "error":
            with pytest.raises(ConnectionError):
                await a.cgi("getcontact", pb.GetContactRequest(base=a.base(),
                                                               usernames=["user0002"]))
        else:
            got = await a.cgi("getcontact", pb.GetContactRequest(
                base=a.base(), usernames=["user0002"]), check=False)
            if policy == "fail":
                assert got.base.ret == -1 and not got.contacts
            else:                                         # the lab's own service answers
                assert got.base.ret == 0 and [c.username for c in got.contacts] == ["user0002"]
        # a GET and a DNS query the capture never had
        web = WebClient(lab.manifest, a.resolver)
        url = f"http://{MAPABC}/v3/geocode/regeo?location=116.31,39.99"
        if policy == "error":
            with pytest.raises(aiohttp.ClientError):
                await web.get(url, addresses=lab.manifest.hosts[MAPABC].addresses)
        else:
            r = await web.get(url, addresses=lab.manifest.hosts[MAPABC].addresses)
            assert r.status == (404 if policy == "fail" else 200)
        resolver = Resolver(lab.manifest.dns_address, lab.manifest.dns_port, timeout=0.3,
                            tries=1)
        if policy == "error":
            with pytest.raises(Exception, match="no answer"):
                await resolver.query(QLOGO)
        else:
            ans = await resolver.query(QLOGO)
            assert ans.rcode == (RCODE_REFUSED if policy == "fail" else RCODE_NOERROR)
        # a user the capture never logged in
        stranger = lab.manifest.users[2]
        c = Session(lab.manifest, stranger["username"], stranger["password"])
        if policy == "forward":
            await c.login()
            assert c.uin == 3
        else:
            with pytest.raises((RequestFailed, ConnectionError)):
                await c.login()
        report = lab.script.report()
        # (aiohttp asks a GET that got no answer once more: a miss each time)
        assert list(dict.fromkeys((m["door"], m["request"], m["action"])
                                  for m in report["unmatched"])) == [
            ("short", "GETCONTACT", policy), ("http", f"GET {MAPABC}/v3/geocode/regeo?"
                                              f"location=116.31,39.99", policy),
            ("dns", f"DNS {QLOGO}", policy), ("tls", "MANUALAUTH", policy)]
        assert "the capture has no GETCONTACT of user0001" in report["unmatched"][0]["detail"]
        assert "no login of user0003 left (its users: user0001, user0002)" in \
            report["unmatched"][-1]["detail"]
        # what the capture has and nobody asked for: user0002's whole session, and more
        never = {(x["user"], x["command"]) for x in report["never_asked"]}
        assert ("user0002", "MANUALAUTH") in never and ("user0001", "NEWINIT") in never
        await a.close()
    finally:
        await lab.stop()


def test_lab_up_replay_refuses_what_it_cannot_use_with_a_clear_error(tmp_path):
    import subprocess
    import sys

    from testbed.lab.addressing import AddressPlan

    bad = tmp_path / "notes.pcapng"
    bad.write_text("not a capture\n")
    masks = tmp_path / "m.toml"
    masks.write_text('[NEWSENDMSG]\n"msgs[].contnet" = "ignore"\n')
    cases = ((["--unmatched", "forward"], "go with --replay CAPTURE"),
             (["--report", str(tmp_path / "r.json")], "go with --replay CAPTURE"),
             (["--mask", str(masks)], "go with --replay CAPTURE"),
             (["--replay", str(CHAT), "--mask", str(masks)], "did you mean 'content'"),
             (["--replay", str(bad)], f"--replay {bad}"),
             (["--replay", str(tmp_path / "none.pcapng")], "none.pcapng: no such file"),
             (["--replay", str(CHAT), "--store", "redis://127.0.0.1:1/0"], "one-process lab"),
             (["--replay", str(CHAT), "--netns"], "one-process lab (not --netns"),
             (["--fault", "drop:NOOP#1", "--netns"], "--fault needs the one-process lab"))
    for args, said in cases:
        r = subprocess.run([sys.executable, "-m", "testbed.cli", "lab", "up", "--manifest",
                            str(tmp_path / "m.json"), "--subnet",
                            AddressPlan.random_loopback().prefix, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert said in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "m.json").exists()


def test_lab_up_replay_answers_noops_itself_and_reports_at_exit_what_was_never_asked_for(
        tmp_path):
    """`testbed lab up --replay chat.pcapng --unmatched forward --report PATH` as a user runs
    it, with a client that goes only part of the recorded way: its heartbeats are answered
    by the link itself, the one request the capture lacks is answered by the lab's own
    service, and when the lab stops (Ctrl-C) its stderr and the report list that request and
    everything the capture has that nobody asked for."""
    import signal

    from tests.e2e.helpers import start_lab_up, wait_manifest

    report_path = tmp_path / "report.json"
    masks = tmp_path / "masks.toml"        # this client's texts are not the recorded ones
    masks.write_text('[NEWSENDMSG]\n"msgs[].content" = "ignore"\n')
    proc, manifest_path = start_lab_up(tmp_path, "--time-scale", "100", "--replay", str(CHAT),
                                       "--unmatched", "forward", "--report", str(report_path),
                                       "--mask", str(masks), users=2)
    try:
        manifest = wait_manifest(proc, manifest_path)

        async def part_of_the_way():
            u = manifest.users[0]
            s = Session(manifest, u["username"], u["password"])
            await s.login()
            await s.init()
            await s.connect_long()
            await s.sync()
            for _ in range(3):
                await s.link.noop(timeout=1000)     # a guard: 10 wall s at k = 100
            got = await s.cgi("getcontact", pb.GetContactRequest(base=s.base(),
                                                                 usernames=["user0002"]))
            sent = await s.send_text("user0002", "not the recorded text")
            await s.close()
            return got, sent
        got, sent = asyncio.run(part_of_the_way())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert [c.username for c in got.contacts] == ["user0002"]      # the lab's own answer
    rec_send = next(x for x in load_sessions(str(CHAT)).exchanges if x.name == "NEWSENDMSG")
    assert sent.new_msg_id == rec_send.reply.event.message().msgs[0].new_msg_id  # recorded
    report = json.loads(report_path.read_text())
    assert [(m["door"], m["request"], m["user"], m["action"]) for m in report["unmatched"]] \
        == [("short", "GETCONTACT", "user0001", "forward")]
    never = [(x["user"], x["command"]) for x in report["never_asked"]]
    assert ("user0002", "MANUALAUTH") in never and ("user0001", "NEWSENDMSG") in never
    assert never.count(("user0001", "NEWSENDMSG")) == 1       # of its two, the first answered
    assert report["masks"] == [{"command": "NEWSENDMSG", "path": "msgs[].content",
                                "mask": "ignore", "origin": str(masks)}]
    assert ("user0001", "NEWINIT") not in never and ("user0001", "IDENTIFY") not in never
    # user0001's way: its two DNS queries, login, newinit, identify, newsync, a send (its
    # NOOPs are the link's own: neither answered from the capture nor unmatched)
    assert report["answered"] == 7 and report["answered"] + len(never) == report["replayable"]
    said = " ".join(err.split())
    assert f"server replay of {CHAT}" in said
    assert (f"7 of {report['replayable']} recorded requests answered, 1 live requests "
            f"unmatched (forward)") in said
    assert "never asked" in said and "NEWSENDMSG" in said
    assert f"request masks: NEWSENDMSG msgs[].content ignore ({masks})" in said
    assert f"replay report: {report_path}" in said


@pytest.mark.parametrize("policy", ["fail", "forward", "error"])
async def test_an_unmatched_long_link_request_gets_what_unmatched_says(tmp_path, policy):
    """Over the long link too: a send the capture does not have (another text) gets an error
    reply, the lab's own answer (stored, and a later recorded request still matches), or
    its link closed."""
    from testbed.client.longlink import LinkClosed

    lab = await _replay_lab(tmp_path, policy)
    try:
        a = await _logged_in(lab, 0)
        await a.init()
        await a.connect_long()
        await a.sync()
        if policy == "fail":
            with pytest.raises(RequestFailed, match="not in the replayed capture"):
                await a.send_text("user0002", "not in the capture")
            assert a.link.is_open
        elif policy == "forward":
            from mocks.stats import MESSAGES_STORED

            out = await a.send_text("user0002", "not in the capture")
            assert out.new_msg_id                 # the lab's own service stored it
            assert (await lab.store.counters()).get(MESSAGES_STORED) == 1
            again = await a.send_text("user0002", RECORDED_TEXT)        # back on the script
            rec_send = next(x for x in load_sessions(str(CHAT)).exchanges
                            if x.name == "NEWSENDMSG")
            assert again.new_msg_id == rec_send.reply.event.message().msgs[0].new_msg_id
            # ...from the capture: the lab's store saw nothing of it
            assert (await lab.store.counters()).get(MESSAGES_STORED) == 1
        else:
            with pytest.raises((LinkClosed, ConnectionError)):
                await a.send_text("user0002", "not in the capture")
            assert not a.link.is_open
        [miss] = lab.script.report()["unmatched"]
        assert (miss["door"], miss["request"], miss["action"]) == ("long", "NEWSENDMSG",
                                                                   policy)
        assert "differs at msgs[0].content" in miss["detail"]
        await a.close()
    finally:
        await lab.stop()
