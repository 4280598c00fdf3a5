"""The store contract (mocks/state/base.py), run against every store.

Each test gets two handles on one store: the same object for the memory store, two clients
with their own connections for Redis (as two worker processes would be), so every atomicity
promise is tested across connections.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from mocks import nearby
from mocks.state import (LOG_CONTACTS, LOG_MESSAGES, LOG_PROFILE, MediaRecord, MemoryStore,
                         PushEvent, QuotaExceeded, SessionEnded, SessionRecord, UploadRecord,
                         make_store, new_link_id)
from mocks.state.factory import split_namespace


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    """None for the memory store, else the URL of the test session's redis-server."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


async def _open_pair(url, namespace):
    if url is None:
        store = MemoryStore()
        return store, store
    return (await make_store(url, namespace=namespace),
            await make_store(url, namespace=namespace))


@pytest.fixture
async def stores(backend):
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    a, b = await _open_pair(backend, namespace)
    yield a, b
    await a.clear()
    await a.close()
    if b is not a:
        await b.close()


@pytest.fixture
def store(stores):
    return stores[0]


async def eventually(predicate, timeout=5.0):
    """Events from a networked store arrive after `publish` returns: wait for them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.005)


async def new_user(store, name, **kw):
    fields = dict(password="pw", nickname=f"nick-{name}", sex=1, city="Beijing",
                  signature="sig", avatar_key=f"av-{name}")
    fields.update(kw)
    return await store.create_user(name, **fields)


# ---------------------------------------------------------------------- accounts

async def test_users_get_uins_from_1_and_are_found_by_every_key(store):
    alice = await new_user(store, "alice", nickname="小明", signature="签名 ✓", sex=2)
    bob = await new_user(store, "bob")
    assert (alice.uin, bob.uin) == (1, 2)
    assert await store.user_count() == 2
    for found in (await store.user_by_name("alice"), await store.user_by_uin(1),
                  await store.user_by_avatar_key("av-alice")):
        assert found == alice
    assert alice.nickname == "小明" and alice.signature == "签名 ✓" and alice.sex == 2
    assert await store.user_by_name("carol") is None
    assert await store.user_by_uin(99) is None
    assert await store.user_by_avatar_key("nope") is None


async def test_a_taken_name_is_refused_and_uses_no_uin(store):
    await new_user(store, "alice")
    with pytest.raises(ValueError):
        await new_user(store, "alice", avatar_key="other")
    assert (await new_user(store, "bob")).uin == 2
    assert await store.user_count() == 2
    assert await store.user_by_avatar_key("other") is None


async def test_concurrent_sign_ups_on_two_connections(stores):
    a, b = stores
    # the same name from both: exactly one wins
    results = await asyncio.gather(new_user(a, "same"), new_user(b, "same"),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["UserRecord", "ValueError"]
    # distinct names from both: every uin distinct and dense
    users = await asyncio.gather(*(new_user(s, f"u{i}") for i in range(40)
                                   for s in [(a, b)[i % 2]]))
    assert sorted(u.uin for u in users) == list(range(2, 42))
    assert await b.user_count() == 41


# ---------------------------------------------------------------------- sessions

async def test_sessions(stores):
    a, b = stores
    key = bytes(range(256))[:16]
    s = SessionRecord(key, 7, "alice", b"\x00dev\xff")
    await a.put_session(s)
    assert await b.get_session(key) == s
    assert await b.get_session(b"\x01" * 16) is None
    assert await b.delete_session(key) is True
    assert await a.delete_session(key) is False
    assert await a.get_session(key) is None


async def test_a_device_logging_in_again_ends_its_earlier_session(stores):
    """One session per device: the same user's same device replaces its session (returned,
    so its links can be closed); another device, another user or no device id adds one."""
    a, b = stores
    first, again = SessionRecord(b"1" * 16, 7, "alice", b"phone"), \
        SessionRecord(b"2" * 16, 7, "alice", b"phone")
    others = [SessionRecord(b"3" * 16, 7, "alice", b"tablet"),
              SessionRecord(b"4" * 16, 8, "bob", b"phone"),
              SessionRecord(b"5" * 16, 7, "alice"), SessionRecord(b"6" * 16, 7, "alice")]
    assert await a.put_session(first) is None
    for s in others:
        assert await a.put_session(s) is None
    assert await b.put_session(again) == first.session_key
    assert await a.get_session(first.session_key) is None
    assert await a.get_session(again.session_key) == again
    assert await b.session_count() == 5
    # its device freed by a logout, the device's next login ends nothing
    assert await a.delete_session(again.session_key) is True
    assert await b.put_session(first) is None
    assert await a.session_count() == 5


# ---------------------------------------------------------------------- sync logs

async def test_logs_append_and_read(store):
    assert await store.log_lengths(5) == {LOG_MESSAGES: 0, LOG_CONTACTS: 0, LOG_PROFILE: 0}
    items = [bytes([i]) * (i + 1) + b"\x00" for i in range(10)]
    lengths = [await store.append(5, LOG_MESSAGES, it) for it in items]
    assert lengths == list(range(1, 11))
    await store.append(5, LOG_PROFILE, b"profile")
    await store.append(6, LOG_MESSAGES, b"other user")
    assert await store.log_lengths(5) == {LOG_MESSAGES: 10, LOG_CONTACTS: 0, LOG_PROFILE: 1}
    assert await store.read_log(5, LOG_MESSAGES, 0, 100) == items
    assert await store.read_log(5, LOG_MESSAGES, 3, 4) == items[3:7]
    assert await store.read_log(5, LOG_MESSAGES, 8, 5) == items[8:]
    assert await store.read_log(5, LOG_MESSAGES, 10, 5) == []
    assert await store.read_log(5, LOG_MESSAGES, 2, 0) == []
    assert await store.read_log(5, LOG_CONTACTS, 0, 5) == []
    assert await store.read_log(6, LOG_MESSAGES, 0, 5) == [b"other user"]


async def test_an_append_pushes_to_listeners_on_every_connection(stores):
    a, b = stores
    heard = []
    b.subscribe(heard.append)
    link = new_link_id()
    await a.append(4, LOG_CONTACTS, b"contact", link)
    await a.append(4, LOG_MESSAGES, b"message")
    await eventually(lambda: len(heard) == 2)
    assert heard == [PushEvent(4, 0x2, link), PushEvent(4, 0x1, None)]


async def test_concurrent_appends_on_two_connections(stores):
    a, b = stores
    n = 100

    async def writer(store, tag):   # one sender: each append awaited before the next
        return [await store.append(1, LOG_MESSAGES, f"{tag}{i}".encode()) for i in range(n)]

    got_a, got_b, burst = await asyncio.gather(
        writer(a, "a"), writer(b, "b"),
        asyncio.gather(*(s.append(1, LOG_MESSAGES, b"c") for _ in range(n) for s in (a, b))))
    assert sorted(got_a + got_b + list(burst)) == list(range(1, 4 * n + 1))   # one place each
    log = await a.read_log(1, LOG_MESSAGES, 0, 10 * n)
    assert len(log) == 4 * n and log.count(b"c") == 2 * n
    for tag, got in ((b"a", got_a), (b"b", got_b)):     # each sender's order is kept
        assert [x for x in log if x.startswith(tag)] == [tag + str(i).encode()
                                                         for i in range(n)]
        # the length an append returned is the position its item landed at
        assert [log[p - 1] for p in got] == [tag + str(i).encode() for i in range(n)]


async def test_two_workers_draining_one_log_while_it_grows(stores):
    """Two readers on their own connections page through one user's log as a third task
    appends to it; each sees every item once, in order, and a sync key (log length) never
    runs ahead of what can be read."""
    a, b = stores
    n = 300
    want = [f"item-{i}".encode() for i in range(n)]

    async def writer():
        for i, item in enumerate(want):
            await (a, b)[i % 2].append(9, LOG_MESSAGES, item)
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def reader(store, seed):
        rng = random.Random(seed)
        pos, seen = 0, []
        while pos < n:
            length = (await store.log_lengths(9))[LOG_MESSAGES]
            assert length >= pos
            limit = rng.randint(1, 40)
            page = await store.read_log(9, LOG_MESSAGES, pos, limit)
            # what the length promised is there to read (more may have come since)
            assert min(limit, length - pos) <= len(page) <= limit
            seen += page
            pos += len(page)
            await asyncio.sleep(0)
        return seen

    _, seen_a, seen_b = await asyncio.gather(writer(), reader(a, 1), reader(b, 2))
    assert seen_a == want and seen_b == want


# ---------------------------------------------------------------------- friends

async def test_friends_and_requests(store):
    assert await store.add_friends(1, 2) is True
    assert await store.add_friends(2, 1) is False
    assert await store.are_friends(1, 2) and await store.are_friends(2, 1)
    assert not await store.are_friends(1, 3)
    await store.add_pending(3, 1)
    await store.add_pending(3, 1)          # asking twice is still one request
    assert await store.take_pending(1, 3) is False     # the direction matters
    assert await store.take_pending(3, 1) is True
    assert await store.take_pending(3, 1) is False


async def test_concurrent_friend_adds_and_accepts_on_two_connections(stores):
    a, b = stores
    pairs = [(i, j) for i in range(1, 12) for j in range(i + 1, 12)]
    got = await asyncio.gather(*(x for i, j in pairs
                                 for x in (a.add_friends(i, j), b.add_friends(j, i))))
    for k, (i, j) in enumerate(pairs):
        assert sorted([got[2 * k], got[2 * k + 1]]) == [False, True]
        assert await a.are_friends(i, j) and await b.are_friends(j, i)
    for i in range(20):
        await a.add_pending(100, i)
    taken = await asyncio.gather(*(s.take_pending(100, i) for i in range(20) for s in (a, b)))
    assert sum(taken) == 20
    assert all(taken[2 * i] != taken[2 * i + 1] for i in range(20))


# ---------------------------------------------------------------------- messages

async def test_msg_ids_are_unique_across_connections(stores):
    a, b = stores
    ids = await asyncio.gather(*(s.next_msg_id() for _ in range(100) for s in (a, b)))
    assert len(set(ids)) == 200 and min(ids) > 1_000_000
    later = await a.next_msg_id()
    assert later > max(ids)


async def test_deliver_stores_a_message_in_both_logs_in_one_step(stores):
    a, b = stores
    heard = []
    b.subscribe(heard.append)
    link = new_link_id()
    assert await a.deliver(1, 2, b"m1", link, counter="stored") is None
    assert await a.read_log(2, LOG_MESSAGES, 0, 10) == [b"m1"]
    assert await a.read_log(1, LOG_MESSAGES, 0, 10) == [b"m1"]     # the sender's copy
    await eventually(lambda: len(heard) == 2)
    assert sorted(heard, key=lambda e: e.uin) == [PushEvent(1, 0x1, link),
                                                  PushEvent(2, 0x1, link)]
    assert await b.deliver(3, 3, b"note to self", counter="stored") is None
    assert await b.read_log(3, LOG_MESSAGES, 0, 10) == [b"note to self"]   # one copy
    await b.deliver(1, 2, b"uncounted")
    assert (await a.counters())["stored"] == 2
    assert (await a.log_lengths(2))[LOG_MESSAGES] == 2


async def test_deliver_with_a_claim_stores_a_send_once(store):
    first = await store.deliver(1, 2, b"hello", claim=("cid", (1_000_001, 50)), counter="n")
    assert first is None
    # the retry: the first send's ids, and nothing stored or counted again
    assert await store.deliver(1, 2, b"hello", claim=("cid", (1_000_002, 60)),
                               counter="n") == (1_000_001, 50)
    assert await store.read_log(2, LOG_MESSAGES, 0, 10) == [b"hello"]
    assert (await store.counters())["n"] == 1
    # another sender's send with the same id is another send; so is another id
    assert await store.deliver(2, 1, b"x", claim=("cid", (1_000_003, 70))) is None
    assert await store.deliver(1, 2, b"y", claim=("cid:2", (1_000_004, 80))) is None
    assert await store.read_log(2, LOG_MESSAGES, 0, 10) == [b"hello", b"x", b"y"]


async def test_two_workers_taking_one_send_on_two_connections(stores):
    """A send retried on another worker while the first still runs: one stores it, both
    answer with its ids."""
    a, b = stores
    for round_ in range(30):
        cid = f"retry-{round_}"
        got = await asyncio.gather(
            a.deliver(7, 8, f"{round_}a".encode(), claim=(cid, (round_ * 2, 1))),
            b.deliver(7, 8, f"{round_}b".encode(), claim=(cid, (round_ * 2 + 1, 2))))
        assert got.count(None) == 1
        winner = "ab"[got.index(None)]
        other = next(g for g in got if g is not None)
        assert other == ((round_ * 2, 1) if winner == "a" else (round_ * 2 + 1, 2))
    log = await a.read_log(8, LOG_MESSAGES, 0, 100)
    assert len(log) == 30 and [int(x[:-1]) for x in log] == list(range(30))


# ---------------------------------------------------------------------- uploads

def upload(cid="img-1", total=10, uploader=1, to="bob", msg_type=3):
    return UploadRecord(uploader, cid, to, msg_type, total)


def finish(uploader, cid, msg_id, receiver=2):
    """complete_upload's arguments for upload `cid` as message `msg_id` to `receiver`."""
    return (uploader, cid, msg_id, receiver, b"\x07" * 32, f"key-{msg_id:_}",
            f"item {msg_id}".encode())


async def test_an_upload_from_start_to_finish(stores):
    a, b = stores
    assert await a.get_upload(1, "img-1") is None
    rec = await a.start_upload(upload())
    assert rec == upload() and rec.received == 0 and rec.new_msg_id == 0
    # a second start (a retried first chunk) keeps what is there
    assert await b.start_upload(upload(to="carol", total=99)) == rec
    assert await a.append_upload(1, "img-1", 0, b"\x00\x01\x02\x03") == 4
    assert await b.append_upload(1, "img-1", 0, b"again") == -1 - 4     # out of order
    assert await b.append_upload(1, "img-1", 6, b"x") == -1 - 4
    # resumed on the other worker
    assert (await b.get_upload(1, "img-1")).received == 4
    assert await a.upload_data(1, "img-1") == b"\x00\x01\x02\x03"
    with pytest.raises(ValueError):   # not all there yet
        await a.complete_upload(*finish(1, "img-1", 1_000_049))
    assert await b.append_upload(1, "img-1", 4, b"\xff" * 6) == 10
    data = b"\x00\x01\x02\x03" + b"\xff" * 6
    assert await b.upload_data(1, "img-1") == data
    assert await a.complete_upload(*finish(1, "img-1", 1_000_050), counter="n") == \
        (1_000_050, True)
    done = await b.get_upload(1, "img-1")
    assert done.new_msg_id == 1_000_050 and done.received == 10 and done.to_user == "bob"
    # its bytes are the media now, and its message is in both logs, stored once
    assert await b.get_media(1_000_050) == MediaRecord(1_000_050, 1, 2, 3, data,
                                                      b"\x07" * 32, "key-1_000_050")
    assert await b.media_by_cdn_key("key-1_000_050") == await b.get_media(1_000_050)
    assert await b.read_log(2, LOG_MESSAGES, 0, 10) == [b"item 1000050"]
    assert await b.read_log(1, LOG_MESSAGES, 0, 10) == [b"item 1000050"]
    # finished: a second finish is told the first one's id and stores nothing
    assert await b.upload_data(1, "img-1") is None
    assert await b.complete_upload(*finish(1, "img-1", 1_000_051), counter="n") == \
        (1_000_050, False)
    assert await b.get_media(1_000_051) is None
    assert (await a.counters())["n"] == 1 and (await a.log_lengths(2))[LOG_MESSAGES] == 1
    assert await a.append_upload(1, "img-1", 10, b"more") == -1 - 10
    assert await a.append_upload(1, "img-1", 0, b"more") == -1 - 10
    with pytest.raises(KeyError):
        await a.append_upload(1, "never-started", 0, b"x")
    with pytest.raises(KeyError):
        await a.complete_upload(*finish(1, "never-started", 5))
    assert await a.upload_data(1, "never-started") is None


async def test_concurrent_chunks_and_finishes_on_two_connections(stores):
    a, b = stores
    await a.start_upload(upload("v", total=64 * 5, msg_type=43))
    pos = 0
    for k in range(5):
        chunk = bytes([k]) * 64
        got = await asyncio.gather(a.append_upload(1, "v", pos, chunk),
                                   b.append_upload(1, "v", pos, chunk))
        assert sorted(got) == [-1 - (pos + 64), pos + 64]   # one lands, one is told where
        pos += 64
    handed = await asyncio.gather(a.complete_upload(*finish(1, "v", 11)),
                                  b.complete_upload(*finish(1, "v", 12)))
    assert sorted(fresh for _, fresh in handed) == [False, True]   # exactly one finishes it
    assert handed[0][0] == handed[1][0] in (11, 12)                # both name its id
    msg_id = handed[0][0]
    assert (await a.get_upload(1, "v")).new_msg_id == msg_id
    media = await b.get_media(msg_id)
    assert media.data == b"".join(bytes([k]) * 64 for k in range(5)) and media.msg_type == 43
    assert await a.get_media(23 - msg_id) is None
    assert await a.read_log(2, LOG_MESSAGES, 0, 10) == [f"item {msg_id}".encode()]
    # two workers starting the same upload agree on one record
    r1, r2 = await asyncio.gather(a.start_upload(upload("w", total=5)),
                                  b.start_upload(upload("w", total=5)))
    assert r1 == r2
    assert await a.uploads_in_progress(1) == ["w"]


async def test_uploads_in_progress_oldest_first_and_drop(stores):
    a, b = stores
    for cid in ("u1", "u2", "u3"):
        await (a if cid != "u2" else b).start_upload(upload(cid))
    await a.start_upload(upload("u1"))          # starting again does not make it newer
    assert await b.uploads_in_progress(1) == ["u1", "u2", "u3"]
    assert await b.uploads_in_progress(2) == []
    await a.append_upload(1, "u2", 0, b"0123456789")
    await a.complete_upload(*finish(1, "u2", 77))
    assert await a.uploads_in_progress(1) == ["u1", "u3"]
    await b.drop_upload(1, "u1")
    assert await a.get_upload(1, "u1") is None
    with pytest.raises(KeyError):
        await a.append_upload(1, "u1", 0, b"x")
    await b.drop_upload(1, "u2")                # a finished upload is kept
    assert (await a.get_upload(1, "u2")).new_msg_id == 77
    await b.drop_upload(1, "nothing")
    assert await a.uploads_in_progress(1) == ["u3"]
    # started again after a drop, it is the newest
    await a.start_upload(upload("u1"))
    assert await a.uploads_in_progress(1) == ["u3", "u1"]


async def test_uploads_hold_media_bytes_against_the_quotas(stores):
    a, b = stores
    assert await a.media_bytes(1) == (0, 0)
    await a.start_upload(upload("m1", total=40), user_quota=100, lab_quota=150)
    await b.start_upload(upload("m2", total=60), user_quota=100, lab_quota=150)
    assert await b.media_bytes(1) == (100, 100)
    # past the user's quota: refused, nothing created, nothing held
    with pytest.raises(QuotaExceeded) as info:
        await a.start_upload(upload("m3", total=1), user_quota=100, lab_quota=150)
    assert (info.value.scope, info.value.held, info.value.limit) == ("user", 100, 100)
    assert await a.get_upload(1, "m3") is None and await a.uploads_in_progress(1) == ["m1", "m2"]
    # another user, past the lab's quota
    await b.start_upload(upload("n1", total=50, uploader=2), user_quota=100, lab_quota=150)
    with pytest.raises(QuotaExceeded) as info:
        await a.start_upload(upload("n2", total=1, uploader=2), user_quota=100, lab_quota=150)
    assert (info.value.scope, info.value.held) == ("lab", 150)
    assert await a.media_bytes(2) == (50, 150)
    # a second start of the same upload holds nothing more, even at the quota
    await a.start_upload(upload("m1", total=40), user_quota=100, lab_quota=150)
    # a finished upload keeps its bytes held; a dropped unfinished one gives them back
    await a.append_upload(1, "m1", 0, b"x" * 40)
    await a.complete_upload(*finish(1, "m1", 5))
    await b.drop_upload(1, "m1")
    await b.drop_upload(1, "m2")
    await b.drop_upload(1, "m2")                  # twice: given back once
    assert await a.media_bytes(1) == (40, 90)
    await a.start_upload(upload("m3", total=60), user_quota=100, lab_quota=150)
    assert await a.media_bytes(1) == (100, 150)
    # no quota: held all the same
    await a.start_upload(upload("m4", total=1000, uploader=3))
    assert await b.media_bytes(3) == (1000, 1150)


async def test_concurrent_starts_on_two_connections_never_pass_a_quota(stores):
    a, b = stores

    async def start(store, i):
        try:
            await store.start_upload(upload(f"c{i}", total=10, uploader=1 + i % 3),
                                     lab_quota=95)
            return True
        except QuotaExceeded:
            return False
    started = await asyncio.gather(*(start((a, b)[i % 2], i) for i in range(20)))
    assert sum(started) == 9
    assert (await a.media_bytes(1))[1] == 90


async def test_wrong_logins_count_in_a_row_and_go_stale(stores):
    a, b = stores
    assert await a.login_failures("uin:1", 0.0, 300) == (0, 0.0)
    assert [await (a, b)[i % 2].note_login_failure("uin:1", 10.0 * i, 300)
            for i in range(4)] == [1, 2, 3, 4]
    assert await b.login_failures("uin:1", 100.0, 300) == (4, 30.0)
    assert await b.login_failures("uin:1", 329.9, 300) == (4, 30.0)
    assert await a.login_failures("uin:1", 330.0, 300) == (0, 0.0)   # stale
    assert await a.note_login_failure("uin:1", 330.0, 300) == 1      # a new run
    await b.note_login_failure("addr:127.0.0.5", 330.5, 300)
    await a.clear_login_failures("uin:1")
    assert await b.login_failures("uin:1", 331.0, 300) == (0, 0.0)
    assert await b.login_failures("addr:127.0.0.5", 331.0, 300) == (1, 330.5)
    # counts from two connections at once add up
    await asyncio.gather(*(s.note_login_failure("uin:2", 400.0, 300)
                           for s in (a, b) * 10))
    assert (await a.login_failures("uin:2", 400.0, 300))[0] == 20


# ---------------------------------------------------------------------- media

async def test_media(stores):
    a, b = stores
    data = bytes(range(256)) * 300
    img = MediaRecord(1_000_009, 1, 2, 3, data, b"\x01" * 32, "cdnkey1")
    voice = MediaRecord(1_000_010, 2, 1, 34, b"\x00voice", b"\x02" * 32, "")
    await a.put_media(img)
    await a.put_media(voice)
    assert await b.get_media(1_000_009) == img
    assert await b.get_media(1_000_010) == voice
    assert await b.get_media(5) is None
    assert await b.media_by_cdn_key("cdnkey1") == img
    assert await b.media_by_cdn_key("") is None and await b.media_by_cdn_key("x") is None
    part = await b.media_part(1_000_009, 1000, 4096)
    assert (part.msg_id, part.sender, part.receiver, part.msg_type, part.total_len,
            part.start_pos) == (1_000_009, 1, 2, 3, len(data), 1000)
    assert part.data == data[1000:5096]
    assert (await b.media_part(1_000_009, len(data) - 10, 4096)).data == data[-10:]
    assert (await b.media_part(1_000_009, len(data), 4096)).data == b""
    assert (await b.media_part(1_000_009, len(data) + 5, 10)).data == b""
    assert (await b.media_part(1_000_009, 0, 0)).data == b""
    assert await b.media_part(5, 0, 10) is None


# ---------------------------------------------------------------------- people nearby

async def test_candidates_near_include_everyone_within_the_radius(store):
    rng = random.Random(4)
    lon0, lat0 = 116.3105, 39.9925
    where = {}
    for uin in range(1, 200):
        lon, lat = lon0 + rng.uniform(-0.1, 0.1), lat0 + rng.uniform(-0.1, 0.1)
        where[uin] = (lon, lat)
        await store.set_location(uin, lon, lat)
    radius = 5000.0
    got = {uin: (x, y) for uin, x, y in await store.candidates_near(lon0, lat0, radius)}
    inside = {u for u, (x, y) in where.items() if nearby.great_circle_m(lon0, lat0, x, y)
              <= radius}
    assert inside and inside <= set(got)                  # a superset of those within
    for uin, xy in got.items():
        assert xy == where[uin]                           # exact stored coordinates
    # moved and cleared
    await store.set_location(1, lon0, lat0)
    await store.clear_location(2)
    got = {uin: (x, y) for uin, x, y in await store.candidates_near(lon0, lat0, radius)}
    assert got[1] == (lon0, lat0) and 2 not in got


async def test_candidates_near_on_the_radius_and_at_the_poles(store):
    # a point just inside the radius by our measure is found, whatever Redis measures
    lon0, lat0 = 10.0, 50.0
    edge_lat = lat0 + (4999.0 / nearby.EARTH_RADIUS_M) * 180 / 3.141592653589793
    assert nearby.great_circle_m(lon0, lat0, lon0, edge_lat) < 5000.0
    await store.set_location(1, lon0, edge_lat)
    assert 1 in {u for u, _, _ in await store.candidates_near(lon0, lat0, 5000.0)}
    # beyond GEOADD's latitudes (85.05 degrees) people are still found
    await store.set_location(2, 0.0, 89.99)
    await store.set_location(3, 180.0, 89.995)
    await store.set_location(4, 0.0, -90.0)
    near_pole = {u: (x, y) for u, x, y in await store.candidates_near(90.0, 90.0, 5000.0)}
    assert {2, 3} <= set(near_pole) and near_pole[3] == (180.0, 89.995)
    near_85 = {u for u, _, _ in await store.candidates_near(0.0, 85.04, 200_000.0)}
    assert 2 in near_85
    await store.clear_location(2)
    assert 2 not in {u for u, _, _ in await store.candidates_near(90.0, 90.0, 5000.0)}


# ---------------------------------------------------------------------- counters

async def test_counters_add_up_across_connections(stores):
    a, b = stores
    assert await a.counters() == {}
    await asyncio.gather(*(s.count({"requests long NEWSYNC": 1, "reports kvreport": 3})
                           for _ in range(50) for s in (a, b)))
    await a.count({"messages_stored": 2})
    assert await b.counters() == {"requests long NEWSYNC": 100, "reports kvreport": 300,
                                  "messages_stored": 2}


# ---------------------------------------------------------------------- phones

async def test_phones_claiming_at_once_never_share_a_user(stores):
    a, b = stores
    for i in range(1, 24):
        await new_user(a, f"user{i:04d}")
    # 11 phones of two users each on two connections: 22 of the 23 users, each once
    got = await asyncio.gather(*((a, b)[i % 2].claim_users(f"phone-{i}", 2) for i in range(11)))
    names = [n for g in got for n in g]
    assert len(names) == len(set(names)) == 22
    assert all(g == sorted(g) and len(g) == 2 for g in got)
    assert sorted(names) == [f"user{i:04d}" for i in range(1, 23)]   # lowest names first
    claims = await b.claims()
    assert claims == {f"phone-{i}": g for i, g in enumerate(got)}
    with pytest.raises(ValueError, match="only 1 unclaimed"):
        await a.claim_users("phone-late", 2)          # all or none
    assert "phone-late" not in await a.claims()
    assert await b.claim_users("phone-last", 1) == ["user0023"]
    with pytest.raises(ValueError):
        await b.claim_users("phone-x", 0)


async def test_phone_results_are_kept_by_owner(stores):
    a, b = stores
    assert await a.results() == {}
    await a.put_result("host-1/7", '{"ok": false}')
    await b.put_result("host-2/9", '{"ok": true, "名": 1}')
    await b.put_result("host-1/7", '{"ok": true}')     # a phone's later result replaces it
    assert await a.results() == {"host-1/7": '{"ok": true}', "host-2/9": '{"ok": true, "名": 1}'}
    await a.clear()
    assert await b.results() == {} and await b.claims() == {}


# ---------------------------------------------------------------------- events

async def test_events_reach_listeners_on_every_connection(stores):
    a, b = stores
    on_a, on_b = [], []
    stop_a = a.subscribe(on_a.append)
    b.subscribe(on_b.append)
    link = new_link_id()
    events = [PushEvent(1, 0x1, link), PushEvent(2, 0x7), SessionEnded(b"k" * 16, 3)]
    for e in events:
        await a.publish(e)
    await eventually(lambda: len(on_b) >= len(events) and len(on_a) >= len(events))
    assert on_b[:3] == events and on_a[:3] == events      # in publish order, intact
    stop_a()
    stop_a()                                              # twice is harmless
    await b.publish(PushEvent(9, 0x2))
    await eventually(lambda: len(on_b) == 4)
    await a.publish(PushEvent(10, 0x2))                   # a round trip as a barrier
    await eventually(lambda: len(on_b) == 5)
    assert len(on_a) == 3


# ---------------------------------------------------------------------- clear

async def test_clear_forgets_everything_but_listeners(stores):
    a, b = stores
    await new_user(a, "alice")
    await a.append(1, LOG_MESSAGES, b"x")
    await a.count({"messages_stored": 1})
    await a.start_upload(upload())
    heard = []
    b.subscribe(heard.append)
    await a.clear()
    assert await b.user_count() == 0 and await b.user_by_name("alice") is None
    assert await b.log_lengths(1) == {LOG_MESSAGES: 0, LOG_CONTACTS: 0, LOG_PROFILE: 0}
    assert await b.counters() == {} and await b.uploads_in_progress(1) == []
    assert (await new_user(b, "bob")).uin == 1
    await a.publish(PushEvent(1, 1))
    await eventually(lambda: heard == [PushEvent(1, 1)])


# ---------------------------------------------------------------------- opening stores

async def test_make_store_names_the_store_by_url():
    assert isinstance(await make_store(None), MemoryStore)
    assert isinstance(await make_store("memory:"), MemoryStore)
    for bad in ("postgres://x/1", "redis-ish", "http://127.0.0.1/"):
        with pytest.raises(ValueError):
            await make_store(bad)


def test_the_namespace_comes_off_a_store_url_that_keeps_its_form():
    # redis-py 8 refuses `unix:/path`, the form urllib writes a `unix:///path` URL back in
    assert split_namespace("unix:///run/r.sock?db=0&namespace=lab-a") == \
        ("unix:///run/r.sock?db=0", "lab-a")
    assert split_namespace("unix:///run/r.sock?namespace=b") == ("unix:///run/r.sock", "b")
    assert split_namespace("redis://u:pw@127.0.0.1:6379/2?namespace=x&namespace=y") == \
        ("redis://u:pw@127.0.0.1:6379/2", "y")
    assert split_namespace("redis://127.0.0.1:6379/0") == ("redis://127.0.0.1:6379/0", None)


async def test_a_store_opens_on_the_servers_unix_socket_with_a_namespace(redis_server):
    """What the namespace lab hands its hosts: the socket, reachable from any namespace."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = await make_store(f"{redis_server.unix_url}&namespace={namespace}")
    try:
        assert store.namespace == namespace
        user = await new_user(store, "over-the-socket")
        assert (await store.user_by_name("over-the-socket")).uin == user.uin
    finally:
        await store.clear()
        await store.close()
