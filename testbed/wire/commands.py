"""The one command table (PROTOCOL.md sections 2 and 3).

Every door reads this table: the long-link dispatcher, the CGI router, the emulator, the
dissector and the replayer. Adding a command is one row here plus one service method.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from google.protobuf.message import DecodeError, Message

from .choices import Choice
from .errors import LocalProtocolError, RemoteProtocolError
from .frames import reply_cmd, request_cmd

CGI_PREFIX = "/cgi-bin/micromsg-bin/"
NOTIFY_CMD = 24
NOOP_CMD = 6
IDENTIFY_CMD = 205
MSG_TEXT, MSG_IMAGE, MSG_VOICE, MSG_VIDEO, MSG_FRIEND_REQUEST = 1, 3, 34, 43, 37
PUSH_SEQ = 0        # server pushes (NOTIFY) carry seq 0; replies carry their request's seq


class Door(Choice, what="door"):
    """The three ways into the one service (DESIGN.md "one service, two doors"): the long
    link's frames, the short link's CGI over HTTP, and the same CGI over TLS."""

    LONG = "long"
    SHORT = "short"
    TLS = "tls"


@dataclass(frozen=True)
class Command:
    """One row: a request that a door accepts and the service method that answers it."""

    name: str                      # upper-case long-link name, or the CGI name
    method: str                    # service method name
    request_type: Optional[str]    # the request's message in mm.proto (`request`)
    response_type: Optional[str]   # the response's
    cmd: Optional[int] = None      # long-link command id, None if short-link only
    cgi: Optional[str] = None      # CGI name, None if long-link only
    tls_only: bool = False         # short link: served only on the TLS port
    push_only: bool = False        # NOTIFY: a server push, never a request
    msg_type: Optional[int] = None     # uploads: the msg_type of the AddMsg it creates
    report_kind: Optional[str] = None  # behaviour logs: the kind its items are counted under

    def __reduce__(self):
        # a row of the table travels between processes (the sharded analysis) as itself,
        # by its name; any other Command as its fields
        if BY_NAME.get(self.name) is self:
            return _command_named, (self.name,)
        return Command, tuple(getattr(self, f.name) for f in fields(self))

    @property
    def request(self) -> Optional[type[Message]]:
        """The request's protobuf class (None: the request has no body)."""
        return None if self.request_type is None else getattr(_messages(), self.request_type)

    @property
    def response(self) -> Optional[type[Message]]:
        """The response's protobuf class (None: the reply has no body)."""
        return None if self.response_type is None else getattr(_messages(), self.response_type)

    @property
    def reply_cmd(self) -> Optional[int]:
        return None if self.cmd is None or self.push_only else reply_cmd(self.cmd)

    @property
    def path(self) -> Optional[str]:
        return None if self.cgi is None else CGI_PREFIX + self.cgi


COMMANDS: tuple[Command, ...] = (
    Command("NOOP", "noop", None, None, cmd=6),
    Command("IDENTIFY", "identify", "IdentifyRequest", "IdentifyResponse", cmd=205),
    Command("NEWSENDMSG", "newsendmsg", "NewSendMsgRequest", "NewSendMsgResponse",
            cmd=237, cgi="newsendmsg"),
    Command("NEWSYNC", "newsync", "NewSyncRequest", "NewSyncResponse", cmd=121, cgi="newsync"),
    Command("GETCONTACT", "getcontact", "GetContactRequest", "GetContactResponse",
            cmd=71, cgi="getcontact"),
    Command("UPLOADMSGIMG", "upload_media", "UploadMediaRequest", "UploadMediaResponse", cmd=9,
            msg_type=MSG_IMAGE),
    Command("UPLOADVOICE", "upload_media", "UploadMediaRequest", "UploadMediaResponse", cmd=19,
            msg_type=MSG_VOICE),
    Command("UPLOADVIDEO", "upload_media", "UploadMediaRequest", "UploadMediaResponse", cmd=39,
            msg_type=MSG_VIDEO),
    Command("GETMSGIMG", "download_media", "DownloadMediaRequest", "DownloadMediaResponse",
            cmd=10),
    Command("DOWNLOADVOICE", "download_media", "DownloadMediaRequest",
            "DownloadMediaResponse", cmd=20),
    Command("DOWNLOADVIDEO", "download_media", "DownloadMediaRequest",
            "DownloadMediaResponse", cmd=40),
    Command("NOTIFY", "", None, None, cmd=NOTIFY_CMD, push_only=True),
    Command("MANUALAUTH", "manualauth", "ManualAuthRequest", "ManualAuthResponse",
            cgi="manualauth", tls_only=True),
    Command("NEWINIT", "newinit", "NewSyncRequest", "NewSyncResponse", cgi="newinit"),
    Command("VERIFYUSER", "verifyuser", "VerifyUserRequest", "VerifyUserResponse",
            cgi="verifyuser"),
    Command("GETPROFILE", "getprofile", "GetProfileRequest", "GetProfileResponse",
            cgi="getprofile"),
    Command("BATCHGETHEADIMG", "batchgetheadimg", "BatchGetHeadImgRequest",
            "BatchGetHeadImgResponse", cgi="batchgetheadimg"),
    Command("LBSFIND", "lbsfind", "LbsFindRequest", "LbsFindResponse", cgi="lbsfind"),
    Command("LOGOUT", "logout", "LogoutRequest", "LogoutResponse", cgi="logout"),
    Command("STATREPORT", "report", "ReportRequest", "ReportResponse", cgi="statreport",
            report_kind="statreport"),
    Command("KVREPORT", "report", "ReportRequest", "ReportResponse", cgi="kvreport",
            report_kind="kvreport"),
)

BY_CMD: dict[int, Command] = {c.cmd: c for c in COMMANDS if c.cmd is not None}
BY_CGI: dict[str, Command] = {c.cgi: c for c in COMMANDS if c.cgi is not None}
BY_PATH: dict[str, Command] = {c.path: c for c in COMMANDS if c.path is not None}
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}

# NewSync CmdItem.cmd_id -> its body's message in mm.proto (`CMD_ITEM_TYPES`: the classes)
_CMD_ITEM_NAMES = {1: "ModUserInfo", 2: "ModContact", 4: "DelContact", 5: "AddMsg"}
ITEM_MOD_USER_INFO, ITEM_MOD_CONTACT, ITEM_DEL_CONTACT, ITEM_ADD_MSG = 1, 2, 4, 5


def _command_named(name: str) -> Command:
    return BY_NAME[name]


_MM_PB2 = None


def _messages():
    # mm_pb2 (and with it protobuf's descriptor pool) is loaded when a body is first
    # decoded or made, not with the table: reading a capture's frames and CGI paths (the
    # summary of `testbed analyze`) needs only the table. Kept once loaded: an import
    # statement per call cost a microsecond, and every request and reply decoded calls it
    global _MM_PB2
    if _MM_PB2 is None:
        from . import mm_pb2
        _MM_PB2 = mm_pb2
    return _MM_PB2


def __getattr__(name: str):
    if name == "CMD_ITEM_TYPES":      # NewSync CmdItem.cmd_id -> body type
        pb = _messages()
        types: dict[int, type[Message]] = {k: getattr(pb, v) for k, v in _CMD_ITEM_NAMES.items()}
        globals()[name] = types
        return types
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command_for_frame(cmd: int) -> Optional[Command]:
    """The table row for a long-link frame's cmd, request or reply."""
    return BY_CMD.get(request_cmd(cmd))


def is_push(cmd: int, seq: int) -> bool:
    """A server push: NOTIFY with seq 0 (PROTOCOL.md section 2)."""
    return cmd == NOTIFY_CMD and seq == PUSH_SEQ


def decode_request(command: Command, body: bytes) -> Optional[Message]:
    """Parse a request body; `RemoteProtocolError` if it is not the command's request."""
    kind = command.request
    if kind is None:  # NOOP: an empty body is the whole request
        if body:
            raise RemoteProtocolError(f"{command.name}: takes no body, got {len(body)} bytes")
        return None
    msg = kind()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:  # upb raises DecodeError
        raise RemoteProtocolError(f"{command.name}: body does not decode: {exc}") from exc
    return msg


def decode_response(command: Command, body: bytes) -> Optional[Message]:
    kind = command.response
    if kind is None:  # NOOP: the reply has no body to decode
        return None
    msg = kind()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise RemoteProtocolError(f"{command.name}: reply does not decode: {exc}") from exc
    return msg


def error_body(ret: int, errmsg: str = "") -> bytes:
    """`{1: BaseResponse{ret}}`: decodes as any response type."""
    pb = _messages()
    return pb.ErrorResponse(base=pb.BaseResponse(ret=ret, errmsg=errmsg)).SerializeToString()


def notify_body(selector: int) -> bytes:
    if not 0 <= selector < 1 << 32:
        raise LocalProtocolError(f"selector {selector} does not fit 32 bits")
    return selector.to_bytes(4, "big")


def parse_notify(body: bytes) -> int:
    if len(body) != 4:
        raise RemoteProtocolError(f"NOTIFY body of {len(body)} bytes, expected 4")
    return int.from_bytes(body, "big")
