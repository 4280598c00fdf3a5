"""Replay: a capture becomes sessions (`load_sessions`), whose requests a client replay
sends again to a lab, comparing every reply with the recorded one (docs/replay.md)."""

from .model import Client, Connection, Exchange, ExchangeKind, Message, Sessions
from .sessions import load_sessions

__all__ = ["Client", "Connection", "Exchange", "ExchangeKind", "Message", "Sessions",
           "load_sessions"]
