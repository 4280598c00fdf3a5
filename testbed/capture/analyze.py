"""From a capture file to events, flows and TCP analysis: what `testbed analyze` prints and
what the verifier and the report read.

One pass over the file: packets are decoded, TCP segments reassembled per flow, stream bytes
dissected into events. Memory follows the open flows: an ended flow keeps its state for
its late packets for `LINGER_S` capture seconds, then only its row's values (about 1.2 KB) and
its handshake (`Analysis.handshakes`, about 1 KB); the events kept, which a caller can switch
off for huge captures, come on top.
"""

from __future__ import annotations

import functools
import math
import socket
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from testbed.wire.commands import Command

from . import events as ev
from .dissect import BODY_KEEP, HttpStream, LongLinkStream, TlsStream, classify, dns_events
from .dns_tcp import DnsOverTcp
from .events import Event, Kind
from .flows import FlowTable
from .legs import FIRST_BYTES, relay_legs
from .packets import Capture, Datagram, Segment, decode, read_capture
from .schema import SCHEMA_VERSION, tcp_counts
from .tcp_analysis import DUPLICATE_ACK, KEEP_ALIVE

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
SMALL_MESSAGE = 64          # bytes: a client burst this small may be a heartbeat
LONG_LIVED_S = 60.0         # protocol seconds: a connection that lived this long is long
# ... and at least this many wall seconds: at time scale 1000 a minute is 60 wall ms, what a
# slow request on a busy machine takes, not a connection kept open
LONG_LIVED_WALL_S = 1.0
PROBE_SILENCE_S = 1.0       # protocol seconds of silence before an empty ACK that is a probe
TLS_APPLICATION_DATA = 23
DNS_PORTS = (53, 5353)      # DNS and the lab's unprivileged DNS (also mDNS over UDP)
ARP_IPV4_ETHERNET = b"\x00\x01\x08\x00\x06\x04"   # hardware 1, protocol IPv4, sizes 6 and 4
MAX_ARP_KEPT = 1000         # ARP messages kept (IPv4 over Ethernet: op, sender, target)
MADE_BY = ("tap", "sniffer")   # a section comment's "how" (anything else: not the testbed's)
# Capture seconds an ended flow stays findable by its 4-tuple, for its late packets (the
# last ACK, a FIN sent again): a segment later than twice RFC 793's maximum segment
# lifetime (TIME_WAIT at its longest) cannot belong to it, and starts a new flow.
LINGER_S = 240.0
#: the keys of a flow's row in `Analysis.flows`, in order
ROW_KEYS = ("id", "client", "server", "host", "app", "kind", "requests", "closed_by",
            "fin_acks", "packets_c2s", "packets_s2c", "bytes_c2s", "bytes_s2c", "start", "end",
            "heartbeat_s", "data_segments_c2s", "data_segments_s2c", "violation", "tcp")


@dataclass(slots=True)
class FlowInfo:
    """Per-flow state the dissection keeps beside the reassembly.

    A long link's bytes go straight to its `sink` (its stream) once its first client bytes
    are in and no needle is looked for: its requests and heartbeat come from its frames, so
    `exchanges`, `burst` and `small_client_ts` are not kept for it from then on."""

    id: int
    client: tuple[str, int]
    server: tuple[str, int]
    app: Optional[str] = None
    head: bytearray = field(default_factory=bytearray)
    head_dir: str = "c2s"
    stream: Any = None
    host: str = ""
    exchanges: int = 0          # client bursts of stream bytes
    last_dir: str = ""
    tls_asked: bool = False     # TLS: client application data not answered yet
    tls_exchanges: int = 0      # TLS: client application data answered by the server's
    tls_client_spoke: bool = False      # TLS: the client sent application data
    tls_sealed_handshake: bool = False  # TLS 1.3: the client's Finished is still to come
    small_client_ts: list[float] = field(default_factory=list)
    probe_ts: list[float] = field(default_factory=list)   # keep-alives, idle empty ACKs
    needles: set = field(default_factory=set)
    tails: dict = field(default_factory=lambda: {"c2s": b"", "s2c": b""})
    burst: int = 0
    first_c2s: bytes = b""      # the client's first bytes: a relay's leg sends the same
    sink: Optional[Callable[[str, float, bytes], None]] = None


@dataclass
class Analysis:
    path: str
    packets: int = 0
    first_ts: Optional[float] = None
    last_ts: Optional[float] = None
    meta: Optional[dict] = None
    truncated: bool = False
    error: Optional[str] = None
    drops: dict = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    dns: dict[str, list[str]] = field(default_factory=dict)
    flows: list[dict] = field(default_factory=list)
    tcp: dict[str, int] = field(default_factory=dict)
    udp: list[dict] = field(default_factory=list)
    needles_seen: dict[str, list[dict]] = field(default_factory=dict)
    arp: int = 0
    arp_messages: list[dict] = field(default_factory=list)   # the first MAX_ARP_KEPT
    handshakes: list[dict] = field(default_factory=list)
    relay_legs: dict[int, int] = field(default_factory=dict)  # leg flow id -> relayed flow id
    legs_kept: bool = False     # the legs are in flows and events (`all_legs`)

    @property
    def sniffed(self) -> bool:
        """Real packets from an interface, rather than synthesised by the tap."""
        return (self.meta or {}).get("how") != "tap"

    @property
    def duration(self) -> float:
        if self.first_ts is None:
            return 0.0
        return self.last_ts - self.first_ts

    assumed_time_scale: Optional[float] = None   # used when the capture does not say

    @property
    def time_scale(self) -> float:
        """Protocol seconds per wall second: the capture's own (the tap and `testbed record
        --time-scale` write it), else `assumed_time_scale` (`--time-scale` for a foreign
        capture, say a tcpdump), else 1."""
        return time_scale_of(self.meta, self.assumed_time_scale)

    @property
    def time_scale_source(self) -> str:
        """Where `time_scale` comes from: "capture", "assumed" or "default"."""
        if recorded_time_scale(self.meta) is not None:
            return "capture"
        return "default" if self.assumed_time_scale is None else "assumed"

    def protocol_seconds(self, wall: float) -> float:
        return wall * self.time_scale

    def summary(self) -> dict:
        """The `testbed analyze --json` document (`schema.SCHEMA_PATH` is its contract)."""
        how = (self.meta or {}).get("how")
        return {
            "schema": SCHEMA_VERSION,
            "file": self.path, "packets": self.packets,
            "duration_s": round(self.duration, 6), "time_scale": self.time_scale,
            "time_scale_from": self.time_scale_source,
            "made_by": how if how in MADE_BY else None, "truncated": self.truncated,
            "error": self.error,
            "kernel_drops": {str(iface): n for iface, n in self.drops.items()},
            "dns": {name: addrs for name, addrs in sorted(self.dns.items())},
            "flows": [{**f, "tcp": tcp_counts(f["tcp"])} for f in self.flows],
            "udp": self.udp, "tcp": tcp_counts(self.tcp),
            "relay_legs": {"found": len(self.relay_legs), "kept": self.legs_kept},
        }


def _regular_interval(ts: list[float]) -> Optional[float]:
    """The median gap of a periodic series (>= 3 points, gaps within 25% of the median)."""
    if len(ts) < 3:
        return None
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    if len(gaps) < 2:
        return None
    med = statistics.median(gaps)
    if med <= 0:
        return None
    regular = [g for g in gaps if abs(g - med) <= 0.25 * med]
    if len(regular) < 0.6 * len(gaps):
        return None
    return statistics.median(regular)


class Analyzer:
    """Feed packets (or a whole file) and collect events, flows and counts.

    `body_limit`: bytes of each message body the events keep (the rest is counted in
    `body_len`); the replayer passes the profile's maximum packet length to keep them whole.
    Events are made only when they are kept or `on_event` takes them: the summary (flows,
    counts, DNS) does not need them, and on a capture of many long links making one per
    frame would cost more than everything else."""

    def __init__(self, *, keep_events: bool = True, needles: Iterable[bytes] = (),
                 on_event: Optional[Callable[[Event], None]] = None,
                 time_scale: float = 1.0, body_limit: int = BODY_KEEP,
                 all_legs: bool = False) -> None:
        self.keep_events = keep_events
        self.all_legs = all_legs
        self.events = keep_events or on_event is not None
        self.body_limit = body_limit if self.events else 0
        self.on_event = on_event
        self.needles = [n for n in needles if n]
        self.result = Analysis(path="")
        self.time_scale = time_scale
        self.ip_names: dict[str, str] = {}
        # An ended flow stays findable for its late packets, then is folded into its
        # compact record: memory follows the open flows, plus a record per ended one.
        self.table = FlowTable(on_data=self._on_data, on_flow_end=self._on_flow_end,
                               on_analysis=self._on_analysis, on_forget=self._on_forget,
                               keep_flows=False, linger=LINGER_S)
        self._lingering: dict[int, tuple] = {}   # id -> (flow, what its dissection found)
        self._records: list[tuple] = []          # `_record` of each forgotten flow
        self._cur_index = 0
        self._cur_dir = "c2s"

    # ---------------------------------------------------------------- events
    def _emit(self, event: Event) -> None:
        if self.keep_events:
            self.result.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _flow_emitter(self, info: FlowInfo):
        # a stream reports a message while it reads the bytes of the direction it came from
        # (an HTTP response delimited by the close: see _on_flow_end)
        events = self.events

        def emit(kind: Kind, ts: float, fields: dict, command: Optional[Command]) -> None:
            direction = self._cur_dir
            if kind == ev.TLS_RECORD and fields.get("content_type") == TLS_APPLICATION_DATA:
                if direction == "c2s":
                    if info.tls_sealed_handshake:
                        # TLS 1.3: the client's first such record is its Finished, and what
                        # answers it the server's session tickets: not an exchange
                        info.tls_sealed_handshake = False
                    else:
                        info.tls_asked = True
                elif info.tls_asked:
                    info.tls_asked = False
                    info.tls_exchanges += 1
                elif not info.tls_client_spoke:
                    # application data from the server before any from the client: TLS 1.3's
                    # encrypted handshake (EncryptedExtensions to Finished)
                    info.tls_sealed_handshake = True
                if direction == "c2s":
                    info.tls_client_spoke = True
            if kind == ev.TLS_CLIENT_HELLO and fields.get("sni"):
                info.host = info.host or fields["sni"]
            elif kind == ev.HTTP_REQUEST and fields.get("host"):
                info.host = info.host or fields["host"].split(":")[0]
            if events:
                src, dst = (info.client, info.server) if direction == "c2s" else \
                    (info.server, info.client)
                self._emit(Event(ts, kind, info.id, direction, src, dst, info.host, fields,
                                 self._cur_index, command))
        return emit

    # ---------------------------------------------------------------- flows
    def _flow_info(self, flow) -> FlowInfo:
        info = flow.state
        if info is None:
            info = flow.state = FlowInfo(flow.id, tuple(flow.client), tuple(flow.server))
            info.host = self.ip_names.get(flow.server[0], "")
        return info

    def _on_data(self, flow, direction: str, ts: float, data: bytes) -> None:
        info = flow.state or self._flow_info(flow)
        self._cur_dir = direction
        sink = info.sink
        if sink is not None:
            sink(direction, ts, data)
            return
        n = len(data)
        if direction == "c2s":
            if info.last_dir != "c2s":
                info.exchanges += 1
                info.burst = 0
                info.last_dir = "c2s"
            if len(info.first_c2s) < FIRST_BYTES:
                info.first_c2s = (info.first_c2s + data)[:FIRST_BYTES]
            info.burst += n
            if n <= SMALL_MESSAGE and info.burst == n:
                info.small_client_ts.append(ts)
        elif info.last_dir != direction:
            info.last_dir = direction
        if self.needles:
            self._scan(info, direction, data)
        stream = info.stream
        if stream is not None:
            stream.data(direction, ts, data)
        elif info.app is None:
            self._classify(info, direction, ts, data)
        if info.app == "longlink" and len(info.first_c2s) == FIRST_BYTES and not self.needles:
            info.sink = info.stream.data

    def _classify(self, info: FlowInfo, direction: str, ts: float, data: bytes) -> None:
        """The first bytes of a flow: which dissector reads it."""
        if info.server[1] in DNS_PORTS or info.client[1] in DNS_PORTS:
            # DNS has no first bytes to know it by: its port says it
            info.app = "dns"
            info.stream = DnsOverTcp(functools.partial(self._dns_in_flow, info))
        else:
            info.head += data
            app = classify(bytes(info.head[:64]))
            if app is None and len(info.head) < 64:
                return
            info.app = app or "unknown"
            emit = self._flow_emitter(info)
            if info.app == "tls":
                info.stream = TlsStream(emit)
            elif info.app == "http":
                info.stream = HttpStream(emit, self.body_limit)
            elif info.app == "longlink":
                info.stream = LongLinkStream(emit if self.events else None, self.body_limit)
            data = bytes(info.head)
            info.head = bytearray()
        if info.stream is not None:
            info.stream.data(direction, ts, data)

    def _scan(self, info: FlowInfo, direction: str, data: bytes) -> None:
        tail = info.tails[direction]
        window = tail + data
        for needle in self.needles:
            if needle not in info.needles and needle in window:
                info.needles.add(needle)
        keep = max(len(n) for n in self.needles) - 1
        info.tails[direction] = window[-keep:] if keep else b""

    def _on_flow_end(self, flow) -> None:
        info = self._flow_info(flow)
        if isinstance(info.stream, HttpStream):
            self._cur_dir = "s2c"
            info.stream.close()
        # the flow's packet counts can still grow (its last ACK): the row is made when
        # the table forgets it, or at finish
        self._lingering[flow.id] = (flow, self._dissected(flow, info))
        for needle in info.needles:
            self.result.needles_seen.setdefault(needle.decode("utf-8", "replace"), []).append(
                {"flow": flow.id, "app": info.app, "host": info.host})
        flow.state = None

    def _dissected(self, flow, info: FlowInfo) -> dict:
        """What the dissection of a flow found, once its stream has ended."""
        app = info.app or ("unknown" if (flow.bytes_c2s or flow.bytes_s2c) else "none")
        stream = info.stream
        if app == "tls":
            exchanges = info.tls_exchanges          # the handshake is not an exchange
        else:
            exchanges = info.exchanges
        requests = getattr(stream, "requests", 0) if stream is not None else 0
        if app in ("unknown", "tls", "none"):
            requests = exchanges
        if app == "longlink":
            beats = stream.noop_ts
        else:
            beats = sorted(info.small_client_ts + info.probe_ts)
        hb = _regular_interval(beats)
        return {"app": app, "host": info.host, "requests": requests, "exchanges": exchanges,
                "first_c2s": info.first_c2s,
                "heartbeat_s": None if hb is None else round(hb * self.time_scale, 3),
                "violation": getattr(stream, "violation", None)}

    def _on_forget(self, flow) -> None:
        _flow, found = self._lingering.pop(flow.id)
        self._records.append(self._record(flow, found))

    def _record(self, flow, found: dict) -> tuple:
        """What is kept of an ended flow once its counts are final: its row's values
        (`ROW_KEYS`; the host still to be named from DNS, which may come later), its first
        client bytes, its first packet, the packet that ended it and its server address."""
        return (self._row_values(flow, found), found["first_c2s"], flow.first_index,
                flow.end_index, flow.server[0])

    def _row(self, values: tuple, server_ip: str) -> dict:
        row = dict(zip(ROW_KEYS, values))
        row["host"] = row["host"] or self.ip_names.get(server_ip, "")
        row["fin_acks"] = dict(zip(("c2s", "s2c"), row["fin_acks"]))
        row["tcp"] = dict(row["tcp"])
        return row

    def _row_values(self, flow, found: dict) -> tuple:
        wall = flow.last_ts - flow.first_ts
        lived = wall * self.time_scale
        # a FIN from one side is a close by FIN, even if the capture ends before the other's
        closed = flow.closed_by or ("fin" if (flow.fin_c2s_ts or flow.fin_s2c_ts) else None)
        exchanges = found["exchanges"]
        if found["app"] == "longlink" or found["heartbeat_s"] is not None or exchanges >= 3 \
                or (exchanges and lived >= LONG_LIVED_S and wall >= LONG_LIVED_WALL_S):
            kind = "long"
        elif exchanges == 1 and closed is not None:
            kind = "short"
        else:
            kind = "other"          # nothing exchanged (a raced connection reset), 2, unclosed
        fin_acks = flow.fin_acks
        return (flow.id, f"{flow.client[0]}:{flow.client[1]}",
                f"{flow.server[0]}:{flow.server[1]}", found["host"], found["app"], kind,
                found["requests"], closed, (fin_acks["c2s"], fin_acks["s2c"]),
                flow.packets_c2s, flow.packets_s2c, flow.bytes_c2s, flow.bytes_s2c,
                flow.first_ts, flow.last_ts, found["heartbeat_s"], flow.data_segments_c2s,
                flow.data_segments_s2c, found["violation"], tuple(flow.analysis.items()))

    # ---------------------------------------------------------------- packets
    def feed_packet(self, pkt) -> None:
        """One packet, in capture order."""
        self.feed_packets((pkt,))

    def feed_packets(self, packets: Iterable) -> None:
        """Packets in capture order."""
        r = self.result
        plain = self.table.feed_plain
        general = self._decoded
        events = self.events
        n = 0
        pkt = None
        for pkt in packets:
            n += 1
            if n == 1 and r.first_ts is None:
                r.first_ts = pkt.ts
            if events:
                self._cur_index = pkt.index
            if not plain(pkt):
                general(pkt)
        if n:
            r.packets += n
            r.last_ts = pkt.ts

    def feed_capture(self, cap: Capture) -> None:
        """A whole capture (the hot loop of `analyze`): without events, by `Capture.scan`,
        its commonest frames taken from the read buffer by `FlowTable.feed_frame`."""
        if self.events:
            # the events need the number of every packet before the flow table sees it
            self.feed_packets(cap)
            return
        n, first, last = cap.scan(self._decoded, self.table.feed_frame)
        r = self.result
        if n:
            if r.first_ts is None:
                r.first_ts = first
            r.packets += n
            r.last_ts = last

    def _decoded(self, pkt) -> None:
        """A packet the flow table's fast path did not take: decoded, then fed."""
        item = decode(pkt)
        if type(item) is Segment:
            if self.events:
                self._cur_index = item.index
                self.table.feed(item)
                if item.flags & 0x07:               # SYN, FIN or RST
                    self._tcp_event(item)
            else:
                self.table.feed(item)
        elif item is None:
            self._other(pkt)
        else:
            self._cur_index = item.index
            self.table.feed(item)
            if item.sport in DNS_PORTS or item.dport in DNS_PORTS:
                self._dns(item.ts, item.payload, (item.src, item.sport),
                          (item.dst, item.dport), item.index, None)

    def _other(self, pkt) -> None:
        """A packet that is neither TCP nor UDP: ARP is counted, and its first messages kept."""
        data = pkt.data
        r = self.result
        if pkt.linktype == 1 and len(data) >= 14 and data[12:14] == b"\x08\x06":
            r.arp += 1
            if len(data) >= 42 and data[14:20] == ARP_IPV4_ETHERNET \
                    and len(r.arp_messages) < MAX_ARP_KEPT:
                r.arp_messages.append({
                    "packet": pkt.index, "op": int.from_bytes(data[20:22], "big"),
                    "sender": socket.inet_ntoa(data[28:32]),
                    "target": socket.inet_ntoa(data[38:42])})

    def _on_analysis(self, flow, seg, flags: int) -> None:
        # A client's keep-alive, or its empty ACK after a silence that acknowledges nothing
        # new (a duplicate ACK): a heartbeat made of TCP alone.
        if flags & (KEEP_ALIVE | DUPLICATE_ACK) and not flow.ended \
                and flow.quiet_s * self.time_scale >= PROBE_SILENCE_S \
                and seg.sport == flow.client[1] and seg.src == flow.client[0]:
            self._flow_info(flow).probe_ts.append(seg.ts)

    def _tcp_event(self, s: Segment) -> None:
        """SYN, SYN-ACK, FIN and RST as events."""
        found = self.table.lookup(s)
        if found is None:
            return
        flow, c2s = found
        flags = s.flags
        info = flow.state   # gone once the flow has ended (a late FIN)
        host = (info.host if info else "") or self.ip_names.get(flow.server[0], "")
        if flags & SYN:
            kind = ev.TCP_SYNACK if flags & ACK else ev.TCP_SYN
        elif flags & RST:
            kind = ev.TCP_RST
        else:
            kind = ev.TCP_FIN
        self._emit(Event(s.ts, kind, flow.id, "c2s" if c2s else "s2c",
                         (s.src, s.sport), (s.dst, s.dport), host, {}, s.index))

    def _dns_in_flow(self, info: FlowInfo, direction: str, ts: float, message: bytes) -> None:
        src, dst = (info.client, info.server) if direction == "c2s" else \
            (info.server, info.client)
        self._dns(ts, message, src, dst, self._cur_index, info.id)

    def _dns(self, ts: float, payload: bytes, src: tuple, dst: tuple, index: int,
             flow: Optional[int]) -> None:
        """A DNS message, from a UDP datagram or (with its flow) a TCP stream."""
        parsed = dns_events(payload)
        if parsed is None:
            return
        kind, fields = parsed
        if kind == ev.DNS_ANSWER:
            if fields["addresses"]:
                self.result.dns.setdefault(fields["name"], [])
                for a in fields["addresses"]:
                    if a not in self.result.dns[fields["name"]]:
                        self.result.dns[fields["name"]].append(a)
                    self.ip_names.setdefault(a, fields["name"])
        if self.events:
            direction = "c2s" if kind == ev.DNS_QUERY else "s2c"
            self._emit(Event(ts, kind, flow, direction, src, dst, fields["name"], fields,
                             index))

    def ended(self) -> list[tuple]:
        """Each TCP flow, after `finish`: (id, its first packet, the packet that ended it
        or None for the end of the capture, its first client bytes)."""
        return [(values[0], first, end, head)
                for values, head, first, end, _ip in self._records]

    def finish(self) -> Analysis:
        self.table.close()
        for flow, found in self._lingering.values():
            self._records.append(self._record(flow, found))
        self._lingering.clear()
        r = self.result
        r.flows = [self._row(values, ip) for values, _head, _first, _end, ip in self._records]
        r.tcp = self.table.totals()
        r.udp = [u.summary() for u in self.table.udp.values()]
        r.handshakes = self.table.handshakes
        r.flows.sort(key=lambda f: (f["start"], f["id"]))
        r.events.sort(key=lambda e: (e.ts, e.index))
        find_relay_legs(r, {id_: head for id_, _first, _end, head in self.ended()},
                        keep=self.all_legs)
        return r


def find_relay_legs(r: Analysis, first_bytes: dict[int, bytes], *, keep: bool) -> None:
    """Finds a relay's second copies of connections among `r`'s flows (`legs.relay_legs`;
    `first_bytes`: each flow's first client bytes) and, unless `keep`, takes them out of the
    flows, events, handshakes, needles and TCP totals (not out of the packet count: they
    were captured)."""
    r.relay_legs = relay_legs(r.flows, first_bytes)
    r.legs_kept = keep
    legs = set(r.relay_legs)
    if not legs or keep:
        return
    for f in r.flows:
        if f["id"] in legs:
            for name, n in f["tcp"].items():
                r.tcp[name] -= n
    r.tcp = {name: n for name, n in r.tcp.items() if n}
    r.flows = [f for f in r.flows if f["id"] not in legs]
    r.events = [e for e in r.events if e.flow not in legs]
    r.handshakes = [h for h in r.handshakes if h["flow"] not in legs]
    for needle, seen in list(r.needles_seen.items()):
        kept = [s for s in seen if s["flow"] not in legs]
        if kept:
            r.needles_seen[needle] = kept
        else:
            del r.needles_seen[needle]


class ShardError(RuntimeError):
    """One of the processes of `analyze(jobs=...)` (`shards`) failed, or died: what it
    said, or how."""


def recorded_time_scale(meta: Optional[dict]) -> Optional[float]:
    """The time scale a capture's section comment recorded, or None when it says nothing
    usable."""
    try:
        v = float((meta or {}).get("time_scale") or 0)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and math.isfinite(v) else None


def time_scale_of(meta: Optional[dict], assumed: Optional[float] = None) -> float:
    """The time scale a capture's section comment recorded, else `assumed`, else 1."""
    recorded = recorded_time_scale(meta)
    if recorded is not None:
        return recorded
    return assumed if assumed else 1.0


def analyze(path: str, *, keep_events: bool = True, needles: Iterable[bytes] = (),
            on_event: Optional[Callable[[Event], None]] = None,
            body_limit: int = BODY_KEEP, time_scale: Optional[float] = None,
            all_legs: bool = False, jobs: int = 1) -> Analysis:
    """Read a capture file and return its analysis (partial if the file is damaged);
    events keep `body_limit` bytes of each body.

    A relay's second copy of a connection (`testbed.capture.legs`: a sniffed lab that
    records or has a NAT) is left out of the flows and events unless `all_legs`;
    `on_event` sees every event as it is read, legs included.

    `time_scale`: protocol seconds per wall second to assume when the capture does not
    record its own (a tcpdump of a lab running at 100: 100). `jobs` > 1 shares the TCP
    flows out over that many processes (`shards`): the same analysis, sooner on a big
    file."""
    cap = read_capture(path)
    if jobs > 1:
        if on_event is not None:
            raise ValueError("on_event takes events in this process: not with jobs > 1")
        cap.close()
        from .shards import analyze_sharded
        return analyze_sharded(str(path), jobs, keep_events=keep_events, needles=needles,
                               body_limit=body_limit, time_scale=time_scale,
                               all_legs=all_legs)
    # the section comment is read when the file is opened, before any packet
    meta = cap.meta if isinstance(cap.meta, dict) else None
    a = Analyzer(keep_events=keep_events, needles=needles, on_event=on_event,
                 time_scale=time_scale_of(meta, time_scale), body_limit=body_limit,
                 all_legs=all_legs)
    a.result.path = str(path)
    a.result.meta = meta
    a.result.assumed_time_scale = time_scale
    a.feed_capture(cap)
    r = a.finish()
    r.truncated = cap.truncated
    r.error = cap.error
    r.drops = dict(cap.drops or {})
    return r
