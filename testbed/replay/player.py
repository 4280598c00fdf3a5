"""Client replay: a capture's sessions sent again to a lab, every reply compared.

The order is the recording's, concurrency included: an exchange is sent once every exchange
that was over in the capture before it began is over here too (its reply came, or its push,
or their timeout), so a CGI that followed a NOTIFY waits for that NOTIFY, and requests that
overlapped in the capture overlap here. A push is awaited as an event: a NOTIFY with the
recorded selector on the link that got it, within `push_timeout_s` of the moment its turn
came (its trigger was sent by then). Pacing (`Pace`) adds the recording's own gaps
(`recorded`), K times shorter (`xK`), or none (`asap`: heartbeats collapse).

Every login is a fresh one with the lab's credentials of the recorded user (or the one
`user_map` names); values the lab hands out are bound to the recorded ones and put into
later requests (`testbed.replay.bindings`). A difference, a missing reply or a refused
target is a row of the result: the replay goes on with the next exchange (a long link the
lab closed is opened again and identified before its next request).

I/O goes through the emulator's parts: `LongLink` (the sans-I/O `ClientConnection` under
it) for long links, `ShortLink` for CGIs, `WebClient` for GETs, `Resolver` for DNS; every
address comes from the manifest through `LabTargets.check`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from urllib.parse import urlsplit

import aiohttp
from google.protobuf.message import DecodeError
from dataclasses import dataclass
from typing import Callable, Optional

from google.protobuf.message import Message as ProtoMessage

from testbed.capture.events import Kind
from testbed.client.longlink import LinkClosed, LongLink
from testbed.client.resolver import ResolveError, Resolver
from testbed.client.session import ssl_context_for
from testbed.client.shortlink import ShortLink
from testbed.client.web import WebClient
from testbed.lab.addressing import LONG, PHONE_OCTET, SHORT, lab_host_address
from testbed.lab.clock import Clock
from testbed.lab.faults import FaultKind, FaultPlan, Faults
from testbed.lab.manifest import Manifest
from testbed.wire import CGI_PREFIX, RemoteProtocolError, pb
from testbed.wire.errors import LocalProtocolError

from .bindings import Bindings
from .compare import Difference, Outcome, compare
from .masks import Mask, MaskSet, MaskType
from .model import Exchange, ExchangeKind, Sessions
from .result import ReplayResult, Row, Status
from .targets import LabTargets, UnsafeTarget
from .tree import dns_tree, http_reply_tree, long_reply_tree, push_tree, recorded_reply

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0       # protocol seconds a reply may take (at least REPLY_MIN_WALL_S)
REPLY_MIN_WALL_S = 5.0
PUSH_TIMEOUT_S = 10.0        # protocol seconds a push may take after its turn came
PUSH_MIN_WALL_S = 2.0
SETTLE_WALL_S = 0.1          # wall seconds for late pushes before the result is made
CONDITIONAL = ("if-none-match", "if-modified-since", "range")   # GET headers sent again
ENCRYPTED = Mask("", MaskType.IGNORE, None, "encrypted in the capture")


@dataclass(frozen=True)
class Pace:
    """How fast: `factor` None is asap, 1 the recorded gaps, K the gaps K times shorter."""

    factor: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> "Pace":
        t = text.strip().lower()
        if t == "asap":
            return cls(None)
        if t == "recorded":
            return cls(1.0)
        num = t[1:] if t.startswith("x") else t[:-1] if t.endswith("x") else ""
        try:
            k = float(num)
        except ValueError:
            k = 0.0
        if not k > 0:
            raise ValueError(f"pace {text!r}: asap, recorded, or xK (x10: ten times faster)")
        return cls(k)

    def __str__(self) -> str:
        if self.factor is None:
            return "asap"
        return "recorded" if self.factor == 1 else f"x{self.factor:g}"


@dataclass
class LabUser:
    username: str
    password: str


class ClientReplay:
    """One replay of `sessions` against the lab of `manifest`; `await run()` once."""

    def __init__(self, sessions: Sessions, manifest: Manifest, *, pace: Pace = Pace(),
                 masks: Optional[MaskSet] = None,
                 user_map: Optional[dict[str, str]] = None, clock: Optional[Clock] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 faults: Optional[FaultPlan] = None) -> None:
        self.s = sessions
        self.manifest = manifest
        self.pace = pace
        self.masks = masks or MaskSet()
        self.user_map = dict(user_map or {})
        self.clock = clock or Clock(manifest.time_scale)
        self.progress = progress or (lambda done, total: None)
        self.targets = LabTargets(manifest)
        self.bindings = Bindings()
        self.local_addr = lab_host_address(manifest.dns_address, PHONE_OCTET)
        self.ssl = ssl_context_for(manifest)
        self.result = ReplayResult(sessions.path, str(pace))
        # faults on what the replay sends (`testbed.lab.faults`, the client's side)
        self.faults = Faults(faults, self.clock) if faults else None
        self.users: dict[int, LabUser] = {}
        self.cannot: dict[int, str] = {}            # recorded uin -> why not
        self.links: dict[int, LongLink] = {}        # recorded flow -> live link
        self.link_locks: dict[int, asyncio.Lock] = {}
        self.pushes: dict[int, list[int]] = {}      # recorded flow -> live selectors
        self.push_event = asyncio.Event()
        self.identify: dict[int, Exchange] = {}     # recorded flow -> its IDENTIFY
        self.device: dict[bytes, bytes] = {}        # recorded session -> its device id
        self.logins: dict[bytes, asyncio.Task] = {}  # recorded session -> its login
        self.done = 0

    # ------------------------------------------------------------------ plan
    def plan(self) -> None:
        """Lab users for the recorded ones; what the recorded lab was, if it differs."""
        lab_users = {u["username"]: u for u in self.manifest.users}
        for uin, c in self.s.clients.items():
            wanted = self.user_map.get(str(uin)) or (c.username and self.user_map.get(c.username))
            name = wanted or c.username
            if name is None:
                self.cannot[uin] = (f"the user name of recorded uin {uin} is not in the "
                                    f"capture (no newinit or getprofile reply names it): "
                                    f"pass --map {uin}=LABUSER")
                continue
            if name not in lab_users:
                self.cannot[uin] = (f"{name} is not a user of this lab"
                                    + ("" if wanted else f": pass --map {name}=LABUSER"))
                continue
            self.users[uin] = LabUser(name, lab_users[name]["password"])
            if c.username:
                self.bindings.bind("username", (), c.username, name)
        recorded = self.s.recorded_manifest or {}
        n = len(recorded.get("users") or []) + int(recorded.get("users_omitted") or 0)
        if n and n != len(lab_users):
            self.result.warnings.append(
                f"the capture's lab had {n} users and this one has {len(lab_users)}: "
                f"replies that list contacts will differ (start the lab with --users {n})")
        for x in self.s.exchanges:
            if x.command is not None and x.command.name == "IDENTIFY" \
                    and x.flow not in self.identify:
                self.identify[x.flow] = x
            if x.session_key and x.session_key not in self.device and x.request is not None:
                msg = x.request.event.message()
                base = getattr(msg, "base", None) if msg is not None else None
                if base is not None and base.device_id:
                    self.device[x.session_key] = bytes(base.device_id)

    def why_not(self, x: Exchange) -> Optional[str]:
        if x.reason is not None:
            return x.reason
        if x.client is not None and x.client in self.cannot:
            return self.cannot[x.client]
        return None

    # ------------------------------------------------------------------ run
    async def run(self) -> ReplayResult:
        t_wall = time.monotonic()
        self.plan()
        closes = sorted((c.closed_by_client, c.flow) for c in self.s.connections.values()
                        if c.app == "longlink" and c.closed_by_client is not None)
        tasks: dict[int, asyncio.Task] = {}          # exchange index -> its task
        ends: list[tuple[float, int]] = []           # (recorded end, index): a heap
        rows: dict[int, Row] = {}
        total = len(self.s.exchanges)
        first = next((x.start for x in self.s.exchanges if self.why_not(x) is None), 0.0)
        base = self.clock.now()
        try:
            for x in self.s.exchanges:
                while closes and closes[0][0] <= x.start:
                    await self.close_link(closes.pop(0)[1], tasks)
                reason = self.why_not(x)
                if reason is not None:
                    rows[x.index] = self.row(x, Status.SKIPPED, detail=reason)
                    self.tick(total)
                    continue
                await self.after(x.start, ends, tasks)
                login = self.logins.get(x.session_key)
                if login is not None and not login.done():
                    await asyncio.wait([login])       # its session's key comes from there
                if self.pace.factor is not None:
                    await self.clock.sleep_until(base + (x.start - first) / self.pace.factor)
                task = asyncio.ensure_future(self.play(x))
                if x.kind is ExchangeKind.LOGIN and x.session_key:
                    self.logins[x.session_key] = task
                task.add_done_callback(lambda _t: self.tick(total))
                tasks[x.index] = task
                heapq.heappush(ends, (x.end, x.index))
            for index, task in tasks.items():
                rows[index] = await task
            await self.settle()
        except asyncio.CancelledError:
            for link in self.links.values():     # stopping: no waiting for closes
                link.abort()
            raise
        finally:
            for task in tasks.values():
                task.cancel()
        await self.close_all()
        self.result.rows = [rows[x.index] for x in self.s.exchanges if x.index in rows]
        self.result.rows += self.unexpected()
        self.result.opened = list(self.targets.opened)
        self.result.substituted = self.bindings.substituted
        if self.faults is not None:
            self.result.faults = self.faults.to_dict()
        self.result.wall_s = time.monotonic() - t_wall
        return self.result

    def tick(self, total: int) -> None:
        self.done += 1
        self.progress(self.done, total)

    @staticmethod
    async def after(t: float, ends: list[tuple[float, int]],
                    tasks: dict[int, asyncio.Task]) -> None:
        """Wait for every launched exchange that was over, in the capture, by time `t`
        (exchanges come in order of their start, so what is taken off the heap here is
        never wanted again)."""
        waiting = []
        while ends and ends[0][0] <= t:
            task = tasks[heapq.heappop(ends)[1]]
            if not task.done():
                waiting.append(task)
        if waiting:
            await asyncio.wait(waiting)

    async def settle(self) -> None:
        """A moment for pushes still on their way on the links left open (nothing is sent:
        a replay sends only what the capture has)."""
        if any(link.is_open for link in self.links.values()):
            await asyncio.sleep(SETTLE_WALL_S)

    # ------------------------------------------------------------------ rows
    def row(self, x: Exchange, status: Status, *, outcome: Optional[Outcome] = None,
            detail: str = "", extra_mask: Optional[tuple[str, Mask]] = None) -> Row:
        user = self.users.get(x.client) if x.client is not None else None
        client = user.username if user else (f"uin {x.client}" if x.client else "")
        r = Row(status, x, host=x.host, command=x.name, client=client, detail=detail)
        if outcome is not None:
            r.diffs, r.masked = list(outcome.diffs), list(outcome.masked)
        if extra_mask is not None:
            r.masked.append(extra_mask)
        return r

    def judged(self, x: Exchange, recorded, live, *, name: Optional[str] = None,
               detail: str = "") -> Row:
        if recorded is None:
            return self.row(x, Status.UNEXPECTED,
                            detail="the capture has no reply to this request; the lab "
                                   "answered")
        outcome = compare(recorded, live, self.masks.for_exchange(name or x.name),
                          self.bindings, x.client)
        status = Status.DIFF if outcome.diffs else Status.MASKED if outcome.masked \
            else Status.MATCH
        return self.row(x, status, outcome=outcome, detail=detail)

    # ------------------------------------------------------------------ one exchange
    async def play(self, x: Exchange) -> Row:
        try:
            return await _PLAYERS[x.kind](self, x)
        except UnsafeTarget as exc:
            return self.row(x, Status.SKIPPED, detail=f"refused: {exc}")
        except (asyncio.TimeoutError, TimeoutError):
            return self.row(x, Status.MISSING, detail="no reply within the timeout")
        except (LinkClosed, ConnectionError, OSError, ResolveError, RemoteProtocolError,
                LocalProtocolError, aiohttp.ClientError, DecodeError) as exc:
            return self.row(x, Status.MISSING, detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one exchange's failure is its row
            log.debug("exchange %d failed", x.index, exc_info=True)
            return self.row(x, Status.MISSING, detail=f"the replay of this exchange failed: "
                                                      f"{type(exc).__name__}: {exc}")

    def reply_timeout(self) -> float:
        return self.clock.floor_wall(REPLY_TIMEOUT_S, REPLY_MIN_WALL_S)

    def recorded_index(self, x: Exchange, host: str) -> int:
        """Which A record of its host the recorded connection went to."""
        conn = self.s.connections.get(x.flow) if x.flow is not None else None
        if conn is None:
            return 0
        rec = (self.s.recorded_manifest or {}).get("hosts", {}).get(host, {}).get(
            "addresses") or self.s.dns.get(host) or []
        return rec.index(conn.server[0]) if conn.server[0] in rec else 0

    def request_message(self, x: Exchange) -> Optional[ProtoMessage]:
        """The recorded request, decoded, with the live values put in."""
        msg = x.request.event.message()
        if msg is not None:
            self.bindings.rewrite(x.name, msg, x.client)
        return msg

    async def play_dns(self, x: Exchange) -> Row:
        name = x.request.event.get("name", "")
        if name not in self.manifest.hosts:
            return self.row(x, Status.SKIPPED,
                            detail=f"{name} is not a host of the lab: not asked")
        addr, port = self.targets.check(self.manifest.dns_address, self.manifest.dns_port,
                                        "DNS")
        resolver = Resolver(addr, port, local_addr=self.local_addr)
        ans = await resolver.query(name, x.request.event.get("qtype", 1))
        live = dns_tree(ans.rcode, list(ans.addresses), list(ans.ttls), self.targets.host_of)
        return self.judged(x, recorded_reply(x, self.s.host_of), live, name="DNS")

    async def play_login(self, x: Exchange) -> Row:
        user = self.users[x.client]
        h = self.manifest.hosts[SHORT]
        addr, port = self.targets.check(self.targets.host_address(SHORT,
                                                                  self.recorded_index(x, SHORT)),
                                        h.tls_port, SHORT)
        short = ShortLink(addr, h.port, port, self.ssl, self.local_addr,
                          timeout=self.reply_timeout())
        req = pb.ManualAuthRequest(base=pb.BaseRequest(
            device_id=self.device.get(x.session_key, b"")), username=user.username,
            password=user.password)
        status, ctype, body = await short.post(CGI_PREFIX + "manualauth",
                                               req.SerializeToString(), tls=True)
        resp = pb.ManualAuthResponse.FromString(body) if status == 200 else None
        if resp is None or resp.base.ret != 0:
            got = f"HTTP {status}" if resp is None else f"ret {resp.base.ret} {resp.base.errmsg}"
            return self.row(x, Status.DIFF, detail=f"login as {user.username} failed: {got}",
                            outcome=Outcome([Difference(
                                "base.ret", 0, None if resp is None else resp.base.ret,
                                "the recorded login succeeded (later requests used it)")]))
        self.bindings.bind("session_key", (), x.session_key, bytes(resp.session_key))
        self.bindings.bind("uin", (), x.client, resp.uin)
        detail = f"logged in afresh as {user.username} (uin {resp.uin})"
        if x.reply is not None and x.request.event.kind == Kind.HTTP_REQUEST:
            return self.judged(x, recorded_reply(x, self.s.host_of),
                               http_reply_tree(status, ctype, body, x.command), detail=detail)
        return self.row(x, Status.MASKED, detail=detail, extra_mask=("(whole reply)", ENCRYPTED))

    async def play_cgi(self, x: Exchange) -> Row:
        if x.host not in ("", SHORT):
            raise UnsafeTarget(f"a CGI to {x.host}, which is not the lab's short link")
        msg = self.request_message(x)
        h = self.manifest.hosts[SHORT]
        addr, port = self.targets.check(
            self.targets.host_address(SHORT, self.recorded_index(x, SHORT)), h.port, SHORT)
        short = ShortLink(addr, port, None, None, self.local_addr, timeout=self.reply_timeout())
        body = msg.SerializeToString()
        fault = self.faults.frame("short", x.name, len(body)) if self.faults else None
        if fault is not None and fault.kind is FaultKind.DROP:
            return self.row(x, Status.MISSING, detail=f"not sent ({fault.spec.text})")
        if fault is not None:
            await self.clock.sleep(fault.delay)
        status, ctype, body = await short.post(x.command.path, body)
        return self.judged(x, recorded_reply(x, self.s.host_of),
                           http_reply_tree(status, ctype, body, x.command))

    async def play_http(self, x: Exchange) -> Row:
        f = x.request.event.fields
        host = (f.get("host") or x.host).split(":")[0]
        url = self.bindings.rewrite_url(f"http://{host}{f.get('uri', '/')}")
        target = urlsplit(url).hostname or ""
        addr, port = self.targets.check(
            self.targets.host_address(target, self.recorded_index(x, target)),
            self.manifest.hosts[target].port, target)
        headers = {k: v for k, v in (f.get("headers") or {}).items() if k in CONDITIONAL}
        web = WebClient(self.manifest, None, local_addr=self.local_addr,
                        timeout=self.reply_timeout())
        resp = await web.get(url, headers, addresses=[addr])
        live = http_reply_tree(resp.status, resp.headers.get("Content-Type", ""), resp.body)
        return self.judged(x, recorded_reply(x, self.s.host_of), live, name="GET")

    async def play_long(self, x: Exchange) -> Row:
        f = x.request.event.fields
        if x.kind is ExchangeKind.HEARTBEAT:
            body = b""
        else:
            body = self.request_message(x).SerializeToString()
        link = await self.link(x)
        seq = f.get("seq")
        if seq in link.conn.pending:
            seq = None           # the recording reused a seq still pending here: a fresh one
        reply = await link.request_frame(f["cmd"], body, seq=seq, timeout=self.reply_timeout())
        return self.judged(x, recorded_reply(x, self.s.host_of),
                           long_reply_tree(x.command, reply))

    async def play_push(self, x: Exchange) -> Row:
        want = x.reply.event.get("selector")
        queue = self.pushes.setdefault(x.flow, [])
        deadline = self.clock.now() + self.clock.floor_wall(PUSH_TIMEOUT_S, PUSH_MIN_WALL_S)
        try:
            async with self.clock.timeout_at(deadline):
                while want not in queue:
                    self.push_event.clear()
                    await self.push_event.wait()
        except TimeoutError:
            if not queue:
                return self.row(x, Status.MISSING,
                                detail=f"no NOTIFY within {PUSH_TIMEOUT_S:g} s of its turn "
                                       f"(trigger: exchange {x.trigger})")
            got = queue.pop(0)
            return self.judged(x, push_tree(want), push_tree(got), name="NOTIFY")
        queue.remove(want)
        return self.judged(x, push_tree(want), push_tree(want), name="NOTIFY",
                           detail=f"after exchange {x.trigger}" if x.trigger else "")

    # ------------------------------------------------------------------ long links
    def on_push(self, flow: int, selector: int) -> None:
        self.pushes.setdefault(flow, []).append(selector)
        self.push_event.set()

    async def link(self, x: Exchange) -> LongLink:
        """The live link of the recorded flow: opened at its first exchange, and opened and
        identified again if the lab closed it meanwhile (re-synchronising)."""
        lock = self.link_locks.setdefault(x.flow, asyncio.Lock())
        async with lock:
            link = self.links.get(x.flow)
            if link is not None and link.is_open:
                return link
            conn = self.s.connections[x.flow]
            if conn.host not in ("", LONG):
                raise UnsafeTarget(f"a long link to {conn.host}, which is not the lab's "
                                   f"long link")
            host = LONG
            entry = self.manifest.hosts[host]
            port = entry.port
            recorded = (self.s.recorded_manifest or {}).get("hosts", {}).get(host, {})
            if entry.fallback_port and recorded.get("fallback_port") == conn.server[1]:
                port = entry.fallback_port       # the recording used the fallback port
            addr, port = self.targets.check(
                self.targets.host_address(host, self.recorded_index(x, host)), port, host)
            link = await LongLink.connect(addr, port, local_addr=self.local_addr,
                                          clock=self.clock, faults=self.faults,
                                          on_notify=lambda sel, f=x.flow: self.on_push(f, sel))
            reopened = x.flow in self.links
            self.links[x.flow] = link
            ident = self.identify.get(x.flow)
            if reopened and ident is not None and ident is not x:
                msg = self.request_message(ident)
                await link.request_frame(ident.request.event.get("cmd"),
                                         msg.SerializeToString(), timeout=self.reply_timeout())
            return link

    async def close_link(self, flow: int, tasks: dict[int, asyncio.Task]) -> None:
        """The recorded client closed this link: close ours once its exchanges are over."""
        mine = [t for i, t in tasks.items() if self.s.exchanges[i - 1].flow == flow
                and not t.done()]
        if mine:
            await asyncio.wait(mine)
        link = self.links.get(flow)
        if link is not None:
            await link.close()

    async def close_all(self) -> None:
        for link in self.links.values():
            try:
                await link.close()
            except Exception:  # noqa: BLE001 - closing what is left, best effort
                pass

    def unexpected(self) -> list[Row]:
        rows = []
        for flow, queue in self.pushes.items():
            conn = self.s.connections.get(flow)
            for sel in queue:
                rows.append(Row(Status.UNEXPECTED, None, host=conn.host if conn else "",
                                command="NOTIFY",
                                detail=f"a NOTIFY (selector {sel}) the capture does not have, "
                                       f"on the link of flow {flow}"))
        return rows


_PLAYERS = {
    ExchangeKind.DNS: ClientReplay.play_dns, ExchangeKind.LOGIN: ClientReplay.play_login,
    ExchangeKind.CGI: ClientReplay.play_cgi, ExchangeKind.HTTP: ClientReplay.play_http,
    ExchangeKind.LONG: ClientReplay.play_long, ExchangeKind.HEARTBEAT: ClientReplay.play_long,
    ExchangeKind.PUSH: ClientReplay.play_push,
}


async def replay(sessions: Sessions, manifest: Manifest, **kwargs) -> ReplayResult:
    """Replay `sessions` against the lab of `manifest` (`ClientReplay` options)."""
    return await ClientReplay(sessions, manifest, **kwargs).run()

