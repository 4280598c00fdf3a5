"""The short link over real sockets: status codes in order, TLS-only login, one request per
connection."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from mocks.stats import read_stats
from testbed.client.session import RequestFailed, Session
from testbed.lab.addressing import SHORT
from testbed.wire import CGI_PREFIX, pb
from testbed.wire.commands import BY_CGI

from .helpers import logged_in


async def http(lab, raw: bytes, *, tls: bool = False, timeout: float = 5.0) -> bytes:
    h = lab.manifest.hosts[SHORT]
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=lab.manifest.ca_cert)
    r, w = await asyncio.open_connection(h.addresses[0], h.tls_port if tls else h.port,
                                         ssl=ctx, server_hostname=SHORT if tls else None)
    w.write(raw)
    await w.drain()
    data = await asyncio.wait_for(r.read(), timeout)   # read to EOF: the server closes
    w.close()
    return data


def post(path: str, body: bytes = b"", method: str = "POST", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {SHORT}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def body_of(resp: bytes) -> bytes:
    return resp.split(b"\r\n\r\n", 1)[1]


async def test_unknown_path_404_even_for_get(lab):
    assert status_of(await http(lab, post("/cgi-bin/micromsg-bin/nosuch"))) == 404
    assert status_of(await http(lab, post("/index.html", method="GET"))) == 404


async def test_known_cgi_wrong_method_405(lab):
    for method in ("GET", "PUT", "DELETE"):
        resp = await http(lab, post(CGI_PREFIX + "newsync", method=method))
        assert status_of(resp) == 405


async def test_body_over_1mib_gets_413_not_reset(lab):
    big = b"\0" * ((1 << 20) + 1)
    resp = await http(lab, post(CGI_PREFIX + "newsync", big))
    assert status_of(resp) == 413
    # chunked, no Content-Length: 413 once the count passes 1 MiB
    chunks = b"".join(b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n" for _ in range(17)) + b"0\r\n\r\n"
    raw = (f"POST {CGI_PREFIX}newsync HTTP/1.1\r\nHost: {SHORT}\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n").encode() + chunks
    assert status_of(await http(lab, raw)) == 413


async def test_manualauth_refused_over_plain_http(lab):
    u = lab.manifest.users[0]
    req = pb.ManualAuthRequest(username=u["username"], password=u["password"])
    resp = await http(lab, post(CGI_PREFIX + "manualauth", req.SerializeToString()))
    assert status_of(resp) == 403
    assert pb.ManualAuthResponse.FromString(body_of(resp)).base.ret == -5
    # garbage body: still 403, the body is not looked at
    resp = await http(lab, post(CGI_PREFIX + "manualauth", b"\xff" * 40))
    assert status_of(resp) == 403


async def test_every_response_closes_the_connection(lab):
    resp = await http(lab, post(CGI_PREFIX + "newsync", b""))
    head = resp.split(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head and status_of(resp) == 200
    # a second request on the same connection is never answered: the server closed
    h = lab.manifest.hosts[SHORT]
    r, w = await asyncio.open_connection(h.addresses[1], h.port)
    w.write(post(CGI_PREFIX + "newsync") * 2)
    data = await asyncio.wait_for(r.read(), 5)
    assert data.count(b"HTTP/1.1 ") == 1
    w.close()


async def test_garbage_body_is_minus_2_and_bad_session_minus_13(lab):
    resp = await http(lab, post(CGI_PREFIX + "getcontact", b"\xff\xff\xff"))
    assert status_of(resp) == 200
    assert pb.GetContactResponse.FromString(body_of(resp)).base.ret == -2
    resp = await http(lab, post(CGI_PREFIX + "getprofile", pb.GetProfileRequest(
        base=pb.BaseRequest(uin=1, session_key=b"x" * 16)).SerializeToString()))
    assert pb.GetProfileResponse.FromString(body_of(resp)).base.ret == -13


async def test_login_over_tls_and_errors(lab):
    s = await logged_in(lab, 0, long=False)
    assert s.uin > 0 and len(s.session_key) == 16
    resp = await s.cgi("manualauth", pb.ManualAuthRequest(username=s.username,
                                                          password=s.password), tls=True)
    assert resp.long_hosts == ["long.weixin.qq.com"]
    assert resp.short_hosts == ["short.weixin.qq.com"]
    assert resp.session_key != s.session_key          # fresh random key per login
    wrong = Session(lab.manifest, s.username, "nope")
    with pytest.raises(RequestFailed) as info:
        await wrong.login()
    assert info.value.ret == -3
    nobody = Session(lab.manifest, "user9999", "pass9999")
    with pytest.raises(RequestFailed) as info:
        await nobody.login()
    assert info.value.ret == -4


async def test_tls_port_serves_every_cgi(lab):
    s = await logged_in(lab, 0, long=False)
    resp = await s.cgi("getprofile", pb.GetProfileRequest(base=s.base()), tls=True)
    assert resp.profile.username == s.username


async def test_every_cgi_answers(lab):
    """Each CGI of the table, once, through the short link, with a sensible answer."""
    a = await logged_in(lab, 0, long=False)
    b = await logged_in(lab, 1, long=False)
    base = a.base()
    seen = {"manualauth"}
    init = await a.cgi("newinit", pb.NewSyncRequest(base=base))
    assert {i.cmd_id for i in init.cmd_list} == {1, 2}       # profile + 3 friends
    assert sum(i.cmd_id == 2 for i in init.cmd_list) == 3
    seen.add("newinit")
    sync = await a.cgi("newsync", pb.NewSyncRequest(base=base, key_buf=init.key_buf))
    assert list(sync.cmd_list) == [] and sync.continue_flag == 0
    seen.add("newsync")
    sent = await a.cgi("newsendmsg", pb.NewSendMsgRequest(base=base, msgs=[
        pb.MicroMsgRequest(to_user=b.username, content="x", msg_type=1, client_msg_id="c1"),
        pb.MicroMsgRequest(to_user="nobody", content="x", msg_type=1, client_msg_id="c2")]))
    assert [m.ret for m in sent.msgs] == [0, -4] and sent.base.ret == 0
    seen.add("newsendmsg")
    contacts = await a.cgi("getcontact", pb.GetContactRequest(base=base, usernames=[
        b.username, "nobody"]))
    assert [c.username for c in contacts.contacts] == [b.username]
    seen.add("getcontact")
    prof = await a.cgi("getprofile", pb.GetProfileRequest(base=base))
    assert prof.profile.username == a.username and prof.profile.avatar_big_url.endswith("/0")
    seen.add("getprofile")
    imgs = await a.cgi("batchgetheadimg", pb.BatchGetHeadImgRequest(base=base, usernames=[
        b.username, "nobody"]))
    assert len(imgs.imgs) == 1 and imgs.imgs[0].url_small.startswith("http://wx.qlogo.cn/mmhead/")
    seen.add("batchgetheadimg")
    v = await a.cgi("verifyuser", pb.VerifyUserRequest(base=base, opcode=1, username=b.username))
    assert v.username == b.username
    seen.add("verifyuser")
    lbs = await a.cgi("lbsfind", pb.LbsFindRequest(base=base, opcode=1, longitude=116.3,
                                                    latitude=39.98))
    assert lbs.contact_count == 0
    seen.add("lbsfind")
    for cgi in ("statreport", "kvreport"):
        r = await a.cgi(cgi, pb.ReportRequest(base=base, items=[pb.KV(key=1, value="a"),
                                                                pb.KV(key=2, value="b")]))
        assert r.accepted == 2
        seen.add(cgi)
    assert (await read_stats(lab.store)).reports == {"statreport": 2, "kvreport": 2}
    await a.cgi("logout", pb.LogoutRequest(base=base))
    seen.add("logout")
    assert seen == set(BY_CGI)
    requests = (await read_stats(lab.store)).requests
    assert requests[("tls", "MANUALAUTH")] == 2
    assert requests[("short", "NEWSYNC")] == 1


async def test_a_head_over_64_kib_is_431_and_a_half_closed_request_is_answered(lab):
    """The HTTP layer's own bounds (mocks/one_shot_http.py): many small header fields adding
    up past 64 KiB are refused; a client that ends its side after a whole request still
    reads the answer."""
    fields = "".join(f"X-{i}: {'y' * 60}\r\n" for i in range(1200))   # ~80 KB
    resp = await http(lab, post(CGI_PREFIX + "newsync", extra=fields))
    assert status_of(resp) == 431
    assert status_of(await http(lab, post("/" + "a" * 9000))) == 414   # a line over 8,190
    h = lab.manifest.hosts[SHORT]
    r, w = await asyncio.open_connection(h.addresses[0], h.port)
    w.write(post(CGI_PREFIX + "newsync"))
    w.write_eof()
    resp = await asyncio.wait_for(r.read(), 5)
    assert status_of(resp) == 200 and pb.NewSyncResponse.FromString(body_of(resp)).base.ret
    w.close()
