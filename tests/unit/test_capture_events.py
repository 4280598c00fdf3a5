"""Typed capture events: kinds and doors are closed name sets, each kind's fields are declared
(`FIELDS`, checked against what the dissectors really emit), the command found by the
dissector travels on the event, and a spec naming something no event can have is an error
that names the valid ones."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from testbed.capture import events as ev
from testbed.capture.analyze import analyze
from testbed.capture.events import FIELDS, Event, Kind
from testbed.capture.tap import Tap
from testbed.verify import CaptureView, SpecError, match
from testbed.wire import BY_NAME, REPLY_OFFSET, Door, dns, encode_frame, notify_body, pb

PYTEST_DOC = Path(__file__).resolve().parents[2] / "docs" / "pytest.md"
PHONE = "127.0.0.87"
DNS = ("127.0.0.53", 53)
LONG = ("127.0.0.11", 8080)
SHORT = ("127.0.0.21", 80)
SHORT_TLS = ("127.0.0.21", 443)
T0 = 1_370_000_000.0


def _client_hello(sni: str) -> bytes:
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _send_req() -> bytes:
    return pb.NewSendMsgRequest(msgs=[pb.MicroMsgRequest(
        to_user="user0002", content="你好", client_msg_id="c-1")]).SerializeToString()


def _sync_resp() -> bytes:
    return pb.NewSyncResponse(continue_flag=0).SerializeToString()


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """The analysis of a tap-made capture with an event of every kind: DNS both ways, the
    TLS door (ClientHello, a record), a CGI in clear, long-link frames (a request, its reply,
    a NOTIFY push, a command the table does not have), FINs and a reset."""
    path = tmp_path_factory.mktemp("events") / "every-kind.pcapng"
    with Tap(path, comment={"how": "tap", "test": "every kind"}, seed=3) as tap:
        q = dns.build_query("long.weixin.qq.com", 7)
        tap.udp((PHONE, 40000), DNS, q, ts=T0)
        tap.udp(DNS, (PHONE, 40000), dns.build_response(dns.parse_query(q), ["127.0.0.11"]),
                ts=T0 + 0.001)
        c = tap.tcp_open((PHONE, 40001), SHORT_TLS, ts=T0 + 0.01)
        tap.tcp_data(c, True, _client_hello("short.weixin.qq.com"), ts=T0 + 0.02)
        tap.tcp_data(c, False, b"\x17\x03\x03\x00\x05abcde", ts=T0 + 0.03)
        tap.tcp_close(c, True, reset=True, ts=T0 + 0.04)
        body = pb.NewSyncRequest(selector=7).SerializeToString()
        c = tap.tcp_open((PHONE, 40002), SHORT, ts=T0 + 0.1)
        tap.tcp_data(c, True, b"POST /cgi-bin/micromsg-bin/newsync HTTP/1.1\r\nHost: "
                     b"short.weixin.qq.com\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
                     ts=T0 + 0.11)
        tap.tcp_data(c, False, b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(_sync_resp()) + _sync_resp(),
                     ts=T0 + 0.12)
        tap.tcp_close(c, True, ts=T0 + 0.13)
        tap.tcp_close(c, False, ts=T0 + 0.14)
        c = tap.tcp_open((PHONE, 40003), LONG, ts=T0 + 1)
        tap.tcp_data(c, True, encode_frame(237, 5, _send_req()), ts=T0 + 1.1)
        tap.tcp_data(c, False, encode_frame(237 + REPLY_OFFSET, 5, pb.NewSendMsgResponse(
            msgs=[pb.MicroMsgResponse(new_msg_id=42)]).SerializeToString()), ts=T0 + 1.2)
        tap.tcp_data(c, False, encode_frame(24, 0, notify_body(1)), ts=T0 + 1.3)
        tap.tcp_data(c, True, encode_frame(6, 6), ts=T0 + 1.4)
        tap.tcp_data(c, True, encode_frame(999, 7, b"\x0a\x00"), ts=T0 + 1.5)
        tap.tcp_close(c, True, ts=T0 + 2)
        tap.tcp_close(c, False, ts=T0 + 2.1)
    return analyze(str(path))


# --------------------------------------------------------------------- kinds and doors
def test_kinds_and_doors_are_their_strings():
    assert Kind.FRAME == "frame" and ev.FRAME is Kind.FRAME and Door.TLS == "tls"
    assert json.dumps([Kind.DNS_QUERY, Door.LONG]) == '["dns_query", "long"]'
    assert f"{Kind.HTTP_REQUEST}/{Door.SHORT}" == "http_request/short"
    assert {("tls", "MANUALAUTH"): 2}[(Door.TLS, "MANUALAUTH")] == 2   # stats keys
    assert set(FIELDS) == set(Kind)


@pytest.mark.parametrize("make, value, valid", [
    (Kind, "framee", "did you mean 'frame'?); valid: dns_query, dns_answer, "),
    (Door, "shrot", "did you mean 'short'?); valid: long, short, tls"),
])
def test_an_unknown_name_is_an_error_naming_the_valid_ones(make, value, valid):
    with pytest.raises(ValueError) as exc:
        make(value)
    assert valid in str(exc.value)


def test_the_pytest_doc_lists_every_kind_and_the_frame_fields():
    text = PYTEST_DOC.read_text(encoding="utf-8")
    assert [k for k in Kind if f"`{k}`" not in text] == []
    assert [f for f in FIELDS[Kind.FRAME] if f"`{f}`" not in text] == []
    assert [d for d in Door if f"`{d}`" not in text] == []


def test_every_kind_carries_only_its_declared_fields(every_kind):
    seen = {e.kind for e in every_kind.events}
    assert seen == set(Kind), f"kinds never emitted: {set(Kind) - seen}"
    for e in every_kind.events:
        assert type(e.kind) is Kind
        declared = FIELDS[e.kind]
        assert set(e.fields) <= set(declared), (e.kind, set(e.fields) - set(declared))
        for name, value in e.fields.items():
            assert isinstance(value, declared[name]), (e.kind, name, value)


# --------------------------------------------------------------------- the command travels
def test_the_dissectors_command_travels_on_the_event(every_kind):
    frames = [e for e in every_kind.events if e.kind == Kind.FRAME]
    assert [(e.get("name"), e.command) for e in frames] == [
        ("NEWSENDMSG", BY_NAME["NEWSENDMSG"]), ("NEWSENDMSG", BY_NAME["NEWSENDMSG"]),
        ("NOTIFY", BY_NAME["NOTIFY"]), ("NOOP", BY_NAME["NOOP"]), ("cmd 999", None)]
    assert all(e.door is Door.LONG for e in frames)
    cgi = [e for e in every_kind.events if e.kind in (Kind.HTTP_REQUEST, Kind.HTTP_RESPONSE)]
    assert [(e.kind, e.command, e.door) for e in cgi] == [
        (Kind.HTTP_REQUEST, BY_NAME["NEWSYNC"], Door.SHORT),
        (Kind.HTTP_RESPONSE, BY_NAME["NEWSYNC"], Door.SHORT)]
    assert cgi[0].message().selector == 7 and cgi[1].to_dict()["fields"]["name"] == "NEWSYNC"
    assert frames[0].message().msgs[0].content == "你好"
    assert frames[1].message().msgs[0].new_msg_id == 42
    assert {e.door for e in every_kind.events if e.kind.startswith(("dns", "tls", "tcp"))} \
        == {None}


def test_message_decodes_with_the_events_command_and_nothing_else():
    fields = {"cmd": 237, "seq": 1, "reply": False, "push": False, "noop": False,
              "name": "NEWSENDMSG", "body": _send_req(), "body_len": len(_send_req())}
    bare = Event(T0, Kind.FRAME, 1, "c2s", fields=dict(fields))
    assert bare.message() is None                       # no command on it: no lookup either
    typed = Event(T0, Kind.FRAME, 1, "c2s", fields=dict(fields), command=BY_NAME["NEWSENDMSG"])
    assert typed.message().msgs[0].to_user == "user0002"
    assert "message" in typed.to_dict()["fields"] and "message" not in bare.to_dict()["fields"]


# --------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec, says", [
    ("NOTIFYY", ["unknown event kind 'NOTIFYY'", "valid: dns_query", "{'command': 'NOTIFY'}"]),
    ({"kind": "frmae"}, ["unknown event kind 'frmae' (did you mean 'frame'?)", "tcp_syn"]),
    ({"kind": "frame", "name": "NOTIFYY"},
     ["unknown command name 'NOTIFYY' (did you mean 'NOTIFY'?)", "valid: NOOP, IDENTIFY"]),
    ({"name": "NOTIFYY"}, ["unknown command name 'NOTIFYY'", "a DNS name has a dot"]),
    ({"kind": "http_request", "name": "NEWSYN"}, ["did you mean 'NEWSYNC'?"]),
    ({"command": "NEWSYN"}, ["unknown command 'NEWSYN' (did you mean 'NEWSYNC'?)"]),
    ({"kind": "frame", "nmae": "NOTIFY"},
     ["unknown frame field 'nmae' (did you mean 'name'?)", "cmd, seq, reply, push"]),
    ({"kind": "dns_query", "push": True}, ["unknown dns_query field 'push'", "name, qtype, id"]),
    ({"pussh": True}, ["unknown event field 'pussh' (did you mean 'push'?)", "selector"]),
    ({"kind": "frame", "push": "yes"}, ["frame field 'push' is bool, not 'yes'"]),
    ({"kind": "frame", "seq": "7"}, ["frame field 'seq' is int, not '7'"]),
    ({"door": "lnog"}, ["unknown door 'lnog' (did you mean 'long'?); valid: long, short, tls"]),
    ({"direction": "up"}, ["unknown direction 'up'; valid: c2s, s2c"]),
    ({"cgi": "newsyn"}, ["unknown cgi 'newsyn' (did you mean 'newsync'?)", "manualauth"]),
    ({"host": 3}, ["'host' is str"]),
    (42, ["a spec is a kind name"]),
])
def test_a_spec_that_could_never_match_is_an_error(spec, says):
    with pytest.raises(SpecError) as exc:
        match(spec)
    for text in says:
        assert text in str(exc.value)


def test_specs_select_what_they_name(every_kind):
    view = CaptureView(every_kind)
    assert view.count("frame") == 5 and view.count(Kind.TCP_RST) == 1
    assert view.count({"kind": "frame", "name": "NOTIFY", "push": True}) == 1
    assert view.count({"command": "NEWSENDMSG"}) == 2
    assert view.count({"door": "long", "command": "NEWSENDMSG", "reply": True}) == 1
    assert view.count({"door": Door.SHORT}) == 2
    assert view.count({"kind": "frame", "name": "cmd 999"}) == 1
    assert view.count({"name": "long.weixin.qq.com"}) == 2          # a DNS name: it has a dot
    assert view.count({"kind": "http_request", "cgi": None}) == 0    # None: the field absent
    with pytest.raises(SpecError):
        view.expect_sequence({"kind": "frame", "name": "NOTIFY"}, {"kind": "dns_qurey"})
    with pytest.raises(SpecError):
        view.first({"kind": "tls_client_hello", "sin": "short.weixin.qq.com"})
