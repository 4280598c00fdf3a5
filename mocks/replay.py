"""Server replay in the lab (`testbed lab up --replay CAPTURE`): the doors answer a client
under test from a capture's recorded replies (`testbed.replay.script.ServerScript`).

`ReplayService` stands where the doors expect the `Service` (the same `handle`, `store` and
`clock`), so the long link, the short link and TLS are the lab's own: framing, NOOPs answered
by the link itself, idle timeouts and NOTIFY delivery are unchanged. It answers a request
with the recorded reply of the recorded request it matches, and makes the recorded pushes
that request triggered due: published as the lab's own push events, so the long-link server
sends each NOTIFY to the links of its user. A login is the lab's own (the password checked,
a fresh session made, whose key the client then uses), with the recorded uin; a logout ends
the lab's session too, so its links close as in the recording. What matches nothing gets
what the script's `unmatched` policy says: an error reply (`fail`), the lab's own service
(`forward`: the client goes off-script; its session is the lab's real one), or no answer
and a closed connection (`error`).

The location service and the CDNs answer recorded GETs through `get_middleware`, the
resolver asks `dns_verdict` about each query. Every miss is a line of the script's report.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web
from google.protobuf.message import Message

from testbed.lab.clock import Clock
from testbed.replay.script import Miss, Push, ServerScript, Unmatched
from testbed.wire import Command, Hangup, Ret, ServiceError

from .service import RequestContext, Service
from .state import PushEvent

log = logging.getLogger(__name__)

#: recorded response headers a replayed GET answers with (beside its status, type and body)
GET_HEADERS = ("etag", "cache-control", "last-modified", "expires")


class ReplayService:
    """The doors' service under server replay: recorded replies first, then the policy."""

    def __init__(self, service: Service, script: ServerScript) -> None:
        self.service = service
        self.script = script
        self.store = service.store
        self.clock = service.clock

    async def handle(self, command: Command, request: Message, ctx: RequestContext) -> Message:
        ctx.command = command
        door = "long" if ctx.origin else "short"
        if command.name == "MANUALAUTH":
            return await self._login(command, request, ctx)
        base = getattr(request, "base", None)
        key = bytes(base.session_key) if base is not None else b""
        answer = self.script.answer(command, request, key, door, self.clock.now())
        if isinstance(answer, Miss):
            return await self._miss(command, request, ctx, door, answer.detail, key)
        if command.name == "IDENTIFY":      # the link is this session's: pushes reach it
            ctx.session = await self.store.get_session(key)
        elif command.name == "LOGOUT":      # the lab's session ends too: its links close
            await self._forward(command, request, RequestContext(peer=ctx.peer), key)
        for push in answer.pushes:
            await self._push(push, answer.exchange, ctx)
        if answer.reply is None:
            raise ServiceError(Ret.SERVER_FAULT, "server replay: the recorded reply does not "
                                                 "decode")
        return answer.reply

    async def _login(self, command: Command, request, ctx: RequestContext) -> Message:
        x = self.script.login(request.username)
        if x is None:
            known = ", ".join(self.script.usernames) or "none"
            return await self._miss(command, request, ctx, "tls",
                                    f"the capture has no login of {request.username} left "
                                    f"(its users: {known})", b"")
        try:
            resp = await self.service.handle(command, request, ctx)
        except BaseException:
            self.script.release(x)
            raise
        self.script.logged_in(x, bytes(resp.session_key), resp.uin, self.clock.now())
        resp.uin = x.client               # the recorded uin: what the recorded replies say
        return resp

    async def _push(self, push: Push, trigger, ctx: RequestContext) -> None:
        if trigger.command is not None and trigger.command.name == "IDENTIFY" \
                and push.client == trigger.client:
            ctx.notify_after |= push.selector     # on this link, right after its reply
            return
        uin = self.script.live_uins.get(push.client)
        if uin is None:
            self.script.push_lost(push, "its user has not logged in")
            return
        await self.store.publish(PushEvent(uin, push.selector))

    async def _forward(self, command: Command, request, ctx: RequestContext,
                       key: bytes) -> Message:
        """The lab's own service answers; a replayed session's recorded uin becomes the
        lab's."""
        base = getattr(request, "base", None)
        if base is not None and self.script.session_of(key) is not None:
            base.uin = self.script.live_uins.get(base.uin, base.uin)
        return await self.service.handle(command, request, ctx)

    async def _miss(self, command: Command, request, ctx: RequestContext, door: str,
                    detail: str, key: bytes) -> Message:
        script = self.script
        user = script.username(script.client_of(key)) if key else \
            getattr(request, "username", None)
        script.missed(door, command.name, self.clock.now(), detail, user=user)
        if script.unmatched is Unmatched.FORWARD:
            return await self._forward(command, request, ctx, key)
        if script.unmatched is Unmatched.ERROR:
            raise Hangup(detail)
        raise ServiceError(Ret.SERVER_FAULT, f"not in the replayed capture: {detail}"[:300])


def get_middleware(script: ServerScript, host: str, clock: Clock):
    """An aiohttp middleware for the app of `host` (mapabc, a CDN): recorded GETs answered
    as recorded, others as the policy says (`forward`: the app's own handler)."""
    @web.middleware
    async def replay(request: web.Request, handler):
        now = clock.now()
        x = script.answer_get(host, request.path_qs, now) if request.method == "GET" else None
        if x is not None:
            f = x.reply.event.fields
            headers = {k: v for k, v in (f.get("headers") or {}).items() if k in GET_HEADERS}
            headers["Content-Type"] = f.get("content_type") or "application/octet-stream"
            return web.Response(status=f.get("status", 200), body=f.get("body", b""),
                                headers=headers)
        detail = f"the capture has no {request.method} {request.path_qs} of {host} left"
        script.missed("http", f"{request.method} {host}{request.path_qs}", now, detail)
        if script.unmatched is Unmatched.FORWARD:
            return await handler(request)
        if script.unmatched is Unmatched.ERROR:
            request.transport.abort()
            return web.Response()
        return web.Response(status=404, text=f"not in the replayed capture: {detail}\n")
    return replay


def dns_verdict(script: ServerScript, clock: Clock) -> Callable[[str, int], str]:
    """What the lab resolver does with a query under server replay (`LabDNS.replay`): a
    recorded query is answered as usual (the recorded answer's hosts, at this lab's
    addresses); another one as the policy says (`fail`: REFUSED, `error`: no answer)."""
    def verdict(name: str, qtype: int) -> str:
        now = clock.now()
        if script.answer_dns(name, now) is not None:
            return "answer"
        script.missed("dns", f"DNS {name}", now,
                      f"the capture has no query for {name} left")
        return {Unmatched.FORWARD: "answer", Unmatched.FAIL: "refuse",
                Unmatched.ERROR: "drop"}[script.unmatched]
    return verdict
