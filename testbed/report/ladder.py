"""The ladder (sequence) diagram's model: columns, and one row per message or run of repeats.

`build_ladder(analysis)` turns the analysis's events into rows a renderer draws as arrows:

* columns: the phone (one per user, named by the user name its sync answers carried, up to
  `MAX_PHONE_COLUMNS`, else one shared column; phones are told apart by the uin their
  requests carry, so two phones behind one address get a column each, and what carries no
  uin, DNS and the TLS login, has its address's column), the resolver, the five lab hosts, and "other" only when something fits none;
* a row per message: DNS query and answer, the TCP handshake drawn compactly (one row: SYN,
  with the SYN-ACK as a return arrow), the TLS ClientHello and one "TLS records ×N" row per
  TLS connection, HTTP requests and responses, long-link frames, FIN (with the peer's FIN as
  a return arrow when it follows soon) and RST;
* repeats collapsed: a run of the same pattern of 1..`MAX_PERIOD` rows (same kinds, columns
  and labels up to sequence numbers; long-link frames also the same connection) becomes one
  row per pattern element labelled `×N (every ~300 s)`; a request and its reply repeated
  together (NOOP and NOOP reply) become a single row with a return arrow;
* the rows bounded: past `max_rows` the middle is left out and one row says how many.

Everything here is plain data: the HTML renderer escapes it, the tests count it.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from testbed.capture import events as ev
from testbed.lab.addressing import LONG, MAPABC, QLOGO, QPIC, SHORT

from .text import byte_size, clean


def _parties(analysis) -> tuple[dict[Any, int], dict[str, set[int]], dict[int, str]]:
    """(flow id -> the uin its requests carry, address -> the uins seen from it, uin -> user
    name) from the analysis's events (`testbed.verify.evidence`)."""
    from testbed.verify.evidence import party_of, usernames
    from testbed.verify.expect import CaptureView

    flow_uin: dict[Any, int] = {}
    at: dict[str, set[int]] = {}
    for e in getattr(analysis, "events", None) or ():
        if e.direction != "c2s" or e.kind not in (ev.FRAME, ev.HTTP_REQUEST):
            continue
        p = party_of(e)          # None for a body that does not decode
        if p is None:
            continue
        if e.flow is not None:
            flow_uin.setdefault(e.flow, p.uin)
        at.setdefault(p.address, set()).add(p.uin)
    try:
        names = usernames(CaptureView(analysis))
    except AttributeError:       # an analysis-like object without what a view needs
        names = {}
    return flow_uin, at, names

MAX_PHONE_COLUMNS = 3
MAX_PERIOD = 6           # longest repeated pattern that is collapsed (rows)
DEFAULT_MAX_ROWS = 400
PEER_FIN_ROWS = 8        # the peer's FIN joins the first FIN's row if it comes this soon
PEER_FIN_S = 10.0        # ... and within this many protocol seconds
LABEL_MAX = 96           # characters of a label drawn; the full text goes in the tooltip

HOST_COLUMNS = ((LONG, "long"), (SHORT, "short"), (MAPABC, "mapabc"), (QLOGO, "qlogo"),
                (QPIC, "qpic"))

@dataclass
class Column:
    key: str           # "phone", "phone:ADDR", "dns", a host name, "other"
    title: str         # "phone", "DNS", "long.weixin.qq.com"
    subtitle: str = ""  # addresses
    role: str = "host"  # "phone", "dns", "host", "other"


@dataclass
class Row:
    """One drawn message (or a collapsed run of them)."""

    t: float                       # protocol seconds since the first packet
    kind: str                      # the event kind (data-kind)
    a: int                         # column the arrow leaves
    b: int                         # column it points to
    label: str                     # full label (cleaned, not escaped)
    sig: tuple = ()                # what makes two rows "the same message"
    flows: list = field(default_factory=list)   # flow ids (TCP) it covers
    back: bool = False             # a return arrow in the same row (SYN-ACK, peer FIN, reply)
    back_label: str = ""
    count: int = 1                 # messages this row stands for
    times: list = field(default_factory=list)   # protocol times of each repetition
    packet: int = 0                # first packet number
    detail: list = field(default_factory=list)  # tooltip lines
    style: str = ""                # css class suffix: dns, tcp, tls, http, frame, push, noop...
    end_t: Optional[float] = None  # last repetition's time (collapsed rows)
    up: int = 0                    # TLS rows: bytes from the client / from the server
    down: int = 0
    records: int = 0               # TLS rows: records in the connection
    reply: bool = False            # a long-link reply frame or an HTTP response
    pair: bool = False             # collapsed together with its replies (one row, two arrows)
    base: str = ""                 # collapsed rows: the label without ×N and the remark
    remark: str = ""
    gap: bool = False              # an "… N more" row, not a message
    omitted: int = 0

    @property
    def collapsed(self) -> bool:
        return self.count > 1


@dataclass
class Ladder:
    columns: list[Column]
    rows: list[Row]
    messages: int          # rows before collapsing (messages drawn or collapsed)
    events: int            # events in the analysis
    omitted: int = 0       # rows left out to stay under max_rows


# ------------------------------------------------------------------ columns
def _manifest(meta: Optional[dict]) -> dict:
    m = (meta or {}).get("manifest") if isinstance(meta, dict) else None
    return m if isinstance(m, dict) else {}


def _manifest_addresses(meta: Optional[dict]) -> tuple[dict[str, str], Optional[str]]:
    """address -> host name from the manifest recorded in the capture, and the DNS address."""
    m = _manifest(meta)
    out: dict[str, str] = {}
    hosts = m.get("hosts")
    if isinstance(hosts, dict):
        for name, h in hosts.items():
            addrs = h.get("addresses") if isinstance(h, dict) else None
            if isinstance(addrs, list):
                for a in addrs:
                    if isinstance(a, str):
                        out.setdefault(a, str(name))
    dns = m.get("dns")
    dns_addr = dns.get("address") if isinstance(dns, dict) else None
    return out, dns_addr if isinstance(dns_addr, str) else None


def _host_of(value: str) -> str:
    """`short.weixin.qq.com:8080` -> `short.weixin.qq.com` (lower case)."""
    v = (value or "").strip().lower()
    if v.startswith("["):
        return v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


class _Columns:
    """Assigns every (client, server) pair of an event to ladder columns."""

    def __init__(self, analysis) -> None:
        self.by_addr, self.dns_addr = _manifest_addresses(getattr(analysis, "meta", None))
        self.reverse_dns: dict[str, str] = {}
        for name, addrs in (getattr(analysis, "dns", None) or {}).items():
            for a in addrs or ():
                self.reverse_dns.setdefault(a, name)
        self.flow_host = {f.get("id"): f.get("host", "") for f in
                          (getattr(analysis, "flows", None) or []) if isinstance(f, dict)}
        self.flow_uin, self.uins_at, self.names = _parties(analysis)
        self.clients: list[str] = []           # "uin:N" for a known user, else the address
        self.client_addrs: dict[str, str] = {}  # client key -> the address it sent from
        self.dns_seen: list[str] = []
        self.other_seen: list[str] = []
        self.host_addrs: dict[str, list[str]] = {}

    def is_dns(self, e) -> bool:
        return e.kind in (ev.DNS_QUERY, ev.DNS_ANSWER)

    def ends(self, e) -> tuple[tuple, tuple]:
        """(client endpoint, server endpoint) of an event."""
        if e.direction == "s2c":
            return tuple(e.dst), tuple(e.src)
        return tuple(e.src), tuple(e.dst)

    def server_key(self, e) -> str:
        client, server = self.ends(e)
        saddr = str(server[0]) if server else ""
        if self.is_dns(e) or (self.dns_addr and saddr == self.dns_addr and e.flow is None):
            if saddr and saddr not in self.dns_seen:
                self.dns_seen.append(saddr)
            return "dns"
        known = {h for h, _ in HOST_COLUMNS}
        for cand in (_host_of(e.host), self.by_addr.get(saddr, ""),
                     _host_of(self.flow_host.get(e.flow, "") or ""),
                     self.reverse_dns.get(saddr, "")):
            if cand in known:
                addrs = self.host_addrs.setdefault(cand, [])
                if saddr and saddr not in addrs:
                    addrs.append(saddr)
                return cand
        tag = clean(_host_of(e.host) or saddr, 40)
        if tag and tag not in self.other_seen:
            self.other_seen.append(tag)
        return "other"

    def client_key(self, e) -> str:
        """The phone an event belongs to: "uin:N" when its flow's requests carry a uin, or
        its address is only ever one user's; else its address."""
        client, _ = self.ends(e)
        addr = str(client[0]) if client else ""
        uin = self.flow_uin.get(e.flow) if e.flow is not None else None
        if uin is None and len(self.uins_at.get(addr, ())) == 1:
            (uin,) = self.uins_at[addr]
        key = f"uin:{uin}" if uin is not None else addr
        if key not in self.clients:
            self.clients.append(key)
            self.client_addrs[key] = addr
        return key

    def _phone_column(self, key: str, n: int) -> Column:
        addr = self.client_addrs.get(key, key)
        if key.startswith("uin:"):
            uin = int(key[4:])
            return Column(f"phone:{key}", clean(self.names.get(uin) or f"uin {uin}", 24),
                          clean(f"uin {uin} · {addr}", 40), "phone")
        if any(k.startswith("uin:") for k in self.clients):
            # beside the users' columns: what came from this address without a uin
            return Column(f"phone:{key}", clean(addr, 24), "without a uin (DNS, login, CDN)",
                          "phone")
        return Column(f"phone:{key}", f"phone {n}" if n else "phone", clean(addr, 40), "phone")

    def build(self, used_other: bool) -> tuple[list[Column], dict[str, int]]:
        cols: list[Column] = []
        index: dict[str, int] = {}
        if len(self.clients) <= 1:
            col = self._phone_column(self.clients[0], 0) if self.clients else \
                Column("phone", "phone", "", "phone")
            col.key = "phone"
            cols.append(col)
            index["phone"] = 0
        elif len(self.clients) <= MAX_PHONE_COLUMNS:
            for i, key in enumerate(self.clients):
                index[f"phone:{key}"] = len(cols)
                cols.append(self._phone_column(key, i + 1))
        else:
            index["phone"] = 0
            cols.append(Column("phone", "phones", f"{len(self.clients)} addresses", "phone"))
        index["dns"] = len(cols)
        dns_sub = self.dns_addr or ", ".join(self.dns_seen[:2])
        cols.append(Column("dns", "DNS", clean(dns_sub, 40), "dns"))
        for host, _short in HOST_COLUMNS:
            index[host] = len(cols)
            addrs = self.host_addrs.get(host) or [a for a, h in self.by_addr.items() if h == host]
            cols.append(Column(host, host, clean(_addr_summary(addrs), 40), "host"))
        if used_other:
            index["other"] = len(cols)
            sub = ", ".join(self.other_seen[:2]) + (" …" if len(self.other_seen) > 2 else "")
            cols.append(Column("other", "other", clean(sub, 40), "other"))
        return cols, index

    def phone_key(self, client: str) -> str:
        if 1 < len(self.clients) <= MAX_PHONE_COLUMNS:
            return f"phone:{client}"
        return "phone"


def _addr_summary(addrs: list[str]) -> str:
    if not addrs:
        return ""
    if len(addrs) == 1:
        return addrs[0]
    return f"{addrs[0]} +{len(addrs) - 1}"


# ------------------------------------------------------------------ rows
def _path(uri: str) -> str:
    return uri.split("?", 1)[0]


def _response_label(e) -> str:
    f = e.fields
    parts = [f"HTTP {clean(f.get('status'), 8)}"]
    ct = clean(f.get("content_type") or "", 40).split(";")[0].strip()
    if ct:
        parts.append(ct)
    label = " ".join(parts)
    cgi = f.get("cgi")
    extra = [clean(cgi, 30)] if cgi else []
    if f.get("body_len") is not None:
        extra.append(byte_size(f.get("body_len")))
    return label + (f" ({', '.join(extra)})" if extra else "")


def _event_label(e) -> str:
    try:
        if e.kind == ev.HTTP_RESPONSE:
            return _response_label(e)
        return clean(e.label())
    except Exception:  # noqa: BLE001 - odd fields from a damaged capture: still a row
        return clean(e.kind)


def _signature(e, a: int, b: int) -> tuple:
    f = e.fields
    k = e.kind
    if k == ev.FRAME:
        return (k, a, b, e.flow, clean(f.get("name", f.get("cmd"))), bool(f.get("reply")),
                bool(f.get("push")))
    if k == ev.HTTP_REQUEST:
        return (k, a, b, clean(f.get("method")), clean(_path(str(f.get("uri", "")))))
    if k == ev.HTTP_RESPONSE:
        return (k, a, b, clean(f.get("status")), clean(f.get("content_type")),
                clean(f.get("cgi")), clean(_path(str(f.get("request_uri", "")))))
    if k in (ev.DNS_QUERY, ev.DNS_ANSWER):
        return (k, a, b, clean(f.get("name")), f.get("rcode", 0) if k == ev.DNS_ANSWER else 0)
    if k == ev.TLS_CLIENT_HELLO:
        return (k, a, b, clean(f.get("sni", "")))
    return (k, a, b)


def _details(e, t: float) -> list[str]:
    lines = [f"packet {e.index}, t = {t:.3f} s (protocol)"]
    try:
        lines.append(f"{clean(e.src[0])}:{clean(e.src[1])} → {clean(e.dst[0])}:{clean(e.dst[1])}")
    except Exception:  # noqa: BLE001
        pass
    if e.flow is not None:
        lines.append(f"flow #{e.flow}")
    for key in ("body_len", "head_len", "length", "addresses", "sni", "reason", "host",
                "request_uri", "cmd", "seq"):
        v = e.fields.get(key)
        if v not in (None, "", [], ()):
            if isinstance(v, (list, tuple)):
                v = ", ".join(clean(x, 60) for x in v[:8])
            lines.append(f"{key}: {clean(v, 200)}")
    return lines


_STYLE = {ev.DNS_QUERY: "dns", ev.DNS_ANSWER: "dns", ev.TCP_SYN: "tcp", ev.TCP_SYNACK: "tcp",
          ev.TCP_FIN: "fin", ev.TCP_RST: "rst", ev.TLS_CLIENT_HELLO: "tls",
          ev.TLS_RECORD: "tls", ev.HTTP_REQUEST: "http", ev.HTTP_RESPONSE: "http"}


def _style(e) -> str:
    if e.kind == ev.FRAME:
        if e.fields.get("noop"):
            return "noop"
        if e.fields.get("push"):
            return "push"
        return "frame"
    return _STYLE.get(e.kind, "other")


def _messages(analysis, cols: _Columns) -> list[tuple[Row, str, str]]:
    """Rows before collapsing, with the client address and server key of each."""
    events = list(getattr(analysis, "events", None) or [])
    first = getattr(analysis, "first_ts", None)
    if first is None:
        first = events[0].ts if events else 0.0
    scale = getattr(analysis, "time_scale", 1.0) or 1.0
    handshakes_done = {h.get("flow") for h in (getattr(analysis, "handshakes", None) or [])
                       if isinstance(h, dict) and h.get("ack_seq") is not None}
    replied = {(e.flow, e.fields.get("seq")) for e in events
               if e.kind == ev.FRAME and e.direction == "s2c" and e.fields.get("reply")}
    out: list[tuple[Row, str, str]] = []
    syn_rows: dict[Any, Row] = {}
    tls_rows: dict[Any, Row] = {}
    fin_rows: dict[Any, tuple[Row, int, str]] = {}     # flow -> (row, position, direction)
    for e in events:
        t = (e.ts - first) * scale
        client = cols.client_key(e)
        server = cols.server_key(e)
        c2s = e.direction != "s2c"
        # columns are resolved later (they depend on every address seen): 0 = client, 1 = server
        a, b = (0, 1) if c2s else (1, 0)
        k = e.kind
        if k == ev.TCP_SYNACK and e.flow in syn_rows:
            row = syn_rows.pop(e.flow)
            row.back = True
            done = e.flow in handshakes_done
            row.back_label = "SYN-ACK"
            row.label = "SYN · SYN-ACK · ACK" if done else "SYN · SYN-ACK"
            row.sig = (k, "handshake", done)
            row.detail.append(f"SYN-ACK at packet {e.index}" + (", then ACK" if done else ""))
            continue
        if k == ev.TLS_RECORD and e.flow in tls_rows:
            _add_tls(tls_rows[e.flow], e, c2s)
            continue
        if k == ev.TCP_FIN and e.flow in fin_rows:
            row, pos, first_dir = fin_rows.pop(e.flow)
            if first_dir != e.direction and len(out) - pos <= PEER_FIN_ROWS and \
                    t - row.t <= PEER_FIN_S:
                row.back = True
                row.back_label = "FIN"
                row.label = "FIN · FIN"
                row.sig = row.sig + ("both",)
                row.detail.append(f"peer FIN at packet {e.index}")
                continue
        label = _event_label(e)
        row = Row(t=t, kind=k, a=a, b=b, label=label, sig=(), flows=[e.flow]
                  if e.flow is not None else [], times=[t], packet=e.index,
                  detail=_details(e, t), style=_style(e),
                  reply=k == ev.HTTP_RESPONSE or (k == ev.FRAME and bool(e.fields.get("reply"))))
        if k == ev.FRAME and e.direction == "c2s" and not e.fields.get("reply") and \
                not e.fields.get("push") and (e.flow, e.fields.get("seq")) not in replied:
            row.label += " — no reply"
            row.style = "lost"
            row.detail.append("no reply with this sequence number on the connection")
        if k == ev.TCP_SYN:
            row.label = "SYN"
            syn_rows[e.flow] = row
        elif k == ev.TLS_RECORD:
            row.packet = e.index
            _add_tls(row, e, c2s)
            tls_rows[e.flow] = row
        elif k == ev.TCP_FIN:
            fin_rows[e.flow] = (row, len(out), e.direction)
        if k == ev.TLS_RECORD:
            row.sig = (k, e.flow)     # one row per TLS connection, never collapsed
        elif k != ev.TCP_SYN:
            row.sig = _signature(e, a, b)
        else:
            row.sig = (k,)
        out.append((row, client, server))
    return out


def _add_tls(row: Row, e, c2s: bool) -> None:
    """One more TLS record in a connection's single "TLS records ×N" row."""
    n = e.fields.get("length", 0)
    n = n if isinstance(n, int) else 0
    if c2s:
        row.up += n
    else:
        row.down += n
        row.back = True
    row.records += 1
    row.label = f"TLS records ×{row.records} ({byte_size(row.up)} ↑, {byte_size(row.down)} ↓)"
    row.detail = [d for d in row.detail if not d.startswith("TLS bytes")]
    row.detail.append(f"TLS bytes: {row.up} from the client, {row.down} from the server, "
                      f"{row.records} records")


def _place(messages, cols: _Columns, index: dict[str, int]) -> list[Row]:
    rows = []
    for row, client, server in messages:
        ci = index[cols.phone_key(client)]
        si = index.get(server, index.get("other", 0))
        row.a, row.b = (ci, si) if row.a == 0 else (si, ci)
        row.sig = (row.sig, row.a, row.b)
        rows.append(row)
    return rows


def _pull_replies(rows: list[Row], reach: int = 2 * MAX_PERIOD) -> list[Row]:
    """Each heartbeat's reply drawn right after its NOOP when the rows between are other
    connections' (only heartbeats: they are what collapses, and elsewhere the rows keep
    the order of their times).

    Phones run side by side: two phones' NOOPs at the same moment arrive as NOOP, NOOP, reply,
    reply, and neither pair would collapse with the phone's earlier heartbeats. Rows of other
    TCP connections in between are concurrent with the exchange, not caused by it, so the
    reply moves up past them (the request and its reply become one row with a return arrow
    anyway); a row of the same connection in between keeps the order as captured."""
    rows = list(rows)
    for i in range(len(rows)):
        req = rows[i]
        if req.reply or not req.flows or req.style != "noop":
            continue
        mine = set(req.flows)
        for j in range(i + 1, min(len(rows), i + 1 + reach)):
            q = rows[j]
            if _is_reply_pair(req, q):         # the same flow, the other way
                if j > i + 1:
                    rows.insert(i + 1, rows.pop(j))
                break
            if mine & set(q.flows):
                break
    return rows


# ------------------------------------------------------------------ collapsing repeats
def _is_reply_pair(p: Row, q: Row) -> bool:
    """q answers p: same flow, the other way, a frame/HTTP request and its reply."""
    if p.a != q.b or p.b != q.a:
        return False
    if p.kind == ev.FRAME and q.kind == ev.FRAME:
        return p.flows == q.flows and q.reply and not p.reply
    return p.kind == ev.HTTP_REQUEST and q.kind == ev.HTTP_RESPONSE


def _all_reply_pairs(pattern: list[Row]) -> bool:
    """A pattern made only of request/reply pairs (worth collapsing even twice)."""
    if len(pattern) % 2:
        return False
    return all(_is_reply_pair(pattern[k], pattern[k + 1]) for k in range(0, len(pattern), 2))


def _every(times: list[float]) -> str:
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not gaps:
        return ""
    g = statistics.median(gaps)
    if g >= 1.0:
        return f"every ~{g:.0f} s" if g >= 10 else f"every ~{g:.1f} s"
    return f"within {times[-1] - times[0]:.1f} s"


def _base_label(row: Row) -> tuple[str, str]:
    """The label without its per-message part (the sequence number), and its remark."""
    if row.base:
        return row.base, row.remark
    m = re.fullmatch(r"(.*?)(?: seq \d+)?( — no reply)?", row.label, re.S)
    return (m.group(1), m.group(2) or "") if m else (row.label, "")


def _collapsed_label(row: Row) -> str:
    every = _every(row.times)
    return (f"{row.base} ×{row.count}{' ⇄ reply' if row.pair else ''}{row.remark}"
            + (f" ({every})" if every else ""))


def _merge(group: list[Row]) -> Row:
    """Repetitions of one pattern element -> one row labelled ×N."""
    first = group[0]
    n = sum(r.count for r in group)
    times = sorted(t for r in group for t in (r.times or [r.t]))
    flows: list = []
    for r in group:
        for f in r.flows:
            if f not in flows:
                flows.append(f)
    base, remark = _base_label(first)
    row = Row(t=first.t, kind=first.kind, a=first.a, b=first.b, label="", sig=first.sig,
              flows=flows, back=first.back, back_label=first.back_label, count=n, times=times,
              packet=first.packet, style=first.style, end_t=times[-1], reply=first.reply,
              base=base, remark=remark, pair=first.pair)
    row.label = _collapsed_label(row)
    row.detail = [f"{n} times, t = {times[0]:.1f} … {times[-1]:.1f} s (protocol)",
                  f"first: {first.label}", f"last: {group[-1].label}"] + \
        ([f"flows: {', '.join(f'#{f}' for f in flows[:12])}"] if flows else [])
    return row


def _collapse_once(rows: list[Row], max_period: int) -> list[Row]:
    out: list[Row] = []
    n = len(rows)
    sigs = [r.sig for r in rows]
    i = 0
    while i < n:
        best_p, best_reps = 1, 1
        for p in range(1, max_period + 1):
            if i + 2 * p > n:
                break
            reps = 1
            while i + (reps + 1) * p <= n and \
                    sigs[i + reps * p:i + (reps + 1) * p] == sigs[i:i + p]:
                reps += 1
            if reps >= 2 and reps * p > best_reps * best_p and \
                    (p == 1 or reps >= 3 or _all_reply_pairs(rows[i:i + p])):
                best_p, best_reps = p, reps
        if best_reps < 2:
            out.append(rows[i])
            i += 1
            continue
        p = best_p
        merged = [_merge([rows[i + r * p + k] for r in range(best_reps)]) for k in range(p)]
        j = 0
        while j < len(merged):   # a request and its reply, repeated: one row, two arrows
            if j + 1 < len(merged) and not merged[j].pair and \
                    _is_reply_pair(merged[j], merged[j + 1]):
                req, rep = merged[j], merged[j + 1]
                req.back = True
                req.back_label = "reply"
                req.pair = True
                req.sig = (req.sig, "pair")
                req.label = _collapsed_label(req)
                req.detail.append(f"each answered: {rep.label}")
                out.append(req)
                j += 2
            else:
                out.append(merged[j])
                j += 1
        i += best_reps * p
    return out


def collapse(rows: list[Row], max_period: int = MAX_PERIOD, passes: int = 3) -> list[Row]:
    """Collapse runs of a repeated pattern of up to `max_period` rows: a single row repeated
    twice or more, a pattern of request/reply pairs twice or more, any other pattern three
    times or more (twice would save little and scramble the order of a few rows). A second
    pass collapses patterns of collapsed rows (heartbeats with a periodic sync between)."""
    for _ in range(passes):
        out = _collapse_once(rows, max_period)
        if len(out) == len(rows):
            return out
        rows = out
    return rows


def bound(rows: list[Row], max_rows: int) -> tuple[list[Row], int]:
    """At most `max_rows` message rows: the head and the tail, and one row for the rest."""
    if max_rows <= 0 or len(rows) <= max_rows:
        return rows, 0
    tail = max(1, max_rows // 8)
    head = max_rows - tail
    left_out = rows[head:len(rows) - tail]
    omitted = sum(r.count for r in left_out)
    gap = Row(t=left_out[0].t, kind="gap", a=0, b=0,
              label=f"… {len(left_out)} more rows ({omitted} messages) from "
                    f"t = {left_out[0].t:.1f} s to {left_out[-1].t:.1f} s not drawn",
              gap=True, omitted=len(left_out), end_t=left_out[-1].t)
    return rows[:head] + [gap] + rows[len(rows) - tail:], len(left_out)


def build_ladder(analysis, *, max_rows: int = DEFAULT_MAX_ROWS,
                 max_period: int = MAX_PERIOD) -> Ladder:
    cols = _Columns(analysis)
    messages = _messages(analysis, cols)
    used_other = any(server == "other" for _, _, server in messages)
    columns, index = cols.build(used_other)
    rows = _place(messages, cols, index)
    rows = _pull_replies(rows)
    for r in rows:
        r.label = clean(r.label)
    collapsed = collapse(rows, max_period)
    bounded, omitted = bound(collapsed, max_rows)
    return Ladder(columns, bounded, len(rows), len(getattr(analysis, "events", []) or []),
                  omitted)


def message_rows(ladder: Ladder) -> Iterable[Row]:
    return (r for r in ladder.rows if not r.gap)
