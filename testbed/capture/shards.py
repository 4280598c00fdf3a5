"""One capture analysed by several processes: its TCP flows shared out by their 4-tuple, the
results merged into exactly the analysis one process would have made.

Every process reads the whole file. A TCP segment belongs to the shard its 4-tuple hashes
to (a hash that is the same either way round, so a flow lives in one process); the rest
(UDP, DNS over TCP, ARP) is read by every shard, because the names DNS gives name the flows
of every shard, and reported by shard 0 alone. Shard 0 runs in the calling process, the
others in forked children that send their results back.

The merge numbers the flows again by their first packet (as one process does: tshark's
`tcp.stream` order), puts the events back in capture order and the handshakes in the order
they completed, so `testbed analyze --json` prints the same document with or without
`--jobs`. Each process holds only its own flows: memory per process follows its open flows.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import signal
import socket
import struct
from typing import Iterable, Iterator, Optional

from .analyze import DNS_PORTS, Analysis, Analyzer, find_relay_legs, time_scale_of
from .packets import Segment, decode, read_capture

_ENDS = struct.Struct("!IIHH").unpack_from      # IPv4 addresses and TCP ports, from 26
_IPINT: dict[str, int] = {}


def _address_int(text: str) -> int:
    n = _IPINT.get(text)
    if n is None:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        n = int.from_bytes(raw, "big")
        if len(_IPINT) < 1 << 16:
            _IPINT[text] = n
    return n


def shard_of(seg: Segment, shards: int) -> int:
    """The shard a TCP segment's flow belongs to: the same for both directions."""
    return (_address_int(seg.src) ^ _address_int(seg.dst) ^ seg.sport ^ seg.dport) % shards


class _Owned:
    """The packets of a capture one shard reads, counting all of them: iterated, or as
    `Capture.scan`'s `other` in front of an analyser's."""

    def __init__(self, packets: Iterable, shard: int, shards: int,
                 analyzer: Optional[Analyzer] = None) -> None:
        self.packets = packets
        self.shard = shard
        self.shards = shards
        self.count = 0
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None
        if analyzer is not None:
            self._decoded = analyzer._decoded

    def _ours(self, src: int, dst: int, sport: int, dport: int) -> bool:
        return (src ^ dst ^ sport ^ dport) % self.shards == self.shard \
            or sport in DNS_PORTS or dport in DNS_PORTS

    def other(self, pkt) -> None:
        """`Capture.scan`'s `other` (its `share` skipped the others' plain frames): what
        the fast path did not take, to the analyser if ours."""
        data = pkt.data
        if pkt.linktype == 1 and len(data) >= 54 and data[12:15] == b"\x08\x00\x45" \
                and data[23] == 6:
            self._decoded(pkt)                  # `share` found it ours
            return
        item = decode(pkt)
        if type(item) is not Segment or item.sport in DNS_PORTS \
                or item.dport in DNS_PORTS or shard_of(item, self.shards) == self.shard:
            self._decoded(pkt)

    def __iter__(self) -> Iterator:
        count = 0
        pkt = None
        try:
            for pkt in self.packets:
                count += 1
                if count == 1:
                    self.first_ts = pkt.ts
                data = pkt.data
                if pkt.linktype == 1 and len(data) >= 54 and data[12:15] == b"\x08\x00\x45" \
                        and data[23] == 6:
                    if self._ours(*_ENDS(data, 26)):
                        yield pkt
                    continue
                item = decode(pkt)
                if type(item) is not Segment or item.sport in DNS_PORTS \
                        or item.dport in DNS_PORTS or shard_of(item, self.shards) == self.shard:
                    yield pkt
        finally:
            self.count = count
            if pkt is not None:
                self.last_ts = pkt.ts


def _run_shard(path: str, shard: int, shards: int, options: dict) -> tuple:
    """Analyse one shard; its analysis and, by local flow id, each flow's first packet, the
    key of its end (the packet that ended it, or after every packet for the close) and its
    first client bytes. A relay's leg may be in another shard than the connection it
    copies: every shard keeps its legs, the merge finds them."""
    options = dict(options)
    assumed = options.pop("time_scale", None)
    options["all_legs"] = True
    cap = read_capture(path)
    meta = cap.meta if isinstance(cap.meta, dict) else None
    a = Analyzer(time_scale=time_scale_of(meta, assumed), **options)
    a.result.path = str(path)
    a.result.meta = meta
    a.result.assumed_time_scale = assumed
    owned = _Owned(cap, shard, shards, a)
    if a.events:
        # the events need the number of every packet before the flow table sees it
        a.feed_packets(owned)
        seen = owned.count, owned.first_ts, owned.last_ts
    else:
        seen = cap.scan(owned.other, a.table.feed_frame, (shard, shards, DNS_PORTS))
    r = a.finish()
    r.packets, r.first_ts, r.last_ts = seen
    r.truncated, r.error, r.drops = cap.truncated, cap.error, dict(cap.drops or {})
    ended = a.ended()
    firsts = {id_: first for id_, first, _end, _head in ended}
    ends = {id_: (0, end) if end is not None else (1, first) for id_, first, end, _head in ended}
    return r, firsts, ends, {id_: head for id_, _first, _end, head in ended}


def _child(conn, path: str, shard: int, shards: int, options: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent stops its children
    try:
        conn.send(("ok", _run_shard(path, shard, shards, options)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def analyze_sharded(path: str, jobs: int, *, all_legs: bool = False, **options) -> Analysis:
    """`analyze(path)` by `jobs` processes (see the module's docstring); the same result."""
    ctx = mp.get_context("fork")
    children = []
    try:
        for k in range(1, jobs):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(child, path, k, jobs, options), daemon=True)
            p.start()
            child.close()
            children.append((p, parent))
        results = [_run_shard(path, 0, jobs, options)]
        for p, conn in children:
            try:
                status, value = conn.recv()
            except EOFError:
                raise RuntimeError(f"analysis process {p.pid} died "
                                   f"(exit {p.exitcode})") from None
            if status != "ok":
                raise RuntimeError(f"analysis process {p.pid} failed: {value}")
            results.append(value)
            p.join()
    finally:
        for p, conn in children:
            if p.is_alive():
                p.terminate()
                p.join()
            conn.close()
    return merge(results, all_legs=all_legs)


def merge(results: list[tuple], *, all_legs: bool = False) -> Analysis:
    """One analysis from the shards' (analysis, first packets, end keys, first client
    bytes), shard 0 first; a relay's legs left out unless `all_legs`."""
    base = results[0][0]

    def reported(k: int, row: dict) -> bool:
        # DNS over TCP was read by every shard: shard 0's copy counts
        shared = int(row["client"].rpartition(":")[2]) in DNS_PORTS or \
            int(row["server"].rpartition(":")[2]) in DNS_PORTS
        return k == 0 or not shared

    order = []                                  # (first packet, shard, local id)
    for k, (r, firsts, _ends, _heads) in enumerate(results):
        order += [(firsts[row["id"]], k, row["id"]) for row in r.flows if reported(k, row)]
    order.sort()
    new_id = {(k, local): i for i, (_, k, local) in enumerate(order)}

    out = Analysis(path=base.path, packets=base.packets, first_ts=base.first_ts,
                   last_ts=base.last_ts, meta=base.meta, truncated=base.truncated,
                   error=base.error, drops=base.drops, dns=base.dns, udp=base.udp,
                   arp=base.arp, arp_messages=base.arp_messages,
                   assumed_time_scale=base.assumed_time_scale)
    tcp: dict[str, int] = {}
    handshakes, needles, events = [], [], []
    heads: dict[int, bytes] = {}
    for k, (r, _firsts, ends, first_bytes) in enumerate(results):
        heads.update((new_id[(k, local)], b) for local, b in first_bytes.items()
                     if (k, local) in new_id)
        for row in r.flows:
            if (k, row["id"]) in new_id:
                out.flows.append({**row, "id": new_id[(k, row["id"])]})
                for name, n in row["tcp"].items():
                    tcp[name] = tcp.get(name, 0) + n
        for hs in r.handshakes:
            if (k, hs["flow"]) in new_id:
                handshakes.append({**hs, "flow": new_id[(k, hs["flow"])]})
        for needle, seen in r.needles_seen.items():
            for entry in seen:
                if (k, entry["flow"]) in new_id:
                    needles.append((ends[entry["flow"]], needle,
                                    {**entry, "flow": new_id[(k, entry["flow"])]}))
        mine = []
        for e in r.events:
            if e.flow is None:
                if k == 0:
                    mine.append(e)
            elif (k, e.flow) in new_id:
                e.flow = new_id[(k, e.flow)]
                mine.append(e)
        events.append(mine)
    out.tcp = tcp
    out.flows.sort(key=lambda f: (f["start"], f["id"]))
    out.handshakes = sorted(handshakes, key=lambda h: h["packets"][-1])
    for _key, needle, entry in sorted(needles, key=lambda t: t[0]):
        out.needles_seen.setdefault(needle, []).append(entry)
    out.events = list(heapq.merge(*events, key=lambda e: (e.ts, e.index)))
    find_relay_legs(out, heads, keep=all_legs)
    return out
