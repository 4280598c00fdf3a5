"""The command table (docs/protocol.md sections 2 and 3) against testbed.wire.commands.

The expected table is parsed from the contract itself at test time, so a change to either
side shows up here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from testbed.wire import mm_pb2 as pb
from testbed.wire.commands import (BY_CGI, BY_CMD, BY_NAME, BY_PATH, CGI_PREFIX, CMD_ITEM_TYPES,
                                   COMMANDS, IDENTIFY_CMD, NOOP_CMD, NOTIFY_CMD,
                                   command_for_frame, decode_request, decode_response,
                                   error_body, notify_body, parse_notify)
from testbed.wire.errors import RemoteProtocolError, Ret
from testbed.wire.frames import REPLY_OFFSET

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _section(text: str, number: int) -> str:
    m = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", text, re.M | re.S)
    assert m, f"section {number} not found in {PROTOCOL_MD}"
    return m.group(0)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def protocol_text() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def long_table(protocol_text) -> dict[int, dict]:
    """Section 2: cmd -> {reply, name, request, response, cgi}."""
    rows = {}
    for line in _section(protocol_text, 2).splitlines():
        if not re.match(r"^\|\s*\d+\s*\|", line):
            continue
        cmd, reply, name, body, notes = _cells(line)
        req = resp = None
        m = re.fullmatch(r"(\w+) / (\w+)", body)
        if m and m.group(1) != "empty":
            req, resp = m.groups()
        same = re.search(r"same as CGI `(\w+)`", notes)
        rows[int(cmd)] = {
            "reply": None if reply in ("—", "-", "") else int(reply),
            "name": name.split()[0],
            "request": req,
            "response": resp,
            "body": body,
            "cgi": same.group(1) if same else None,
        }
    assert len(rows) >= 12, "section 2 command table not parsed"
    return rows


@pytest.fixture(scope="module")
def cgi_table(protocol_text) -> dict[str, dict]:
    """Section 3: cgi -> {request, response, cmd, tls_only}."""
    rows = {}
    for line in _section(protocol_text, 3).splitlines():
        if not line.startswith("| `"):
            continue
        cgis, types, long_link = _cells(line)
        m = re.match(r"(\w+) / (\w+)", types)
        assert m, line
        cmd = re.fullmatch(r"cmd (\d+)", long_link)
        for cgi in re.findall(r"`(\w+)`", cgis):
            rows[cgi] = {
                "request": m.group(1),
                "response": m.group(2),
                "cmd": int(cmd.group(1)) if cmd else None,
                "tls_only": "TLS" in long_link,
            }
    assert len(rows) >= 12, "section 3 CGI table not parsed"
    return rows


def _name(t):
    return None if t is None else t.DESCRIPTOR.name


# --------------------------------------------------------------------- section 2

def test_long_link_command_ids_match_section_2(long_table):
    assert sorted(BY_CMD) == sorted(long_table)


def test_long_link_names_and_reply_ids_match_section_2(long_table):
    for cmd, row in long_table.items():
        c = BY_CMD[cmd]
        assert c.cmd == cmd
        assert c.name == row["name"], cmd
        assert c.reply_cmd == row["reply"], cmd
        if row["reply"] is not None:
            assert row["reply"] == cmd + REPLY_OFFSET
        assert c.push_only == (row["reply"] is None), cmd


def test_long_link_body_types_match_section_2(long_table):
    for cmd, row in long_table.items():
        c = BY_CMD[cmd]
        assert _name(c.request) == row["request"], cmd
        assert _name(c.response) == row["response"], cmd


def test_long_link_cgi_twins_match_section_2(long_table):
    for cmd, row in long_table.items():
        assert BY_CMD[cmd].cgi == row["cgi"], cmd


def test_special_command_ids(long_table):
    assert NOOP_CMD == 6 and long_table[6]["name"] == "NOOP"
    assert IDENTIFY_CMD == 205 and long_table[205]["name"] == "IDENTIFY"
    assert NOTIFY_CMD == 24 and long_table[24]["name"] == "NOTIFY"
    assert "selector" in long_table[24]["body"]
    assert long_table[6]["body"] == "empty / empty"
    assert BY_CMD[NOTIFY_CMD].push_only
    assert [c.name for c in COMMANDS if c.push_only] == ["NOTIFY"]


# --------------------------------------------------------------------- section 3

def test_cgi_names_match_section_3(cgi_table):
    assert sorted(BY_CGI) == sorted(cgi_table)


def test_cgi_types_match_section_3(cgi_table):
    for cgi, row in cgi_table.items():
        c = BY_CGI[cgi]
        assert c.cgi == cgi
        assert _name(c.request) == row["request"], cgi
        assert _name(c.response) == row["response"], cgi


def test_cgi_long_link_twins_match_section_3(cgi_table):
    for cgi, row in cgi_table.items():
        assert BY_CGI[cgi].cmd == row["cmd"], cgi


def test_tls_only_matches_section_3(cgi_table):
    for cgi, row in cgi_table.items():
        assert BY_CGI[cgi].tls_only == row["tls_only"], cgi
    assert cgi_table["manualauth"]["tls_only"]
    assert [c.cgi for c in COMMANDS if c.tls_only] == ["manualauth"]


def test_sections_2_and_3_agree(long_table, cgi_table):
    for cgi, row in cgi_table.items():
        if row["cmd"] is not None:
            lrow = long_table[row["cmd"]]
            assert lrow["cgi"] == cgi
            assert (lrow["request"], lrow["response"]) == (row["request"], row["response"])


def test_paths():
    assert CGI_PREFIX == "/cgi-bin/micromsg-bin/"
    assert set(BY_PATH) == {CGI_PREFIX + cgi for cgi in BY_CGI}
    for path, c in BY_PATH.items():
        assert c.path == path
        assert BY_CGI[path[len(CGI_PREFIX):]] is c
    assert BY_CGI["manualauth"].path == "/cgi-bin/micromsg-bin/manualauth"


# --------------------------------------------------------------------- the table itself

def test_every_row_is_reachable_and_unique():
    assert len(BY_NAME) == len(COMMANDS)
    for c in COMMANDS:
        assert c.cmd is not None or c.cgi is not None, c.name
        assert BY_NAME[c.name] is c
        if c.cmd is not None:
            assert BY_CMD[c.cmd] is c
        if c.cgi is not None:
            assert BY_CGI[c.cgi] is c
    assert len([c for c in COMMANDS if c.cmd is not None]) == len(BY_CMD)
    assert len([c for c in COMMANDS if c.cgi is not None]) == len(BY_CGI)


def test_requests_have_service_methods():
    for c in COMMANDS:
        if not c.push_only:
            assert c.method and c.method.isidentifier(), c.name
        if c.cgi is None and c.cmd is None:
            pytest.fail(f"{c.name} is reachable through no door")


def test_short_link_only_rows_have_no_reply_cmd():
    for c in COMMANDS:
        if c.cmd is None:
            assert c.reply_cmd is None
        if c.cgi is None:
            assert c.path is None


def test_command_for_frame():
    assert command_for_frame(6) is BY_CMD[6]
    assert command_for_frame(1_000_000_006) is BY_CMD[6]
    assert command_for_frame(237) is BY_CMD[237]
    assert command_for_frame(1_000_000_237) is BY_CMD[237]
    assert command_for_frame(24) is BY_CMD[24]
    assert command_for_frame(7) is None
    assert command_for_frame(1_000_000_007) is None
    assert command_for_frame(0) is None


def test_media_and_item_type_tables_match_section_4():
    # msg_type 3 image, 34 voice, 43 video; uploads: 9 image, 19 voice, 39 video. The row
    # says what an upload creates, so the service never looks at which cmd carried it
    assert {c.cmd: (c.name, c.msg_type) for c in COMMANDS if c.msg_type is not None} == {
        9: ("UPLOADMSGIMG", 3), 19: ("UPLOADVOICE", 34), 39: ("UPLOADVIDEO", 43)}
    assert all(c.method == "upload_media" for c in COMMANDS if c.msg_type is not None)
    # behaviour logs: the kind their items are counted under is in the row, not the CGI
    assert {c.name: c.report_kind for c in COMMANDS if c.report_kind is not None} == {
        "STATREPORT": "statreport", "KVREPORT": "kvreport"}
    assert all(c.method == "report" for c in COMMANDS if c.report_kind is not None)
    # cmd_id 1 = ModUserInfo, 2 = ModContact, 4 = DelContact, 5 = AddMsg
    assert {k: v.DESCRIPTOR.name for k, v in CMD_ITEM_TYPES.items()} == {
        1: "ModUserInfo", 2: "ModContact", 4: "DelContact", 5: "AddMsg"}


# --------------------------------------------------------------------- message shapes

RESPONSE_TYPES = sorted({c.response for c in COMMANDS if c.response is not None},
                        key=lambda t: t.DESCRIPTOR.name)
REQUEST_TYPES = sorted({c.request for c in COMMANDS if c.request is not None},
                       key=lambda t: t.DESCRIPTOR.name)
WITH_RESPONSE = [c for c in COMMANDS if c.response is not None]
WITH_REQUEST = [c for c in COMMANDS if c.request is not None]


def test_every_command_but_noop_and_notify_has_types():
    for c in COMMANDS:
        if c.name in ("NOOP", "NOTIFY"):
            assert c.request is None and c.response is None
        else:
            assert c.request is not None and c.response is not None, c.name


@pytest.mark.parametrize("rtype", RESPONSE_TYPES + [pb.ErrorResponse],
                         ids=lambda t: t.DESCRIPTOR.name)
def test_every_response_has_base_response_at_field_1(rtype):
    f = rtype.DESCRIPTOR.fields_by_number[1]
    assert f.name == "base"
    assert f.type == FieldDescriptor.TYPE_MESSAGE
    assert f.message_type is pb.BaseResponse.DESCRIPTOR
    assert not f.is_repeated


@pytest.mark.parametrize("rtype", REQUEST_TYPES, ids=lambda t: t.DESCRIPTOR.name)
def test_every_request_has_base_request_at_field_1(rtype):
    f = rtype.DESCRIPTOR.fields_by_number[1]
    assert f.name == "base"
    assert f.message_type is pb.BaseRequest.DESCRIPTOR
    assert not f.is_repeated


def test_type_names_follow_the_request_response_pattern():
    for c in COMMANDS:
        if c.request is not None:
            assert c.request.DESCRIPTOR.name.endswith("Request")
            assert c.response.DESCRIPTOR.name.endswith("Response")
            assert (c.request.DESCRIPTOR.name[:-len("Request")]
                    == c.response.DESCRIPTOR.name[:-len("Response")])


# --------------------------------------------------------------------- error_body

@pytest.mark.parametrize("command", WITH_RESPONSE, ids=lambda c: c.name)
@pytest.mark.parametrize("ret", list(Ret))
def test_error_body_decodes_as_every_response(command, ret):
    body = error_body(ret, f"because {ret.name}")
    msg = decode_response(command, body)
    assert isinstance(msg, command.response)
    assert msg.HasField("base")
    assert msg.base.ret == ret
    assert msg.base.errmsg == f"because {ret.name}"
    # nothing else is set
    assert [f.name for f, _ in msg.ListFields()] == ["base"]


def test_error_body_wire_bytes():
    # {1: BaseResponse{1: -13}}: int32 -13 is a 10-byte varint
    assert error_body(-13) == bytes.fromhex("0a0b08f3ffffffffffffffff01")
    assert error_body(-1) == bytes.fromhex("0a0b08ffffffffffffffffff01")
    assert error_body(-2, "x") == bytes.fromhex("0a0e08feffffffffffffffff01120178")
    # field 1 is present even when ret is 0 and there is no message
    assert error_body(0) == b"\x0a\x00"


def test_ret_codes_match_section_4():
    assert {r.name: int(r) for r in Ret} == {
        "OK": 0, "SERVER_FAULT": -1, "BAD_ARGUMENT": -2, "WRONG_PASSWORD": -3,
        "NOT_FOUND": -4, "NOT_ALLOWED": -5, "SESSION_INVALID": -13,
        "MEDIA_OUT_OF_ORDER": -100,
    }


# --------------------------------------------------------------------- NOTIFY

@pytest.mark.parametrize("selector", [0, 1, 2, 4, 7, 0x12345678, 0xFFFFFFFF])
def test_notify_round_trip(selector):
    body = notify_body(selector)
    assert len(body) == 4
    assert body == selector.to_bytes(4, "big")
    assert parse_notify(body) == selector


def test_notify_is_big_endian():
    assert notify_body(1) == b"\x00\x00\x00\x01"
    assert notify_body(7) == b"\x00\x00\x00\x07"
    assert parse_notify(b"\x00\x00\x00\x02") == 2
    assert parse_notify(b"\x01\x00\x00\x00") == 1 << 24


@pytest.mark.parametrize("body", [b"", b"\x01", b"\x00\x00\x01", b"\x00\x00\x00\x00\x01",
                                  b"\x00" * 8])
def test_parse_notify_rejects_wrong_lengths(body):
    with pytest.raises(RemoteProtocolError):
        parse_notify(body)


# --------------------------------------------------------------------- decode_request

GARBAGE = [
    b"\xff\xff\xff",
    b"\x0a\x05ab",                      # field 1 claims 5 bytes, 2 are there
    b"\x0a",                            # tag without length
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint over 10 bytes
    b"\x00",                            # field number 0
    b"\x0f",                            # wire type 7
]


@pytest.mark.parametrize("command", WITH_REQUEST, ids=lambda c: c.name)
@pytest.mark.parametrize("body", GARBAGE, ids=lambda b: b.hex())
def test_decode_request_rejects_garbage(command, body):
    with pytest.raises(RemoteProtocolError):
        decode_request(command, body)


@pytest.mark.parametrize("command", WITH_RESPONSE, ids=lambda c: c.name)
def test_decode_response_rejects_garbage(command):
    with pytest.raises(RemoteProtocolError):
        decode_response(command, b"\xff\xff\xff")


def test_decode_request_rejects_invalid_utf8_in_a_string():
    body = bytes([0x12, 2, 0xFF, 0xFE])  # ManualAuthRequest.username = invalid UTF-8
    with pytest.raises(RemoteProtocolError):
        decode_request(BY_CGI["manualauth"], body)


@pytest.mark.parametrize("command", WITH_REQUEST, ids=lambda c: c.name)
def test_decode_request_accepts_an_empty_body(command):
    msg = decode_request(command, b"")
    assert isinstance(msg, command.request)
    assert msg.ListFields() == []


def test_decode_request_round_trip():
    req = pb.NewSendMsgRequest(
        base=pb.BaseRequest(session_key=b"k" * 16, uin=42, device_id=b"d" * 16),
        msgs=[pb.MicroMsgRequest(to_user="user0002", content="你好", msg_type=1,
                                 create_time=1_370_000_000, client_msg_id="c1")])
    got = decode_request(BY_CMD[237], req.SerializeToString())
    assert isinstance(got, pb.NewSendMsgRequest)
    assert got == req
    assert got.msgs[0].content == "你好"


def test_decode_response_round_trip():
    resp = pb.NewSyncResponse(
        base=pb.BaseResponse(ret=0), continue_flag=1,
        cmd_list=[pb.CmdItem(cmd_id=5, cmd_buf=pb.AddMsg(content="x").SerializeToString())],
        key_buf=pb.SyncKey(keys=[pb.KeyVal(key=k, val=k * 10) for k in (1, 2, 3)]))
    got = decode_response(BY_CGI["newsync"], resp.SerializeToString())
    assert got == resp


def test_decode_error_mentions_the_command():
    with pytest.raises(RemoteProtocolError, match="NEWSYNC"):
        decode_request(BY_CMD[121], b"\xff\xff\xff")
