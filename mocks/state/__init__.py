"""State behind an interface: the in-memory store (the default) and the Redis store
(`mocks.state.redis`, for labs of several processes); `make_store(url)` opens either."""

from .base import (ALL_SELECTOR, LOG_CONTACTS, LOG_KEYS, LOG_MESSAGES, LOG_PROFILE, SELECTOR_BIT,
                   EventsMissed, MediaPart, MediaRecord, PushEvent, QuotaExceeded,
                   SessionEnded, SessionRecord, Store, UploadRecord, UserRecord, decode_event,
                   encode_event, new_link_id)
from .factory import make_store, redact_url
from .memory import MemoryStore

__all__ = ["ALL_SELECTOR", "LOG_CONTACTS", "LOG_KEYS", "LOG_MESSAGES", "LOG_PROFILE",
           "SELECTOR_BIT", "EventsMissed", "MediaPart", "MediaRecord", "PushEvent",
           "QuotaExceeded", "SessionEnded", "SessionRecord", "Store", "UploadRecord",
           "UserRecord", "MemoryStore", "decode_event", "encode_event", "make_store",
           "new_link_id", "redact_url"]
