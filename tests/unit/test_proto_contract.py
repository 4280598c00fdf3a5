"""Protobuf bodies (PROTOCOL.md section 4) against the generated testbed/wire/mm_pb2.

EXPECTED is transcribed by hand from section 4. Where the contract names a field without a
type (for example `MicroMsgRequest 1 to_user`), the type is that of the same field name where
section 4 does give it (AddMsg.to_user string, AddMsg.msg_type uint32, ...).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from testbed.wire import mm_pb2

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

R = True   # repeated
S = False  # singular

MOD_CONTACT_FIELDS = {
    1: ("username", "string", S), 2: ("nickname", "string", S), 3: ("sex", "uint32", S),
    4: ("signature", "string", S), 5: ("city", "string", S),
    6: ("avatar_small_url", "string", S), 7: ("avatar_big_url", "string", S),
}

# message -> {field number: (name, type, repeated)}; a message type is given by its name.
EXPECTED: dict[str, dict[int, tuple[str, str, bool]]] = {
    "BaseRequest": {
        1: ("session_key", "bytes", S), 2: ("uin", "uint32", S), 3: ("device_id", "bytes", S),
        4: ("client_version", "uint32", S), 5: ("device_type", "string", S),
        6: ("scene", "uint32", S),
    },
    "BaseResponse": {1: ("ret", "int32", S), 2: ("errmsg", "string", S)},

    "ManualAuthRequest": {
        1: ("base", "BaseRequest", S), 2: ("username", "string", S),
        3: ("password", "string", S),
    },
    "ManualAuthResponse": {
        1: ("base", "BaseResponse", S), 2: ("uin", "uint32", S),
        3: ("session_key", "bytes", S), 4: ("nickname", "string", S),
        5: ("long_hosts", "string", R), 6: ("short_hosts", "string", R),
    },
    "IdentifyRequest": {1: ("base", "BaseRequest", S), 2: ("key_buf", "SyncKey", S)},
    "IdentifyResponse": {1: ("base", "BaseResponse", S)},

    "KeyVal": {1: ("key", "uint32", S), 2: ("val", "uint64", S)},
    "SyncKey": {1: ("keys", "KeyVal", R)},
    "NewSyncRequest": {
        1: ("base", "BaseRequest", S), 2: ("selector", "uint32", S),
        3: ("key_buf", "SyncKey", S),
    },
    "NewSyncResponse": {
        1: ("base", "BaseResponse", S), 2: ("cmd_list", "CmdItem", R),
        3: ("continue_flag", "uint32", S), 4: ("key_buf", "SyncKey", S),
    },
    "CmdItem": {1: ("cmd_id", "uint32", S), 2: ("cmd_buf", "bytes", S)},

    "AddMsg": {
        1: ("new_msg_id", "uint64", S), 2: ("from_user", "string", S),
        3: ("to_user", "string", S), 4: ("msg_type", "uint32", S),
        5: ("content", "string", S), 6: ("create_time", "uint32", S),
        7: ("client_msg_id", "string", S), 8: ("media", "MediaRef", S),
    },
    "MediaRef": {
        1: ("total_len", "uint32", S), 2: ("sha256", "bytes", S), 3: ("cdn_url", "string", S),
    },
    "ModContact": MOD_CONTACT_FIELDS,
    "ModUserInfo": MOD_CONTACT_FIELDS,   # "same fields as ModContact"
    "DelContact": {1: ("username", "string", S)},

    "MicroMsgRequest": {
        1: ("to_user", "string", S), 2: ("content", "string", S), 3: ("msg_type", "uint32", S),
        4: ("create_time", "uint32", S), 5: ("client_msg_id", "string", S),
    },
    "NewSendMsgRequest": {1: ("base", "BaseRequest", S), 2: ("msgs", "MicroMsgRequest", R)},
    "MicroMsgResponse": {
        1: ("ret", "int32", S), 2: ("to_user", "string", S), 3: ("client_msg_id", "string", S),
        4: ("new_msg_id", "uint64", S), 5: ("create_time", "uint32", S),
    },
    "NewSendMsgResponse": {
        1: ("base", "BaseResponse", S), 2: ("msgs", "MicroMsgResponse", R),
    },

    "UploadMediaRequest": {
        1: ("base", "BaseRequest", S), 2: ("client_media_id", "string", S),
        3: ("to_user", "string", S), 4: ("msg_type", "uint32", S),
        5: ("total_len", "uint32", S), 6: ("start_pos", "uint32", S), 7: ("data", "bytes", S),
    },
    "UploadMediaResponse": {
        1: ("base", "BaseResponse", S), 2: ("client_media_id", "string", S),
        3: ("start_pos", "uint32", S), 4: ("total_len", "uint32", S),
        5: ("new_msg_id", "uint64", S),
    },
    "DownloadMediaRequest": {
        1: ("base", "BaseRequest", S), 2: ("msg_id", "uint64", S),
        3: ("start_pos", "uint32", S), 4: ("max_len", "uint32", S),
    },
    "DownloadMediaResponse": {
        1: ("base", "BaseResponse", S), 2: ("msg_id", "uint64", S),
        3: ("total_len", "uint32", S), 4: ("start_pos", "uint32", S), 5: ("data", "bytes", S),
    },

    "GetContactRequest": {1: ("base", "BaseRequest", S), 2: ("usernames", "string", R)},
    "GetContactResponse": {1: ("base", "BaseResponse", S), 2: ("contacts", "ModContact", R)},
    "VerifyUserRequest": {
        1: ("base", "BaseRequest", S), 2: ("opcode", "uint32", S),
        3: ("username", "string", S), 4: ("verify_content", "string", S),
    },
    "VerifyUserResponse": {1: ("base", "BaseResponse", S), 2: ("username", "string", S)},
    "GetProfileRequest": {1: ("base", "BaseRequest", S)},
    "GetProfileResponse": {1: ("base", "BaseResponse", S), 2: ("profile", "ModUserInfo", S)},
    "BatchGetHeadImgRequest": {1: ("base", "BaseRequest", S), 2: ("usernames", "string", R)},
    "HeadImg": {
        1: ("username", "string", S), 2: ("url_small", "string", S), 3: ("url_big", "string", S),
    },
    "BatchGetHeadImgResponse": {1: ("base", "BaseResponse", S), 2: ("imgs", "HeadImg", R)},

    "LbsFindRequest": {
        1: ("base", "BaseRequest", S), 2: ("opcode", "uint32", S),
        3: ("longitude", "float", S), 4: ("latitude", "float", S),
        5: ("precision", "uint32", S), 6: ("gps_source", "uint32", S),
    },
    "LbsContact": {
        1: ("username", "string", S), 2: ("nickname", "string", S), 3: ("city", "string", S),
        4: ("signature", "string", S), 5: ("distance", "string", S),
        6: ("distance_m", "uint32", S), 7: ("sex", "uint32", S),
        8: ("avatar_url", "string", S),
    },
    "LbsFindResponse": {
        1: ("base", "BaseResponse", S), 2: ("contact_count", "uint32", S),
        3: ("contacts", "LbsContact", R), 4: ("state", "uint32", S),
        5: ("flush_time", "uint32", S),
    },
    "LogoutRequest": {1: ("base", "BaseRequest", S)},
    "LogoutResponse": {1: ("base", "BaseResponse", S)},
    "KV": {1: ("key", "uint32", S), 2: ("value", "string", S)},
    "ReportRequest": {1: ("base", "BaseRequest", S), 2: ("items", "KV", R)},
    "ReportResponse": {1: ("base", "BaseResponse", S), 2: ("accepted", "uint32", S)},
}

# Not in section 4 but allowed: the `{1: BaseResponse}` error reply the contract describes.
EXTRA = {"ErrorResponse": {1: ("base", "BaseResponse", S)}}

SCALAR_NAMES = {
    FieldDescriptor.TYPE_DOUBLE: "double", FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32", FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_ENUM: "enum",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32", FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32", FieldDescriptor.TYPE_SINT64: "sint64",
}


def actual_fields(name: str) -> dict[int, tuple[str, str, bool]]:
    desc = mm_pb2.DESCRIPTOR.message_types_by_name[name]
    out = {}
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type.file is mm_pb2.DESCRIPTOR, f.full_name
            t = f.message_type.name
        else:
            t = SCALAR_NAMES[f.type]
        out[f.number] = (f.name, t, f.is_repeated)
    return out


def test_file_is_proto3_in_its_own_package():
    fdp = descriptor_pb2.FileDescriptorProto.FromString(mm_pb2.DESCRIPTOR.serialized_pb)
    assert fdp.syntax == "proto3"
    assert not fdp.dependency            # self-contained: no imports
    assert mm_pb2.DESCRIPTOR.package == "testbed.mm"
    assert mm_pb2.DESCRIPTOR.name == "testbed/wire/mm.proto"


def test_message_set_matches_section_4():
    assert set(mm_pb2.DESCRIPTOR.message_types_by_name) == set(EXPECTED) | set(EXTRA)


@pytest.mark.parametrize("name", sorted(EXPECTED) + sorted(EXTRA))
def test_fields_match_section_4(name):
    expected = EXPECTED.get(name) or EXTRA[name]
    assert actual_fields(name) == expected


def test_no_nested_types_enums_oneofs_or_extensions():
    assert not mm_pb2.DESCRIPTOR.enum_types_by_name
    assert not mm_pb2.DESCRIPTOR.extensions_by_name
    for desc in mm_pb2.DESCRIPTOR.message_types_by_name.values():
        assert not desc.nested_types, desc.name
        assert not desc.enum_types, desc.name
        assert not desc.oneofs, desc.name       # also rules out proto3 `optional`


def test_generated_classes_exist_for_every_message():
    for name in EXPECTED:
        cls = getattr(mm_pb2, name)
        assert cls.DESCRIPTOR is mm_pb2.DESCRIPTOR.message_types_by_name[name]


def test_every_response_decodes_a_base_response_only_body():
    """Section 4: an error reply `{1: BaseResponse}` decodes as any response type."""
    body = mm_pb2.ErrorResponse(base=mm_pb2.BaseResponse(ret=-13)).SerializeToString()
    responses = [n for n in EXPECTED if n.endswith("Response")
                 and n not in ("BaseResponse", "MicroMsgResponse")]
    assert len(responses) == 13
    for name in responses:
        msg = getattr(mm_pb2, name).FromString(body)
        assert msg.base.ret == -13, name


def test_wire_bytes_use_the_contract_field_numbers():
    """An independent spot check on the encoded bytes, not on the descriptors."""
    req = mm_pb2.NewSyncRequest(selector=7)
    assert req.SerializeToString() == b"\x10\x07"          # field 2, varint
    kv = mm_pb2.KeyVal(key=1, val=1 << 40)
    assert kv.SerializeToString() == b"\x08\x01\x10" + bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20])
    lbs = mm_pb2.LbsFindRequest(longitude=1.0)
    assert lbs.SerializeToString() == b"\x1d\x00\x00\x80\x3f"  # field 3, fixed32 float


# --------------------------------------------------------------------- the contract text

@pytest.fixture(scope="module")
def section_4() -> str:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    m = re.search(r"^## 4\. .*?```\n(.*?)```", text, re.M | re.S)
    assert m, "section 4 code block not found"
    return m.group(1)


def test_transcription_names_every_message_of_section_4(section_4):
    """Guards EXPECTED against a message that was added to the contract and missed here."""
    named = set(re.findall(r"\b([A-Z][A-Za-z]*)\s+1\s+[a-z]", section_4))
    named |= set(re.findall(r"^([A-Z][A-Za-z]*) same fields as", section_4, re.M))
    assert named == set(EXPECTED)


def test_transcription_field_names_appear_in_section_4(section_4):
    for name, fields in EXPECTED.items():
        if name == "ModUserInfo":
            continue
        for number, (fname, _, _) in fields.items():
            assert re.search(rf"\b{number} {fname}\b", section_4), (name, number, fname)


# --------------------------------------------------------------------- generated code is current

def _default_json_name(name: str) -> str:
    parts = name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def test_generated_code_is_current(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools is not installed (pip install grpcio-tools)")
    out = tmp_path / "mm.desc"
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO}", f"--descriptor_set_out={out}",
         "testbed/wire/mm.proto"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fds.file) == 1
    fresh = fds.file[0]
    # protoc fills in json_name everywhere; the Python gencode keeps only explicit ones
    for msg in fresh.message_type:
        for field in msg.field:
            if field.json_name == _default_json_name(field.name):
                field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(mm_pb2.DESCRIPTOR.serialized_pb)
    assert fresh.name == committed.name == "testbed/wire/mm.proto"
    # message by message first, for a readable failure
    assert [m.name for m in committed.message_type] == [m.name for m in fresh.message_type]
    for a, b in zip(committed.message_type, fresh.message_type):
        assert a == b, f"{a.name} differs: regenerate mm_pb2.py from mm.proto"
    assert committed == fresh, "mm_pb2.py is stale: regenerate it from mm.proto"


def test_type_stub_lists_every_message():
    pyi = REPO / "testbed" / "wire" / "mm_pb2.pyi"
    if not pyi.is_file():
        pytest.skip("no mm_pb2.pyi")
    classes = set(re.findall(r"^class (\w+)\(_message\.Message\)", pyi.read_text(), re.M))
    assert classes == set(mm_pb2.DESCRIPTOR.message_types_by_name)
