"""Every protobuf request type through both doors: well-formed requests with any field
values (with and without a real session), the same bytes damaged, and bytes at random. The
lab must answer each with the command's reply carrying a contract return code (never -1, a
server fault), and keep the link open."""

from __future__ import annotations

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from testbed.wire import BY_CGI, BY_CMD, pb
from testbed.wire.frames import reply_cmd

from ..fuzzing import budget
from .protobuf import bodies, messages
from .wire import LongLinkClient, http, login, post, split_response

CONTRACT_RETS = {0, -2, -3, -4, -5, -13, -100}
LONG_COMMANDS = [c for c in BY_CMD.values() if c.request is not None and not c.push_only]
CGI_COMMANDS = list(BY_CGI.values())


@pytest.fixture(scope="module")
def fuzzer(fuzz_lab):
    """user0004 logged in, with an identified long link: (its BaseRequest, the link)."""
    base = login(fuzz_lab.manifest, 3)
    link = LongLinkClient(fuzz_lab.manifest)
    reply = link.request(BY_CMD[205].cmd, pb.IdentifyRequest(base=base).SerializeToString())
    assert pb.IdentifyResponse.FromString(reply.body).base.ret == 0
    yield base, link
    link.close()


def request_body(command, base, data) -> bytes:
    """A body for `command`: any message (one in three with the fuzzer's own session, so
    the service goes past the session check), a damaged one, or bytes at random. Logout
    never gets the real session: the fuzzer would end it."""
    how = data.draw(st.sampled_from(["message", "my session", "damaged or random"]))
    event(how)
    if how == "damaged or random":
        return data.draw(bodies(command.request))
    msg = data.draw(messages(command.request))
    if how == "my session" and command.cgi != "logout" and "base" in {
            f.name for f in command.request.DESCRIPTOR.fields}:
        msg.base.CopyFrom(base)
    return msg.SerializeToString()


def check_answer(command, body: bytes) -> None:
    resp = command.response.FromString(body)   # every answer decodes as the response type
    assert resp.base.ret in CONTRACT_RETS, (command.name, resp.base)
    event(f"ret {resp.base.ret}")
    for m in getattr(resp, "msgs", ()):
        assert m.ret in CONTRACT_RETS, (command.name, m)


@pytest.mark.parametrize("command", LONG_COMMANDS, ids=lambda c: c.name)
@budget(0.3)
@given(data=st.data())
def test_every_long_link_request(fuzz_lab, fuzzer, command, data):
    base, link = fuzzer
    reply = link.request(command.cmd, request_body(command, base, data))
    assert reply.cmd == reply_cmd(command.cmd)
    check_answer(command, reply.body)


@pytest.mark.parametrize("command", CGI_COMMANDS, ids=lambda c: c.cgi)
@budget(0.2)
@given(data=st.data())
def test_every_cgi_request(fuzz_lab, fuzzer, command, data):
    base, _ = fuzzer
    tls = command.tls_only or data.draw(st.booleans())
    resp = http(fuzz_lab.manifest, post(command.cgi, request_body(command, base, data)),
                tls=tls)
    status, body = split_response(resp)
    assert status == 200, resp[:200]
    check_answer(command, body)
