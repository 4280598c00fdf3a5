"""The store interface behind `mocks.service.Service`.

Every method is a coroutine so that a networked store (Redis, for the container lab) can
implement the same interface as the embedded in-memory one; both must pass
`tests/unit/test_store.py`. Methods that must be atomic say so: the service relies on that,
not on locks of its own, so several worker processes can share one store.
"""

from __future__ import annotations

import abc
import itertools
import json
import os
import secrets
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

LOG_MESSAGES, LOG_CONTACTS, LOG_PROFILE = 1, 2, 3
LOG_KEYS = (LOG_MESSAGES, LOG_CONTACTS, LOG_PROFILE)
SELECTOR_BIT = {LOG_MESSAGES: 0x1, LOG_CONTACTS: 0x2, LOG_PROFILE: 0x4}
ALL_SELECTOR = 0x7


@dataclass
class UserRecord:
    uin: int
    username: str
    password: str
    nickname: str
    sex: int
    city: str
    signature: str
    avatar_key: str


@dataclass(frozen=True)
class SessionRecord:
    session_key: bytes
    uin: int
    username: str
    device_id: bytes = b""


@dataclass(frozen=True)
class UploadRecord:
    """An upload in progress or complete, keyed by (uploader uin, client_media_id).

    Its bytes stay in the store (`append_upload`, `finish_upload`): a record is small, so
    every chunk can look it up wherever it lands."""

    uploader: int
    client_media_id: str
    to_user: str
    msg_type: int
    total_len: int
    new_msg_id: int = 0  # set when complete
    received: int = 0    # bytes stored so far (total_len once complete)


@dataclass(frozen=True)
class MediaRecord:
    msg_id: int
    sender: int
    receiver: int
    msg_type: int
    data: bytes
    sha256: bytes
    cdn_key: str  # images only: served by mmsns.qpic.cn


@dataclass(frozen=True)
class MediaPart:
    """A range of a stored media's bytes, with what a download needs to check and answer."""

    msg_id: int
    sender: int
    receiver: int
    msg_type: int
    total_len: int
    start_pos: int
    data: bytes


@dataclass(frozen=True)
class PushEvent:
    """A user's logs grew (`selector` bits); `origin` is the id of the long link whose
    request caused it, if any (that link is not sent the NOTIFY)."""

    uin: int
    selector: int
    origin: Optional[str] = None


@dataclass(frozen=True)
class SessionEnded:
    """A session logged out, or ended by its device's next login: its long links are
    closed."""

    session_key: bytes
    uin: int


class QuotaExceeded(Exception):
    """Starting an upload would take the media bytes held past a quota: the uploader's
    (`scope` "user") or the lab's ("lab"); nothing was started."""

    def __init__(self, scope: str, held: int, limit: int, wanted: int) -> None:
        super().__init__(f"{scope} media quota: {held:,} of {limit:,} bytes held, "
                         f"{wanted:,} more wanted")
        self.scope, self.held, self.limit, self.wanted = scope, held, limit, wanted


@dataclass(frozen=True)
class EventsMissed:
    """This store's subscription broke and has been renewed: events published meanwhile
    were lost (Redis pub/sub keeps nothing for a subscriber that is away). A listener acts
    as if any event could have happened: the long link pushes to every link it holds.
    Never published; a store tells its own listeners."""


Event = Union[PushEvent, SessionEnded, EventsMissed]
Listener = Callable[[Event], None]


class _Process:
    """This process's token for link ids; a forked child draws its own."""

    token = secrets.token_hex(6)

    @classmethod
    def renew(cls) -> None:
        cls.token = secrets.token_hex(6)


os.register_at_fork(after_in_child=_Process.renew)
_link_counter = itertools.count(1)


def new_link_id() -> str:
    """An id for a long link, unique across processes and hosts: a random token of this
    process, then a counter. Events carry these ids (never the link objects), so the process
    that holds a link recognises it in an event published by any other."""
    return f"{_Process.token}-{next(_link_counter)}"


def encode_event(event: Event) -> bytes:
    """An event as JSON, for stores that carry events between processes."""
    if isinstance(event, PushEvent):
        doc = {"push": event.uin, "selector": event.selector, "origin": event.origin}
    elif isinstance(event, SessionEnded):
        doc = {"ended": event.uin, "session_key": event.session_key.hex()}
    else:
        raise TypeError(f"not a store event: {event!r}")
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_event(data: bytes) -> Event:
    """The inverse of `encode_event`; `ValueError` if `data` is not an encoded event."""
    try:
        doc = json.loads(data)
        if "push" in doc:
            origin = doc["origin"]
            if origin is not None and not isinstance(origin, str):
                raise ValueError("origin is not a link id")
            return PushEvent(int(doc["push"]), int(doc["selector"]), origin)
        return SessionEnded(bytes.fromhex(doc["session_key"]), int(doc["ended"]))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an encoded store event: {data[:80]!r}") from exc


class Store(abc.ABC):
    """State of one lab. Usernames are unique; uins are assigned by the store from 1."""

    # whether a call may wait (for I/O): a store whose coroutines never await says False,
    # and the long link then answers a request in the callback that read it, with no Task
    waits = True

    def __init__(self) -> None:
        self._listeners: list[Listener] = []   # of this store object, see `subscribe`

    # --- accounts
    @abc.abstractmethod
    async def create_user(self, username: str, password: str, nickname: str, sex: int,
                          city: str, signature: str, avatar_key: str) -> UserRecord:
        """Create a user (atomic); `ValueError` if the name is taken."""

    @abc.abstractmethod
    async def user_by_name(self, username: str) -> Optional[UserRecord]: ...

    @abc.abstractmethod
    async def user_by_uin(self, uin: int) -> Optional[UserRecord]: ...

    @abc.abstractmethod
    async def user_by_avatar_key(self, key: str) -> Optional[UserRecord]: ...

    @abc.abstractmethod
    async def user_count(self) -> int: ...

    # --- sessions
    @abc.abstractmethod
    async def put_session(self, session: SessionRecord) -> Optional[bytes]:
        """Store a new session, one per device: the session the same user's same device
        (`device_id`) held ends with it, in the same atomic step (a login sent again after
        its answer was lost must not leave the first one behind). Returns the ended
        session's key, or None; a session without a device id ends none."""

    @abc.abstractmethod
    async def get_session(self, session_key: bytes) -> Optional[SessionRecord]: ...

    @abc.abstractmethod
    async def delete_session(self, session_key: bytes) -> bool: ...

    @abc.abstractmethod
    async def session_count(self) -> int:
        """How many sessions the lab holds (every user's, every device's)."""

    # --- sync logs
    @abc.abstractmethod
    async def append(self, uin: int, log: int, item: bytes, origin: Optional[str] = None) -> int:
        """Append one serialized CmdItem and publish `PushEvent(uin, SELECTOR_BIT[log],
        origin)` (atomic, one step: no listener hears of an item it cannot read yet);
        return the log's new length."""

    @abc.abstractmethod
    async def read_log(self, uin: int, log: int, after: int, limit: int) -> list[bytes]:
        """Items `after`..`after+limit-1` (0-based positions), oldest first."""

    @abc.abstractmethod
    async def log_lengths(self, uin: int) -> dict[int, int]: ...

    # --- friends
    @abc.abstractmethod
    async def add_friends(self, a: int, b: int) -> bool:
        """Make a and b friends (atomic); False if they already were."""

    @abc.abstractmethod
    async def are_friends(self, a: int, b: int) -> bool: ...

    @abc.abstractmethod
    async def add_pending(self, to_uin: int, from_uin: int) -> None: ...

    @abc.abstractmethod
    async def take_pending(self, to_uin: int, from_uin: int) -> bool:
        """Remove a pending request from -> to (atomic); False if there was none."""

    # --- messages
    @abc.abstractmethod
    async def next_msg_id(self) -> int: ...

    @abc.abstractmethod
    async def deliver(self, sender: int, receiver: int, item: bytes,
                      origin: Optional[str] = None, *,
                      claim: Optional[tuple[str, tuple[int, int]]] = None,
                      counter: Optional[str] = None) -> Optional[tuple[int, int]]:
        """Store a message, in one atomic step: append `item` to the receiver's message log
        and (if another user) to the sender's, publishing a `PushEvent` for each as `append`
        does, and add 1 to `counter` if given.

        With `claim=(client_msg_id, (new_msg_id, create_time))` only if the sender has sent
        no message with that id yet, the claim being stored in the same step: a message is
        stored exactly once whichever worker takes a retry, and a worker that dies at any
        point of a send leaves either nothing (the retry stores it) or all of it. Returns
        None if this call stored the message, else the value the earlier send claimed.
        """

    # --- media
    @abc.abstractmethod
    async def get_upload(self, uploader: int, client_media_id: str) -> Optional[UploadRecord]: ...

    @abc.abstractmethod
    async def start_upload(self, record: UploadRecord, *, user_quota: Optional[int] = None,
                           lab_quota: Optional[int] = None) -> UploadRecord:
        """Create an unfinished upload unless one has this key (atomic); return the stored
        record (so two workers starting the same upload agree on one). The new upload is the
        user's newest in `uploads_in_progress`.

        A new upload holds its `total_len` of the uploader's and of the lab's media bytes
        (`media_bytes`) from its start, finished or not, until `drop_upload` forgets it
        unfinished; in the same step, `QuotaExceeded` (and nothing created) if that would
        take the uploader past `user_quota` or the lab past `lab_quota` bytes (None: no
        quota). So every process of a lab enforces one sum."""

    @abc.abstractmethod
    async def append_upload(self, uploader: int, client_media_id: str, start_pos: int,
                            data: bytes) -> int:
        """Append a chunk if `start_pos` is where the upload stands (atomic).

        Returns the new length, or -1 - (current length) if `start_pos` is wrong (a finished
        upload stands at its total_len). `KeyError` if there is no such upload.
        """

    @abc.abstractmethod
    async def upload_data(self, uploader: int, client_media_id: str) -> Optional[bytes]:
        """The bytes an unfinished upload holds so far; None if unknown or finished."""

    @abc.abstractmethod
    async def complete_upload(self, uploader: int, client_media_id: str, msg_id: int,
                              receiver: int, sha256: bytes, cdn_key: str, item: bytes,
                              origin: Optional[str] = None, *,
                              counter: Optional[str] = None) -> tuple[int, bool]:
        """Finish an upload that holds all its bytes, in one atomic step: mark it complete
        as `msg_id`, keep its bytes as media `msg_id` (sender the uploader, its msg_type,
        `sha256`, `cdn_key`: "" for none) without copying them, forget it from
        `uploads_in_progress`, and deliver `item` as `deliver` does.

        Returns (the msg id it is finished as, whether this call finished it): of two
        workers finishing one upload exactly one does, and a worker that dies before this
        step leaves the upload whole for the retry. `KeyError` if there is no such upload,
        `ValueError` if it lacks bytes.
        """

    @abc.abstractmethod
    async def uploads_in_progress(self, uploader: int) -> list[str]:
        """client_media_ids of the user's unfinished uploads, oldest first."""

    @abc.abstractmethod
    async def drop_upload(self, uploader: int, client_media_id: str) -> None:
        """Forget an unfinished upload and its bytes (a finished one is kept), and the
        media bytes it held (atomic)."""

    @abc.abstractmethod
    async def media_bytes(self, uploader: int) -> tuple[int, int]:
        """(bytes the uploader's uploads hold, bytes every upload of the lab holds)."""

    @abc.abstractmethod
    async def put_media(self, media: MediaRecord) -> None: ...

    @abc.abstractmethod
    async def get_media(self, msg_id: int) -> Optional[MediaRecord]: ...

    @abc.abstractmethod
    async def media_part(self, msg_id: int, start_pos: int, max_len: int) -> Optional[MediaPart]:
        """Bytes `start_pos`..`start_pos+max_len-1` of a media (fewer at its end), without
        reading the rest of it."""

    @abc.abstractmethod
    async def media_by_cdn_key(self, key: str) -> Optional[MediaRecord]: ...

    # --- wrong logins (the login throttle: docs/protocol.md section 11)
    @abc.abstractmethod
    async def note_login_failure(self, key: str, now: float, window_s: float) -> int:
        """Count a wrong login for `key` (an account, an address) at protocol time `now`
        (atomic): failures less than `window_s` after the one before add up, a longer gap
        starts the count again at 1. Returns the count."""

    @abc.abstractmethod
    async def login_failures(self, key: str, now: float,
                             window_s: float) -> tuple[int, float]:
        """(failures in a row, protocol time of the last) of `key`; (0, 0.0) if the last
        was `window_s` or more before `now`, or there was none. A store may forget such
        stale entries."""

    @abc.abstractmethod
    async def clear_login_failures(self, key: str) -> None: ...

    # --- people nearby
    @abc.abstractmethod
    async def set_location(self, uin: int, lon: float, lat: float) -> None: ...

    @abc.abstractmethod
    async def clear_location(self, uin: int) -> None: ...

    @abc.abstractmethod
    async def candidates_near(self, lon: float, lat: float,
                              radius_m: float) -> list[tuple[int, float, float]]:
        """(uin, lon, lat) of every stored location that may lie within `radius_m`.

        A superset is fine (the service computes the exact distance); Redis answers it with
        GEOSEARCH, the memory store with a scan.
        """

    # --- counters (the lab's statistics, summed over every process: `mocks.stats`)
    @abc.abstractmethod
    async def count(self, counts: Mapping[str, int]) -> None:
        """Add each amount to its named counter (each addition atomic)."""

    @abc.abstractmethod
    async def counters(self) -> dict[str, int]:
        """Every counter that was ever added to."""

    # --- the phones of a shared lab (`testbed emulate --claim-users`, `testbed lab results`)
    @abc.abstractmethod
    async def claim_users(self, owner: str, count: int) -> list[str]:
        """Claim `count` users that nobody has claimed for `owner` (a phone), lowest names
        first, all or none, in one atomic step: of phones claiming at once no two get the
        same user. A user stays claimed for the life of the lab. Returns their names,
        sorted; `ValueError` saying how many are free if fewer than `count` are."""

    @abc.abstractmethod
    async def claims(self) -> dict[str, list[str]]:
        """Every owner that claimed users -> their names, sorted."""

    @abc.abstractmethod
    async def put_result(self, owner: str, result: str) -> None:
        """Keep a phone's result (JSON text) under its owner, replacing an earlier one."""

    @abc.abstractmethod
    async def results(self) -> dict[str, str]:
        """Every owner's result, as `put_result` kept it."""

    # --- events (NOTIFY pushes, logouts) to every door of every process
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every event published through any store of the lab
        (any process), in publish order per publisher; returns an unsubscribe. A networked
        store may call it after `publish` has returned, and calls it with `EventsMissed`
        when its subscription broke and some events may never come."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
        return unsubscribe

    @abc.abstractmethod
    async def publish(self, event: Event) -> None: ...

    @abc.abstractmethod
    async def clear(self) -> None:
        """Forget everything this store holds (a Redis store: its namespace only)."""

    async def close(self) -> None:
        """Release connections; the memory store has none."""
