"""Sans-I/O wire core: frames, the command table, protobuf messages, the long-link
connection, DNS helpers, errors.

Nothing in this package performs I/O or imports asyncio, aiohttp or socket-level servers;
`tests/unit/test_import_rules.py` checks that (docs/architecture.md has the rules).

The names below are loaded from their modules when first asked for: `from testbed.wire
import FrameDecoder` does not load the protobuf messages or the connection state machine
(what reading a capture's frames does not need, and what a command's start-up would pay).
"""

import importlib

#: module -> the names this package gives from it (`pb`: the module itself)
_FROM = {
    "mm_pb2": ("pb",),
    "commands": ("BY_CGI", "BY_CMD", "BY_NAME", "BY_PATH", "CGI_PREFIX", "COMMANDS", "PUSH_SEQ",
                 "Command", "Door", "command_for_frame", "decode_request", "decode_response",
                 "error_body", "is_push", "notify_body", "parse_notify"),
    "connection": ("ClientConnection", "ConnectionState", "ServerConnection"),
    "errors": ("FrameTooLarge", "Hangup", "LocalProtocolError", "ProtocolError",
               "RemoteProtocolError", "Ret", "ServiceError"),
    "frames": ("DEFAULT_MAX_PACKET_LEN", "HEADER_LEN", "REPLY_OFFSET", "Frame", "FrameDecoder",
               "encode_frame", "is_reply", "reply_cmd", "request_cmd"),
}
_MODULE_OF = {name: module for module, names in _FROM.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = importlib.import_module(f"{__name__}.{module}")
    value = loaded if name == "pb" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
