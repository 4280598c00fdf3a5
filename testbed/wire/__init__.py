"""Sans-I/O wire core: frames, the command table, protobuf messages, the long-link
connection, DNS helpers, errors.

Nothing in this package performs I/O or imports asyncio, aiohttp or socket-level servers;
`tests/unit/test_import_rules.py` checks that (docs/architecture.md has the rules).
"""

from . import mm_pb2 as pb
from .commands import (BY_CGI, BY_CMD, BY_NAME, BY_PATH, CGI_PREFIX, COMMANDS, PUSH_SEQ,
                       Command, Door, command_for_frame, decode_request, decode_response,
                       error_body, is_push, notify_body, parse_notify)
from .connection import ClientConnection, ConnectionState, ServerConnection
from .errors import (FrameTooLarge, Hangup, LocalProtocolError, ProtocolError,
                     RemoteProtocolError, Ret, ServiceError)
from .frames import (DEFAULT_MAX_PACKET_LEN, HEADER_LEN, REPLY_OFFSET, Frame, FrameDecoder,
                     encode_frame, is_reply, reply_cmd, request_cmd)

__all__ = [
    "pb", "BY_CGI", "BY_CMD", "BY_NAME", "BY_PATH", "CGI_PREFIX", "COMMANDS", "PUSH_SEQ",
    "Command", "Door", "command_for_frame", "decode_request", "decode_response", "error_body",
    "is_push", "notify_body", "parse_notify", "ClientConnection", "ServerConnection",
    "ConnectionState", "FrameTooLarge", "Hangup", "LocalProtocolError", "ProtocolError",
    "RemoteProtocolError", "Ret", "ServiceError", "DEFAULT_MAX_PACKET_LEN", "HEADER_LEN", "REPLY_OFFSET", "Frame",
    "FrameDecoder", "encode_frame", "is_reply", "reply_cmd", "request_cmd",
]
