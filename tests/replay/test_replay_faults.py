"""`testbed replay --fault`: faults on what the replay sends, against a fresh lab, with the
outcome a user would predict: a duplicated send is stored once and a split frame read whole
(no difference at all), a dropped request is one missing reply and the replay goes on, a
reset or black-holed link is opened and identified again for its next exchange."""

from __future__ import annotations

import json

from testbed.replay.golden import GOLDENS, lab_options
from tests.conftest import start_lab
from tests.replay.test_replay_command import GOLDEN, run_testbed


async def _replay(tmp_path, name: str, *args: str,
                  time_scale: float = 0.0) -> tuple[int, dict, str]:
    """`testbed replay GOLDEN --json ARGS` against a fresh lab like the golden's (at
    `time_scale` instead of the golden's, if given): (exit status, JSON, stderr)."""
    g = GOLDENS[name]
    # a missing reply is waited for 5 wall seconds, which at k = 100 is longer than the
    # lab's idle timeout (660 protocol s): the lab would close the other links meanwhile.
    # Out of the way, so that what the test sees is the fault's doing alone.
    options = dict(lab_options(g), **({"time_scale": time_scale} if time_scale else {}))
    lab = await start_lab(tmp_path, **options, server_idle_s=1e6)
    try:
        rc, out, err = await run_testbed("replay", str(GOLDEN / g.file), "--manifest",
                                         str(lab.config.manifest_path), "--json", *args)
    finally:
        await lab.stop()
    assert not lab.server_errors()
    return rc, json.loads(out) if out.strip() else {}, err


async def test_a_duplicated_send_and_a_split_frame_make_no_difference(tmp_path):
    rc, doc, err = await _replay(tmp_path, "chat", "--fault", "dup:NEWSENDMSG#1",
                                 "--fault", "split:NEWSYNC#2@10", "--fault", "seed=5")
    assert rc == 0, err
    # the lab answered the send twice and stored it once: every later sync is as recorded
    assert doc["diffs"] == [] and doc["missing"] == [] and doc["unexpected"] == []
    f = doc["faults"]
    assert f["plan"] == ["dup:NEWSENDMSG#1", "split:NEWSYNC#2@10"] and f["seed"] == 5
    assert [(a["fault"], a["n"]) for a in f["applied"]] == [("split:NEWSYNC#2@10", 2),
                                                            ("dup:NEWSENDMSG#1", 1)]


async def test_a_dropped_request_is_one_missing_reply_and_the_replay_goes_on(tmp_path):
    rc, doc, err = await _replay(tmp_path, "chat", "--fault", "drop:NEWSYNC#3")
    assert rc == 1
    [missing] = doc["missing"]                 # the third NEWSYNC sent: exchange 15
    assert (missing["exchange"], missing["command"]) == (15, "NEWSYNC")
    assert "no reply" in missing["detail"]
    assert doc["diffs"] == [] and doc["unexpected"] == []
    after = [r for r in doc["rows"] if (r.get("exchange") or 0) > 15]
    assert len(after) == 13 and all(r["status"] in ("match", "masked") for r in after)


async def test_a_reset_and_a_black_holed_link_are_opened_again_for_their_next_exchange(
        tmp_path):
    # at k = 200, not the golden's 1000: the faults fall 110 to 190 protocol seconds from
    # the NOOPs around them, which at k = 1000 is 0.1 wall second, less than a loaded
    # machine's stalls (the replay paced as recorded takes about 5 s)
    rc, doc, err = await _replay(tmp_path, "heartbeat", "--pace", "recorded",
                                 "--fault", "reset:long#1@450s",
                                 "--fault", "blackhole:long#2@800s", time_scale=200)
    # the links open at about 51 s: one is reset at about 500 s, and its next NOOP (at 660)
    # opens it again, identified; the other goes into a hole at about 850 s, and its NOOP
    # at 962 gets no answer
    [missing] = doc["missing"]
    assert rc == 1 and missing["command"] == "NOOP" and 950 < missing["t"] < 970
    noops = [r for r in doc["rows"] if r["command"] == "NOOP"]
    assert len(noops) == 6 and sum(r["status"] == "match" for r in noops) == 5
    assert sorted(a["fault"] for a in doc["faults"]["applied"]) == [
        "blackhole:long#2@800s", "reset:long#1@450s"]
    assert doc["diffs"] == [] and doc["unexpected"] == []


async def test_a_bad_fault_is_one_line_and_exit_2(tmp_path):
    for spec, said in (("drop:NEWSYNC", "say which NEWSYNC"),
                       ("drop:NOTIFY#1", "NOTIFY is a push the lab sends"),
                       ("truncate:short.NEWSYNC#1@5", "drop or delay")):
        rc, out, err = await run_testbed("replay", str(GOLDEN / "chat.pcapng"), "--manifest",
                                         str(tmp_path / "none.json"), "--fault", spec)
        assert rc == 2 and said in err and "Traceback" not in err, err


async def test_a_truncated_request_closes_its_link_which_is_opened_again(tmp_path):
    rc, doc, err = await _replay(tmp_path, "chat", "--fault", "truncate:NEWSYNC#3@10")
    # the lab got 10 bytes of user0002's frame, then the connection's end, and closed the
    # link: that newsync has no reply, and the NOTIFY that user0002's next send (over the
    # short link) made for its own link had no link to go to. The link's next exchange opens it again (identified); the lab then
    # announces what user0002 has not synced yet (a NOTIFY the capture does not have), and
    # from there on everything is as recorded.
    assert rc == 1, err
    assert [(m["exchange"], m["command"]) for m in doc["missing"]] == [(15, "NEWSYNC"),
                                                                        (18, "NOTIFY")]
    assert "closed" in doc["missing"][0]["detail"]
    [unexpected] = doc["unexpected"]
    assert unexpected["command"] == "NOTIFY"
    assert doc["diffs"] == []
    after = [r for r in doc["rows"] if (r.get("exchange") or 0) > 18]
    assert len(after) == 10 and all(r["status"] in ("match", "masked") for r in after)
    [applied] = doc["faults"]["applied"]
    assert (applied["fault"], applied["offset"]) == ("truncate:NEWSYNC#3@10", 10)


async def test_the_same_seed_delays_the_same_requests_by_the_same_time(tmp_path):
    """Each NEWSYNC delayed with probability 50 %, by 1 to 3 protocol seconds: a delay is
    waited for (no difference at all), and two replays with one seed pick the same frames
    and the same delays; another seed picks others."""
    runs = []
    for i, seed in enumerate((11, 11, 12)):
        rc, doc, err = await _replay(tmp_path / str(i), "chat", "--fault",
                                     "delay:NEWSYNC%50=1s..3s", "--fault", f"seed={seed}")
        assert rc == 0 and doc["diffs"] == [] and doc["missing"] == [], err
        runs.append([(a["n"], a["delay_s"]) for a in doc["faults"]["applied"]])
    assert runs[0] == runs[1] and 0 < len(runs[0]) < 10
    assert all(1 <= d <= 3 for _, d in runs[0])
    assert runs[2] != runs[0]
