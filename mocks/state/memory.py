"""The embedded in-memory store: the default, needs nothing, one process."""

from __future__ import annotations

import collections
import dataclasses
import itertools

from .base import (LOG_KEYS, LOG_MESSAGES, SELECTOR_BIT, Event, MediaPart, MediaRecord,
                   PushEvent, QuotaExceeded, SessionRecord, Store, UploadRecord, UserRecord)


class _Upload:
    """An upload's record and the bytes received so far (the media bytes it holds are its
    record's total_len)."""

    __slots__ = ("meta", "data")

    def __init__(self, meta: UploadRecord) -> None:
        self.meta = meta
        self.data = bytearray()

    def record(self) -> UploadRecord:
        received = self.meta.total_len if self.meta.new_msg_id else len(self.data)
        return dataclasses.replace(self.meta, received=received)


class MemoryStore(Store):
    """Coroutines that never await: each call is atomic on the event loop."""

    waits = False

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self._users: dict[int, UserRecord] = {}
        self._by_name: dict[str, int] = {}
        self._by_avatar: dict[str, int] = {}
        self._sessions: dict[bytes, SessionRecord] = {}
        self._by_device: dict[tuple[int, bytes], bytes] = {}   # (uin, device) -> its session
        self._logs: dict[tuple[int, int], list[bytes]] = {}
        self._friends: dict[int, set[int]] = {}
        self._pending: set[tuple[int, int]] = set()
        self._msg_ids = itertools.count(1_000_001)
        self._sends: dict[tuple[int, str], tuple[int, int]] = {}
        self._uploads: dict[tuple[int, str], _Upload] = {}
        self._in_progress: dict[int, dict[str, None]] = {}   # uploader -> ids, oldest first
        self._media: dict[int, MediaRecord] = {}
        self._media_by_key: dict[str, int] = {}
        self._locations: dict[int, tuple[float, float]] = {}
        self._counters: dict[str, int] = {}
        self._media_bytes: dict[int, int] = {}   # uploader -> bytes its uploads hold
        self._lab_media_bytes = 0
        # key -> (failures in a row, protocol time of the last), least recent first
        self._login_failures: collections.OrderedDict[str, tuple[int, float]] = \
            collections.OrderedDict()
        self._claims: dict[str, str] = {}       # username -> owner
        self._results: dict[str, str] = {}      # owner -> result

    async def clear(self):
        self._reset()   # not the subscriptions: they outlive the data, as on Redis

    async def create_user(self, username, password, nickname, sex, city, signature, avatar_key):
        if username in self._by_name:
            raise ValueError(f"user {username!r} exists")
        uin = len(self._users) + 1
        rec = UserRecord(uin, username, password, nickname, sex, city, signature, avatar_key)
        self._users[uin] = rec
        self._by_name[username] = uin
        self._by_avatar[avatar_key] = uin
        return rec

    async def user_by_name(self, username):
        uin = self._by_name.get(username)
        return None if uin is None else self._users[uin]

    async def user_by_uin(self, uin):
        return self._users.get(uin)

    async def user_by_avatar_key(self, key):
        uin = self._by_avatar.get(key)
        return None if uin is None else self._users[uin]

    async def user_count(self):
        return len(self._users)

    async def put_session(self, session):
        ended = None
        if session.device_id:
            device = (session.uin, session.device_id)
            ended = self._by_device.get(device)
            if ended is not None:
                del self._sessions[ended]
            self._by_device[device] = session.session_key
        self._sessions[session.session_key] = session
        return ended

    async def get_session(self, session_key):
        return self._sessions.get(session_key)

    async def delete_session(self, session_key):
        session = self._sessions.pop(session_key, None)
        if session is None:
            return False
        device = (session.uin, session.device_id)
        if self._by_device.get(device) == session_key:
            del self._by_device[device]
        return True

    async def session_count(self):
        return len(self._sessions)

    async def append(self, uin, log, item, origin=None):
        items = self._logs.setdefault((uin, log), [])
        items.append(item)
        await self.publish(PushEvent(uin, SELECTOR_BIT[log], origin))
        return len(items)

    async def read_log(self, uin, log, after, limit):
        items = self._logs.get((uin, log), ())
        return list(items[after:after + limit])

    async def log_lengths(self, uin):
        return {k: len(self._logs.get((uin, k), ())) for k in LOG_KEYS}

    async def add_friends(self, a, b):
        fa = self._friends.setdefault(a, set())
        if b in fa:
            return False
        fa.add(b)
        self._friends.setdefault(b, set()).add(a)
        return True

    async def are_friends(self, a, b):
        return b in self._friends.get(a, ())

    async def add_pending(self, to_uin, from_uin):
        self._pending.add((to_uin, from_uin))

    async def take_pending(self, to_uin, from_uin):
        try:
            self._pending.remove((to_uin, from_uin))
            return True
        except KeyError:
            return False

    async def next_msg_id(self):
        return next(self._msg_ids)

    async def deliver(self, sender, receiver, item, origin=None, *, claim=None, counter=None):
        if claim is not None:
            key = (sender, claim[0])
            old = self._sends.get(key)
            if old is not None:
                return old
            self._sends[key] = claim[1]
        await self._deliver(sender, receiver, item, origin, counter)
        return None

    async def _deliver(self, sender, receiver, item, origin, counter) -> None:
        """Nothing here awaits anything that yields: one step on the event loop."""
        for uin in ((receiver,) if receiver == sender else (receiver, sender)):
            await self.append(uin, LOG_MESSAGES, item, origin)
        if counter:
            await self.count({counter: 1})

    async def get_upload(self, uploader, client_media_id):
        up = self._uploads.get((uploader, client_media_id))
        return None if up is None else up.record()

    async def start_upload(self, record, *, user_quota=None, lab_quota=None):
        key = (record.uploader, record.client_media_id)
        up = self._uploads.get(key)
        if up is None:
            size, held = record.total_len, self._media_bytes.get(record.uploader, 0)
            if user_quota is not None and held + size > user_quota:
                raise QuotaExceeded("user", held, user_quota, size)
            if lab_quota is not None and self._lab_media_bytes + size > lab_quota:
                raise QuotaExceeded("lab", self._lab_media_bytes, lab_quota, size)
            up = self._uploads[key] = _Upload(dataclasses.replace(record, new_msg_id=0,
                                                                  received=0))
            self._in_progress.setdefault(record.uploader, {})[record.client_media_id] = None
            self._media_bytes[record.uploader] = held + size
            self._lab_media_bytes += size
        return up.record()

    async def append_upload(self, uploader, client_media_id, start_pos, data):
        up = self._uploads[(uploader, client_media_id)]
        have = up.meta.total_len if up.meta.new_msg_id else len(up.data)
        if start_pos != have or up.meta.new_msg_id:
            return -1 - have
        up.data += data
        return len(up.data)

    async def upload_data(self, uploader, client_media_id):
        up = self._uploads.get((uploader, client_media_id))
        return None if up is None or up.meta.new_msg_id else bytes(up.data)

    async def complete_upload(self, uploader, client_media_id, msg_id, receiver, sha256,
                              cdn_key, item, origin=None, *, counter=None):
        up = self._uploads[(uploader, client_media_id)]
        if up.meta.new_msg_id:
            return up.meta.new_msg_id, False
        if len(up.data) != up.meta.total_len:
            raise ValueError(f"upload {client_media_id!r} holds {len(up.data)} of "
                             f"{up.meta.total_len} bytes")
        up.meta = dataclasses.replace(up.meta, new_msg_id=msg_id)
        data, up.data = bytes(up.data), bytearray()
        self._in_progress.get(uploader, {}).pop(client_media_id, None)
        await self.put_media(MediaRecord(msg_id, uploader, receiver, up.meta.msg_type, data,
                                         sha256, cdn_key))
        await self._deliver(uploader, receiver, item, origin, counter)
        return msg_id, True

    async def uploads_in_progress(self, uploader):
        return list(self._in_progress.get(uploader, ()))

    async def drop_upload(self, uploader, client_media_id):
        up = self._uploads.get((uploader, client_media_id))
        if up is not None and not up.meta.new_msg_id:
            del self._uploads[(uploader, client_media_id)]
            self._media_bytes[uploader] -= up.meta.total_len
            self._lab_media_bytes -= up.meta.total_len
        self._in_progress.get(uploader, {}).pop(client_media_id, None)

    async def media_bytes(self, uploader):
        return self._media_bytes.get(uploader, 0), self._lab_media_bytes

    async def put_media(self, media):
        self._media[media.msg_id] = media
        if media.cdn_key:
            self._media_by_key[media.cdn_key] = media.msg_id

    async def get_media(self, msg_id):
        return self._media.get(msg_id)

    async def media_part(self, msg_id, start_pos, max_len):
        m = self._media.get(msg_id)
        if m is None:
            return None
        return MediaPart(m.msg_id, m.sender, m.receiver, m.msg_type, len(m.data), start_pos,
                         m.data[start_pos:start_pos + max(0, max_len)])

    async def media_by_cdn_key(self, key):
        mid = self._media_by_key.get(key)
        return None if mid is None else self._media[mid]

    async def note_login_failure(self, key, now, window_s):
        book = self._login_failures
        count, last = book.pop(key, (0, 0.0))
        count = count + 1 if count and now - last < window_s else 1
        book[key] = (count, now)
        # the oldest entries first: forget those past their window (memory stays bounded
        # by the failures one window holds, however many addresses an attacker uses)
        while book:
            first = next(iter(book))
            if now - book[first][1] < window_s:
                break
            del book[first]
        return count

    async def login_failures(self, key, now, window_s):
        count, last = self._login_failures.get(key, (0, 0.0))
        return (count, last) if count and now - last < window_s else (0, 0.0)

    async def clear_login_failures(self, key):
        self._login_failures.pop(key, None)

    async def set_location(self, uin, lon, lat):
        self._locations[uin] = (lon, lat)

    async def clear_location(self, uin):
        self._locations.pop(uin, None)

    async def candidates_near(self, lon, lat, radius_m):
        return [(uin, x, y) for uin, (x, y) in self._locations.items()]

    async def count(self, counts):
        mine = self._counters
        for name, n in counts.items():
            mine[name] = mine.get(name, 0) + n

    async def counters(self):
        return dict(self._counters)

    async def claim_users(self, owner, count):
        if count < 1:
            raise ValueError(f"claim at least one user, not {count}")
        free = sorted(n for n in self._by_name if n not in self._claims)[:count]
        if len(free) < count:
            raise ValueError(f"only {len(free)} unclaimed users left, {count} asked for")
        for name in free:
            self._claims[name] = owner
        return free

    async def claims(self):
        out: dict[str, list[str]] = {}
        for name, owner in sorted(self._claims.items()):
            out.setdefault(owner, []).append(name)
        return out

    async def put_result(self, owner, result):
        self._results[owner] = result

    async def results(self):
        return dict(self._results)

    async def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)
