"""State behind an interface: the in-memory store (default); a Redis store comes later."""

from .base import (ALL_SELECTOR, LOG_CONTACTS, LOG_KEYS, LOG_MESSAGES, LOG_PROFILE, SELECTOR_BIT,
                   MediaRecord, PushEvent, SessionEnded, SessionRecord, Store, UploadRecord,
                   UserRecord)
from .memory import MemoryStore

__all__ = ["ALL_SELECTOR", "LOG_CONTACTS", "LOG_KEYS", "LOG_MESSAGES", "LOG_PROFILE",
           "SELECTOR_BIT", "MediaRecord", "PushEvent", "SessionEnded", "SessionRecord", "Store",
           "UploadRecord", "UserRecord", "MemoryStore"]
