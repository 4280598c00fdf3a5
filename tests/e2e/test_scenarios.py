"""Each scenario against a real lab, asserting on what the servers saw."""

from __future__ import annotations

import json

import pytest

from mocks.stats import read_stats
from testbed.cli import main
from testbed.client.scenarios import run_scenario

FAST = dict(time_scale=1000.0)


async def seen(lab, door, name):
    return (await read_stats(lab.store)).requests[(door, name)]


@pytest.mark.lab(users=4, **FAST)
async def test_login(lab):
    r = await run_scenario("login", lab.manifest, clients=3)
    assert r.ok, r
    assert await seen(lab, "tls", "MANUALAUTH") == 3
    assert await seen(lab, "short", "NEWINIT") == 3
    assert await seen(lab, "long", "IDENTIFY") == 3
    # the password never went over the plain port
    assert await seen(lab, "short", "MANUALAUTH") == 0


@pytest.mark.lab(users=4, **FAST)
async def test_chat(lab):
    r = await run_scenario("chat", lab.manifest, clients=4)
    assert r.ok, r
    assert await seen(lab, "long", "NEWSENDMSG") == 4       # one per pair, over the long link
    assert await seen(lab, "short", "NEWSENDMSG") == 4      # the replies, over HTTP
    assert (await read_stats(lab.store)).messages_stored == 8
    assert lab.long.pushes_sent >= 8
    assert r.metrics["duplicates"] == 0


@pytest.mark.lab(users=2, **FAST)
async def test_media(lab):
    r = await run_scenario("media", lab.manifest, clients=2, seed=3)
    assert r.ok, r
    assert await seen(lab, "long", "UPLOADMSGIMG") >= 2 * 1   # chunked: at least one per image
    assert await seen(lab, "long", "GETMSGIMG") >= 2
    assert sum(lab.apps["mmsns.qpic.cn"]["stats"].values()) == 2


@pytest.mark.lab(users=3, **FAST)
async def test_nearby(lab):
    r = await run_scenario("nearby", lab.manifest, clients=3, seed=1)
    assert r.ok, r
    assert await seen(lab, "short", "LBSFIND") == 6
    mapabc = lab.apps["mapi.mapabc.com"]["stats"]
    assert mapabc["/v3/geocode/regeo"] == 6 and mapabc["/v3/cell"] == 6
    assert sum(lab.apps["wx.qlogo.cn"]["stats"].values()) == 6   # 2 others each
    assert ("mapi.mapabc.com", 1) in set(lab.dns.seen)


@pytest.mark.lab(users=2, **FAST)
async def test_heartbeat(lab):
    r = await run_scenario("heartbeat", lab.manifest, clients=2)
    assert r.ok, r
    assert lab.long.frames_in >= 6
    assert abs(r.metrics["heartbeat_interval_median_s"] - 300) < 10


@pytest.mark.lab(users=2, **FAST)
async def test_storyboard_in_the_reports_order(lab):
    r = await run_scenario("storyboard", lab.manifest, clients=2, seed=5)
    assert r.ok, r
    names = [s.name for s in r.steps]
    assert names[0].startswith("DNS")
    assert lab.dns.seen[0] == ("long.weixin.qq.com", 1)    # the first query, as in the report
    order = ["login", "push then sync", "image", "lbsfind", "heartbeat", "behaviour", "logout"]
    idx = [next(i for i, n in enumerate(names) if key in n) for key in order]
    assert idx == sorted(idx)
    assert await seen(lab, "short", "STATREPORT") == 2
    assert await seen(lab, "short", "KVREPORT") == 2
    assert await seen(lab, "short", "LOGOUT") == 2
    assert not lab.long.by_session        # every session ended


@pytest.mark.lab(users=2, **FAST)
async def test_a_failing_step_is_reported_not_raised(lab):
    lab.manifest.users[0]["password"] = "wrong"
    r = await run_scenario("login", lab.manifest, clients=1)
    assert not r.ok and "ret -3" in r.errors[0]


def test_emulate_cli_json_and_exit_codes(tmp_path, capsys):
    import asyncio
    from tests.conftest import start_lab

    async def go():
        lab = await start_lab(tmp_path, users=4, time_scale=1000.0)
        try:
            loop = asyncio.get_running_loop()
            rc = await loop.run_in_executor(None, main, [
                "emulate", "chat", "--manifest", str(lab.manifest_path), "--clients", "4",
                "--processes", "2", "--json"])
            return rc, (await read_stats(lab.store)).messages_stored
        finally:
            await lab.stop()

    rc, stored = asyncio.run(go())
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["clients"] == 4
    assert stored == 8
    assert main(["emulate", "chat", "--manifest", str(tmp_path / "nope.json")]) == 2
