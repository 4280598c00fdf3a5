"""The Redis store: one lab's state shared by every process that serves it (redis-py asyncio).

Every key of a lab is under `testbed:{NAMESPACE}:` (the braces make them one Redis Cluster
slot, so the multi-key scripts below would run there too), so labs and tests can share one
redis-server and `clear()` removes exactly one lab. What must be atomic is one server-side
step: a single command (RPUSH, INCR, SREM, HINCRBY), MULTI/EXEC, or a Lua script.

Layout (P is the prefix):
  P uins, P msgid, P upload-seq       counters (INCR)
  P users    hash uin -> JSON [username, password, nickname, sex, city, signature, avatar]
  P names, P avatars                  hash username / avatar key -> uin
  P sessions hash session_key -> JSON [uin, username, device_id hex]
  P devices  hash "uin:device_id hex" -> its session's key (one session per device; kept
                                      with P sessions in _PUT_SESSION and _DELETE_SESSION)
  P log:UIN:K                         list of serialized CmdItems (the sync key is its length);
                                      appended to and published from in one script
  P friends:UIN                       set of uins;  P pending  set of "to:from"
  P sends    hash "sender:client_msg_id" -> "new_msg_id:create_time", claimed in the same
                                      script that stores the message (_DELIVER)
  P upload:UIN:ID / P upload-data:UIN:ID   hash of the record / string of its bytes;
  P uploads:UIN                       sorted set of unfinished ids, oldest first
  P media-bytes                       hash uin -> bytes its uploads hold, and "lab" -> all
  P media:ID / P media-data:ID        hash of the record / string of its bytes (an upload's
                                      bytes are RENAMEd there as it completes); P cdn: key -> id
  P geo (GEOADD), P locations (hash uin -> "lon lat", exact), P polar (set: |lat| > 85.05)
  P counters hash name -> count;      P events: the pub/sub channel
  P login-failures                    hash key -> "count last" of wrong logins, beside
  P login-last                        sorted set key by last (protocol time), for pruning
  P claims   hash username -> the phone that claimed it (_CLAIM_USERS); P results  hash
             phone -> its result (JSON)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import Optional

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .base import (LOG_KEYS, LOG_MESSAGES, SELECTOR_BIT, Event, EventsMissed, MediaPart,
                   MediaRecord, PushEvent, QuotaExceeded, SessionRecord, Store, UploadRecord,
                   UserRecord, decode_event, encode_event)

log = logging.getLogger(__name__)

NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")   # no glob characters
FIRST_MSG_ID = 1_000_001          # as the memory store
MAX_CONNECTIONS = 32              # per store (process), besides the one for events
POOL_WAIT_S = 30.0
GEO_MAX_LAT = 85.05112878         # GEOADD refuses latitudes beyond this
# GEOSEARCH measures on a sphere of 6,372,797.56 m and on 52-bit geohashes; we measure on
# 6,371,008.8 m from the exact stored point. A slightly wider search keeps it a superset.
RADIUS_PAD = 1.001
RADIUS_PAD_M = 5.0

_CREATE_USER = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
local uin = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[3], uin, ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], uin)
redis.call('HSET', KEYS[2], ARGV[2], uin)
return uin
"""

# KEYS: log; ARGV: item, channel, event
_APPEND = """
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
"""

_USER_BY_INDEX = """
local uin = redis.call('HGET', KEYS[1], ARGV[1])
if not uin then return false end
return {uin, redis.call('HGET', KEYS[2], uin)}
"""

# KEYS: record, data, queue, seq, media bytes; ARGV: member, to_user, msg_type, total_len,
# uploader, user quota ('' for none), lab quota ('' for none)
_START_UPLOAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local size = tonumber(ARGV[4])
  local held = tonumber(redis.call('HGET', KEYS[5], ARGV[5]) or '0')
  local lab = tonumber(redis.call('HGET', KEYS[5], 'lab') or '0')
  if ARGV[6] ~= '' and held + size > tonumber(ARGV[6]) then
    return {'quota', 'user', held, ARGV[6]}
  end
  if ARGV[7] ~= '' and lab + size > tonumber(ARGV[7]) then
    return {'quota', 'lab', lab, ARGV[7]}
  end
  redis.call('HSET', KEYS[1], 'to_user', ARGV[2], 'msg_type', ARGV[3], 'total_len', ARGV[4],
             'new_msg_id', 0)
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[1])
  redis.call('HINCRBY', KEYS[5], ARGV[5], size)
  redis.call('HINCRBY', KEYS[5], 'lab', size)
end
local r = redis.call('HMGET', KEYS[1], 'to_user', 'msg_type', 'total_len', 'new_msg_id')
r[5] = redis.call('STRLEN', KEYS[2])
return {'ok', r}
"""

# KEYS: record, data; ARGV: start_pos, chunk
_APPEND_UPLOAD = """
local r = redis.call('HMGET', KEYS[1], 'total_len', 'new_msg_id')
if not r[1] then return false end
if r[2] ~= '0' then return -1 - tonumber(r[1]) end
local have = redis.call('STRLEN', KEYS[2])
if have ~= tonumber(ARGV[1]) then return -1 - have end
return redis.call('APPEND', KEYS[2], ARGV[2])
"""

# Storing a message (the tail of _DELIVER and _COMPLETE_UPLOAD). KEYS[1..3]: receiver's
# log, sender's log (the same key for a note to oneself), counters; ARGV[1..5]: item,
# channel, receiver's event, sender's event, counter ('' for none)
_STORE_MESSAGE = """
local function store_message(k, a)
  redis.call('RPUSH', k[1], a[1])
  redis.call('PUBLISH', a[2], a[3])
  if k[2] ~= k[1] then
    redis.call('RPUSH', k[2], a[1])
    redis.call('PUBLISH', a[2], a[4])
  end
  if a[5] ~= '' then redis.call('HINCRBY', k[3], a[5], 1) end
end
"""

# KEYS: receiver's log, sender's log, counters, sends; ARGV: item, channel, events x2,
# counter, claim field ('' for none), claim value
_DELIVER = _STORE_MESSAGE + """
if ARGV[6] ~= '' and redis.call('HSETNX', KEYS[4], ARGV[6], ARGV[7]) == 0 then
  return redis.call('HGET', KEYS[4], ARGV[6])
end
store_message(KEYS, ARGV)
return false
"""

# KEYS: receiver's log, sender's log, counters, record, data, queue, media, media data, cdn;
# ARGV: item, channel, events x2, counter, member, msg_id, uploader, receiver, sha256, cdn key
_COMPLETE_UPLOAD = _STORE_MESSAGE + """
local r = redis.call('HMGET', KEYS[4], 'total_len', 'new_msg_id', 'msg_type')
if not r[1] then return {'unknown'} end
if r[2] ~= '0' then return {'done', r[2]} end
local have = redis.call('STRLEN', KEYS[5])
if have ~= tonumber(r[1]) then return {'short', have} end
redis.call('HSET', KEYS[4], 'new_msg_id', ARGV[7])
redis.call('ZREM', KEYS[6], ARGV[6])
redis.call('RENAME', KEYS[5], KEYS[8])
redis.call('HSET', KEYS[7], 'sender', ARGV[8], 'receiver', ARGV[9], 'msg_type', r[3],
           'sha256', ARGV[10], 'cdn_key', ARGV[11])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[9], ARGV[11], ARGV[7]) end
store_message(KEYS, ARGV)
return {'finished', ARGV[7]}
"""

# KEYS: record, data, queue, media bytes; ARGV: member, uploader
_DROP_UPLOAD = """
if redis.call('HGET', KEYS[1], 'new_msg_id') == '0' then
  local size = tonumber(redis.call('HGET', KEYS[1], 'total_len'))
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HINCRBY', KEYS[4], ARGV[2], -size)
  redis.call('HINCRBY', KEYS[4], 'lab', -size)
end
redis.call('ZREM', KEYS[3], ARGV[1])
"""

# KEYS: failures (hash key -> "count last"), last (sorted set key by last); ARGV: key, now,
# window, now - window. Stale entries (last <= now - window) are forgotten on the way.
_NOTE_LOGIN_FAILURE = """
local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local count = 1
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local n, last = string.match(old, '(%d+) (.+)')
  if now - tonumber(last) < window then count = tonumber(n) + 1 end
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])) do
  redis.call('HDEL', KEYS[1], k)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], count .. ' ' .. ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return count
"""

# KEYS: sessions, devices; ARGV: session key, its JSON, its "uin:device" ('' for no
# device). The device's earlier session ends here; its key is returned (false if none).
_PUT_SESSION = """
local ended = false
if ARGV[3] ~= '' then
  ended = redis.call('HGET', KEYS[2], ARGV[3])
  if ended then redis.call('HDEL', KEYS[1], ended) end
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ended
"""

# KEYS: sessions, devices; ARGV: session key. 1 if it was there.
_DELETE_SESSION = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local s = cjson.decode(raw)
local device = string.format('%d:%s', s[1], s[3])
if s[3] ~= '' and redis.call('HGET', KEYS[2], device) == ARGV[1] then
  redis.call('HDEL', KEYS[2], device)
end
return 1
"""

# KEYS: meta, data; ARGV: start, max_len
_MEDIA_PART = """
local r = redis.call('HMGET', KEYS[1], 'sender', 'receiver', 'msg_type')
if not r[1] then return false end
local total = redis.call('STRLEN', KEYS[2])
local s, n = tonumber(ARGV[1]), tonumber(ARGV[2])
r[4] = total
if n > 0 and s < total then
  r[5] = redis.call('GETRANGE', KEYS[2], s, s + n - 1)
else
  r[5] = ''
end
return r
"""

# KEYS: geo, polar, locations; ARGV: lon, lat, radius_m
_CANDIDATES_NEAR = """
local out = {}
local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                         'BYRADIUS', ARGV[3], 'm')
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do table.insert(found, m) end
for _, m in ipairs(found) do
  table.insert(out, m)
  table.insert(out, redis.call('HGET', KEYS[3], m))
end
return out
"""


# KEYS: names, claims; ARGV: owner, count. The lowest free names, all or none: a list, or
# the number free when that is fewer than asked.
_CLAIM_USERS = """
local want = tonumber(ARGV[2])
local names = redis.call('HKEYS', KEYS[1])
table.sort(names)
local got = {}
for _, n in ipairs(names) do
  if #got == want then break end
  if redis.call('HEXISTS', KEYS[2], n) == 0 then table.insert(got, n) end
end
if #got < want then return #got end
for _, n in ipairs(got) do redis.call('HSET', KEYS[2], n, ARGV[1]) end
return got
"""


def check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not NAMESPACE.fullmatch(namespace):
        raise ValueError(f"bad store namespace {namespace!r}: letters, digits and . _ : - "
                         f"only, at most 64")


def client_name(namespace: str) -> str:
    """The name (`CLIENT SETNAME`) of every connection a lab's stores open."""
    return f"testbed:{namespace}"


class RedisStore(Store):
    """A lab's state in Redis; several of these (in any processes) may serve one lab.

    Make one with `await RedisStore.connect(url, namespace)` (or `make_store(url)`), which
    also subscribes to the lab's event channel, so that once it returns no event published
    anywhere in the lab is missed by its listeners.
    """

    def __init__(self, client: aioredis.Redis, namespace: str = "lab") -> None:
        super().__init__()
        check_namespace(namespace)
        self.namespace = namespace
        self.url = ""      # set by `connect`
        self.prefix = f"testbed:{{{namespace}}}:"
        self._r = client
        self._pubsub = None
        self._reader: Optional[asyncio.Task] = None
        p = self.prefix
        self._k_uins, self._k_users = p + "uins", p + "users"
        self._k_names, self._k_avatars = p + "names", p + "avatars"
        self._k_sessions, self._k_pending = p + "sessions", p + "pending"
        self._k_devices = p + "devices"
        self._k_msgid, self._k_sends = p + "msgid", p + "sends"
        self._k_upload_seq, self._k_cdn = p + "upload-seq", p + "cdn"
        self._k_geo, self._k_locations, self._k_polar = p + "geo", p + "locations", p + "polar"
        self._k_counters, self.channel = p + "counters", p + "events"
        self._k_media_bytes = p + "media-bytes"
        self._k_login_failures, self._k_login_last = p + "login-failures", p + "login-last"
        self._k_claims, self._k_results = p + "claims", p + "results"
        reg = client.register_script
        self._create_user = reg(_CREATE_USER)
        self._user_by_index = reg(_USER_BY_INDEX)
        self._append = reg(_APPEND)
        self._start_upload = reg(_START_UPLOAD)
        self._append_upload = reg(_APPEND_UPLOAD)
        self._deliver = reg(_DELIVER)
        self._complete_upload = reg(_COMPLETE_UPLOAD)
        self._drop_upload = reg(_DROP_UPLOAD)
        self._note_login_failure = reg(_NOTE_LOGIN_FAILURE)
        self._media_part = reg(_MEDIA_PART)
        self._candidates_near = reg(_CANDIDATES_NEAR)
        self._claim_users = reg(_CLAIM_USERS)
        self._put_session = reg(_PUT_SESSION)
        self._delete_session = reg(_DELETE_SESSION)

    @classmethod
    async def connect(cls, url: str, namespace: str = "lab") -> "RedisStore":
        """Connect, check the server answers, and subscribe to the lab's events."""
        check_namespace(namespace)
        # Blocking: past MAX_CONNECTIONS commands in flight, callers wait for a connection
        # (redis-py's default pool raises instead, which a busy server would turn into -1s)
        # named after the lab, so `CLIENT LIST` on a shared server says which lab holds what
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS,
                                                        timeout=POOL_WAIT_S,
                                                        client_name=client_name(namespace))
        client = aioredis.Redis.from_pool(pool)   # closing the client closes the pool
        store = cls(client, namespace)
        store.url = url
        try:
            await client.ping()
            await store._listen()
        except (RedisError, OSError) as exc:
            await store.close()
            raise ConnectionError(f"cannot use the Redis store at {url}: {exc}") from exc
        return store

    # ------------------------------------------------------------------ keys
    def _log(self, uin: int, log_key: int) -> str:
        return f"{self.prefix}log:{uin}:{log_key}"

    def _friends(self, uin: int) -> str:
        return f"{self.prefix}friends:{uin}"

    def _upload_keys(self, uploader: int, client_media_id: str) -> tuple[str, str, str]:
        tail = f"{uploader}:{client_media_id}"
        return (f"{self.prefix}upload:{tail}", f"{self.prefix}upload-data:{tail}",
                f"{self.prefix}uploads:{uploader}")

    def _media(self, msg_id: int) -> tuple[str, str]:
        return f"{self.prefix}media:{msg_id}", f"{self.prefix}media-data:{msg_id}"

    # ------------------------------------------------------------------ accounts
    @staticmethod
    def _user(uin, raw) -> UserRecord:
        name, password, nickname, sex, city, signature, avatar = json.loads(raw)
        return UserRecord(int(uin), name, password, nickname, sex, city, signature, avatar)

    async def create_user(self, username, password, nickname, sex, city, signature, avatar_key):
        raw = json.dumps([username, password, nickname, sex, city, signature, avatar_key])
        uin = await self._create_user(
            keys=[self._k_names, self._k_avatars, self._k_users, self._k_uins],
            args=[username, avatar_key, raw])
        if uin is None:
            raise ValueError(f"user {username!r} exists")
        return self._user(uin, raw)

    async def _user_by(self, index: str, value: str) -> Optional[UserRecord]:
        got = await self._user_by_index(keys=[index, self._k_users], args=[value])
        return None if got is None else self._user(*got)

    async def user_by_name(self, username):
        return await self._user_by(self._k_names, username)

    async def user_by_avatar_key(self, key):
        return await self._user_by(self._k_avatars, key)

    async def user_by_uin(self, uin):
        raw = await self._r.hget(self._k_users, uin)
        return None if raw is None else self._user(uin, raw)

    async def user_count(self):
        return await self._r.hlen(self._k_users)

    # ------------------------------------------------------------------ sessions
    async def put_session(self, session):
        device = session.device_id.hex()
        ended = await self._put_session(
            keys=[self._k_sessions, self._k_devices],
            args=[session.session_key, json.dumps([session.uin, session.username, device]),
                  f"{session.uin}:{device}" if device else ""])
        return bytes(ended) if ended else None

    async def get_session(self, session_key):
        raw = await self._r.hget(self._k_sessions, session_key)
        if raw is None:
            return None
        uin, username, device = json.loads(raw)
        return SessionRecord(bytes(session_key), uin, username, bytes.fromhex(device))

    async def delete_session(self, session_key):
        return await self._delete_session(keys=[self._k_sessions, self._k_devices],
                                          args=[session_key]) == 1

    async def session_count(self):
        return await self._r.hlen(self._k_sessions)

    # ------------------------------------------------------------------ sync logs
    async def append(self, uin, log, item, origin=None):
        event = encode_event(PushEvent(uin, SELECTOR_BIT[log], origin))
        return await self._append(keys=[self._log(uin, log)], args=[item, self.channel, event])

    async def read_log(self, uin, log, after, limit):
        if limit <= 0:
            return []
        return await self._r.lrange(self._log(uin, log), after, after + limit - 1)

    async def log_lengths(self, uin):
        async with self._r.pipeline(transaction=True) as pipe:   # one snapshot of the three
            for k in LOG_KEYS:
                pipe.llen(self._log(uin, k))
            lengths = await pipe.execute()
        return dict(zip(LOG_KEYS, lengths))

    # ------------------------------------------------------------------ friends
    async def add_friends(self, a, b):
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.sadd(self._friends(a), b)
            pipe.sadd(self._friends(b), a)
            added, _ = await pipe.execute()
        return added == 1

    async def are_friends(self, a, b):
        return bool(await self._r.sismember(self._friends(a), b))

    async def add_pending(self, to_uin, from_uin):
        await self._r.sadd(self._k_pending, f"{to_uin}:{from_uin}")

    async def take_pending(self, to_uin, from_uin):
        return await self._r.srem(self._k_pending, f"{to_uin}:{from_uin}") == 1

    # ------------------------------------------------------------------ messages
    async def next_msg_id(self):
        return FIRST_MSG_ID - 1 + await self._r.incr(self._k_msgid)

    def _message_keys_args(self, sender, receiver, item, origin, counter):
        events = [encode_event(PushEvent(uin, SELECTOR_BIT[LOG_MESSAGES], origin))
                  for uin in (receiver, sender)]
        return ([self._log(receiver, LOG_MESSAGES), self._log(sender, LOG_MESSAGES),
                 self._k_counters], [item, self.channel, *events, counter or ""])

    async def deliver(self, sender, receiver, item, origin=None, *, claim=None, counter=None):
        keys, args = self._message_keys_args(sender, receiver, item, origin, counter)
        if claim is None:
            args += ["", ""]
        else:
            client_msg_id, (msg_id, create_time) = claim
            args += [f"{sender}:{client_msg_id}", f"{msg_id}:{create_time}"]
        earlier = await self._deliver(keys=[*keys, self._k_sends], args=args)
        if earlier is None:
            return None
        msg_id, create_time = earlier.split(b":")
        return int(msg_id), int(create_time)

    # ------------------------------------------------------------------ uploads
    async def get_upload(self, uploader, client_media_id):
        rec, data, _ = self._upload_keys(uploader, client_media_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hmget(rec, "to_user", "msg_type", "total_len", "new_msg_id")
            pipe.strlen(data)
            fields, received = await pipe.execute()
        if fields[0] is None:
            return None
        return self._upload(uploader, client_media_id, [*fields, received])

    @staticmethod
    def _upload(uploader, client_media_id, r) -> UploadRecord:
        to_user, msg_type, total_len, new_msg_id, received = r
        total_len, new_msg_id = int(total_len), int(new_msg_id)
        return UploadRecord(uploader, client_media_id, to_user.decode(), int(msg_type),
                            total_len, new_msg_id, total_len if new_msg_id else int(received))

    async def start_upload(self, record, *, user_quota=None, lab_quota=None):
        keys = self._upload_keys(record.uploader, record.client_media_id)
        outcome, *got = await self._start_upload(
            keys=[*keys, self._k_upload_seq, self._k_media_bytes],
            args=[record.client_media_id, record.to_user, record.msg_type, record.total_len,
                  record.uploader, "" if user_quota is None else user_quota,
                  "" if lab_quota is None else lab_quota])
        if outcome == b"quota":
            scope, held, limit = got
            raise QuotaExceeded(scope.decode(), int(held), int(limit), record.total_len)
        return self._upload(record.uploader, record.client_media_id, got[0])

    async def append_upload(self, uploader, client_media_id, start_pos, data):
        rec, blob, _ = self._upload_keys(uploader, client_media_id)
        got = await self._append_upload(keys=[rec, blob], args=[start_pos, data])
        if got is None:
            raise KeyError((uploader, client_media_id))
        return got

    async def upload_data(self, uploader, client_media_id):
        rec, data, _ = self._upload_keys(uploader, client_media_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hget(rec, "new_msg_id")
            pipe.get(data)
            done, blob = await pipe.execute()
        return None if done is None or done != b"0" else (blob or b"")

    async def complete_upload(self, uploader, client_media_id, msg_id, receiver, sha256,
                              cdn_key, item, origin=None, *, counter=None):
        keys, args = self._message_keys_args(uploader, receiver, item, origin, counter)
        got = await self._complete_upload(
            keys=[*keys, *self._upload_keys(uploader, client_media_id), *self._media(msg_id),
                  self._k_cdn],
            args=[*args, client_media_id, msg_id, uploader, receiver, sha256, cdn_key])
        outcome = got[0].decode()
        if outcome == "unknown":
            raise KeyError((uploader, client_media_id))
        if outcome == "short":
            raise ValueError(f"upload {client_media_id!r} holds {int(got[1])} bytes, not all")
        return int(got[1]), outcome == "finished"

    async def uploads_in_progress(self, uploader):
        _, _, queue = self._upload_keys(uploader, "")
        return [m.decode() for m in await self._r.zrange(queue, 0, -1)]

    async def drop_upload(self, uploader, client_media_id):
        await self._drop_upload(keys=[*self._upload_keys(uploader, client_media_id),
                                      self._k_media_bytes], args=[client_media_id, uploader])

    async def media_bytes(self, uploader):
        mine, lab = await self._r.hmget(self._k_media_bytes, str(uploader), "lab")
        return int(mine or 0), int(lab or 0)

    # ------------------------------------------------------------------ wrong logins
    async def note_login_failure(self, key, now, window_s):
        return await self._note_login_failure(
            keys=[self._k_login_failures, self._k_login_last],
            args=[key, repr(float(now)), repr(float(window_s)), repr(float(now - window_s))])

    async def login_failures(self, key, now, window_s):
        raw = await self._r.hget(self._k_login_failures, key)
        if raw is None:
            return 0, 0.0
        count, last = raw.split()
        last = float(last)
        return (int(count), last) if now - last < window_s else (0, 0.0)

    async def clear_login_failures(self, key):
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k_login_failures, key)
            pipe.zrem(self._k_login_last, key)
            await pipe.execute()

    # ------------------------------------------------------------------ media
    async def put_media(self, media):
        meta, data = self._media(media.msg_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={"sender": media.sender, "receiver": media.receiver,
                                     "msg_type": media.msg_type, "sha256": media.sha256,
                                     "cdn_key": media.cdn_key})
            pipe.set(data, media.data)
            if media.cdn_key:
                pipe.hset(self._k_cdn, media.cdn_key, media.msg_id)
            await pipe.execute()

    async def get_media(self, msg_id):
        meta, data = self._media(msg_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, "sender", "receiver", "msg_type", "sha256", "cdn_key")
            pipe.get(data)
            (sender, receiver, msg_type, sha256, cdn_key), blob = await pipe.execute()
        if sender is None:
            return None
        return MediaRecord(int(msg_id), int(sender), int(receiver), int(msg_type),
                           blob or b"", sha256, cdn_key.decode())

    async def media_part(self, msg_id, start_pos, max_len):
        got = await self._media_part(keys=list(self._media(msg_id)), args=[start_pos, max_len])
        if got is None:
            return None
        sender, receiver, msg_type, total, data = got
        return MediaPart(int(msg_id), int(sender), int(receiver), int(msg_type), int(total),
                         start_pos, bytes(data))

    async def media_by_cdn_key(self, key):
        msg_id = await self._r.hget(self._k_cdn, key)
        return None if msg_id is None else await self.get_media(int(msg_id))

    # ------------------------------------------------------------------ people nearby
    async def set_location(self, uin, lon, lat):
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self._k_locations, uin, f"{lon!r} {lat!r}")
            if abs(lat) <= GEO_MAX_LAT:
                pipe.geoadd(self._k_geo, (lon, lat, uin))
                pipe.srem(self._k_polar, uin)
            else:   # GEOADD cannot index it: kept aside, always a candidate
                pipe.zrem(self._k_geo, uin)
                pipe.sadd(self._k_polar, uin)
            await pipe.execute()

    async def clear_location(self, uin):
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k_locations, uin)
            pipe.zrem(self._k_geo, uin)
            pipe.srem(self._k_polar, uin)
            await pipe.execute()

    async def candidates_near(self, lon, lat, radius_m):
        # a centre beyond GEOSEARCH's latitudes is moved to its edge, the radius widened by
        # the distance moved
        edge = max(-GEO_MAX_LAT, min(GEO_MAX_LAT, lat))
        moved = abs(math.radians(lat - edge)) * 6_372_797.560856
        radius = (radius_m + moved) * RADIUS_PAD + RADIUS_PAD_M
        got = await self._candidates_near(
            keys=[self._k_geo, self._k_polar, self._k_locations],
            args=[repr(lon), repr(edge), repr(radius)])
        out = []
        for uin, where in zip(got[::2], got[1::2]):
            x, y = where.split()
            out.append((int(uin), float(x), float(y)))
        return out

    # ------------------------------------------------------------------ counters
    async def count(self, counts):
        if len(counts) == 1:
            (name, n), = counts.items()
            await self._r.hincrby(self._k_counters, name, n)
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for name, n in counts.items():
                pipe.hincrby(self._k_counters, name, n)
            await pipe.execute()

    async def counters(self):
        return {k.decode(): int(v) for k, v in (await self._r.hgetall(self._k_counters)).items()}

    # ------------------------------------------------------------------ phones
    async def claim_users(self, owner, count):
        if count < 1:
            raise ValueError(f"claim at least one user, not {count}")
        got = await self._claim_users(keys=[self._k_names, self._k_claims], args=[owner, count])
        if isinstance(got, int):
            raise ValueError(f"only {got} unclaimed users left, {count} asked for")
        return [n.decode() for n in got]

    async def claims(self):
        out: dict[str, list[str]] = {}
        for name, owner in sorted((await self._r.hgetall(self._k_claims)).items()):
            out.setdefault(owner.decode(), []).append(name.decode())
        return out

    async def put_result(self, owner, result):
        await self._r.hset(self._k_results, owner, result)

    async def results(self):
        return {k.decode(): v.decode() for k, v in (await self._r.hgetall(self._k_results)).items()}

    # ------------------------------------------------------------------ events
    async def _listen(self) -> None:
        """Subscribe to the lab's channel and wait until the server confirms it."""
        self._pubsub = self._r.pubsub()
        await self._pubsub.subscribe(self.channel)
        while True:
            msg = await self._pubsub.get_message(timeout=5.0)
            if msg is None:
                raise ConnectionError("no answer to SUBSCRIBE")
            if msg["type"] == "subscribe":
                break
        self._reader = asyncio.get_running_loop().create_task(self._read_events())

    async def _read_events(self) -> None:
        pubsub = self._pubsub
        broken = False
        while True:
            try:
                msg = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # redis-py reconnects and resubscribes
                log.warning("store events: %s; retrying", exc)
                broken = True
                await asyncio.sleep(0.1)
                continue
            if msg is None:
                continue
            if msg["type"] == "subscribe":
                if broken:   # subscribed again: whatever was published meanwhile is lost
                    broken = False
                    self._dispatch(EventsMissed())
                continue
            if msg["type"] != "message":
                continue
            try:
                event = decode_event(msg["data"])
            except ValueError as exc:
                log.warning("store events: ignored %s", exc)
                continue
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one listener's bug must not stop the others' events
                log.exception("store event listener failed")

    async def publish(self, event: Event) -> None:
        await self._r.publish(self.channel, encode_event(event))

    # ------------------------------------------------------------------ lifetime
    async def clear(self):
        batch = []
        async for key in self._r.scan_iter(match=self.prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self._r.unlink(*batch)
                batch.clear()
        if batch:
            await self._r.unlink(*batch)

    async def close(self):
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        await self._r.aclose()
