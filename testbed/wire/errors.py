"""Return codes and the protocol error family (PROTOCOL.md section 4).

`RemoteProtocolError` is raised for bad bytes received from the peer; the owner of the
connection closes that connection and nothing else. `LocalProtocolError` is raised when our
own code tries to send something the contract forbids (a bug on our side, never the peer's).
"""

from __future__ import annotations

import enum


class Ret(enum.IntEnum):
    """`BaseResponse.ret` and `MicroMsgResponse.ret` values."""

    OK = 0
    SERVER_FAULT = -1  # unknown command or server fault
    BAD_ARGUMENT = -2  # bad argument or undecodable body
    WRONG_PASSWORD = -3
    NOT_FOUND = -4  # no such user, message or media
    NOT_ALLOWED = -5
    SESSION_INVALID = -13
    MEDIA_OUT_OF_ORDER = -100


class ProtocolError(Exception):
    """Base of the wire errors."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the contract; close that connection."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something that violates the contract."""


class FrameTooLarge(RemoteProtocolError):
    """`packet_len` exceeds the configured maximum; raised before any body is buffered."""


class ServiceError(Exception):
    """A request failed as a whole: answered with `BaseResponse.ret = code`."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or Ret(code).name)
        self.code = int(code)
        self.message = message


class Hangup(Exception):
    """A request gets no answer at all: the door closes its connection (server replay's
    `--unmatched error`). Nothing is sent, so a client sees what a server that dropped it
    would show."""
