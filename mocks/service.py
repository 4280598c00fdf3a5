"""The messenger's domain, behind both doors (PROTOCOL.md sections 4, 5 and 7).

The long link and the short link are thin adapters: they decode a request with the command
table, count it under their door (`mocks.stats`) and call `Service.handle(command, request,
ctx)`. Nothing here knows which door a request came through: what differs between commands
(the message type an upload creates, the kind a report counts under) is in the command's
row, and `ctx.origin` is only an id of the long link (if any) that must not be sent the
NOTIFY its own request caused (`ctx.door` only names the way in for the request log). Every counter lives in the store, so several processes can
serve one lab.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional

from google.protobuf.message import Message

from testbed.lab.addressing import LONG, QLOGO, QPIC, SHORT
from testbed.lab.clock import Clock
from testbed.lab.profiles import Limits
from testbed.wire import Command, Door, Ret, ServiceError, pb
from testbed.wire.commands import (ITEM_ADD_MSG, ITEM_MOD_CONTACT, ITEM_MOD_USER_INFO,
                                   MSG_FRIEND_REQUEST, MSG_IMAGE, MSG_TEXT)

from . import nearby
from .served import RequestObserver, served, tell
from .stats import MESSAGES_STORED, error_key, report_key
from .state import (ALL_SELECTOR, LOG_CONTACTS, LOG_KEYS, LOG_MESSAGES, LOG_PROFILE,
                    SELECTOR_BIT, MediaRecord, QuotaExceeded, SessionEnded, SessionRecord,
                    Store, UploadRecord, UserRecord)

log = logging.getLogger(__name__)

SYNC_PAGE = 100
USERS_AT_ONCE = 32   # store reads in flight when listing users (the Redis store's pool size)
MEDIA_CHUNK_MAX = 64 * 1024
MEDIA_MAX_TOTAL = 25 * 1024 * 1024
# unfinished uploads a user may hold; starting one more forgets the oldest, so a client that
# starts uploads and never finishes them holds at most this many times MEDIA_MAX_TOTAL
MAX_UPLOADS_IN_PROGRESS = 8
NEARBY_MAX = 100
AVATAR_SIZES = (0, 46, 64, 96, 132)
# newsync hands out contacts and the profile before messages, so that a client knows every
# sender before it sees their messages; within a log, oldest first.
SYNC_ORDER = (LOG_PROFILE, LOG_CONTACTS, LOG_MESSAGES)
LBS_FLUSH_S = 600

NICKNAMES = ("小明", "小红", "阿强", "晓燕", "大伟", "丽丽", "志刚", "芳芳", "建国", "秀英")
CITIES = ("Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Wuhan", "Chengdu", "Nanjing", "Xi'an")


@dataclass
class RequestContext:
    """Who is asking; filled in by the adapters."""

    command: Optional[Command] = None
    origin: Optional[str] = None  # id of the long link that carried the request, if any
    session: Optional[SessionRecord] = None   # set by identify on a long link
    notify_after: int = 0         # set by identify: selector to push right after the reply
    peer: Any = ""                # the client as its door saw it: (address, port), or address
    door: Optional[Door] = None   # the way in (for the request log)


def avatar_url(key: str, size: int) -> str:
    return f"http://{QLOGO}/mmhead/{key}/{size}"


def image_url(key: str) -> str:
    return f"http://{QPIC}/mmsns/{key}/0"


def _item(cmd_id: int, body: Message) -> bytes:
    return pb.CmdItem(cmd_id=cmd_id, cmd_buf=body.SerializeToString()).SerializeToString()


class Service:
    """Accounts, sessions, sync logs, friends, sending, media, nearby and reports."""

    def __init__(self, store: Store, clock: Optional[Clock] = None,
                 nearby_radius_m: float = 5000.0, limits: Limits = Limits()) -> None:
        """`limits` (the profile's): the login throttle and the media quotas."""
        self.store = store
        self.clock = clock or Clock()
        self.nearby_radius_m = nearby_radius_m
        self.limits = limits
        self.observer: Optional[RequestObserver] = None   # told of every request answered

    # ------------------------------------------------------------------ lab set-up
    async def create_user(self, username: str, password: str, *, nickname: str = "",
                          sex: int = 1, city: str = "Beijing", signature: str = "") -> UserRecord:
        """Create an account whose logs start with its own ModUserInfo."""
        user = await self._new_account(username, password, nickname, sex, city, signature)
        await self._first_items(user)
        return user

    async def _new_account(self, username: str, password: str, nickname: str, sex: int,
                           city: str, signature: str) -> UserRecord:
        key = hashlib.sha256(b"avatar:" + username.encode()).hexdigest()[:24]
        return await self.store.create_user(username, password, nickname or username, sex,
                                            city, signature, key)

    async def _first_items(self, user: UserRecord) -> None:
        await self.store.append(user.uin, LOG_PROFILE,
                                _item(ITEM_MOD_USER_INFO, self._user_info(user)))

    async def make_friends(self, a: UserRecord, b: UserRecord) -> None:
        if await self.store.add_friends(a.uin, b.uin):
            await self.store.append(a.uin, LOG_CONTACTS, _item(ITEM_MOD_CONTACT, self._contact(b)))
            await self.store.append(b.uin, LOG_CONTACTS, _item(ITEM_MOD_CONTACT, self._contact(a)))

    async def seed_users(self, n: int, friends: str = "all") -> list[UserRecord]:
        """`user0001`... with `pass0001`...; friends "all" (every pair) or "none".

        Idempotent, and safe to run from several processes at once on one store: a user
        whose name is taken already is kept as it is (creating a user and adding a friendship
        are atomic, so each is made, with its sync-log items, by exactly one seeder). A taken
        name with another password is a `ValueError`: that store holds some other lab."""
        if friends not in ("all", "none"):
            raise ValueError(f"friends must be 'all' or 'none', not {friends!r}")
        width = max(4, len(str(n)))
        users = []
        # accounts one at a time, so that uins follow the names; each account's first log
        # item is written while the next accounts are made (a 50,000-user lab on Redis)
        pending: set[asyncio.Task] = set()
        try:
            for i in range(1, n + 1):
                num = str(i).zfill(width)
                name, password = f"user{num}", f"pass{num}"
                try:
                    user = await self._new_account(
                        name, password, f"{NICKNAMES[(i - 1) % len(NICKNAMES)]}{num}",
                        1 + (i % 2), CITIES[(i - 1) % len(CITIES)], f"lab user {num}")
                except ValueError:
                    user = await self.store.user_by_name(name)
                    if user.password != password:
                        raise ValueError(f"the store already holds a {name} with another "
                                         f"password: it is not a lab seeded this way") from None
                else:
                    pending.add(asyncio.ensure_future(self._first_items(user)))
                    if len(pending) >= USERS_AT_ONCE:
                        done, pending = await asyncio.wait(
                            pending, return_when=asyncio.FIRST_COMPLETED)
                        for t in done:
                            t.result()
                users.append(user)
            await asyncio.gather(*pending)
        finally:
            for t in pending:
                t.cancel()
        if friends == "all":
            for i, a in enumerate(users):
                for b in users[i + 1:]:
                    await self.make_friends(a, b)
        return users

    async def users(self) -> list[UserRecord]:
        """Every user in the store, by username (uins run from 1 to the user count)."""
        count, found = await self.store.user_count(), []
        for first in range(1, count + 1, USERS_AT_ONCE):   # 50,000 users: not one by one
            last = min(count, first + USERS_AT_ONCE - 1)
            found += await asyncio.gather(*(self.store.user_by_uin(uin)
                                            for uin in range(first, last + 1)))
        return sorted((u for u in found if u is not None), key=lambda u: u.username)

    # ------------------------------------------------------------------ dispatch
    async def handle(self, command: Command, request: Message, ctx: RequestContext) -> Message:
        """Answer one decoded request; a `ServiceError` becomes `{1: BaseResponse{ret}}`.
        `observer` (if set) is told of each request once answered (`mocks.served`)."""
        ctx.command = command
        observer = self.observer
        t0 = time.perf_counter() if observer is not None else 0.0
        result = "fault"
        try:
            answer = await getattr(self, command.method)(request, ctx)
            result = "ok"
            return answer
        except ServiceError as exc:
            result = f"ret {int(exc.code)} ({exc.message})"
            await self.store.count({error_key(command.name, exc.code): 1})
            raise
        finally:
            if observer is not None:
                tell(observer, served(command, request, ctx, result,
                                      (time.perf_counter() - t0) * 1000))

    async def _auth(self, base: pb.BaseRequest) -> SessionRecord:
        session = await self.store.get_session(bytes(base.session_key))
        if session is None or session.uin != base.uin:
            raise ServiceError(Ret.SESSION_INVALID, "session invalid, expired or logged out")
        return session

    @staticmethod
    def _ok() -> pb.BaseResponse:
        return pb.BaseResponse(ret=0)

    def _user_info(self, u: UserRecord) -> pb.ModUserInfo:
        return pb.ModUserInfo(username=u.username, nickname=u.nickname, sex=u.sex,
                              signature=u.signature, city=u.city,
                              avatar_small_url=avatar_url(u.avatar_key, 96),
                              avatar_big_url=avatar_url(u.avatar_key, 0))

    def _contact(self, u: UserRecord) -> pb.ModContact:
        return pb.ModContact(username=u.username, nickname=u.nickname, sex=u.sex,
                             signature=u.signature, city=u.city,
                             avatar_small_url=avatar_url(u.avatar_key, 96),
                             avatar_big_url=avatar_url(u.avatar_key, 0))

    # ------------------------------------------------------------------ login
    async def manualauth(self, req: pb.ManualAuthRequest, ctx: RequestContext):
        user = await self.store.user_by_name(req.username)
        # the throttle (docs/protocol.md section 11): wrong passwords in a row, counted in
        # the store (so every process of a lab sees one count) per account and per address
        lim, now = self.limits, self.clock.now()
        address = ctx.peer[0] if isinstance(ctx.peer, (tuple, list)) and ctx.peer else ctx.peer
        watched = [(key, most) for key, most in (
            (user and f"uin:{user.uin}", lim.login_max_failures),
            (address and f"addr:{address}", lim.login_max_failures_per_address))
            if key and most > 0]
        for key, most in watched:
            count, last = await self.store.login_failures(key, now, lim.login_lockout_s)
            if count >= most:
                wait = math.ceil(last + lim.login_lockout_s - now)
                raise ServiceError(Ret.NOT_ALLOWED, f"too many wrong logins "
                                   f"{'for this account' if key[0] == 'u' else 'from here'}:"
                                   f" try again in {wait} s")
        if user is None or not secrets.compare_digest(user.password.encode(),
                                                      req.password.encode()):
            for key, _ in watched:
                await self.store.note_login_failure(key, now, lim.login_lockout_s)
            if user is None:
                raise ServiceError(Ret.NOT_FOUND, "no such user")
            raise ServiceError(Ret.WRONG_PASSWORD, "wrong password")
        if lim.login_max_failures > 0:
            await self.store.clear_login_failures(f"uin:{user.uin}")
        key = os.urandom(16)
        ended = await self.store.put_session(SessionRecord(key, user.uin, user.username,
                                                           bytes(req.base.device_id)))
        if ended is not None:   # the device's earlier session: its links close, as at logout
            await self.store.publish(SessionEnded(ended, user.uin))
        return pb.ManualAuthResponse(base=self._ok(), uin=user.uin, session_key=key,
                                     nickname=user.nickname, long_hosts=[LONG],
                                     short_hosts=[SHORT])

    async def identify(self, req: pb.IdentifyRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        ctx.session = session
        lengths = await self.store.log_lengths(session.uin)
        have = {kv.key: kv.val for kv in req.key_buf.keys}
        ctx.notify_after = sum(SELECTOR_BIT[k] for k in LOG_KEYS if lengths[k] > have.get(k, 0))
        return pb.IdentifyResponse(base=self._ok())

    async def logout(self, req: pb.LogoutRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        await self.store.delete_session(session.session_key)
        await self.store.publish(SessionEnded(session.session_key, session.uin))
        return pb.LogoutResponse(base=self._ok())

    # ------------------------------------------------------------------ sync
    async def newsync(self, req: pb.NewSyncRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        have = {kv.key: kv.val for kv in req.key_buf.keys}
        return await self._sync(session.uin, req.selector or ALL_SELECTOR, have)

    async def newinit(self, req: pb.NewSyncRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        return await self._sync(session.uin, ALL_SELECTOR, {})

    async def _sync(self, uin: int, selector: int, have: dict[int, int]) -> pb.NewSyncResponse:
        lengths = await self.store.log_lengths(uin)
        resp = pb.NewSyncResponse(base=self._ok())
        room = SYNC_PAGE
        more = False
        new_keys = {}
        for k in SYNC_ORDER:
            pos = min(int(have.get(k, 0)), lengths[k])
            if selector & SELECTOR_BIT[k] and pos < lengths[k]:
                items = await self.store.read_log(uin, k, pos, room) if room else []
                for raw in items:
                    resp.cmd_list.add().ParseFromString(raw)
                room -= len(items)
                pos += len(items)
                more = more or pos < lengths[k]
            new_keys[k] = pos
        resp.continue_flag = 1 if more else 0
        for k in LOG_KEYS:
            resp.key_buf.keys.add(key=k, val=new_keys[k])
        return resp

    # ------------------------------------------------------------------ contacts
    async def getcontact(self, req: pb.GetContactRequest, ctx: RequestContext):
        await self._auth(req.base)
        resp = pb.GetContactResponse(base=self._ok())
        for name in req.usernames:
            u = await self.store.user_by_name(name)
            if u is not None:
                resp.contacts.append(self._contact(u))
        return resp

    async def getprofile(self, req: pb.GetProfileRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        user = await self.store.user_by_uin(session.uin)
        return pb.GetProfileResponse(base=self._ok(), profile=self._user_info(user))

    async def batchgetheadimg(self, req: pb.BatchGetHeadImgRequest, ctx: RequestContext):
        await self._auth(req.base)
        resp = pb.BatchGetHeadImgResponse(base=self._ok())
        for name in req.usernames:
            u = await self.store.user_by_name(name)
            if u is not None:
                resp.imgs.add(username=u.username, url_small=avatar_url(u.avatar_key, 96),
                              url_big=avatar_url(u.avatar_key, 0))
        return resp

    async def verifyuser(self, req: pb.VerifyUserRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        if req.opcode not in (1, 2, 3):
            raise ServiceError(Ret.BAD_ARGUMENT, f"opcode {req.opcode}")
        me = await self.store.user_by_uin(session.uin)
        other = await self.store.user_by_name(req.username)
        if other is None:
            raise ServiceError(Ret.NOT_FOUND, "no such user")
        if other.uin == me.uin:
            raise ServiceError(Ret.BAD_ARGUMENT, "cannot befriend oneself")
        if req.opcode == 1:
            await self._befriend(me, other, ctx.origin)
        elif req.opcode == 2:
            if not await self.store.are_friends(me.uin, other.uin):
                await self.store.add_pending(other.uin, me.uin)
                msg = pb.AddMsg(new_msg_id=await self.store.next_msg_id(), from_user=me.username,
                                to_user=other.username, msg_type=MSG_FRIEND_REQUEST,
                                content=req.verify_content, create_time=self._now())
                await self.store.append(other.uin, LOG_MESSAGES, _item(ITEM_ADD_MSG, msg),
                                        ctx.origin)
        else:
            if not await self.store.take_pending(me.uin, other.uin):
                raise ServiceError(Ret.NOT_ALLOWED, "no pending friend request")
            await self._befriend(me, other, ctx.origin)
        return pb.VerifyUserResponse(base=self._ok(), username=other.username)

    async def _befriend(self, a: UserRecord, b: UserRecord, origin) -> None:
        if await self.store.add_friends(a.uin, b.uin):
            await self.store.append(a.uin, LOG_CONTACTS, _item(ITEM_MOD_CONTACT, self._contact(b)),
                                    origin)
            await self.store.append(b.uin, LOG_CONTACTS, _item(ITEM_MOD_CONTACT, self._contact(a)),
                                    origin)

    # ------------------------------------------------------------------ messages
    def _now(self) -> int:
        return int(self.clock.epoch()) & 0xFFFFFFFF

    async def newsendmsg(self, req: pb.NewSendMsgRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        me = await self.store.user_by_uin(session.uin)
        resp = pb.NewSendMsgResponse(base=self._ok())
        for m in req.msgs:
            out = resp.msgs.add(to_user=m.to_user, client_msg_id=m.client_msg_id)
            out.ret = await self._send_one(me, m, out, ctx.origin)
        return resp

    async def _send_one(self, me: UserRecord, m: pb.MicroMsgRequest, out: pb.MicroMsgResponse,
                        origin) -> int:
        to = await self.store.user_by_name(m.to_user)
        if to is None:
            return Ret.NOT_FOUND
        if to.uin != me.uin and not await self.store.are_friends(me.uin, to.uin):
            return Ret.NOT_ALLOWED
        msg_type = m.msg_type or MSG_TEXT
        if msg_type != MSG_TEXT:
            return Ret.BAD_ARGUMENT  # media go through the upload commands
        value = (await self.store.next_msg_id(), self._now())
        msg = pb.AddMsg(new_msg_id=value[0], from_user=me.username, to_user=to.username,
                        msg_type=msg_type, content=m.content, create_time=value[1],
                        client_msg_id=m.client_msg_id)
        # claimed and stored in one step: a retry (on any worker, after any crash) of a
        # send with this client_msg_id gets the first one's ids and stores nothing more
        earlier = await self.store.deliver(
            me.uin, to.uin, _item(ITEM_ADD_MSG, msg), origin,
            claim=(m.client_msg_id, value) if m.client_msg_id else None,
            counter=MESSAGES_STORED)
        out.new_msg_id, out.create_time = earlier or value
        return Ret.OK

    # ------------------------------------------------------------------ media
    async def upload_media(self, req: pb.UploadMediaRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        msg_type = (ctx.command and ctx.command.msg_type) or req.msg_type or MSG_IMAGE
        resp = pb.UploadMediaResponse(base=self._ok(), client_media_id=req.client_media_id,
                                      total_len=req.total_len)
        if not req.client_media_id:
            raise ServiceError(Ret.BAD_ARGUMENT, "client_media_id is empty")
        rec = await self.store.get_upload(session.uin, req.client_media_id)
        if rec is not None and rec.new_msg_id:
            resp.start_pos, resp.total_len, resp.new_msg_id = rec.total_len, rec.total_len, \
                rec.new_msg_id
            return resp
        if len(req.data) > MEDIA_CHUNK_MAX:
            raise ServiceError(Ret.BAD_ARGUMENT, f"chunk of {len(req.data)} bytes over 64 KiB")
        if not 0 < req.total_len <= MEDIA_MAX_TOTAL:
            raise ServiceError(Ret.BAD_ARGUMENT, f"total_len {req.total_len}")
        if rec is None:
            to = await self.store.user_by_name(req.to_user)
            if to is None:
                raise ServiceError(Ret.NOT_FOUND, "no such user")
            if to.uin != session.uin and not await self.store.are_friends(session.uin, to.uin):
                raise ServiceError(Ret.NOT_ALLOWED, "not a friend")
            rec = await self._start_upload(UploadRecord(
                session.uin, req.client_media_id, to.username, msg_type, req.total_len))
        if rec.total_len != req.total_len:
            raise ServiceError(Ret.BAD_ARGUMENT, "total_len changed between chunks")
        if req.start_pos + len(req.data) > rec.total_len:
            raise ServiceError(Ret.BAD_ARGUMENT, "chunk runs past total_len")
        got = await self.store.append_upload(session.uin, req.client_media_id, req.start_pos,
                                             bytes(req.data))
        if got == -1 - rec.total_len:
            # every byte is there, unfinished: the worker that stored the last chunk died
            # before finishing it. This retry finishes it.
            got = rec.total_len
        if got < 0:
            resp.base.ret = Ret.MEDIA_OUT_OF_ORDER
            resp.base.errmsg = "chunk out of order"
            resp.start_pos = -1 - got
            if ctx.command is not None:
                await self.store.count({error_key(ctx.command.name, Ret.MEDIA_OUT_OF_ORDER): 1})
            return resp
        resp.start_pos = got
        if got == rec.total_len:
            resp.new_msg_id = await self._complete_upload(session.uin, rec, ctx.origin)
        return resp

    async def _start_upload(self, record: UploadRecord) -> UploadRecord:
        """A new upload, within the user's count of unfinished uploads and the media quotas
        (docs/protocol.md section 11): the oldest unfinished uploads are forgotten to make
        room, as many as the count or the user's quota needs; what completed media hold is
        never forgotten, so past the quota with none unfinished (or past the lab's quota)
        the upload is refused with -5."""
        uin, lim = record.uploader, self.limits
        pending = await self.store.uploads_in_progress(uin)
        excess = max(0, len(pending) - MAX_UPLOADS_IN_PROGRESS + 1)
        for old in pending[:excess]:
            await self.store.drop_upload(uin, old)
        pending = pending[excess:]
        while True:
            try:
                return await self.store.start_upload(
                    record, user_quota=lim.media_quota_user_bytes,
                    lab_quota=lim.media_quota_lab_bytes)
            except QuotaExceeded as exc:
                if exc.scope != "user" or not pending:
                    raise ServiceError(Ret.NOT_ALLOWED, str(exc)) from None
                await self.store.drop_upload(uin, pending.pop(0))

    async def _complete_upload(self, uin: int, rec: UploadRecord, origin) -> int:
        data = await self.store.upload_data(uin, rec.client_media_id)
        if data is None:   # a retried last chunk: another request (or worker) finished it
            return (await self.store.get_upload(uin, rec.client_media_id)).new_msg_id
        msg_id = await self.store.next_msg_id()
        me = await self.store.user_by_uin(uin)
        to = await self.store.user_by_name(rec.to_user)
        digest = hashlib.sha256(data).digest()
        cdn_key = secrets.token_hex(16) if rec.msg_type == MSG_IMAGE else ""
        msg = pb.AddMsg(new_msg_id=msg_id, from_user=me.username, to_user=to.username,
                        msg_type=rec.msg_type, create_time=self._now(),
                        client_msg_id=rec.client_media_id,
                        media=pb.MediaRef(total_len=len(data), sha256=digest,
                                          cdn_url=image_url(cdn_key) if cdn_key else ""))
        # the media and its message in one step, so a worker dying here leaves the upload
        # whole for the retry; of two workers finishing it at once, one does
        try:
            msg_id, _ = await self.store.complete_upload(
                uin, rec.client_media_id, msg_id, to.uin, digest, cdn_key,
                _item(ITEM_ADD_MSG, msg), origin, counter=MESSAGES_STORED)
        except KeyError:   # dropped meanwhile (the user started too many others)
            raise ServiceError(Ret.NOT_FOUND, "upload forgotten: start it again") from None
        return msg_id

    async def download_media(self, req: pb.DownloadMediaRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        n = min(req.max_len or MEDIA_CHUNK_MAX, MEDIA_CHUNK_MAX)
        part = await self.store.media_part(req.msg_id, req.start_pos, n)
        if part is None:
            raise ServiceError(Ret.NOT_FOUND, "no such media")
        if session.uin not in (part.sender, part.receiver):
            raise ServiceError(Ret.NOT_ALLOWED, "someone else's media")
        if req.start_pos > part.total_len:
            raise ServiceError(Ret.BAD_ARGUMENT,
                               f"start_pos {req.start_pos} past {part.total_len}")
        return pb.DownloadMediaResponse(base=self._ok(), msg_id=part.msg_id,
                                        total_len=part.total_len, start_pos=req.start_pos,
                                        data=part.data)

    async def media_for_cdn(self, key: str) -> Optional[MediaRecord]:
        """Uploaded images by CDN key, for mmsns.qpic.cn."""
        return await self.store.media_by_cdn_key(key)

    # ------------------------------------------------------------------ nearby
    async def lbsfind(self, req: pb.LbsFindRequest, ctx: RequestContext):
        session = await self._auth(req.base)
        if req.opcode == 2:
            await self.store.clear_location(session.uin)
            return pb.LbsFindResponse(base=self._ok(), contact_count=0, state=0)
        if req.opcode != 1:
            raise ServiceError(Ret.BAD_ARGUMENT, f"opcode {req.opcode}")
        lon, lat = float(req.longitude), float(req.latitude)
        if not nearby.valid_coordinates(lon, lat):
            raise ServiceError(Ret.BAD_ARGUMENT, "coordinates out of range")
        await self.store.set_location(session.uin, lon, lat)
        found = []
        for uin, x, y in await self.store.candidates_near(lon, lat, self.nearby_radius_m):
            if uin == session.uin:
                continue
            d = nearby.great_circle_m(lon, lat, x, y)
            if d <= self.nearby_radius_m:
                found.append((d, uin))
        found.sort()
        resp = pb.LbsFindResponse(base=self._ok(), state=1, flush_time=LBS_FLUSH_S)
        for d, uin in found[:NEARBY_MAX]:
            u = await self.store.user_by_uin(uin)
            dm = nearby.round_distance(d)
            resp.contacts.add(username=u.username, nickname=u.nickname, city=u.city,
                              signature=u.signature, distance=nearby.bucket(dm), distance_m=dm,
                              sex=u.sex, avatar_url=avatar_url(u.avatar_key, 96))
        resp.contact_count = len(resp.contacts)
        return resp

    # ------------------------------------------------------------------ behaviour logs
    async def report(self, req: pb.ReportRequest, ctx: RequestContext):
        await self._auth(req.base)
        await self.store.count({report_key(ctx.command.report_kind): len(req.items)})
        return pb.ReportResponse(base=self._ok(), accepted=len(req.items))

    async def noop(self, req, ctx):  # NOOP is answered by the long link itself
        return None
