"""Phones sharing one lab through its store: `testbed emulate --claim-users K` (distinct
accounts for phones started together, results posted into the store), `testbed lab results`
(read back, merged, beside the lab's counters) and the wait for every phone to be done that
`testbed record --until-phones-done` stops on."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import uuid

import pytest

from mocks.state import MemoryStore
from testbed.client.scenarios import ScenarioResult, Step
from testbed.client.swarm import merge
from testbed.phones_cli import read_runs, wait_phones_done

from ..conftest import start_lab


async def _cli(*args, env=None):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_phones_started_together_claim_distinct_users_and_post_results(tmp_path,
                                                                             redis_stores,
                                                                             redis_url):
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    url = f"{redis_url}?namespace={namespace}"
    store = await redis_stores(namespace)
    lab = await start_lab(tmp_path, store=store, users=7)
    manifest = str(lab.manifest_path)
    try:
        runs = await asyncio.gather(*(_cli("emulate", "chat", "--manifest", manifest,
                                           "--claim-users", "2", "--store", url, "--json")
                                      for _ in range(3)))
        for code, out, err in runs:
            assert code == 0, err
            assert json.loads(out)["clients"] == 2
        # a fourth phone finds one user left: a clear error, nothing claimed
        code, _, err = await _cli("emulate", "chat", "--manifest", manifest,
                                  "--claim-users", "2", "--store", url)
        assert code == 1 and "only 1 unclaimed users left, 2 asked for" in err
        code, out, err = await _cli("lab", "results", "--store", url, "--json")
    finally:
        await lab.stop()
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["phones"]) == 3 and doc["running"] == [] and doc["ok"]
    users = [u for us in doc["claims"].values() for u in us]
    assert sorted(users) == [f"user{i:04d}" for i in range(1, 7)]        # each exactly once
    for owner, result in doc["phones"].items():
        assert sorted(result["users"]) == doc["claims"][owner]
        assert all(s["ok"] for s in result["steps"]) and result["metrics"]["duplicates"] == 0
    # each phone's two users chat both ways: 2 texts and 2 replies, each stored once
    assert [r["metrics"]["messages_sent"] for r in doc["phones"].values()] == [4, 4, 4]
    assert doc["messages_stored"] == 3 * 4
    assert doc["merged"]["clients"] == 6 and doc["merged"]["ok"]


async def test_claim_users_mistakes_are_one_line(tmp_path):
    lab = await start_lab(tmp_path, users=2)
    manifest = str(lab.manifest_path)
    try:
        for args, code, text in (
                ([], 2, "--claim-users needs the lab's store"),
                (["--store", "memory:"], 1, "needs the lab's shared store"),
                (["--store", "redis://127.0.0.1:1/0"], 1, "cannot use the Redis store"),
                (["--store", "memory:", "--clients", "3"], 2, "--clients 3 needs as many")):
            got, _, err = await _cli("emulate", "login", "--manifest", manifest,
                                     "--claim-users", "2", *args)
            assert got == code and text in err, (args, err)
            assert "Traceback" not in err
    finally:
        await lab.stop()


async def test_a_phone_whose_manifest_lacks_its_users_posts_a_failure(tmp_path, redis_stores,
                                                                       redis_url):
    """Claimed users must not leave the lab waiting: a phone that cannot run as them (its
    manifest was written before they were seeded) says why and posts that as its result."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = await redis_stores(namespace)
    lab = await start_lab(tmp_path, store=store, users=2)
    try:
        await store.claim_users("someone-else/1", 2)
        for i in (3, 4):
            await store.create_user(f"user{i:04d}", "p", "n", 1, "c", "s", f"av{i}")
        code, _, err = await _cli("emulate", "login", "--manifest", str(lab.manifest_path),
                                  "--claim-users", "2", "--store",
                                  f"{redis_url}?namespace={namespace}")
    finally:
        await lab.stop()
    assert code == 1 and "the manifest does not list user0003, user0004" in err
    [(owner, text)] = [(o, t) for o, t in (await store.results()).items()]
    result = json.loads(text)
    assert not result["ok"] and result["users"] == ["user0003", "user0004"]
    assert "does not list" in result["errors"][0]


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["Ctrl-C", "SIGTERM"])
async def test_a_phone_stopped_by_a_signal_posts_that_it_was(tmp_path, redis_stores,
                                                              redis_url, sig, status):
    """A phone stopped mid-run (`docker compose stop`, Ctrl-C) exits 128 + the signal and
    posts "interrupted" as its result, so the recorder and `lab results --wait` do not wait
    for it."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = await redis_stores(namespace)
    lab = await start_lab(tmp_path, store=store, users=2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed.cli", "emulate", "heartbeat", "--manifest",
        str(lab.manifest_path), "--duration", "100000", "--claim-users", "2", "--store",
        f"{redis_url}?namespace={namespace}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async def logged_in() -> None:     # claimed, and both phones hold their long link
            while lab.long.connections_total < 2:
                assert proc.returncode is None
                await asyncio.sleep(0.05)
        await asyncio.wait_for(logged_in(), 60)
        assert await store.results() == {}
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await lab.stop()
    assert proc.returncode == status, err.decode()
    [(owner, text)] = list((await store.results()).items())
    result = json.loads(text)
    assert not result["ok"] and result["errors"] == ["interrupted"]
    assert result["users"] == ["user0001", "user0002"] == (await store.claims())[owner]
    assert (await read_runs(store)).running == []


async def test_lab_results_reports_running_and_failed_phones(redis_stores, redis_url):
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = await redis_stores(namespace)
    url = f"{redis_url}?namespace={namespace}"
    code, _, err = await _cli("lab", "results", "--store", url)
    assert code == 1 and "no phone has posted a result yet" in err
    for i in range(1, 5):
        await store.create_user(f"user{i:04d}", "p", "n", 1, "c", "s", f"av{i}")
    await store.claim_users("phone-a/1", 2)
    await store.claim_users("phone-b/2", 2)
    failed = ScenarioResult("chat", 2, [Step("push then sync delivers (long link)", False,
                                             "1/2")])
    await store.put_result("phone-a/1", json.dumps(failed.to_dict()))
    code, out, _ = await _cli("lab", "results", "--store", url)
    assert code == 1
    assert "1 done, 1 running" in out and "FAILED" in out and "running" in out
    assert "failed: push then sync delivers (long link): 1/2" in out
    code, out, _ = await _cli("lab", "results", "--store", url, "--json")
    assert code == 1 and json.loads(out)["running"] == ["phone-b/2"]
    waiter = asyncio.ensure_future(_cli("lab", "results", "--store", url, "--wait", "--json"))
    await asyncio.sleep(4)
    assert not waiter.done()                                  # phone-b still runs
    await store.put_result("phone-b/2", json.dumps(
        ScenarioResult("chat", 2, [Step("push then sync delivers (long link)", True)],
                       {"messages_sent": 4, "heartbeat_interval_median_s": 300.0}).to_dict()))
    code, out, _ = await asyncio.wait_for(waiter, 30)
    doc = json.loads(out)
    assert code == 1 and doc["running"] == [] and sorted(doc["phones"]) == ["phone-a/1",
                                                                             "phone-b/2"]
    assert not doc["ok"]                                       # phone-a failed
    # the phones' figures, merged from what each posted into the store
    code, out, _ = await _cli("lab", "results", "--store", url)
    assert code == 1 and "what the 2 phones did, merged" in out
    figures = dict(re.findall(r"^│ (\w+) +│ +([\d.]+) │$", out, re.M))
    assert figures == {"messages_sent": "4", "heartbeat_interval_median_s": "300"}, out
    assert "the phones sent 4 messages and the lab stored 0" in out


async def test_waiting_for_the_phones_ends_when_every_claimer_has_posted():
    store = MemoryStore()
    for i in range(1, 5):
        await store.create_user(f"user{i:04d}", "p", "n", 1, "c", "s", f"av{i}")
    ok = json.dumps(ScenarioResult("login", 2, [Step("login over TLS", True)]).to_dict())
    waiting = asyncio.ensure_future(wait_phones_done(store, settle_s=0.3))
    await store.claim_users("a/1", 2)
    await asyncio.sleep(0.5)
    assert not waiting.done()                       # nobody has posted
    await store.claim_users("b/2", 2)
    await store.put_result("a/1", ok)
    await asyncio.sleep(0.8)
    assert not waiting.done()                       # b still runs
    await store.put_result("b/2", ok)
    runs = await asyncio.wait_for(waiting, 5)
    assert runs.done and runs.ok and sorted(runs.results) == ["a/1", "b/2"]
    assert (await read_runs(store)).running == []


async def test_a_recorder_started_again_waits_for_the_phones_it_records():
    """Results already in the store (an earlier run on the same Redis) do not end the wait
    of a recorder started afterwards: only new phones, once all done, do."""
    store = MemoryStore()
    for i in range(1, 5):
        await store.create_user(f"user{i:04d}", "p", "n", 1, "c", "s", f"av{i}")
    ok = json.dumps(ScenarioResult("login", 2, [Step("login over TLS", True)]).to_dict())
    await store.claim_users("earlier/1", 2)
    await store.put_result("earlier/1", ok)
    waiting = asyncio.ensure_future(wait_phones_done(store, settle_s=0.2, new_only=True))
    await asyncio.sleep(0.8)
    assert not waiting.done()
    await store.claim_users("later/2", 2)
    await store.put_result("later/2", ok)
    runs = await asyncio.wait_for(waiting, 5)
    assert sorted(runs.results) == ["earlier/1", "later/2"]
    # a reader who only asks whether all are done is answered at once
    assert (await asyncio.wait_for(wait_phones_done(store, settle_s=0.2), 5)).done


def test_merged_results_sum_counts_and_take_the_median_of_medians():
    rs = [ScenarioResult("heartbeat", 2, [Step("heartbeat every 300 s", True, "3..3")],
                         {"heartbeats_sent": 6, "heartbeat_interval_median_s": m})
          for m in (299.0, 300.0, 310.0)]
    m = merge(rs)
    assert m.clients == 6 and m.metrics["heartbeats_sent"] == 18
    assert m.metrics["heartbeat_interval_median_s"] == 300.0
    again = ScenarioResult.from_dict({**m.to_dict(), "users": ["user0001"]})
    assert again.to_dict() == m.to_dict()
