"""Friends, media, people nearby and sync semantics, end to end through the lab's doors."""

from __future__ import annotations

import hashlib
import math
import os
import struct

import pytest

from mocks.nearby import great_circle_m
from testbed.client.session import RequestFailed
from testbed.wire import pb

from .helpers import logged_in, wait_for


@pytest.mark.lab(users=4, friends="none")
async def test_friend_request_accept_and_stranger_rules(lab):
    a = await logged_in(lab, 0)
    b = await logged_in(lab, 1)
    c = await logged_in(lab, 2)
    for s in (a, b, c):
        await s.sync()
        assert s.sync_state.contacts == {}
    # strangers may not message each other: -5 per message, whole request ok
    with pytest.raises(RequestFailed) as info:
        await a.send_text(b.username, "hi stranger")
    assert info.value.ret == -5
    # accepting a request that does not exist: -5
    with pytest.raises(RequestFailed) as info:
        await b.cgi("verifyuser", pb.VerifyUserRequest(base=b.base(), opcode=3,
                                                        username=a.username))
    assert info.value.ret == -5
    # opcode 2: b gets an AddMsg type 37 from a, pushed
    await a.cgi("verifyuser", pb.VerifyUserRequest(base=a.base(), opcode=2,
                                                    username=b.username, verify_content="我是a"))
    await wait_for(lambda: b.link.notifies)
    await b.sync()
    req = b.sync_state.messages[-1]
    assert (req.msg_type, req.from_user, req.content) == (37, a.username, "我是a")
    # opcode 3: both get a ModContact
    await b.cgi("verifyuser", pb.VerifyUserRequest(base=b.base(), opcode=3, username=a.username))
    await a.sync()
    await b.sync()
    assert set(a.sync_state.contacts) == {b.username}
    assert set(b.sync_state.contacts) == {a.username}
    await a.send_text(b.username, "now we are friends")
    # opcode 1 adds at once; bad opcode -2; unknown user -4
    await a.cgi("verifyuser", pb.VerifyUserRequest(base=a.base(), opcode=1, username=c.username))
    await c.sync()
    assert set(c.sync_state.contacts) == {a.username}
    for opcode, name, ret in ((9, c.username, -2), (1, "user9999", -4)):
        with pytest.raises(RequestFailed) as info:
            await a.cgi("verifyuser", pb.VerifyUserRequest(base=a.base(), opcode=opcode,
                                                            username=name))
        assert info.value.ret == ret
    for s in (a, b, c):
        await s.close()


async def test_image_upload_with_gap_resume_and_identical_download(lab):
    a = await logged_in(lab, 0)
    b = await logged_in(lab, 1)
    await b.sync()
    data = os.urandom(200 * 1024)
    cid = "img-200k"
    chunk = 64 * 1024
    # first chunk, then a chunk with a gap: -100 with the offset to resume from
    r1 = await a.long_call("UPLOADMSGIMG", pb.UploadMediaRequest(
        base=a.base(), client_media_id=cid, to_user=b.username, msg_type=3,
        total_len=len(data), start_pos=0, data=data[:chunk]))
    assert r1.start_pos == chunk and r1.new_msg_id == 0
    gap = await a.long_call("UPLOADMSGIMG", pb.UploadMediaRequest(
        base=a.base(), client_media_id=cid, to_user=b.username, msg_type=3,
        total_len=len(data), start_pos=2 * chunk, data=data[2 * chunk:3 * chunk]), check=False)
    assert gap.base.ret == -100 and gap.start_pos == chunk
    # the link dies; a new link resumes where the server says
    await a.close()
    await a.connect_long()
    done = await a.upload(b.username, data, client_media_id=cid, start_pos=gap.start_pos)
    assert done.new_msg_id and done.start_pos == len(data)
    # completing again is idempotent
    again = await a.upload(b.username, data, client_media_id=cid)
    assert again.new_msg_id == done.new_msg_id and again.start_pos == len(data)
    await wait_for(lambda: b.link.notifies)
    await b.sync()
    msg = b.sync_state.messages[-1]
    assert msg.msg_type == 3 and msg.new_msg_id == done.new_msg_id
    assert msg.media.total_len == len(data)
    assert msg.media.sha256 == hashlib.sha256(data).digest()
    assert msg.media.cdn_url.startswith("http://mmsns.qpic.cn/mmsns/")
    assert [m.msg_type for m in b.sync_state.messages].count(3) == 1
    assert await b.download(done.new_msg_id) == data
    assert await a.download(done.new_msg_id, chunk=50_000) == data
    # ranged download
    part = await b.long_call("GETMSGIMG", pb.DownloadMediaRequest(
        base=b.base(), msg_id=done.new_msg_id, start_pos=1000, max_len=10))
    assert part.data == data[1000:1010] and part.total_len == len(data)
    # max_len 0 means the 64 KiB cap
    part = await b.long_call("GETMSGIMG", pb.DownloadMediaRequest(
        base=b.base(), msg_id=done.new_msg_id, start_pos=0))
    assert len(part.data) == 64 * 1024
    # someone else's media: -5; an unknown msg_id: -4
    c = await logged_in(lab, 2)
    for msg_id, ret in ((done.new_msg_id, -5), (123, -4)):
        with pytest.raises(RequestFailed) as info:
            await c.download(msg_id)
        assert info.value.ret == ret
    for s in (a, b, c):
        await s.close()


async def test_upload_argument_errors(lab):
    a = await logged_in(lab, 0)
    b = lab.manifest.users[1]["username"]

    def up(**kw):
        fields = dict(base=a.base(), client_media_id="v1", to_user=b, msg_type=34,
                      total_len=100_000, start_pos=0, data=b"x" * 1000)
        fields.update(kw)
        return a.long_call("UPLOADVOICE", pb.UploadMediaRequest(**fields), check=False)

    assert (await up(data=b"x" * (64 * 1024 + 1))).base.ret == -2     # chunk over 64 KiB
    assert (await up()).base.ret == 0
    assert (await up(total_len=99_999, start_pos=1000)).base.ret == -2  # total_len changed
    assert (await up(to_user="user9999", client_media_id="v2")).base.ret == -4
    voice = os.urandom(3000)
    done = await a.upload(b, voice, msg_type=34)
    assert await a.download(done.new_msg_id, msg_type=34) == voice
    video = os.urandom(70_000)
    done = await a.upload(b, video, msg_type=43)
    assert await a.download(done.new_msg_id, msg_type=43) == video
    await a.close()


def _lbs(s, lon, lat, opcode=1):
    return s.cgi("lbsfind", pb.LbsFindRequest(base=s.base(), opcode=opcode, longitude=lon,
                                              latitude=lat, precision=30, gps_source=0))


@pytest.mark.lab(users=6)
async def test_people_nearby_order_rounding_buckets(lab):
    users = [await logged_in(lab, i, long=False) for i in range(6)]
    me = users[0]
    lon0, lat0 = 116.310000, 39.990000
    # offsets north in metres: 50 m, 180 m, 1.2 km, 4.9 km, 7 km (outside 5 km)
    offsets = [50, 180, 1200, 4900, 7000]
    for s, north in zip(users[1:], offsets):
        await _lbs(s, lon0, lat0 + north / 111_195.0)
    resp = await _lbs(me, lon0, lat0)
    names = [c.username for c in resp.contacts]
    assert names == [u.username for u in users[1:5]]          # nearest first, 7 km left out
    assert me.username not in names and resp.contact_count == 4
    f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]
    for c, s, north in zip(resp.contacts, users[1:], offsets):
        d = great_circle_m(f32(lon0), f32(lat0), f32(lon0), f32(lat0 + north / 111_195.0))
        assert c.distance_m == max(100, math.ceil(d / 100) * 100)
        assert c.distance_m % 100 == 0
    assert [c.distance for c in resp.contacts] == ["100米以内", "200米以内", "2公里以内",
                                                    "5公里以内"]
    assert [c.distance_m for c in resp.contacts][:2] == [100, 200]
    assert all(c.avatar_url.startswith("http://wx.qlogo.cn/mmhead/") for c in resp.contacts)
    # no coordinates anywhere in the answer
    raw = resp.SerializeToString()
    for north in offsets:
        assert struct.pack("<f", lat0 + north / 111_195.0) not in raw
    # opcode 2: the nearest one leaves every later result
    await _lbs(users[1], lon0, lat0, opcode=2)
    resp = await _lbs(me, lon0, lat0)
    assert [c.username for c in resp.contacts] == [u.username for u in users[2:5]]
    # bad coordinates and opcodes: -2
    for lon, lat, op in ((200.0, 10.0, 1), (10.0, 95.0, 1), (float("nan"), 1.0, 1), (1, 1, 7)):
        with pytest.raises(RequestFailed) as info:
            await _lbs(me, lon, lat, op)
        assert info.value.ret == -2


async def test_sync_selector_and_keys(lab):
    a = await logged_in(lab, 0, long=False)
    b = await logged_in(lab, 1, long=False)
    await b.send_text(a.username, "m1", door="short")
    # selector 2: only contacts; message key stays where it was
    resp = await a.cgi("newsync", pb.NewSyncRequest(base=a.base(), selector=2))
    assert {i.cmd_id for i in resp.cmd_list} == {2}
    keys = {kv.key: kv.val for kv in resp.key_buf.keys}
    assert keys == {1: 0, 2: 3, 3: 0}
    # selector 0 means all: profile, contacts and the message
    resp = await a.cgi("newsync", pb.NewSyncRequest(base=a.base(), selector=0))
    assert [i.cmd_id for i in resp.cmd_list] == [1, 2, 2, 2, 5]
    assert {kv.key: kv.val for kv in resp.key_buf.keys} == {1: 1, 2: 3, 3: 1}


async def test_unfinished_uploads_are_bounded_per_user(lab):
    from mocks.service import MAX_UPLOADS_IN_PROGRESS

    a = await logged_in(lab, 0)
    b = lab.manifest.users[1]["username"]
    chunk = b"y" * 1000

    def first_chunk(cid):
        return a.long_call("UPLOADMSGIMG", pb.UploadMediaRequest(
            base=a.base(), client_media_id=cid, to_user=b, msg_type=3, total_len=10_000,
            start_pos=0, data=chunk), check=False)

    for i in range(MAX_UPLOADS_IN_PROGRESS + 3):
        assert (await first_chunk(f"u{i}")).start_pos == 1000
    pending = await lab.store.uploads_in_progress(1)
    assert pending == [f"u{i}" for i in range(3, MAX_UPLOADS_IN_PROGRESS + 3)]
    # the oldest was forgotten: its next chunk is told to start again from 0
    resp = await a.long_call("UPLOADMSGIMG", pb.UploadMediaRequest(
        base=a.base(), client_media_id="u0", to_user=b, msg_type=3, total_len=10_000,
        start_pos=1000, data=chunk), check=False)
    assert resp.base.ret == -100 and resp.start_pos == 0
    # a finished upload no longer counts
    done = await a.upload(b, os.urandom(5000), client_media_id="fin")
    assert done.new_msg_id and "fin" not in await lab.store.uploads_in_progress(1)
    await a.close()
