"""Labs on the Redis store: services in different places share users, logs, counters and
events through one redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from mocks.service import RequestContext, Service
from mocks.state import PushEvent, UploadRecord, make_store, new_link_id
from mocks.stats import read_stats
from testbed.client.phone import Phone
from testbed.client.session import Session
from testbed.lab.addressing import AddressPlan
from testbed.lab.clock import Clock
from testbed.wire import BY_NAME, Ret, ServiceError, pb

from ..conftest import start_lab
from .helpers import (chat_round, descendants, logged_in, start_lab_up, still_alive, wait_for,
                      wait_manifest)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError):
                pass
    return out


def serve_role(pid: int) -> str:
    """The ROLE of a `testbed serve ROLE` process."""
    words = cmdline(pid).split()
    return words[words.index("serve") + 1]


async def test_a_send_through_one_service_wakes_a_listener_on_another(redis_stores):
    """Two Service instances on two Redis connections stand in for two workers."""
    one, two = Service(await redis_stores()), Service(await redis_stores())
    heard = []
    two.store.subscribe(heard.append)
    alice, bob = await one.seed_users(2)
    login = await two.handle(BY_NAME["MANUALAUTH"], pb.ManualAuthRequest(
        username=alice.username, password=alice.password), RequestContext())
    base = pb.BaseRequest(session_key=login.session_key, uin=login.uin)
    with pytest.raises(ServiceError):
        await two.handle(BY_NAME["MANUALAUTH"], pb.ManualAuthRequest(
            username=bob.username, password="wrong"), RequestContext())
    heard.clear()
    link = new_link_id()
    resp = await one.handle(BY_NAME["NEWSENDMSG"], pb.NewSendMsgRequest(base=base, msgs=[
        pb.MicroMsgRequest(to_user=bob.username, content="across", client_msg_id="c1")]),
        RequestContext(origin=link))
    assert resp.msgs[0].ret == 0
    deadline = time.monotonic() + 5
    while PushEvent(bob.uin, 0x1, link) not in heard:
        assert time.monotonic() < deadline, f"no push for bob on the other store: {heard}"
        await asyncio.sleep(0.005)
    # the sender's own copy was pushed too, naming the same link so it can skip it
    assert PushEvent(alice.uin, 0x1, link) in heard
    # what either service counted is in the store, for both
    stats = await read_stats(one.store)
    assert stats.messages_stored == 1
    assert stats.errors[("MANUALAUTH", Ret.WRONG_PASSWORD)] == 1
    # the same client_msg_id through the other service is the same message, stored once
    again = await two.handle(BY_NAME["NEWSENDMSG"], pb.NewSendMsgRequest(base=base, msgs=[
        pb.MicroMsgRequest(to_user=bob.username, content="across", client_msg_id="c1")]),
        RequestContext())
    assert again.msgs[0].new_msg_id == resp.msgs[0].new_msg_id
    assert (await read_stats(two.store)).messages_stored == 1
    assert (await two.store.log_lengths(bob.uin))[1] == 1


async def test_an_upload_resumed_on_another_worker_is_one_message(redis_stores):
    """Chunks alternate between two services; the last chunk arrives at both at once (a
    retry): the image is stored, and delivered, once."""
    one, two = Service(await redis_stores()), Service(await redis_stores())
    alice, bob = await one.seed_users(2)
    login = await one.handle(BY_NAME["MANUALAUTH"], pb.ManualAuthRequest(
        username=alice.username, password=alice.password), RequestContext())
    base = pb.BaseRequest(session_key=login.session_key, uin=login.uin)
    data = bytes(range(256)) * 1000       # 256,000 bytes: four chunks
    chunk = 64 * 1024
    upload = BY_NAME["UPLOADVOICE"]

    def part(pos):
        return pb.UploadMediaRequest(base=base, client_media_id="voice-1", to_user=bob.username,
                                     total_len=len(data), start_pos=pos,
                                     data=data[pos:pos + chunk])

    starts = list(range(0, len(data), chunk))
    for k, pos in enumerate(starts[:-1]):
        r = await (one, two)[k % 2].handle(upload, part(pos), RequestContext())
        assert r.base.ret == 0 and r.start_pos == pos + chunk and not r.new_msg_id
    last = await asyncio.gather(one.handle(upload, part(starts[-1]), RequestContext()),
                                two.handle(upload, part(starts[-1]), RequestContext()))
    done = [r for r in last if r.base.ret == 0 and r.new_msg_id]
    assert done and len({r.new_msg_id for r in done}) == 1
    assert all(r.base.ret in (0, Ret.MEDIA_OUT_OF_ORDER) for r in last)
    msg_id = done[0].new_msg_id
    bob_log = await two.store.read_log(bob.uin, 1, 0, 100)
    items = [pb.CmdItem.FromString(raw) for raw in bob_log]
    msgs = [pb.AddMsg.FromString(i.cmd_buf) for i in items]
    assert [(m.new_msg_id, m.msg_type) for m in msgs] == [(msg_id, 34)]   # the row's type
    got = bytearray()
    while len(got) < len(data):
        r = await (two, one)[len(got) // chunk % 2].handle(
            BY_NAME["DOWNLOADVOICE"], pb.DownloadMediaRequest(
                base=base, msg_id=msg_id, start_pos=len(got), max_len=chunk), RequestContext())
        assert r.base.ret == 0 and r.total_len == len(data)
        got += r.data
    assert bytes(got) == data
    assert (await read_stats(one.store)).messages_stored == 1


async def test_an_upload_whose_worker_died_before_finishing_it_is_finished_by_the_retry(
        redis_stores):
    """Worker one stored the last chunk and died before finishing the upload (its store
    calls were all made, the one that finishes it was not). The client's retry of that chunk
    on worker two finishes it: one message, the right bytes."""
    one, two = await redis_stores(), Service(await redis_stores())
    alice, bob = await two.seed_users(2)
    login = await two.handle(BY_NAME["MANUALAUTH"], pb.ManualAuthRequest(
        username=alice.username, password=alice.password), RequestContext())
    base = pb.BaseRequest(session_key=login.session_key, uin=login.uin)
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300
    await one.start_upload(UploadRecord(alice.uin, "img-9", bob.username, 3, len(data)))
    assert await one.append_upload(alice.uin, "img-9", 0, data[:65536]) == 65536
    assert await one.append_upload(alice.uin, "img-9", 65536, data[65536:]) == len(data)
    await one.close()           # the dead worker
    retry = await two.handle(BY_NAME["UPLOADMSGIMG"], pb.UploadMediaRequest(
        base=base, client_media_id="img-9", to_user=bob.username, total_len=len(data),
        start_pos=65536, data=data[65536:]), RequestContext())
    assert retry.base.ret == 0 and retry.start_pos == len(data) and retry.new_msg_id
    again = await two.handle(BY_NAME["UPLOADMSGIMG"], pb.UploadMediaRequest(
        base=base, client_media_id="img-9", to_user=bob.username, total_len=len(data),
        start_pos=65536, data=data[65536:]), RequestContext())
    assert again.new_msg_id == retry.new_msg_id
    items = await two.store.read_log(bob.uin, 1, 0, 10)
    msgs = [pb.AddMsg.FromString(pb.CmdItem.FromString(raw).cmd_buf) for raw in items]
    assert [m.new_msg_id for m in msgs] == [retry.new_msg_id]
    assert (await two.store.get_media(retry.new_msg_id)).data == data
    assert (await read_stats(two.store)).messages_stored == 1


async def test_a_logout_through_one_lab_closes_the_link_held_by_another(tmp_path,
                                                                        redis_stores):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    lab_b = await start_lab(tmp_path / "b", store=await redis_stores(), users=0)
    lab_a = await start_lab(tmp_path / "a", store=await redis_stores(), users=2)
    try:
        u = lab_a.manifest.users[0]
        on_b = Session(lab_b.manifest, u["username"], u["password"])
        await on_b.login()
        await on_b.connect_long()
        await on_b.link.noop()
        via_a = Session(lab_a.manifest, u["username"], u["password"])
        via_a.uin, via_a.session_key = on_b.uin, on_b.session_key
        await via_a.logout()
        await asyncio.wait_for(on_b.link.closed, 5)        # closed by lab B's server
        assert lab_b.long.identified_count() == 0
    finally:
        await lab_a.stop()
        await lab_b.stop()


async def test_chat_among_50_users_across_two_labs_on_one_redis(tmp_path, redis_stores):
    """Two labs (long and short links each) share one Redis namespace; half the phones use
    each. Every message is delivered exactly once, in each sender's order, though most go
    from a phone on one lab to a phone on the other (pushed by pub/sub)."""
    n, per_sender = 50, 4
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    lab_b = await start_lab(tmp_path / "b", store=await redis_stores(), users=0)
    lab_a = await start_lab(tmp_path / "a", store=await redis_stores(), users=n)
    phones = []
    try:
        clock = Clock(1.0)
        users = lab_a.manifest.users
        for i, u in enumerate(users):
            lab = (lab_a, lab_b)[i % 2]
            phones.append(Phone(lab.manifest, u["username"], u["password"], clock=clock))
        await asyncio.gather(*(p.start() for p in phones))
        # each sender: to its 1st, 2nd, 3rd and 5th neighbours, alternating the doors
        plan = {i: [(i + d) % n for d in (1, 2, 3, 5)][:per_sender] for i in range(n)}

        await chat_round(phones, plan)
        stats = await read_stats(lab_a.store)
        assert stats.messages_stored == n * per_sender
        sent = sum(stats.requests[(door, "NEWSENDMSG")] for door in ("long", "short"))
        assert sent == n * per_sender
        # both labs carried pushes: the receivers' links are split between them
        assert lab_a.long.pushes_sent > 0 and lab_b.long.pushes_sent > 0
    finally:
        await asyncio.gather(*(p.stop() for p in phones), return_exceptions=True)
        await lab_a.stop()
        await lab_b.stop()
    assert not lab_a.server_errors() and not lab_b.server_errors()


def _elsewhere(redis_url, namespace, work):
    """`await work(service)` as another worker would: its own store connections, in a
    thread of its own, so that the caller's event loop, blocked meanwhile, cannot run its
    store's reconnect until the work is stored and published."""
    async def run():
        service = Service(await make_store(redis_url, namespace=namespace))
        try:
            await work(service)
        finally:
            await service.store.close()

    import threading
    failed = []
    thread = threading.Thread(target=lambda: failed.extend(
        [e for e in [_try(lambda: asyncio.run(run()))] if e]))
    thread.start()
    thread.join(30)
    assert not failed, failed


def _send_elsewhere(redis_url, namespace, sender, password, to, content):
    """Another worker's send (see `_elsewhere`)."""
    async def send(service):
        login = await service.handle(BY_NAME["MANUALAUTH"], pb.ManualAuthRequest(
            username=sender, password=password), RequestContext())
        base = pb.BaseRequest(session_key=login.session_key, uin=login.uin)
        resp = await service.handle(BY_NAME["NEWSENDMSG"], pb.NewSendMsgRequest(
            base=base, msgs=[pb.MicroMsgRequest(to_user=to, content=content,
                                                client_msg_id="gap-1")]),
            RequestContext())
        assert resp.msgs[0].ret == 0

    _elsewhere(redis_url, namespace, send)


def _try(fn):
    try:
        fn()
    except Exception as exc:   # noqa: BLE001 - handed to the test thread
        return exc
    return None


async def test_a_push_published_while_the_event_connection_was_down_still_reaches_the_phone(
        tmp_path, redis_stores, redis_url):
    """Redis pub/sub keeps nothing for a subscriber that is away: the lab's event connection
    is killed and a message is stored and published (by another worker) before the lab has
    subscribed again. Its long link learns that it may have missed events and pushes to
    every link it holds, so the phone syncs and gets the message."""
    import redis

    store = await redis_stores()
    lab = await start_lab(tmp_path, store=store, users=2)
    killer = redis.Redis.from_url(redis_url)
    phone = None
    try:
        u, v = lab.manifest.users[:2]
        phone = Phone(lab.manifest, u["username"], u["password"], clock=Clock(1.0))
        await phone.start()
        pushes = phone.metrics.pushes
        # blocking calls from here on: the lab, in this loop, sees nothing until they return
        assert killer.client_kill_filter(_type="pubsub") >= 1
        _send_elsewhere(redis_url, store.namespace, v["username"], v["password"],
                        u["username"], "sent into the gap")
        await wait_for(lambda: phone.metrics.received, timeout=10)
        [msg] = [m for m in phone.session.sync_state.messages if m.to_user == u["username"]]
        assert msg.content == "sent into the gap"
        assert phone.metrics.pushes > pushes
    finally:
        killer.close()
        if phone is not None:
            await phone.stop()
        await lab.stop()
    assert not lab.server_errors()


async def test_a_logout_published_while_the_event_connection_was_down_still_closes_the_link(
        tmp_path, redis_stores, redis_url):
    """A session logged out (by another worker) while this lab's event connection is down:
    its SessionEnded is lost with the subscription, so on subscribing again the long link
    asks the store which of its sessions still exist and closes the links of the others;
    the other user's link stays up."""
    import redis

    store = await redis_stores()
    lab = await start_lab(tmp_path, store=store, users=2)
    killer = redis.Redis.from_url(redis_url)
    gone = kept = None
    try:
        gone, kept = await logged_in(lab, 0), await logged_in(lab, 1)
        # blocking calls from here on: the lab, in this loop, sees nothing until they return
        assert killer.client_kill_filter(_type="pubsub") >= 1
        _logout_elsewhere(redis_url, store.namespace, gone.session_key, gone.uin)
        reason = await asyncio.wait_for(asyncio.shield(gone.link.closed), 10)
        assert reason is None                     # closed by the server, not an error
        await kept.link.noop()                    # still identified and answered
        assert not kept.link.closed.done()
        assert gone.session_key not in lab.long.by_session
        assert kept.session_key in lab.long.by_session
    finally:
        killer.close()
        for s in (gone, kept):
            if s is not None:
                await s.close()
        await lab.stop()
    assert not lab.server_errors()


def _logout_elsewhere(redis_url, namespace, session_key, uin):
    """Another worker's LOGOUT of a session (see `_elsewhere`)."""
    async def logout(service):
        resp = await service.handle(BY_NAME["LOGOUT"], pb.LogoutRequest(
            base=pb.BaseRequest(session_key=session_key, uin=uin)), RequestContext())
        assert resp.base.ret == 0

    _elsewhere(redis_url, namespace, logout)


# ---------------------------------------------------------------------- `testbed lab up`

def _lab_up(tmp_path, store_url, name="m.json", *extra):
    return start_lab_up(tmp_path, "--time-scale", "100", "--store", store_url, *extra,
                        users=4, name=name)


async def _keys(redis_url, namespace):
    store = await make_store(redis_url, namespace=namespace)
    try:
        return await store.user_count(), await store.counters()
    finally:
        await store.close()


def test_lab_up_on_redis_runs_a_chat_and_leaves_nothing(tmp_path, redis_url):
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    url = f"{redis_url}?namespace={namespace}"
    proc, path = _lab_up(tmp_path, url)
    try:
        wait_manifest(proc, path)
        users, _ = asyncio.run(_keys(redis_url, namespace))
        assert users == 4                      # the lab's users are in Redis
        # a second lab on the same namespace is refused, and the first is untouched
        other, _ = _lab_up(tmp_path, url, "other.json")
        out, err = other.communicate(timeout=30)
        assert other.returncode == 1 and "already holds a lab (4 users)" in " ".join(err.split())
        assert "Traceback" not in err
        emu = subprocess.run([sys.executable, "-m", "testbed.cli", "emulate", "chat",
                              "--manifest", str(path), "--clients", "4", "--json"],
                             capture_output=True, text=True, timeout=120)
        assert emu.returncode == 0, emu.stderr
        result = json.loads(emu.stdout)
        assert result["ok"] and result["clients"] == 4
        _, counters = asyncio.run(_keys(redis_url, namespace))
        assert counters["messages_stored"] == 8            # 4 pairs, a message and a reply
        assert counters["requests long NEWSENDMSG"] == 4
        assert counters["requests short NEWSENDMSG"] == 4
        # every host is a `testbed serve` process; the long and short links have 2 workers
        hosts = {serve_role(pid): pid for pid in children(proc.pid)}
        assert set(hosts) == {"dns", "long", "short", "mapabc", "qlogo", "qpic"}
        for role in ("long", "short"):
            workers = [p for p in children(hosts[role]) if "spawn_main" in cmdline(p)]
            assert len(workers) == 2
            served = [k for k in counters if k.startswith(f"served {role} ")
                      or (role == "short" and k.startswith("served tls "))]
            assert served and all(k.rsplit("/", 1)[1].isdigit() for k in served)
        everything = descendants(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err          # stopped by Ctrl-C: 128 + SIGINT
    assert not still_alive(everything)
    assert f"state: Redis {redis_url}, namespace {namespace}" in " ".join(err.split())
    assert asyncio.run(_keys(redis_url, namespace)) == (0, {})   # its keys are gone


def test_lab_up_store_errors_are_one_line(tmp_path, redis_url):
    for store, rc, words in (("postgres://db/1", 2, "unsupported store"),
                             ("redis://127.0.0.1:1/0", 1, "cannot use the Redis store"),
                             (f"{redis_url}?namespace=bad*name", 2, "bad store namespace")):
        proc, path = _lab_up(tmp_path, store)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == rc, err
        assert words in " ".join(err.split()) and "Traceback" not in err
        assert not path.exists()
    for store, extra, words in (("memory:", ["--workers", "2"], "--workers needs a store"),
                                (redis_url, ["--record", str(tmp_path / "x.pcapng")],
                                 "--record needs the one-process lab")):
        proc, path = _lab_up(tmp_path, store, "m.json", *extra)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and words in " ".join(err.split()), err
        assert "Traceback" not in err and not path.exists()


def test_lab_up_reset_store_clears_what_a_killed_lab_left(tmp_path, redis_url):
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    url = f"{redis_url}?namespace={namespace}"
    proc, path = _lab_up(tmp_path, url)
    wait_manifest(proc, path)
    os.kill(proc.pid, signal.SIGKILL)           # no chance to clean up
    proc.communicate(timeout=30)
    assert asyncio.run(_keys(redis_url, namespace))[0] == 4
    path.unlink()
    assert (tmp_path / "m-run" / "long.json").exists()   # the killed lab's, not in /tmp
    proc, path = _lab_up(tmp_path, url, "m.json", "--reset-store")
    try:
        m = wait_manifest(proc, path)
        assert [u["username"] for u in m.users] == ["user0001", "user0002", "user0003",
                                                    "user0004"]
        assert asyncio.run(_keys(redis_url, namespace))[0] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert asyncio.run(_keys(redis_url, namespace)) == (0, {})
    assert not (tmp_path / "m-run").exists() and not (tmp_path / "m-ca").exists()


def test_lab_up_on_redis_with_a_carrier_nat_process(tmp_path, redis_url):
    """--nat-timeout on a lab of processes: a `serve nat` child holds the public ports and
    relays to the servers on free ones; the phones chat through it."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    proc, path = _lab_up(tmp_path, f"{redis_url}?namespace={namespace}", "m.json",
                         "--nat-timeout", "300", "--workers", "1")
    try:
        m = wait_manifest(proc, path, timeout=60)
        assert m.extra["nat"]["idle_timeout_s"] == 300
        assert m.hosts["long.weixin.qq.com"].port == 8080
        hosts = {serve_role(pid): pid for pid in children(proc.pid)}
        assert "nat" in hosts and len(hosts) == 7
        emu = subprocess.run([sys.executable, "-m", "testbed.cli", "emulate", "chat",
                              "--manifest", str(path), "--clients", "2", "--json"],
                             capture_output=True, text=True, timeout=120)
        assert emu.returncode == 0, emu.stderr
        assert json.loads(emu.stdout)["ok"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err          # stopped by Ctrl-C: 128 + SIGINT
    assert "carrier NAT in front of every TCP host" in " ".join(err.split())


def test_lab_up_on_redis_stops_every_host_when_one_cannot_start(tmp_path, redis_url):
    """The long link's first address is taken: that host says why and exits 1, lab up says
    which host failed, stops the others, writes no manifest and leaves the store empty."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    plan = AddressPlan.random_loopback()
    taken = socket.socket()
    taken.bind((plan.addresses("long.weixin.qq.com")[0], 8080))
    taken.listen()
    try:
        proc, path = start_lab_up(tmp_path, "--store", f"{redis_url}?namespace={namespace}",
                                  users=4, plan=plan)
        seen = set()
        while proc.poll() is None:
            seen |= descendants(proc.pid)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        taken.close()
    text = " ".join(err.split())
    assert proc.returncode == 1, err
    assert "serve long: cannot bind" in text and "the long host did not start" in text
    assert "Traceback" not in err, err
    assert not path.exists()
    assert not still_alive(seen)
    assert asyncio.run(_keys(redis_url, namespace)) == (0, {})
