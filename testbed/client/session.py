"""A logged-in user of a lab: login over TLS, the long link, sync, send, media, nearby.

Only the manifest is needed: names are resolved through the lab's DNS and ports come from
the manifest (PROTOCOL.md section 8). Issue-3 scenarios build the heartbeat, reconnects and
the emulated phone's timing on top of this.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from google.protobuf.message import Message

from testbed.lab.addressing import LONG, SHORT
from testbed.lab.clock import Clock
from testbed.lab.manifest import Manifest
from testbed.wire import BY_NAME, Door, Ret, pb
from testbed.wire.commands import (CMD_ITEM_TYPES, ITEM_ADD_MSG, ITEM_DEL_CONTACT,
                                   ITEM_MOD_CONTACT, ITEM_MOD_USER_INFO, MSG_TEXT)

from .linkobserver import LinkObserver
from .longlink import Connector, LinkClosed, LongLink
from .resolver import Resolver
from .shortlink import ShortLink

# Each Session is one device: the lab keeps one session per device (a device's next login
# ends its earlier one), so two Sessions of one user in one process must not share an id.
_DEVICES = itertools.count()

CHUNK = 64 * 1024
# A long-link request's timeout when the caller names none: 10 protocol seconds, and at
# least 10 wall seconds (it only guards against a dead link; a scaled clock must not make it
# a few milliseconds).
DEFAULT_TIMEOUT_S = 10.0
UPLOAD_CMD = {3: "UPLOADMSGIMG", 34: "UPLOADVOICE", 43: "UPLOADVIDEO"}
DOWNLOAD_CMD = {3: "GETMSGIMG", 34: "DOWNLOADVOICE", 43: "DOWNLOADVIDEO"}


class RequestFailed(Exception):
    def __init__(self, name: str, ret: int, errmsg: str = "") -> None:
        super().__init__(f"{name}: ret {ret} {errmsg}".strip())
        self.name, self.ret, self.errmsg = name, ret, errmsg


@dataclass
class SyncState:
    keys: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})
    messages: list[pb.AddMsg] = field(default_factory=list)
    contacts: dict[str, pb.ModContact] = field(default_factory=dict)
    profile: Optional[pb.ModUserInfo] = None

    # the last `key_buf()` and the keys it was made of: every IDENTIFY and newsync sends
    # one, and the keys change only when a sync brings something
    _key_buf: Optional[tuple[tuple, pb.SyncKey]] = field(default=None, init=False,
                                                          repr=False, compare=False)

    def key_buf(self) -> pb.SyncKey:
        """The sync keys as a `SyncKey`, in key order (do not modify it: it is kept for
        the next call while the keys stay the same)."""
        items = tuple(sorted(self.keys.items()))
        cached = self._key_buf
        if cached is None or cached[0] != items:
            cached = self._key_buf = (items, pb.SyncKey(
                keys=[pb.KeyVal(key=k, val=v) for k, v in items]))
        return cached[1]

    def apply(self, resp: pb.NewSyncResponse) -> None:
        """A newsync or newinit answer: its items (messages, contacts, the profile) and
        its sync keys, as the phone keeps them."""
        for item in resp.cmd_list:
            body = CMD_ITEM_TYPES[item.cmd_id]()
            body.ParseFromString(item.cmd_buf)
            if item.cmd_id == ITEM_ADD_MSG:
                self.messages.append(body)
            elif item.cmd_id == ITEM_MOD_CONTACT:
                self.contacts[body.username] = body
            elif item.cmd_id == ITEM_DEL_CONTACT:
                self.contacts.pop(body.username, None)
            elif item.cmd_id == ITEM_MOD_USER_INFO:
                self.profile = body
        for kv in resp.key_buf.keys:
            self.keys[kv.key] = kv.val


def ssl_context_for(manifest: Manifest) -> ssl.SSLContext:
    """The context that trusts the lab's CA: one per CA file and process, shared by every
    session (a context costs ~18 KB, which was half of a phone's memory), made again if the
    file changes (a new lab at the same path)."""
    cafile = manifest.ca_cert
    try:
        st = os.stat(cafile) if cafile else None
    except OSError:
        st = None        # no such file: create_default_context says so
    return _ssl_context(cafile, st and (st.st_ino, st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: Optional[str], _stamp) -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


class Session:
    """One device of one user. Long-link timeouts are protocol seconds on `clock` (default:
    the manifest's time scale); `link_observer` watches every long link it opens."""

    def __init__(self, manifest: Manifest, username: str, password: str, *,
                 local_addr: Optional[str] = None, device_id: Optional[bytes] = None,
                 on_notify: Optional[Callable[[int], None]] = None,
                 clock: Optional[Clock] = None,
                 link_observer: Optional[LinkObserver] = None,
                 connector: Optional[Connector] = None) -> None:
        self.manifest = manifest
        self.link_observer = link_observer
        self.connector = connector   # opens the long links (`LongLink.connect`), if given
        self.clock = clock or Clock(manifest.time_scale)
        self.username, self.password = username, password
        self.local_addr = local_addr
        self.device_id = device_id or hashlib.md5(
            f"{username}:{os.getpid()}:{next(_DEVICES)}".encode()).digest()
        self.resolver = Resolver(manifest.dns_address, manifest.dns_port, local_addr=local_addr)
        self.ssl = ssl_context_for(manifest)
        self.uin = 0
        self.session_key = b""
        self.nickname = ""
        self.sync_state = SyncState()
        self.link: Optional[LongLink] = None
        self.short: Optional[ShortLink] = None
        self.on_notify = on_notify
        self.addresses: dict[str, list[str]] = {}
        self._base: Optional[tuple[tuple, pb.BaseRequest]] = None   # see base()

    # ------------------------------------------------------------------ plumbing
    def base(self) -> pb.BaseRequest:
        """The BaseRequest of this session's requests (do not modify it: it is kept while
        the session key, uin and device stay the same, as every request carries one)."""
        stamp = (self.session_key, self.uin, self.device_id)
        cached = self._base
        if cached is None or cached[0] != stamp:
            cached = self._base = (stamp, pb.BaseRequest(
                session_key=self.session_key, uin=self.uin, device_id=self.device_id,
                client_version=0x25000901, device_type="android-17"))
        return cached[1]

    async def resolve(self, host: str) -> list[str]:
        if host not in self.addresses:
            self.addresses[host] = await self.resolver.resolve(host)
        return self.addresses[host]

    async def _short(self) -> ShortLink:
        if self.short is None:
            addrs = await self.resolve(SHORT)
            h = self.manifest.hosts[SHORT]
            self.short = ShortLink(addrs, h.port, h.tls_port, self.ssl, self.local_addr)
        return self.short

    @staticmethod
    def _check(name: str, resp: Message) -> Message:
        if resp.base.ret != 0:
            raise RequestFailed(name, resp.base.ret, resp.base.errmsg)
        return resp

    async def cgi(self, cgi: str, request: Message, *, tls: bool = False,
                  check: bool = True) -> Message:
        resp = await (await self._short()).call(cgi, request, tls=tls)
        return self._check(cgi, resp) if check else resp

    async def long_call(self, name: str, request: Optional[Message], *,
                        check: bool = True, timeout: Optional[float] = None) -> Message:
        if self.link is None or not self.link.is_open:
            raise LinkClosed("long link is not open")
        if timeout is None:
            timeout = self.clock.floor_wall(DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUT_S)
        resp = await self.link.call(name, request, timeout=timeout)
        if resp is None:     # NOOP
            return None
        return self._check(name, resp) if check else resp

    async def call(self, name: str, request: Message, door: Door | str = Door.LONG,
                   check: bool = True, timeout: Optional[float] = None) -> Message:
        """A command available on both doors, through the one asked for (`Door` or its
        name; an unknown name is a ValueError naming the doors)."""
        door = Door(door)
        if door is Door.LONG:
            return await self.long_call(name, request, check=check, timeout=timeout)
        return await self.cgi(BY_NAME[name].cgi, request, check=check, tls=door is Door.TLS)

    # ------------------------------------------------------------------ login
    async def login(self) -> pb.ManualAuthResponse:
        """Resolve `short.weixin.qq.com` and log in over TLS (never in clear)."""
        req = pb.ManualAuthRequest(base=pb.BaseRequest(device_id=self.device_id),
                                   username=self.username, password=self.password)
        resp = await self.cgi("manualauth", req, tls=True)
        self.uin, self.session_key, self.nickname = resp.uin, resp.session_key, resp.nickname
        return resp

    async def connect_long(self) -> LongLink:
        """Resolve `long.weixin.qq.com`, connect to the first address that answers, identify."""
        # known after the first time: no coroutine for the look-up of every reconnect
        addrs = self.addresses.get(LONG) or await self.resolve(LONG)
        port = self.manifest.hosts[LONG].port
        last: Optional[Exception] = None
        for addr in addrs:
            try:
                link = await LongLink.connect(addr, port, local_addr=self.local_addr,
                                              on_notify=self._notified, clock=self.clock,
                                              observer=self.link_observer,
                                              connector=self.connector)
                break
            except OSError as exc:
                last = exc
        else:
            raise ConnectionError(f"no long-link address answered: {last!r}")
        # `link` becomes the session's only once identified: a request sent meanwhile on
        # the old one fails as a closed link (and is retried), never with "not identified"
        try:
            self._check("IDENTIFY", await link.call(
                "IDENTIFY", pb.IdentifyRequest(base=self.base(),
                                               key_buf=self.sync_state.key_buf()),
                timeout=self.clock.floor_wall(DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUT_S)))
        except BaseException:
            link.abort()
            raise
        self.link = link
        return link

    def _notified(self, selector: int) -> None:
        if self.on_notify is not None:
            self.on_notify(selector)

    async def logout(self) -> None:
        await self.cgi("logout", pb.LogoutRequest(base=self.base()))

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()

    # ------------------------------------------------------------------ sync
    async def sync(self, door: Door | str = Door.LONG, selector: int = 7,
                   timeout: Optional[float] = None) -> list[pb.CmdItem]:
        """newsync until `continue_flag` is 0; applies items to `sync_state`."""
        items: list[pb.CmdItem] = []
        while True:
            req = pb.NewSyncRequest(base=self.base(), selector=selector,
                                    key_buf=self.sync_state.key_buf())
            resp = await self.call("NEWSYNC", req, door, timeout=timeout)
            self.sync_state.apply(resp)
            items.extend(resp.cmd_list)
            if not resp.continue_flag:
                return items

    async def init(self) -> list[pb.CmdItem]:
        resp = await self.cgi("newinit", pb.NewSyncRequest(base=self.base()))
        self.sync_state.apply(resp)
        items = list(resp.cmd_list)
        if resp.continue_flag:
            items += await self.sync(door=Door.SHORT)
        return items


    # ------------------------------------------------------------------ messages
    async def send_text(self, to: str, content: str, *, client_msg_id: Optional[str] = None,
                        door: Door | str = Door.LONG,
                        timeout: Optional[float] = None) -> pb.MicroMsgResponse:
        cid = client_msg_id or uuid.uuid4().hex
        req = pb.NewSendMsgRequest(base=self.base(), msgs=[pb.MicroMsgRequest(
            to_user=to, content=content, msg_type=MSG_TEXT, client_msg_id=cid)])
        resp = await self.call("NEWSENDMSG", req, door, timeout=timeout)
        out = resp.msgs[0]
        if out.ret != 0:
            raise RequestFailed("NEWSENDMSG", out.ret)
        return out

    # ------------------------------------------------------------------ media
    async def upload(self, to: str, data: bytes, *, msg_type: int = 3,
                     client_media_id: Optional[str] = None, chunk: int = CHUNK,
                     start_pos: int = 0,
                     timeout: Optional[float] = None) -> pb.UploadMediaResponse:
        """Upload in chunks over the long link, resuming where the server says on -100."""
        cid = client_media_id or uuid.uuid4().hex
        pos = start_pos
        name = UPLOAD_CMD[msg_type]
        while True:
            req = pb.UploadMediaRequest(base=self.base(), client_media_id=cid, to_user=to,
                                        msg_type=msg_type, total_len=len(data), start_pos=pos,
                                        data=data[pos:pos + chunk])
            resp = await self.long_call(name, req, check=False, timeout=timeout)
            if resp.base.ret == Ret.MEDIA_OUT_OF_ORDER:
                pos = resp.start_pos
                continue
            self._check(name, resp)
            if resp.new_msg_id:
                return resp
            pos = resp.start_pos

    async def download(self, msg_id: int, msg_type: int = 3, chunk: int = CHUNK,
                       timeout: Optional[float] = None,
                       into: Optional[bytearray] = None) -> bytes:
        """A medium's bytes, in chunks over the long link; appended to `into` as they
        come (given: what it holds is not asked for again, so a broken download resumes)."""
        name = DOWNLOAD_CMD[msg_type]
        out = bytearray() if into is None else into
        while True:
            req = pb.DownloadMediaRequest(base=self.base(), msg_id=msg_id, start_pos=len(out),
                                          max_len=chunk)
            resp = await self.long_call(name, req, timeout=timeout)
            out += resp.data
            if len(out) >= resp.total_len or not resp.data:
                return bytes(out)
