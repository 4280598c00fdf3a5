"""Scenarios: what the emulated phones do, step by step, in the order of the lab report.

`login`, `chat`, `media`, `nearby`, `heartbeat`, and `storyboard` (all of them, as the report
walked through them). Each runs against any lab given its manifest and returns a
`ScenarioResult` of checked steps and metrics; `testbed emulate` prints it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable, Optional

from testbed.lab.addressing import LONG, MAPABC
from testbed.lab.clock import Clock
from testbed.lab.manifest import Manifest
from testbed.wire import Door, pb
from testbed.wire.commands import MSG_FRIEND_REQUEST, MSG_IMAGE, MSG_VIDEO, MSG_VOICE

from .phone import Phone

ProgressFn = Callable[[float, str], None]

AMR_MAGIC = b"#!AMR\n"
AMR_BYTES_PER_S = 50 * 32        # AMR-NB 12.2 kbit/s: 50 frames of 32 bytes a second
MP4_FTYP = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
HEARTBEAT_BEATS = 3         # the heartbeat scenario waits this many intervals (and a bit)
OTHER_STEPS_WALL_S = 2.0    # about what the storyboard's steps other than heartbeats take
LONG_WAIT_S = 30.0          # wall seconds beyond which a command says how long it will take
FAST_TIME_SCALE = 100.0     # the time scale to suggest: a 300 s heartbeat every 3 s

# people nearby: around the report's university district in Beijing (Haidian)
BASE_LON, BASE_LAT = 116.3105, 39.9925
CELL = (460, 0, 4120, 17_311)


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    at: float = 0.0   # protocol seconds since the scenario started


@dataclass
class ScenarioResult:
    scenario: str
    clients: int
    steps: list[Step] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    views: list[dict] = field(default_factory=list)   # each phone's at the end, if asked

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.ok for s in self.steps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ScenarioResult":
        """The inverse of `to_dict` (other keys, such as a phone's claimed users, are left)."""
        return cls(d["scenario"], d["clients"], [Step(**s) for s in d.get("steps", [])],
                   dict(d.get("metrics", {})), d.get("wall_s", 0.0), list(d.get("errors", [])),
                   list(d.get("views", [])))


class Run:
    """The state of one scenario run: phones, clock, checked steps."""

    def __init__(self, manifest: Manifest, clients: int, duration: Optional[float],
                 progress: Optional[ProgressFn], local_addr: Optional[str],
                 rng: random.Random, user_offset: int = 0) -> None:
        self.manifest = manifest
        self.clients = clients
        self.duration = duration
        self.progress = progress or (lambda f, t: None)
        self.report: ProgressFn = self.progress   # the current step's share of the bar
        self.local_addr = local_addr
        self.rng = rng
        self.clock = Clock(manifest.time_scale)
        self.user_offset = user_offset
        self.phones: list[Phone] = []
        self.seen: list[Phone] = []     # every phone of the run, for the metrics
        self.result: Optional[ScenarioResult] = None

    def span(self, start: float, end: float) -> ProgressFn:
        """Progress of one step, drawn between `start` and `end` of the whole bar."""
        return lambda frac, text: self.progress(start + (end - start) * frac, text)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.result.steps.append(Step(name, bool(ok), detail, round(self.clock.now(), 3)))
        return ok

    def user(self, i: int) -> dict:
        users = self.manifest.users
        if not users:
            raise ValueError("the manifest lists no users")
        return users[(self.user_offset + i) % len(users)]

    async def start_phones(self, n: int, policy: Optional[str] = None) -> list[Phone]:
        async def one(i: int) -> Phone:
            u = self.user(i)
            p = Phone(self.manifest, u["username"], u["password"], clock=self.clock,
                      policy=policy, local_addr=self.local_addr, rng=self.rng)
            await p.start()
            return p
        self.phones = list(await asyncio.gather(*(one(i) for i in range(n))))
        self.seen.extend(self.phones)
        return self.phones

    async def wait_received(self, phone: Phone, msg_id: int, timeout_s: float = 60.0) -> bool:
        """Wait (protocol time) until a phone has a message by push-then-sync."""
        return await self.wait_for(lambda: msg_id in phone.metrics.received, timeout_s)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
        """Wait (protocol time, at least 5 wall seconds) until `condition()` holds."""
        deadline = time.monotonic() + max(self.clock.to_wall(timeout_s), 5.0)
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True


def photo(rng: random.Random, side: int) -> bytes:
    """A real PNG of `side` x `side` noisy pixels (~3 bytes a pixel: noise hardly
    compresses), so images on the wire are images to any dissector."""
    from testbed.png import encode_png
    return encode_png(side, side, rng.randbytes(side * side * 3))


def voice_note(rng: random.Random, seconds: int) -> bytes:
    """An AMR-NB voice note's bytes, as 2013 phones recorded them: the file magic, then
    `seconds` of 12.2 kbit/s frames (noise: the server only stores and forwards them)."""
    return AMR_MAGIC + rng.randbytes(seconds * AMR_BYTES_PER_S)


def video_clip(rng: random.Random, size: int) -> bytes:
    """A video's bytes: an MP4 `ftyp` box, then an `mdat` box of `size` bytes of noise."""
    mdat = (8 + size).to_bytes(4, "big") + b"mdat" + rng.randbytes(size)
    return MP4_FTYP + mdat


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)] if n > 1 else []


# ---------------------------------------------------------------------- the scenarios
async def login(run: Run) -> None:
    phones = await run.start_phones(run.clients)
    run.check("login over TLS", all(p.session.uin and len(p.session.session_key) == 16
                                    for p in phones), f"{len(phones)} phones")
    run.check("initial sync: own profile", all(p.session.sync_state.profile is not None
                                               and p.session.sync_state.profile.username
                                               == p.username for p in phones))
    run.check("long link identified", all(p.session.link and p.session.link.is_open
                                          for p in phones))


async def chat(run: Run) -> None:
    if run.clients < 2:
        raise ValueError("chat needs at least 2 clients")
    phones = run.phones or await run.start_phones(run.clients)
    delivered = replied = 0
    for n, (a, b) in enumerate(_pairs(len(phones))):
        pa, pb_ = phones[a], phones[b]
        r = await pa.send_text(pb_.username, f"你好 {pb_.username}, from {pa.username}")
        delivered += await run.wait_received(pb_, r.new_msg_id)
        back = await pb_.send_text(pa.username, "收到", door="short")
        replied += await run.wait_received(pa, back.new_msg_id)
        run.report((n + 1) / len(phones), "chat")
    pairs = len(_pairs(len(phones)))
    run.check("push then sync delivers (long link)", delivered == pairs, f"{delivered}/{pairs}")
    run.check("reply over the short link delivered", replied == pairs, f"{replied}/{pairs}")
    dup = sum(p.metrics.duplicates for p in phones)
    run.check("nothing delivered twice", dup == 0, f"{dup} duplicates")


async def media(run: Run) -> None:
    """Each pair: an image (served by mmsns.qpic.cn too), a voice note and a video over the
    long link, each downloaded by its receiver and compared."""
    from .web import WebClient
    if run.clients < 2:
        raise ValueError("media needs at least 2 clients")
    phones = run.phones or await run.start_phones(run.clients)
    ok = {MSG_IMAGE: 0, MSG_VOICE: 0, MSG_VIDEO: 0}
    ok_cdn = 0
    pairs = _pairs(len(phones))
    for n, (a, b) in enumerate(pairs):
        pa, pb_ = phones[a], phones[b]
        sent = {MSG_IMAGE: photo(run.rng, run.rng.randint(130, 200)),
                MSG_VOICE: voice_note(run.rng, run.rng.randint(2, 6)),
                MSG_VIDEO: video_clip(run.rng, run.rng.randint(20_000, 40_000))}
        for msg_type, data in sent.items():
            done = await pa.send_media(pb_.username, data, msg_type)
            await run.wait_received(pb_, done.new_msg_id)
            msg = next((m for m in pb_.session.sync_state.messages
                        if m.new_msg_id == done.new_msg_id), None)
            if msg is None:
                continue
            got = await pb_.download(done.new_msg_id, msg_type)   # resumes a broken one
            ok[msg_type] += got == data and msg.msg_type == msg_type \
                and msg.media.sha256 == hashlib.sha256(data).digest()
            if msg_type == MSG_IMAGE:
                web = WebClient(run.manifest, pb_.session.resolver, local_addr=run.local_addr)
                cdn = await web.get(msg.media.cdn_url)
                ok_cdn += cdn.status == 200 and cdn.body == data
        run.report((n + 1) / len(pairs), "media")
    run.check("image uploaded in chunks, downloaded identical", ok[MSG_IMAGE] == len(pairs),
              f"{ok[MSG_IMAGE]}/{len(pairs)}")
    run.check("image served by mmsns.qpic.cn", ok_cdn == len(pairs), f"{ok_cdn}/{len(pairs)}")
    run.check("voice note sent, downloaded identical", ok[MSG_VOICE] == len(pairs),
              f"{ok[MSG_VOICE]}/{len(pairs)}")
    run.check("video sent, downloaded identical", ok[MSG_VIDEO] == len(pairs),
              f"{ok[MSG_VIDEO]}/{len(pairs)}")


async def nearby(run: Run) -> None:
    phones = run.phones or await run.start_phones(run.clients)
    spots = []
    for i, p in enumerate(phones):   # everyone within ~2 km of the base point
        spots.append((BASE_LON + run.rng.uniform(-0.01, 0.01),
                      BASE_LAT + run.rng.uniform(-0.01, 0.01)))
    # first pass stores every location; second pass sees the others
    for p, (lon, lat) in zip(phones, spots):
        await p.people_nearby(lon, lat, cell=CELL, fetch_avatars=False)
    found_all = avatars_ok = located = 0
    for n, (p, (lon, lat)) in enumerate(zip(phones, spots)):
        res = await p.people_nearby(lon, lat, cell=CELL)
        located += bool(res.address and res.address.get("status") == "1"
                        and res.cell and res.cell.get("status") == "1")
        others = {q.username for q in phones if q.username != p.username}
        names = {c.username for c in res.lbs.contacts}
        dist = [c.distance_m for c in res.lbs.contacts]
        found_all += names >= others and dist == sorted(dist) and p.username not in names
        avatars_ok += all(body.startswith(b"\x89PNG\r\n\x1a\n") for body in res.avatars.values()) \
            and len(res.avatars) == len(names)
        run.report((n + 1) / len(phones), "nearby")
    run.check(f"location from {MAPABC}", located == len(phones), f"{located}/{len(phones)}")
    run.check("lbsfind finds the others, nearest first", found_all == len(phones),
              f"{found_all}/{len(phones)}")
    run.check("avatars downloaded from wx.qlogo.cn", avatars_ok == len(phones),
              f"{avatars_ok}/{len(phones)}")


def heartbeat_duration(interval: float, duration: Optional[float] = None,
                       beats: int = HEARTBEAT_BEATS) -> float:
    """Protocol seconds the heartbeat scenario runs: `duration`, or `beats` intervals and
    a fifth."""
    return duration or interval * (beats + 0.2)


def protocol_wait_s(name: str, heartbeat_s: float, duration: Optional[float] = None) -> float:
    """Protocol seconds scenario `name` spends waiting on the lab's clock (heartbeats every
    `heartbeat_s`, the manifest's interval): at time scale k that is this / k wall seconds,
    however fast the machine. The other steps take round trips, not protocol time."""
    if name in ("heartbeat", "storyboard"):
        return heartbeat_duration(heartbeat_s, duration)
    return 0.0


def expected_wall_s(name: str, heartbeat_s: float, time_scale: float,
                    duration: Optional[float] = None) -> float:
    """About how many wall seconds scenario `name` takes on a lab at `time_scale`."""
    waits = protocol_wait_s(name, heartbeat_s, duration) / time_scale
    return waits + (OTHER_STEPS_WALL_S if name == "storyboard" else 0.0)


def long_wait_notice(name: str, heartbeat_s: float, time_scale: float,
                     duration: Optional[float] = None,
                     option: str = "`testbed lab up --time-scale {k}`") -> Optional[str]:
    """What to tell a user before a run that will take more than LONG_WAIT_S wall seconds
    (None for a shorter one): how long, why, and the `option` (with `{k}` for a faster time
    scale) that makes it shorter."""
    wall = expected_wall_s(name, heartbeat_s, time_scale, duration)
    if wall <= LONG_WAIT_S:
        return None
    waits = protocol_wait_s(name, heartbeat_s, duration)
    text = (f"{name} takes about {_duration_text(wall)}: it waits {waits:g} protocol s of "
            f"heartbeats and the lab runs at time scale {time_scale:g}.")
    hints = []
    if time_scale < FAST_TIME_SCALE:
        faster = expected_wall_s(name, heartbeat_s, FAST_TIME_SCALE, duration)
        hints.append(f"a faster lab clock: {option.format(k=f'{FAST_TIME_SCALE:g}')} would "
                     f"take about {_duration_text(faster)}")
    if duration:
        hints.append("a shorter --duration")
    if hints:
        text += " Shorter with " + ", or ".join(hints) + "."
    return text


def _duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def heartbeat(run: Run, beats: int = HEARTBEAT_BEATS) -> None:
    phones = run.phones or await run.start_phones(run.clients)
    interval = max(p.policy.interval() for p in phones)
    duration = heartbeat_duration(interval, run.duration, beats)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in phones]
    t0 = run.clock.now()
    while run.clock.now() - t0 < duration:
        await asyncio.sleep(min(0.2, max(0.01, run.clock.to_wall(duration) / 50)))
        run.report(min(1.0, (run.clock.now() - t0) / duration), "heartbeat")
        if any(t.done() for t in tasks):
            break
    stop.set()
    await asyncio.gather(*tasks)
    sent = [p.metrics.heartbeats_sent for p in phones]
    expect = int(duration // interval)
    run.check(f"heartbeat every {interval:g} s", min(sent) >= expect,
              f"{min(sent)}..{max(sent)} NOOPs per phone in {duration:g} s")
    deaths = sum(p.metrics.silent_deaths for p in phones)
    answered = sum(p.metrics.heartbeats_answered for p in phones)
    gaps = [g for p in phones for g in p.metrics.intervals]
    said = f"{answered} of {sum(sent)} heartbeats answered, {deaths} silent deaths"
    nat_s = (run.manifest.extra.get("nat") or {}).get("idle_timeout_s")
    if nat_s is not None and interval > nat_s:
        # the NAT forgets a mapping idle longer than its timeout, before the next beat: the
        # link dies without a word, which is what this lab is for (the heartbeat study)
        run.check(f"links die silently behind the NAT (idle timeout {nat_s:g} s, heartbeat "
                  f"{interval:g} s)", deaths > 0, said)
    else:
        # every NOOP answered, but the one a phone may have had in flight when it stopped
        run.check("heartbeats answered", deaths == 0 and answered > 0
                  and answered >= sum(sent) - len(phones), said)
    if gaps:
        run.result.metrics["heartbeat_interval_median_s"] = sorted(gaps)[len(gaps) // 2]


async def storyboard(run: Run) -> None:
    """The report's order: DNS for the long host first, TLS login, HTTP sync on the short
    link, contacts and a friend added, chat over the long link, an image, a voice note and a
    video, people nearby with avatars, heartbeats, a sync over the short link while the long
    link is down, behaviour logs, logout."""
    n = max(2, run.clients)
    run.clients = n
    # 1. the first packet: a DNS query for long.weixin.qq.com (answered with several A)
    first = Phone(run.manifest, run.user(0)["username"], run.user(0)["password"],
                  clock=run.clock, local_addr=run.local_addr, rng=run.rng)
    addrs = await first.session.resolve(LONG)
    run.check("DNS: several A records for long.weixin.qq.com", len(addrs) >= 2, ", ".join(addrs))
    # the bar moves with the wall clock: heartbeats get their share of the expected time
    hb_wall = protocol_wait_s("storyboard", run.manifest.heartbeat_s,
                              run.duration) / run.clock.scale
    pre = OTHER_STEPS_WALL_S / (OTHER_STEPS_WALL_S + hb_wall)
    phones = [first] + [Phone(run.manifest, run.user(i)["username"], run.user(i)["password"],
                              clock=run.clock, local_addr=run.local_addr, rng=run.rng)
                        for i in range(1, n)]
    run.seen.extend(phones)
    for p in phones:
        await p.start()       # TLS login, newinit over HTTP, long link, identify
    run.phones = phones
    run.check("login over TLS; newinit over HTTP", all(p.session.uin for p in phones))
    contacts = await first.session.cgi("getcontact", pb.GetContactRequest(
        base=first.session.base(), usernames=[p.username for p in phones[1:]]))
    run.check("getcontact over the short link", len(contacts.contacts) == n - 1)
    await befriend(run, phones)
    heads = await first.session.cgi("batchgetheadimg", pb.BatchGetHeadImgRequest(
        base=first.session.base(), usernames=[p.username for p in phones]))
    run.check("avatar URLs from batchgetheadimg", len(heads.imgs) == n)
    run.progress(pre * 0.2, "chat")
    run.report = run.span(pre * 0.2, pre * 0.4)
    await chat(run)
    run.report = run.span(pre * 0.4, pre * 0.6)
    await media(run)
    run.report = run.span(pre * 0.6, pre)
    await nearby(run)
    run.report = run.span(pre, 0.99)
    await heartbeat(run)
    await sync_over_short_link(run, phones[1], phones[0])
    run.report = run.progress
    run.progress(0.99, "behaviour logs, logout")
    accepted = 0
    for p in phones:
        accepted += await p.report({1: "chat_open", 2: "nearby_open", 3: f"beats:"
                                    f"{p.metrics.heartbeats_sent}"})
        accepted += await p.report({10: "session_end"}, cgi="kvreport")
    run.check("behaviour logs reported", accepted == 4 * n, f"{accepted} items")
    for p in phones:
        await p.stop(logout=True)
    run.phones = []
    run.check("logout", True, f"{n} sessions ended")


async def befriend(run: Run, phones: list[Phone]) -> None:
    """Friends added with verifyuser over the short link, so that every pair that chats is
    friends: one phone asks (opcode 2, a greeting), the other gets the request as a message
    and accepts (opcode 3). Where the lab made everyone friends already, the first phone
    adds the second at once (opcode 1), which the server answers as done."""
    strangers = sorted({tuple(sorted(pair)) for pair in _pairs(len(phones))
                        if phones[pair[1]].username
                        not in phones[pair[0]].session.sync_state.contacts})
    if not strangers:
        resp = await phones[0].add_friend(phones[1].username, opcode=1)
        run.check("friend added with verifyuser", resp.username == phones[1].username,
                  "already friends: added at once")
        return
    added = 0
    for a, b in strangers:
        asker, other = phones[a], phones[b]
        await asker.add_friend(other.username, opcode=2, verify_content=f"我是{asker.username}")
        asked = await run.wait_for(lambda: any(
            m.msg_type == MSG_FRIEND_REQUEST and m.from_user == asker.username
            for m in other.session.sync_state.messages))
        if asked:
            await other.add_friend(asker.username, opcode=3)
            await asker.sync()
            await other.sync()
        added += (other.username in asker.session.sync_state.contacts
                  and asker.username in other.session.sync_state.contacts)
    run.check("friend added with verifyuser", added == len(strangers),
              f"{added}/{len(strangers)} requests sent and accepted")


async def sync_over_short_link(run: Run, phone: Phone, sender: Phone) -> None:
    """The short link's own sync: `phone`'s long link goes down (no NOTIFY can reach it),
    `sender` sends it a text, and `phone` fetches it with newsync over HTTP."""
    await phone.session.link.close()
    sent = await sender.send_text(phone.username, f"{phone.username}, are you there?")
    phone.sync_door = Door.SHORT
    await phone.sync()
    run.check("newsync over the short link while the long link is down",
              sent.new_msg_id in phone.metrics.received, f"message {sent.new_msg_id}")


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "login": login, "chat": chat, "media": media, "nearby": nearby, "heartbeat": heartbeat,
    "storyboard": storyboard,
}


def _collect_metrics(run: Run, phones: list[Phone]) -> None:
    m = run.result.metrics
    keys = ("heartbeats_sent", "heartbeats_answered", "silent_deaths", "links_closed",
            "reconnects", "pushes", "syncs", "tcp_connections", "duplicates", "long_bytes",
            "messages_sent")
    for k in keys:
        m[k] = m.get(k, 0) + sum(getattr(p.metrics, k) for p in phones)
    m["messages_received"] = m.get("messages_received", 0) + sum(
        len(p.metrics.received) for p in phones)


async def run_scenario(name: str, manifest: Manifest, *, clients: int = 2,
                       duration: Optional[float] = None, progress: Optional[ProgressFn] = None,
                       local_addr: Optional[str] = None, seed: Optional[int] = None,
                       user_offset: int = 0, views: bool = False) -> ScenarioResult:
    """Run one scenario in this process and return its checked steps and metrics (and,
    with `views`, what each phone showed at the end: `Phone.view`)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    if clients < 1:
        raise ValueError("clients must be at least 1")
    run = Run(manifest, clients, duration, progress, local_addr, random.Random(seed),
              user_offset)
    run.result = ScenarioResult(name, clients)
    t0 = time.monotonic()
    seen: list[Phone] = []
    try:
        await SCENARIOS[name](run)
    except Exception as exc:   # a failed step is a result, not a crash of the tool
        run.result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        seen = run.seen
        for p in run.phones:
            try:
                await p.stop()
            except Exception:   # noqa: BLE001 - closing what is left, best effort
                pass
    _collect_metrics(run, seen)
    if views:
        run.result.views = [p.view() for p in seen]
    run.result.wall_s = round(time.monotonic() - t0, 3)
    run.progress(1.0, name)
    return run.result
