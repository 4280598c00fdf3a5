"""The lab report's observations (`docs/storyboard.md`) as checks over a capture.

Statements marked (lab) must hold on a plain loopback lab; (wire) ones need real links
(a namespace or container lab with a sniffer): on a tap capture they are reported as not
applicable (`ok = None`) unless the capture shows them anyway.

Every verdict names its evidence, packet by packet, for each part of its statement, and a
statement that lists several things (the short link's functions, the long link's media) is
checked thing by thing: a missing one fails the statement by name. Where the capture's
section comment says which scenario it records and with how many phones
(`scenario_comment`), counts are checked against that too: per phone, a phone being a
client address and the uin its requests carry (`evidence.Party`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Optional
from urllib.parse import urlsplit

from google.protobuf.message import DecodeError

from testbed.capture import events as ev
from testbed.capture.connections import last_acknowledged
from testbed.capture.packets import CaptureError
from testbed.capture.resends import resends
from testbed.lab.addressing import LONG, MAPABC, QLOGO, QPIC, SHORT
from testbed.lab.profiles import load_profile
from testbed.wire import pb
from testbed.wire.commands import MSG_IMAGE, MSG_TEXT, MSG_VIDEO, MSG_VOICE

from .evidence import (Exchange, Party, by_address, delivered, frame_exchanges,
                       http_exchanges, numbers, usernames)
from .expect import CaptureView, Verdict

ARP_REQUEST, ARP_REPLY = 1, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class Statement:
    id: str
    scope: str          # "lab" or "wire"
    text: str
    check: Callable[[CaptureView, "Context"], tuple[Optional[bool], str]]


@dataclass
class Context:
    """What a verdict may know besides the events: the passwords to search for, the lab's
    heartbeat and ports (the manifest in the capture's comment), the phones the scenario
    ran with (None when the comment does not say), the time scale and the profile."""

    secrets: tuple[bytes, ...] = ()
    heartbeat_s: Optional[float] = None
    ports: Optional[dict] = None
    phones: Optional[int] = None
    scale: float = 1.0
    profile: Optional[str] = None
    bodies: Optional[str] = None

    def port(self, host: str, key: str = "port") -> Optional[int]:
        return (self.ports or {}).get(host, {}).get(key)


def _ok(cond: bool, yes: str, no: str) -> tuple[bool, str]:
    return (True, yes) if cond else (False, no)


# ------------------------------------------------------------------ the statements
def s1(v: CaptureView, c: Context):
    first = v.events[0] if v.events else None
    good = first is not None and first.kind == ev.DNS_QUERY and first.get("name") == LONG
    return _ok(good, f"packet {first.index if first else '?'}: DNS query for {LONG} from "
                     f"{first.src[0] if first else '?'}",
               f"the first event is {first.label() if first else 'nothing'}")


def s2(v: CaptureView, c: Context):
    msgs = v.analysis.arp_messages
    if not msgs:
        return None, "no ARP in this capture (a loopback or tap capture has none)"
    for q in (m for m in msgs if m["op"] == ARP_REQUEST):
        reply = next((m for m in msgs if m["op"] == ARP_REPLY and m["packet"] > q["packet"]
                      and m["sender"] == q["target"] and m["target"] == q["sender"]), None)
        if reply is not None:
            return True, (f"packet {q['packet']}: {q['sender']} asks for {q['target']}; "
                          f"packet {reply['packet']}: {q['target']} replies")
    asked = sum(m["op"] == ARP_REQUEST for m in msgs)
    return None, f"{len(msgs)} ARP packets, {asked} requests, none answered by its target"


def s3(v: CaptureView, c: Context):
    ans = v.first({"kind": ev.DNS_ANSWER, "name": LONG})
    if ans is None:
        return False, f"no DNS answer for {LONG}"
    addrs = ans.get("addresses", [])
    if len(addrs) < 2:
        return False, f"packet {ans.index}: the answer has {len(addrs)} A record(s)"
    asker = ans.dst[0]
    syn = next((e for e in v.events if e.kind == ev.TCP_SYN and e.ts >= ans.ts
                and e.dst[0] in addrs and e.src[0] == asker), None)
    if syn is None:
        return False, f"{asker} never connects to an answered address ({', '.join(addrs)})"
    return True, (f"packet {ans.index}: {len(addrs)} A records ({', '.join(addrs)}) for "
                  f"{asker}; packet {syn.index}: its SYN to {syn.dst[0]}:{syn.dst[1]}")


def s4(v: CaptureView, c: Context):
    hellos = v.select({"kind": ev.TLS_CLIENT_HELLO})
    tls_port = c.port(SHORT, "tls_port")
    logins = [h for h in hellos if h.get("sni") == SHORT]
    if not logins:
        return False, (f"no TLS ClientHello for {SHORT} (SNI seen: "
                       f"{sorted({h.get('sni') for h in hellos})})")
    problems = []
    off_port = [h for h in logins if tls_port is not None and h.dst[1] != tls_port]
    if off_port:
        problems.append(f"{numbers(h.index for h in off_port)}: TLS off port {tls_port}")
    other = sorted({h.get("sni") for h in hellos} - {SHORT})
    if other:
        problems.append(f"TLS also used for {other}")
    clear = [x for x in http_exchanges(v, cgis=("manualauth",))
             if _has_password(x.request.get("body", b""))]
    if clear:
        problems.append(f"{numbers(x.request.index for x in clear)}: manualauth with a "
                        f"password in clear HTTP")
    leaked = [s for s in c.secrets if v.in_clear(s)]
    if leaked:
        problems.append(f"{len(leaked)} password(s) seen in clear")
    if c.phones is not None and len(logins) != c.phones:
        problems.append(f"{len(logins)} TLS logins for the {c.phones} phones the capture "
                        f"was made with (one each)")
    if problems:
        return False, "; ".join(problems)
    searched = (f"{len(c.secrets)} passwords searched, none in clear" if c.secrets
                else "no password given to search for (--secret)")
    return True, (f"{len(logins)} TLS logins to {SHORT}:{tls_port or logins[0].dst[1]} "
                  f"({numbers(h.index for h in logins)}; by address "
                  f"{by_address(h.src[0] for h in logins)}), no other TLS; no manualauth "
                  f"in clear; {searched}")


def _has_password(body: bytes) -> bool:
    try:
        return bool(pb.ManualAuthRequest.FromString(body).password)
    except (DecodeError, ValueError):
        return False


def s5(v: CaptureView, c: Context):
    hs = v.analysis.handshakes
    good = [h for h in hs if h.get("syn_ack_ack") == 1 and h.get("ack_seq") == 1
            and h.get("ack_ack") == 1]
    bad = [h for h in hs if h not in good]
    if not good:
        return False, "no complete three-way handshake"
    if bad:
        return False, (f"{len(bad)} of {len(hs)} handshakes with other numbers, e.g. "
                       f"{numbers(bad[0].get('packets', []))}")
    return True, (f"{len(good)} of {len(hs)} handshakes SYN(0) / SYN-ACK(0, ack 1) / "
                  f"ACK(1, 1), e.g. {numbers(good[0].get('packets', []))}")


def s6(v: CaptureView, c: Context):
    port = c.port(SHORT)
    xs = http_exchanges(v, SHORT)
    if not xs:
        return False, "no HTTP exchange with the short link"
    shaken = {h["flow"] for h in v.analysis.handshakes}
    problems = []
    off = [x for x in xs if port is not None and x.request.dst[1] != port]
    if off:
        problems.append(f"{numbers(x.request.index for x in off)}: off port {port}")
    unanswered = [x for x in xs if x.response is None]
    if unanswered:
        problems.append(f"{numbers(x.request.index for x in unanswered)}: unanswered")
    cold = [x for x in xs if x.request.flow not in shaken]
    if cold:
        problems.append(f"{numbers(x.request.index for x in cold)}: no handshake before")
    if problems:
        return False, "; ".join(problems)
    heads = [x.request.get("head_len", 0) for x in xs]
    return True, (f"{len(xs)} HTTP requests on port {port or xs[0].request.dst[1]}, each "
                  f"after its handshake and answered (e.g. {xs[0].packets()}); request heads "
                  f"{min(heads)}..{max(heads)} bytes, each ending with the empty line")


def s7(v: CaptureView, c: Context):
    short = [f for f in v.analysis.flows if f["host"] == SHORT and f["kind"] == "short"
             and f["closed_by"] == "fin"]
    if not short:
        return False, "no short connection closed with FIN"
    fins = {}
    for e in v.select({"kind": ev.TCP_FIN}):
        fins.setdefault(e.flow, e)
    acked, unacked = [], []
    for f in short:
        fin = fins.get(f["id"])
        ack = f["fin_acks"].get(fin.direction) if fin is not None else None
        (acked if ack else unacked).append((fin, ack))
    if unacked:
        return False, (f"{len(unacked)} of {len(short)} short connections' first FIN not "
                       f"acknowledged by the other side"
                       + (f", e.g. packet {unacked[0][0].index}" if unacked[0][0] else ""))
    fin, ack = acked[0]
    who = "server" if fin.direction == "s2c" else "client"
    return True, (f"{len(short)} short connections closed after their exchange, each FIN "
                  f"acknowledged by the other side (e.g. packet {fin.index}: the {who}'s FIN; "
                  f"packet {ack}: its ACK)")


def s8(v: CaptureView, c: Context):
    flows = [f for f in v.analysis.flows if f["tcp"].get("retransmission")]
    if not flows:
        return None, "no retransmission (needs a lossy link: a namespace lab with loss)"
    try:
        found = resends(v.analysis.path, [(f["client"], f["server"]) for f in flows])
    except (CaptureError, OSError) as exc:
        return None, f"cannot read the capture again for its retransmissions: {exc}"
    chain = next((r for r in found if r.backs_off and r.acked), None)
    if chain is None:
        return None, (f"{sum(f['tcp']['retransmission'] for f in flows)} retransmissions, "
                      f"none a segment sent again after a timeout, again after a longer one, "
                      f"then acknowledged")
    gaps = ", then ".join(f"{g * c.scale:.3g} s" for g in chain.gaps)
    return True, (f"a {chain.length}-byte segment from {chain.src[0]}:{chain.src[1]} sent in "
                  f"{numbers(p for p, _ in chain.sends)} (again after {gaps}), acknowledged "
                  f"in packet {chain.acked[0]}")


def s9(v: CaptureView, c: Context):
    if c.bodies not in (None, "clear"):
        return None, f"profile {c.profile} sends bodies {c.bodies}, not in clear"
    texts = []
    for x in frame_exchanges(v, ("NEWSENDMSG",)) + http_exchanges(v, cgis=("newsendmsg",)):
        msg = x.request.message()
        if msg is not None:
            texts += [(x, m.content) for m in msg.msgs if m.content]
    if not texts:
        return False, "no readable chat text on the wire"
    senders = {x.party for x, _ in texts if x.party is not None}
    if c.phones is not None and len(senders) < c.phones:
        return False, (f"chat text readable from {len(senders)} of the {c.phones} phones "
                       f"({', '.join(map(str, sorted(senders)))})")
    doors = sorted({"long link" if x.request.kind == ev.FRAME else "short link"
                    for x, _ in texts})
    x, text = texts[0]
    return True, (f"{len(texts)} chat texts readable ({' and '.join(doors)}; "
                  f"{numbers(t[0].request.index for t in texts)}) from {len(senders)} phones, "
                  f"e.g. packet {x.request.index}: {text!r}")


def s10(v: CaptureView, c: Context):
    q = v.first({"kind": ev.DNS_QUERY, "name": MAPABC})
    a = v.first({"kind": ev.DNS_ANSWER, "name": MAPABC})
    if q is None or a is None:
        return False, f"no DNS query and answer for {MAPABC}"
    addrs = a.get("addresses", [])
    xs = [x for x in http_exchanges(v, MAPABC) if x.request.ts >= a.ts
          and x.request.dst[0] in addrs and x.request.src[0] == q.src[0]]
    if not xs:
        return False, (f"no HTTP exchange between {q.src[0]} and {', '.join(addrs)} after "
                       f"the answer (packet {a.index})")
    unanswered = [x for x in xs if x.response is None]
    if unanswered:
        return False, f"{numbers(x.request.index for x in unanswered)}: unanswered"
    return True, (f"packet {q.index}: DNS query for {MAPABC}; packet {a.index}: "
                  f"{', '.join(addrs)}; then {len(xs)} HTTP exchanges between {q.src[0]} and "
                  f"that server, each answered (e.g. {xs[0].packets()})")


def s11(v: CaptureView, c: Context):
    names = usernames(v)
    located: dict[str, int] = {}         # username -> packet of its first location
    sent = []
    found = []
    for x in http_exchanges(v, cgis=("lbsfind",)):
        req = x.request.message()
        if req is None or req.opcode != 1 or (req.longitude == 0 and req.latitude == 0):
            continue
        sent.append(x)
        who = names.get(req.base.uin)
        resp = x.response.message() if x.response is not None else None
        if resp is not None and resp.contacts:
            found.append((x, list(resp.contacts)))
        if who is not None:
            located.setdefault(who, x.request.index)
    if not sent:
        return False, "no location sent (lbsfind with coordinates)"
    if not found:
        return False, f"{len(sent)} locations sent ({numbers(x.request.index for x in sent)}); " \
                      f"no answer lists anybody"
    # sent before the answer that lists it, not before the request: phones that ask at once
    # are answered in any order (the other's location may reach the store in between)
    for x, people in found:
        for ct in people:
            at = located.get(ct.username)
            if at is None or at > x.response.index:
                return False, (f"packet {x.response.index} lists {ct.username}, whose location "
                               f"the capture never shows being sent before it (usernames "
                               f"known: {len(names)})")
    locators = {x.party for x in sent if x.party is not None}
    if c.phones is not None and len(locators) < c.phones:
        return False, f"{len(locators)} of the {c.phones} phones sent their location"
    x, people = found[0]
    ct = people[0]
    return True, (f"{len(sent)} locations sent by {len(locators)} phones "
                  f"({numbers(x.request.index for x in sent)}); {len(found)} answers list "
                  f"people, each one who had sent a location before: e.g. packet "
                  f"{x.response.index} lists {ct.username} at {ct.distance_m} m (located in "
                  f"packet {located[ct.username]})")


def s12(v: CaptureView, c: Context):
    given = _avatar_urls(v)
    gets = [x for x in http_exchanges(v, QLOGO) if x.request.get("method") == "GET"]
    if not gets:
        return False, f"no GET to {QLOGO}"
    bad = [x for x in gets if x.response is None or x.response.get("status") != 200
           or not x.response.get("body", b"").startswith(PNG_MAGIC)]
    if bad:
        return False, f"{numbers(x.request.index for x in bad)}: GETs not answered with an image"
    strangers = [x for x in gets if x.request.get("uri", "").split("?")[0] not in given]
    if strangers:
        return False, (f"{numbers(x.request.index for x in strangers)}: GETs for a URL no "
                       f"server answer gave as a user's avatar")
    return True, (f"{len(gets)} avatar GETs to {QLOGO}, each answered with a PNG (e.g. "
                  f"{gets[0].packets()}), each a URL the short link gave for a user")


def _avatar_urls(v: CaptureView) -> set[str]:
    """Paths of the avatar URLs the short link handed out (lbsfind, batchgetheadimg)."""
    urls = []
    for x in http_exchanges(v, cgis=("lbsfind", "batchgetheadimg")):
        msg = x.response.message() if x.response is not None else None
        if isinstance(msg, pb.LbsFindResponse):
            urls += [ct.avatar_url for ct in msg.contacts]
        elif isinstance(msg, pb.BatchGetHeadImgResponse):
            urls += [u for img in msg.imgs for u in (img.url_small, img.url_big)]
    return {urlsplit(u).path for u in urls if u}


def s13(v: CaptureView, c: Context):
    flows = [f for f in v.analysis.flows if f["host"] == QLOGO]
    if not flows:
        return False, f"no flow to {QLOGO}"
    multi = [f for f in flows if f.get("data_segments_s2c", 0) >= 2]
    if not v.analysis.sniffed:
        return None, (f"{len(multi)} avatar responses span several segments (synthesised "
                      f"by the tap; real segmentation needs a sniffer)")
    if not multi:
        return None, "every avatar response fit in one segment on this link (large MTU)"
    acked = [f for f in multi if f["fin_acks"].get("s2c")]
    if not acked:
        return None, f"{len(multi)} avatar responses in several segments, none seen acknowledged"
    f = max(acked, key=lambda f: f["data_segments_s2c"])
    return True, (f"{len(acked)} avatar responses in several segments, acknowledged by the "
                  f"client to the server's FIN (e.g. flow {f['id']}: {f['data_segments_s2c']} "
                  f"segments, its FIN acknowledged in packet {f['fin_acks']['s2c']})")


#: what each host of statement 14 serves, as the capture shows it
SERVES = {LONG: "the long link", SHORT: "CGIs and the TLS login", MAPABC: "location",
          QLOGO: "avatars", QPIC: "images"}


def s14(v: CaptureView, c: Context):
    servers: dict[str, set] = {}
    apps: dict[str, set] = {}
    for f in v.analysis.flows:
        if f["host"] in SERVES:
            servers.setdefault(f["host"], set()).add(f["server"].rsplit(":", 1)[0])
            apps.setdefault(f["host"], set()).add(f["app"])
    missing = sorted(set(SERVES) - set(servers))
    if missing:
        return False, f"no traffic to {', '.join(missing)}"
    wrong = [h for h, want in ((LONG, "longlink"), (SHORT, "http"), (MAPABC, "http"),
                               (QLOGO, "http"), (QPIC, "http")) if want not in apps[h]]
    if wrong:
        return False, f"{', '.join(wrong)}: not serving what the report says ({apps})"
    names = sorted(servers)
    overlap = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
               if servers[a] & servers[b]]
    return _ok(not overlap, "; ".join(f"{h} ({SERVES[h]}): {' '.join(sorted(servers[h]))}"
                                      for h in names),
               f"hosts share servers: {overlap}")


#: statement 15's functions of the short link: (name, the CGIs any of which shows it)
SHORT_FUNCTIONS = (
    ("friends (get)", ("getcontact",)),
    ("friends (add)", ("verifyuser",)),
    ("message sync", ("newsync",)),
    ("avatars", ("batchgetheadimg",)),
    ("logout", ("logout",)),
    ("behaviour reports", ("statreport", "kvreport")),
)


def s15(v: CaptureView, c: Context):
    port = c.port(SHORT)
    tls_port = c.port(SHORT, "tls_port")
    found, missing, problems = [], [], []
    logins = [f for f in v.analysis.flows if f["host"] == SHORT and f["app"] == "tls"
              and f["requests"] >= 1]
    if logins:
        found.append(f"login: {len(logins)} TLS connections to port "
                     f"{tls_port or logins[0]['server'].rsplit(':', 1)[1]}")
    else:
        missing.append("login (no answered TLS connection to the short link)")
    for name, cgis in SHORT_FUNCTIONS:
        xs = http_exchanges(v, SHORT, cgis)
        done = [x for x in xs if x.ok]
        if done:
            found.append(f"{name}: {'/'.join(cgis)} {_answered(done)}")
        else:
            missing.append(f"{name} (no {' or '.join(cgis)} answered OK"
                           + (f"; {len(xs)} asked" if xs else "") + ")")
    flows = [f for f in v.analysis.flows if f["host"] == SHORT and f["app"] == "http"]
    longish = [f for f in flows if f["kind"] != "short"]
    if longish:
        problems.append(f"{len(longish)} HTTP connections were not short")
    if port is not None and any(not f["server"].endswith(f":{port}") for f in flows):
        problems.append(f"HTTP off port {port}")
    cgi_msgs = [e for x in http_exchanges(v, SHORT) if x.request.get("cgi")
                for e in (x.request, x.response) if e is not None]
    text = [e for e in cgi_msgs if not e.get("headers", {}).get("content-type", "")
            .startswith(BINARY)]
    if text:
        problems.append(f"{numbers(e.index for e in text)}: CGI bodies not {BINARY}")
    if c.phones is not None:
        for name, cgis in (("logged out", ("logout",)),
                           ("reported behaviour", ("statreport", "kvreport"))):
            parties = {x.party for x in http_exchanges(v, SHORT, cgis) if x.ok}
            if len(parties) < c.phones:
                problems.append(f"{len(parties)} of the {c.phones} phones {name}")
        if len(logins) != c.phones:
            problems.append(f"{len(logins)} TLS logins for {c.phones} phones")
    if missing or problems:
        return False, "; ".join((["missing: " + ", ".join(missing)] if missing else [])
                                + problems)
    return True, (f"{len(flows)} short HTTP connections on port {port or '?'}, binary bodies "
                  f"({BINARY}); " + "; ".join(found))


def _answered(xs: list[Exchange]) -> str:
    """"packet 109 -> 112 OK" or "3 times, e.g. packet 109 -> 112 OK"."""
    return (f"{xs[0].packets()} OK" if len(xs) == 1
            else f"{len(xs)} times, e.g. {xs[0].packets()} OK")


#: statement 16's kinds of media: (name, msg_type, upload command, download command)
LONG_MEDIA = (("images", MSG_IMAGE, "UPLOADMSGIMG", "GETMSGIMG"),
              ("voice", MSG_VOICE, "UPLOADVOICE", "DOWNLOADVOICE"),
              ("video", MSG_VIDEO, "UPLOADVIDEO", "DOWNLOADVIDEO"))


def s16(v: CaptureView, c: Context):
    port = c.port(LONG)
    flows = [f for f in v.analysis.flows if f["host"] == LONG and f["app"] == "longlink"]
    if not flows:
        return False, f"no long-link connection to {LONG}"
    found, missing, problems = [], [], []
    syncs = [x for x in frame_exchanges(v, ("NEWSYNC",)) if x.ok]
    got = {}
    for x in syncs:
        for m in delivered(x):
            got.setdefault(m.msg_type, x)
    sends = [x for x in frame_exchanges(v, ("NEWSENDMSG",)) if x.ok]
    (found if sends else missing).append(
        f"send text: NEWSENDMSG {_answered(sends)}" if sends else "send text (NEWSENDMSG)")
    text = got.get(MSG_TEXT)
    (found if text else missing).append(
        f"receive text: NEWSYNC packet {text.response.index}" if text
        else "receive text (a NEWSYNC reply with a text)")
    for name, msg_type, up, down in LONG_MEDIA:
        ups = [x for x in frame_exchanges(v, (up,)) if x.ok]
        downs = [x for x in frame_exchanges(v, (down,)) if x.ok]
        if ups and downs and msg_type in got:
            found.append(f"{name}: {up} {numbers(x.request.index for x in ups[:1])}, "
                         f"NEWSYNC {numbers([got[msg_type].response.index])}, {down} "
                         f"{numbers(x.request.index for x in downs[:1])}")
        else:
            missing.append(f"{name} ({up}, a NEWSYNC reply with one, {down}: "
                           f"{len(ups)}/{int(msg_type in got)}/{len(downs)} seen)")
    not_long = [f for f in flows if f["kind"] != "long"]
    if not_long:
        problems.append(f"{len(not_long)} long-link connections were not long")
    if port is not None and any(not f["server"].endswith(f":{port}") for f in flows):
        problems.append(f"long link off port {port}")
    links = _long_links_by_party(v, flows)
    overlapping = _overlapping(v, links)
    if overlapping:
        problems.append(f"{', '.join(map(str, overlapping))}: two long connections at once")
    if c.phones is not None:
        if len(links) != c.phones:
            problems.append(f"{len(links)} phones with a long link, the capture was made "
                            f"with {c.phones}")
        several = [p for p, fs in links.items() if len(fs) != 1]
        if several:
            problems.append(f"{', '.join(map(str, several))}: more than one long connection")
    if missing or problems:
        return False, "; ".join((["missing: " + ", ".join(missing)] if missing else [])
                                + problems)
    per = ", ".join(f"{p}: {len(fs)}" for p, fs in sorted(links.items()))
    return True, (f"{len(flows)} long connections to port {port or '?'}, one per phone at a "
                  f"time ({per}), binary frames; " + "; ".join(found))


def _overlapping(v: CaptureView, links: dict[Party, list[dict]]) -> list[Party]:
    """The phones that used a long connection after their next one began. A connection's
    last packet may come after that and prove nothing: on a lossy link the kernel of a
    phone that gave a connection up still sends what was left in its send buffer, resends
    what was not acknowledged, and resets the server's late packets; so where the last
    packet is later, what counts is the last time the phone took in (acknowledged) bytes
    the server sent on it, which a closed socket no longer does."""
    late = [(a, b) for fs in links.values() for a, b in zip(fs, fs[1:]) if a["end"] > b["start"]]
    if not late:
        return []
    try:
        used = last_acknowledged(v.analysis.path,
                                 [(a["client"], a["server"]) for a, _ in late])
    except (CaptureError, OSError):
        used = {}
    return [p for p, fs in links.items()
            if any(used.get((a["client"], a["server"]), a["end"]) > b["start"]
                   for a, b in zip(fs, fs[1:]) if a["end"] > b["start"])]


def _long_links_by_party(v: CaptureView, flows: list[dict]) -> dict[Party, list[dict]]:
    """Each phone's long-link connections, in order: a connection is the phone's whose
    IDENTIFY it carried."""
    rows = {f["id"]: f for f in flows}
    out: dict[Party, list[dict]] = {}
    for x in frame_exchanges(v, ("IDENTIFY",)):
        p, f = x.party, rows.get(x.request.flow)
        if p is not None and f is not None and f not in out.get(p, []):
            out.setdefault(p, []).append(f)
    for fs in out.values():
        fs.sort(key=lambda f: f["start"])
    return out


def s17(v: CaptureView, c: Context):
    want = c.heartbeat_s or 300.0
    noops = frame_exchanges(v, ("NOOP",))
    by_flow: dict[int, list[Exchange]] = {}
    for x in noops:
        if x.request.host == LONG:
            by_flow.setdefault(x.request.flow, []).append(x)
    gaps = {fl: [(b.request.ts - a.request.ts) * c.scale for a, b in zip(xs, xs[1:])]
            for fl, xs in by_flow.items()}
    beating = {fl: statistics.median(g) for fl, g in gaps.items() if g}
    if not beating:
        return False, "fewer than two heartbeats on one long link"
    hb = statistics.median([g for gs in gaps.values() for g in gs])
    problems = []
    off = {fl: m for fl, m in beating.items() if abs(m - want) > 0.1 * want}
    if off:
        problems.append("; ".join(f"flow {fl}: median interval {m:.1f} s" for fl, m in
                                  off.items()) + f", expected {want:g} s")
    unanswered = [x for xs in by_flow.values() for x in xs if x.response is None]
    if unanswered:
        problems.append(f"{numbers(x.request.index for x in unanswered)}: NOOPs unanswered")
    if c.phones is not None:
        links = _long_links_by_party(v, [f for f in v.analysis.flows if f["host"] == LONG])
        kept = [p for p, fs in links.items() if any(f["id"] in beating for f in fs)]
        if len(kept) < c.phones:
            problems.append(f"{len(kept)} of the {c.phones} phones kept their long link "
                            f"alive with heartbeats")
    n = sum(len(xs) for xs in by_flow.values())
    if problems:
        return False, f"median NOOP interval {hb:.1f} s; " + "; ".join(problems)
    return True, (f"{n} NOOPs on {len(beating)} long links, each answered; median interval "
                  f"{hb:.1f} s (protocol time)")


STATEMENTS: tuple[Statement, ...] = (
    Statement("1", "lab", "The first packet is a DNS query for long.weixin.qq.com", s1),
    Statement("2", "wire", "ARP request from the hotspot and the phone's ARP reply", s2),
    Statement("3", "lab", "The DNS answer carries several A records; the client connects to "
                          "one of them", s3),
    Statement("4", "lab", "Only the password login travels inside TLS; the password never "
                          "appears in clear", s4),
    Statement("5", "lab", "TCP three-way handshake: SYN (0), SYN-ACK (0, ack 1), ACK (1, 1)", s5),
    Statement("6", "lab", "HTTP exchanges on the short link's port; request heads end with "
                          "an empty line", s6),
    Statement("7", "lab", "A short connection closes after its exchange with FIN", s7),
    Statement("8", "wire", "Timeout retransmission, then acknowledgement", s8),
    Statement("9", "lab", "Chat text travels readable on the wire (lab-report-2013)", s9),
    Statement("10", "lab", "DNS query and answer for mapi.mapabc.com, then HTTP exchanges", s10),
    Statement("11", "lab", "The location is sent and stored; nearby users come back", s11),
    Statement("12", "lab", "Avatar download: HTTP GET to wx.qlogo.cn returns an image", s12),
    Statement("13", "wire", "The image response spans two TCP segments, acknowledged", s13),
    Statement("14", "lab", "Different functions use different servers", s14),
    Statement("15", "lab", "short.weixin.qq.com: short HTTP connections with binary bodies for "
                           "login, friends (get, add), message sync, avatars, logout, "
                           "behaviour reports", s15),
    Statement("16", "lab", "long.weixin.qq.com: one long connection with a binary protocol to "
                           "send and receive text, voice, images, video", s16),
    Statement("17", "lab", "The long connection is kept alive by a heartbeat every 5 minutes",
              s17),
)


def scenario_comment(phones: int, seed: Optional[int] = None) -> dict:
    """What a capture's section comment says about the scenario it records (the storyboard
    with `phones` phones): the verifier checks the capture's counts against it."""
    return {"scenario": {"name": "storyboard", "phones": phones, "seed": seed}}


def scenario_phones(meta: Optional[dict]) -> Optional[int]:
    """The phones a capture's comment says its storyboard ran with, or None."""
    sc = (meta or {}).get("scenario")
    if not isinstance(sc, dict) or sc.get("name") != "storyboard":
        return None
    n = sc.get("phones")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _bodies(profile: Optional[str]) -> Optional[str]:
    """How a profile sends bodies ("clear"...), None when the profile is not known here."""
    if not isinstance(profile, str):
        return None
    try:
        return load_profile(profile).bodies
    except (ValueError, OSError):
        return None


def verify_storyboard(analysis, *, secrets: Iterable[bytes] = (),
                      heartbeat_s: Optional[float] = None,
                      phones: Optional[int] = None) -> list[Verdict]:
    """A verdict per storyboard statement. Counts are checked against the phones the
    capture's comment says the storyboard ran with, else against `phones` (`verify
    --phones`: a capture the testbed did not make), else not at all."""
    meta = analysis.meta or {}
    manifest = meta.get("manifest") or {}
    ports = manifest.get("hosts", {})
    if heartbeat_s is None:
        heartbeat_s = manifest.get("heartbeat_s")
    profile = meta.get("profile") or manifest.get("profile")
    ctx = Context(tuple(secrets), heartbeat_s, ports, scenario_phones(meta) or phones,
                  analysis.time_scale, profile, _bodies(profile))
    view = CaptureView(analysis)
    out = []
    for st in STATEMENTS:
        try:
            ok, detail = st.check(view, ctx)
        except Exception as exc:  # a check that breaks on odd input is a failed check
            ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
        out.append(Verdict(st.id, st.text, ok, detail, st.scope))
    return out
