"""Sessions from captures: the exchanges of each recorded client, paired, ordered, decoded,
with whole bodies, frame numbers and protocol times; reasons where they cannot be replayed."""

from __future__ import annotations

from pathlib import Path

from testbed.capture.analyze import analyze
from testbed.replay.model import ExchangeKind
from testbed.replay.sessions import load_sessions
from testbed.wire import pb

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


def test_exchanges_pair_requests_with_replies_in_capture_order(chat_capture):
    path, facts = chat_capture
    s = load_sessions(str(path))
    events = {e.index: e for e in analyze(str(path)).events}
    assert s.made_by == "tap" and s.time_scale == 100
    starts = [x.start for x in s.exchanges]
    assert starts == sorted(starts)
    assert [x.index for x in s.exchanges] == list(range(1, len(s) + 1))
    kinds = {x.kind for x in s.exchanges}
    assert kinds >= {ExchangeKind.DNS, ExchangeKind.LOGIN, ExchangeKind.CGI, ExchangeKind.LONG,
                     ExchangeKind.PUSH, ExchangeKind.HTTP}
    for x in s.exchanges:
        assert x.reason is None, (x.describe())
        # every frame number is the capture's packet that holds that message
        for m in (x.request, x.reply):
            if m is not None and x.kind is not ExchangeKind.OTHER:
                assert events[m.frame].kind == m.event.kind
        if x.kind is not ExchangeKind.PUSH:
            assert x.request is not None and x.reply is not None, x.describe()
            assert x.reply.frame > x.request.frame and x.reply.t >= x.request.t
    # protocol time: capture seconds times the recorded scale
    first = min(e.ts for e in events.values())
    x = s.exchanges[-1]
    assert abs(x.start - (x.request.event.ts - first) * 100) < 1e-6


def test_each_client_has_its_exchanges_and_its_name(chat_capture):
    path, facts = chat_capture
    s = load_sessions(str(path))
    assert {c.username for c in s.clients.values()} == {"user0001", "user0002"}
    for c in s.clients.values():
        assert "NEWINIT reply" in c.username_from
        assert len(c.sessions) == 1
        kinds = [x.kind for x in c.exchanges]
        # its login first (TLS, given by the first use of its session), its logout last
        assert kinds[0] is ExchangeKind.LOGIN
        used = next(x for x in c.exchanges if x.kind is not ExchangeKind.LOGIN and x.session_key)
        assert c.exchanges[0].end <= used.start        # its login was over before the use
        assert c.exchanges[-1].name == "LOGOUT"
        assert all(x.client == c.uin for x in c.exchanges)
        assert all(x.session_key == c.sessions[0] for x in c.exchanges
                   if x.kind is not ExchangeKind.DNS and x.kind is not ExchangeKind.HTTP)
    # the link's pushes are its user's: the NOTIFY after a's text is b's
    a = next(c for c in s.clients.values() if c.username == "user0001")
    b = next(c for c in s.clients.values() if c.username == "user0002")
    send = next(x for x in a.exchanges if x.name == "NEWSENDMSG")
    push = next(x for x in s.exchanges if x.kind is ExchangeKind.PUSH and x.trigger == send.index)
    assert push.client == b.uin and push.reply.event.get("selector")


def test_upload_bodies_are_whole(chat_capture):
    """An upload's chunk is a 64 KiB body and more: the analyser's events cut bodies at
    64 KiB, the sessions keep them whole, so the chunk decodes and can be sent again."""
    path, facts = chat_capture
    s = load_sessions(str(path))
    uploads = [x for x in s.exchanges if x.name == "UPLOADMSGIMG"]
    assert len(uploads) == 2
    big = uploads[0].request
    assert big.event.fields["body_len"] > 64 * 1024 and big.whole
    req = big.event.message()
    assert isinstance(req, pb.UploadMediaRequest) and len(req.data) == 64 * 1024
    data = b"".join(x.request.event.message().data for x in uploads)
    assert data == facts["image"]
    # the analyser on its own still keeps 64 KiB (what `analyze --events` shows)
    cut = next(e for e in analyze(str(path)).events if e.index == big.frame)
    assert len(cut.fields["body"]) == 64 * 1024 and cut.message() is None
    # the CDN GET's reply is whole too
    get = next(x for x in s.exchanges if x.kind is ExchangeKind.HTTP
               and x.host == "mmsns.qpic.cn")
    assert get.reply.body == facts["image"]


def test_real_captures_give_reasons_not_tracebacks():
    for name in ("citizenlab-wechat-android-2023.pcap", "ndpi-wechat-web-2017.pcap",
                 "http-get.pcapng", "dns-multiple-a.pcapng"):
        s = load_sessions(str(REAL / name))
        assert s.exchanges, name
        for x in s.exchanges:
            if x.reason is None:
                # only what the lab's protocol could send again: DNS and plain GETs
                assert x.kind in (ExchangeKind.DNS, ExchangeKind.HTTP), (name, x.describe())
    s = load_sessions(str(REAL / "citizenlab-wechat-android-2023.pcap"))
    reasons = [x.reason for x in s.exchanges if x.reason]
    assert any("MMTLS" in r for r in reasons)              # the long link on 8080
    assert any("/mmtls/" in r for r in reasons)            # the short POSTs
    assert not s.clients                                   # nobody's uin is in the clear
    web = load_sessions(str(REAL / "ndpi-wechat-web-2017.pcap"))
    assert any(x.reason and x.reason.startswith("TLS to ") for x in web.exchanges)


def test_a_capture_without_its_logins_says_why_per_exchange(chat_capture, tmp_path):
    from tests.replay.pcap_edit import copy_capture

    path, _ = chat_capture
    s = load_sessions(str(path))
    tls_flows = {x.flow for x in s.exchanges if x.kind is ExchangeKind.LOGIN}
    ports = {s.connections[f].client[1] for f in tls_flows}
    cut = copy_capture(path, tmp_path / "no-login.pcapng",
                       keep=lambda pkt, item: getattr(item, "sport", None) not in ports
                       and getattr(item, "dport", None) not in ports)
    s = load_sessions(str(cut))
    assert not any(x.kind is ExchangeKind.LOGIN for x in s.exchanges)
    with_session = [x for x in s.exchanges if x.session_key]
    assert with_session and all("no login in the capture" in x.reason for x in with_session)
    assert all(f"uin {x.client}" in x.reason for x in with_session)


def test_replies_decode_to_trees_a_path_goes_into(chat_capture):
    """What the comparison reads: a sync item's body decoded by its cmd_id, a DNS answer's
    addresses as the hosts they belong to, a CDN image as its digest."""
    import hashlib

    from testbed.replay.tree import recorded_reply, split_path, walk

    path, facts = chat_capture
    s = load_sessions(str(path))
    texts = []
    for x in s.exchanges:
        if x.name == "NEWSYNC":
            tree = recorded_reply(x, s.host_of)
            texts += [v for _, v, _ in walk(tree, split_path("cmd_list[].cmd_buf.content"))]
    assert "hello from a" in texts and "hello from b" in texts
    dns = next(x for x in s.exchanges if x.kind is ExchangeKind.DNS
               and x.host == "long.weixin.qq.com")
    assert recorded_reply(dns, s.host_of)["addresses"] == ["long.weixin.qq.com"] * 2
    get = next(x for x in s.exchanges if x.host == "mmsns.qpic.cn" and x.kind is ExchangeKind.HTTP)
    tree = recorded_reply(get, s.host_of)
    assert tree["http"] == {"status": 200, "content_type": "image/png"}
    assert tree["body"] == {"sha256": hashlib.sha256(facts["image"]).hexdigest(),
                            "length": len(facts["image"])}


def test_the_model_as_json(chat_capture):
    import json

    path, _ = chat_capture
    s = load_sessions(str(path))
    doc = json.loads(json.dumps(s.summary()))
    assert doc["exchanges"] == doc["replayable"] == len(s)
    assert {c["username"] for c in doc["clients"]} == {"user0001", "user0002"}
    first = doc["list"][0]
    assert first["exchange"] == 1 and first["kind"] == "dns" and first["frame"] >= 1
    assert all(c["exchanges"] for c in doc["clients"])
