"""The lab report's observations (`docs/storyboard.md`) as checks over a capture.

Statements marked (lab) must hold on a plain loopback lab; (wire) ones need real links
(a namespace or container lab with a sniffer): on a tap capture they are reported as not
applicable (`ok = None`) unless the capture shows them anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from google.protobuf.message import DecodeError

from testbed.capture import events as ev
from testbed.lab.addressing import LONG, MAPABC, QLOGO, QPIC, SHORT
from testbed.wire import pb

from .expect import CaptureView, Verdict


@dataclass(frozen=True)
class Statement:
    id: str
    scope: str          # "lab" or "wire"
    text: str
    check: Callable[[CaptureView, "Context"], tuple[Optional[bool], str]]


@dataclass
class Context:
    secrets: tuple[bytes, ...] = ()
    heartbeat_s: Optional[float] = None
    ports: dict = None

    def port(self, host: str, key: str = "port") -> Optional[int]:
        return (self.ports or {}).get(host, {}).get(key)


def _ok(cond: bool, yes: str, no: str) -> tuple[bool, str]:
    return (True, yes) if cond else (False, no)


# ------------------------------------------------------------------ the statements
def s1(v: CaptureView, c: Context):
    first = v.events[0] if v.events else None
    good = first is not None and first.kind == ev.DNS_QUERY and first.get("name") == LONG
    return _ok(good, f"packet {first.index if first else '?'}: DNS query {LONG}",
               f"first event is {first.label() if first else 'nothing'}")


def s2(v: CaptureView, c: Context):
    arp = getattr(v.analysis, "arp", 0)
    if not arp:
        return None, "no ARP in this capture (a loopback or tap capture has none)"
    return _ok(arp >= 2, f"{arp} ARP packets", f"only {arp} ARP packet")


def s3(v: CaptureView, c: Context):
    ans = v.first({"kind": ev.DNS_ANSWER, "name": LONG})
    if ans is None:
        return False, f"no DNS answer for {LONG}"
    addrs = ans.get("addresses", [])
    if len(addrs) < 2:
        return False, f"answer has {len(addrs)} A records"
    syn = next((e for e in v.events if e.kind == ev.TCP_SYN and e.ts >= ans.ts
                and e.dst[0] in addrs), None)
    return _ok(syn is not None, f"{len(addrs)} A records; SYN to {syn.dst[0] if syn else ''}",
               "no connection to any of the answered addresses")


def s4(v: CaptureView, c: Context):
    hellos = v.select({"kind": ev.TLS_CLIENT_HELLO})
    snis = {h.get("sni") for h in hellos}
    if SHORT not in snis:
        return False, f"no TLS ClientHello for {SHORT} (SNI seen: {sorted(snis)})"
    clear_logins = [e for e in v.select({"kind": ev.HTTP_REQUEST, "cgi": "manualauth"})
                    if _has_password(e.get("body", b""))]
    if clear_logins:
        return False, f"{len(clear_logins)} manualauth requests with a password in clear HTTP"
    leaked = [s for s in c.secrets if v.in_clear(s)]
    if leaked:
        return False, f"{len(leaked)} password(s) seen in clear"
    other_tls = {h.get("sni") for h in hellos} - {SHORT}
    if other_tls:
        return False, f"TLS also used for {sorted(other_tls)}"
    checked = f"; {len(c.secrets)} passwords searched, none in clear" if c.secrets else ""
    return True, f"{len(hellos)} TLS logins to {SHORT}{checked}"


def _has_password(body: bytes) -> bool:
    try:
        return bool(pb.ManualAuthRequest.FromString(body).password)
    except (DecodeError, ValueError):
        return False


def s5(v: CaptureView, c: Context):
    hs = getattr(v.analysis, "handshakes", [])
    good = [h for h in hs if h.get("syn_ack_ack") == 1 and h.get("ack_seq") == 1
            and h.get("ack_ack") == 1]
    return _ok(bool(good), f"{len(good)} handshakes SYN(0) / SYN-ACK(0, ack 1) / ACK(1, 1)",
               f"no complete three-way handshake among {len(hs)} SYNs")


def s6(v: CaptureView, c: Context):
    port = c.port(SHORT)
    reqs = [e for e in v.select({"kind": ev.HTTP_REQUEST, "host": SHORT})
            if port is None or e.dst[1] == port]
    resps = [e for e in v.select({"kind": ev.HTTP_RESPONSE, "host": SHORT})
             if port is None or e.src[1] == port]
    # the report's 314-byte packet: a head that ends with the empty line
    heads = [e.get("head_len", 0) for e in reqs] or [0]
    return _ok(bool(reqs) and bool(resps),
               f"{len(reqs)} HTTP requests / {len(resps)} responses on port {port}; request "
               f"heads {min(heads)}..{max(heads)} bytes, each ending with an empty line",
               "no HTTP exchange with the short link")


def s7(v: CaptureView, c: Context):
    short = [f for f in v.analysis.flows if f["host"] == SHORT and f["kind"] == "short"
             and f["closed_by"] == "fin"]
    return _ok(bool(short), f"{len(short)} short connections closed with FIN",
               "no short connection closed with FIN")


def s8(v: CaptureView, c: Context):
    rt = v.analysis.tcp.get("retransmission", 0) + v.analysis.tcp.get("retransmissions", 0)
    if not rt:
        return None, "no retransmission (needs a lossy link: a namespace lab with loss)"
    return True, f"{rt} retransmissions"


def s9(v: CaptureView, c: Context):
    texts = []
    for e in v.select({"kind": ev.FRAME, "name": "NEWSENDMSG", "reply": False}) + \
            v.select({"kind": ev.HTTP_REQUEST, "cgi": "newsendmsg"}):
        try:
            req = pb.NewSendMsgRequest.FromString(e.get("body", b""))
        except (DecodeError, ValueError):
            continue
        texts += [m.content for m in req.msgs if m.content]
    return _ok(bool(texts), f"{len(texts)} chat texts readable, e.g. {texts[0]!r}" if texts
               else "", "no readable chat text on the wire")


def s10(v: CaptureView, c: Context):
    q = v.first({"kind": ev.DNS_QUERY, "name": MAPABC})
    a = v.first({"kind": ev.DNS_ANSWER, "name": MAPABC})
    if q is None or a is None:
        return False, f"no DNS query and answer for {MAPABC}"
    gets = [e for e in v.select({"kind": ev.HTTP_REQUEST, "host": MAPABC}) if e.ts >= a.ts]
    return _ok(len(gets) >= 1, f"DNS {MAPABC} -> {', '.join(a.get('addresses'))}; "
                               f"{len(gets)} HTTP requests follow",
               f"no HTTP exchange with {MAPABC} after its DNS answer")


def s11(v: CaptureView, c: Context):
    sent, found = 0, 0
    for e in v.select({"kind": ev.HTTP_REQUEST, "cgi": "lbsfind"}):
        try:
            r = pb.LbsFindRequest.FromString(e.get("body", b""))
            sent += r.opcode == 1 and (r.longitude != 0 or r.latitude != 0)
        except (DecodeError, ValueError):
            pass
    for e in v.select({"kind": ev.HTTP_RESPONSE, "cgi": "lbsfind"}):
        try:
            found += pb.LbsFindResponse.FromString(e.get("body", b"")).contact_count > 0
        except (DecodeError, ValueError):
            pass
    return _ok(sent > 0 and found > 0, f"{sent} locations sent, {found} answers with people",
               f"locations sent {sent}, answers with people {found}")


def s12(v: CaptureView, c: Context):
    gets = v.select({"kind": ev.HTTP_REQUEST, "host": QLOGO, "method": "GET"})
    pngs = [e for e in v.select({"kind": ev.HTTP_RESPONSE, "host": QLOGO})
            if e.get("status") == 200 and e.get("body", b"").startswith(b"\x89PNG")]
    return _ok(bool(gets) and bool(pngs), f"{len(gets)} GETs, {len(pngs)} PNG avatars",
               f"{len(gets)} GETs to {QLOGO}, {len(pngs)} images back")


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
    return True, (f"{len(multi)} avatar responses in "
                  f"{max(f['data_segments_s2c'] for f in multi)} segments, acknowledged")


def s14(v: CaptureView, c: Context):
    servers: dict[str, set] = {}
    for f in v.analysis.flows:
        if f["host"] in (LONG, SHORT, MAPABC, QLOGO, QPIC):
            servers.setdefault(f["host"], set()).add(f["server"].rsplit(":", 1)[0])
    missing = {LONG, SHORT, MAPABC, QLOGO} - set(servers)
    if missing:
        return False, f"no traffic to {sorted(missing)}"
    names = sorted(servers)
    overlap = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
               if servers[a] & servers[b]]
    return _ok(not overlap, ", ".join(f"{h}: {' '.join(sorted(servers[h]))}" for h in names),
               f"hosts share servers: {overlap}")


def s15(v: CaptureView, c: Context):
    port = c.port(SHORT)
    flows = [f for f in v.analysis.flows if f["host"] == SHORT and f["app"] == "http"]
    cgis = {e.get("cgi") for e in v.select({"kind": ev.HTTP_REQUEST, "host": SHORT})}
    binary = [e for e in v.select({"kind": ev.HTTP_RESPONSE, "host": SHORT})
              if e.get("content_type", "").startswith("application/octet-stream")]
    need = {"getcontact", "logout"}
    if not need <= cgis or not ({"newsync", "newinit"} & cgis) or \
            not ({"statreport", "kvreport"} & cgis):
        return False, f"CGIs seen in clear: {sorted(c for c in cgis if c)}"
    longish = [f for f in flows if f["kind"] != "short"]
    on_port = all(port is None or f["server"].endswith(f":{port}") for f in flows)
    return _ok(not longish and on_port and bool(binary),
               f"{len(flows)} short HTTP connections on port {port}, binary bodies; CGIs: "
               f"{', '.join(sorted(x for x in cgis if x))}",
               f"{len(longish)} HTTP connections were not short, or bodies not binary")


def s16(v: CaptureView, c: Context):
    flows = [f for f in v.analysis.flows if f["host"] == LONG and f["app"] == "longlink"]
    names = {e.get("name") for e in v.select({"kind": ev.FRAME, "host": LONG})}
    want = {"NEWSENDMSG", "NEWSYNC"}
    media = {"UPLOADMSGIMG", "GETMSGIMG", "UPLOADVOICE", "UPLOADVIDEO"} & names
    return _ok(bool(flows) and want <= names and bool(media) and
               all(f["kind"] == "long" for f in flows),
               f"{len(flows)} long connections; commands: {', '.join(sorted(n for n in names if n))}",
               f"long-link commands seen: {sorted(n for n in names if n)}")


def s17(v: CaptureView, c: Context):
    hb = v.heartbeat_interval(LONG)
    want = c.heartbeat_s or 300.0
    if hb is None:
        return False, "fewer than two heartbeats on one long link"
    n = v.count({"kind": ev.FRAME, "noop": True, "reply": False, "direction": "c2s"})
    return _ok(abs(hb - want) <= 0.1 * want,
               f"{n} NOOPs, median interval {hb:.1f} s (protocol time)",
               f"median NOOP interval {hb:.1f} s, expected {want:g} s")


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
                           "login, friends, sync, avatars, logout, reports", s15),
    Statement("16", "lab", "long.weixin.qq.com: one long connection with a binary protocol for "
                           "messages and media", s16),
    Statement("17", "lab", "The long connection is kept alive by a heartbeat every 5 minutes",
              s17),
)


def scenario_comment(phones: int, seed: Optional[int] = None) -> dict:
    """What a capture's section comment says about the scenario it records (the storyboard
    with `phones` phones): the verifier checks the capture's counts against it."""
    return {"scenario": {"name": "storyboard", "phones": phones, "seed": seed}}


def verify_storyboard(analysis, *, secrets: Iterable[bytes] = (),
                      heartbeat_s: Optional[float] = None) -> list[Verdict]:
    """A verdict per storyboard statement."""
    meta = analysis.meta or {}
    manifest = meta.get("manifest") or {}
    ports = manifest.get("hosts", {})
    if heartbeat_s is None:
        heartbeat_s = manifest.get("heartbeat_s")
    ctx = Context(tuple(secrets), heartbeat_s, ports)
    view = CaptureView(analysis)
    out = []
    for st in STATEMENTS:
        try:
            ok, detail = st.check(view, ctx)
        except Exception as exc:  # a check that breaks on odd input is a failed check
            ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
        out.append(Verdict(st.id, st.text, ok, detail, st.scope))
    return out
