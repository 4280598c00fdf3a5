"""The replay's tables and rules without a lab: the re-binding table names real fields, mask
files say what is wrong with them, each mask type decides as documented, and requests are
rewritten with the live values."""

from __future__ import annotations

import pytest

from testbed.replay.bindings import Bindings
from testbed.replay.compare import compare
from testbed.replay.masks import DEFAULTS, Mask, MaskSet, MaskType, load_mask_file, \
    parse_mask, path_error
from testbed.wire import BY_NAME, pb
from testbed.wire.rebinding import KINDS, REBINDING, rebinding
from testbed.replay.tree import field_error


def test_rebinding_table_names_real_fields_of_real_commands():
    for name, row in REBINDING.items():
        if name == "GET":
            assert [f.path for f in row.carries] == ["url", "url"]
            continue
        command = BY_NAME[name]
        for f in row.hands_out:
            assert f.kind in KINDS
            assert field_error(command.response, f.path) is None, (name, f)
        for f in row.carries:
            assert f.kind in KINDS
            assert field_error(command.request, f.path) is None, (name, f)
    # every command with a BaseRequest carries its uin and session key
    for command in BY_NAME.values():
        if command.request is not None and "base" in command.request.DESCRIPTOR.fields_by_name \
                and command.name != "MANUALAUTH":
            assert {f.kind for f in rebinding(command.name).carries} >= {"uin", "session_key"}


def test_default_masks_name_real_fields():
    for name, masks in DEFAULTS.items():
        for m in masks:
            assert path_error(name, m.path) is None, (name, m)


def test_mask_files_say_what_is_wrong(tmp_path):
    good = tmp_path / "masks.toml"
    good.write_text('[NEWSYNC]\n"cmd_list[].cmd_buf.content" = "ignore"\n'
                    '[LBSFIND]\n"contacts" = "set"\n"contacts[].distance_m" = "tolerance 50"\n'
                    '[GET]\n"body" = "same-type"\n'
                    '[DOWNLOADVOICE]\n"msg_id" = "equals-a-captured-value msg_id"\n')
    doc = load_mask_file(good)
    assert [m.name for m in doc["LBSFIND"]] == ["set", "tolerance 50.0"]
    assert doc["DOWNLOADVOICE"][0].type is MaskType.CAPTURED
    cases = {
        '[NEWSYNC]\n"cmd_list[].cmd_buf.contnt" = "ignore"\n': "did you mean 'content'",
        '[NEWSYNK]\n"base.ret" = "ignore"\n': "did you mean 'NEWSYNC'",
        '[NEWSYNC]\n"base.ret" = "ignroe"\n': "did you mean 'ignore'",
        '[NEWSYNC]\n"base.ret" = "tolerance"\n': "tolerance takes one number",
        '[NEWSYNC]\n"base.ret" = "captured msgid"\n': "captured takes a kind",
        '[DNS]\n"answers" = "set"\n': "its reply has rcode, addresses, ttls",
        '"base.ret" = "x"\n': "is a table",
        'not toml at all [': "not a mask file",
    }
    for text, said in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=said.replace("(", r"\(").replace("[", r"\[")):
            load_mask_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_mask_file(tmp_path / "missing.toml")


def _masks(*pairs) -> list[Mask]:
    return [parse_mask(p, m, "test") for p, m in pairs]


def test_each_mask_type_decides_as_documented():
    b = Bindings()
    rec = {"a": 1, "t": 100, "s": "x", "l": [1, 2, 3], "n": 0, "k": 5}
    same = compare(rec, dict(rec), [], b)
    assert same.equal and not same.masked
    live = {"a": 2, "t": 140, "s": 7, "l": [3, 1, 2], "n": 9, "k": 6}
    plain = compare(rec, live, [], b)
    assert {d.path for d in plain.diffs} == {"a", "t", "s", "l[0]", "l[1]", "l[2]", "n", "k"}
    out = compare(rec, live, _masks(("a", "ignore"), ("t", "tolerance 50"), ("s", "same-type"),
                                    ("l", "set"), ("n", "present"), ("k", "present")), b)
    # s changed type (str -> int), n went from absent (0) to present: those two still differ
    assert {d.path: d.note for d in out.diffs} == {"s": "str became int",
                                                   "n": "present in one only"}
    assert sorted(p for p, _ in out.masked) == ["a", "k", "l", "t"]
    assert compare({"t": 100}, {"t": 151}, _masks(("t", "tolerance 50")), b).diffs[0].note \
        == "beyond the tolerance of 50"
    assert compare({"l": [1, 2]}, {"l": [2, 2]}, _masks(("l", "set")), b).diffs[0].path == "l"


def test_captured_values_bind_once_then_must_match():
    b = Bindings()
    masks = _masks(("msgs[].new_msg_id", "captured msg_id"), ("msg_id", "captured msg_id"))
    first = compare({"msgs": [{"new_msg_id": 7}]}, {"msgs": [{"new_msg_id": 70}]}, masks, b)
    assert first.equal and first.masked[0][0] == "msgs[0].new_msg_id"
    assert compare({"msg_id": 7}, {"msg_id": 70}, masks, b).equal      # the bound value
    wrong = compare({"msg_id": 7}, {"msg_id": 71}, masks, b)
    assert wrong.diffs[0].note == "the live value captured for it is 70"
    # an equal value hands out nothing to mask
    assert not compare({"msg_id": 8}, {"msg_id": 8}, masks, b).masked


def test_requests_carry_the_live_values_per_client_and_key():
    b = Bindings()
    b.bind("session_key", (), b"recorded-key", b"live-key")
    b.bind("uin", (), 1, 11)
    b.bind("sync_key", Bindings.scope("sync_key", 1, {"key": 2}), 5, 6)
    b.bind("sync_key", Bindings.scope("sync_key", 2, {"key": 2}), 5, 9)   # another user
    req = pb.NewSyncRequest(base=pb.BaseRequest(session_key=b"recorded-key", uin=1),
                            selector=7, key_buf=pb.SyncKey(keys=[pb.KeyVal(key=1, val=5),
                                                                 pb.KeyVal(key=2, val=5)]))
    assert b.rewrite("NEWSYNC", req, client=1) == 3
    assert (req.base.session_key, req.base.uin) == (b"live-key", 11)
    assert [(kv.key, kv.val) for kv in req.key_buf.keys] == [(1, 5), (2, 6)]
    b.bind("username", (), "user0002", "user0009")
    send = pb.NewSendMsgRequest(msgs=[pb.MicroMsgRequest(to_user="user0002"),
                                      pb.MicroMsgRequest(to_user="user0003")])
    assert b.rewrite("NEWSENDMSG", send, client=1) == 1
    assert [m.to_user for m in send.msgs] == ["user0009", "user0003"]
    heads = pb.BatchGetHeadImgRequest(usernames=["user0002", "user0001"])
    b.rewrite("BATCHGETHEADIMG", heads, client=1)
    assert list(heads.usernames) == ["user0009", "user0001"]
    b.bind("cdn_url", (), "http://mmsns.qpic.cn/mmsns/aa/0", "http://mmsns.qpic.cn/mmsns/bb/0")
    assert b.rewrite_url("http://mmsns.qpic.cn/mmsns/aa/0") == "http://mmsns.qpic.cn/mmsns/bb/0"
    assert b.rewrite_url("http://wx.qlogo.cn/mmhead/cc/96") == "http://wx.qlogo.cn/mmhead/cc/96"


def test_mask_files_win_over_defaults():
    user = {"NEWSYNC": (parse_mask("cmd_list[].cmd_buf.create_time", "ignore", "mine.toml"),)}
    masks = MaskSet([user]).for_exchange("NEWSYNC")
    assert masks[0].origin == "mine.toml"
    assert any(m.origin == "default" for m in masks)
    assert any(m.origin == "re-binding" and m.arg == "msg_id" for m in masks)
