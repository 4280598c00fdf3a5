"""One capture analysed by several processes: its TCP flows shared out by their 4-tuple, the
results merged into exactly the analysis one process would have made.

A TCP segment belongs to the shard its 4-tuple hashes to (a hash that is the same either way
round, so a flow lives in one process); the rest (UDP, DNS over TCP, ARP) is read by every
shard, because the names DNS gives name the flows of every shard, and reported by shard 0
alone. Shard 0 runs in the calling process, the others in forked children that send their
results back.

Who reads the file: in a classic pcap file (`Capture.in_place`) a record has no mark to find
it by but the lengths of all before it, and walking them is a good part of what reading
costs. There shard 0 alone walks the file: it analyses its own flows and hands each child,
through a pipe, the file offsets and numbers of its records (and of everyone's), which the
child reads and nothing else (`Capture.scan_handed`); shard 0 keeps fewer flows for the walk
it does for all (`owners`). Elsewhere (pcapng, older pcap, and with the events, which are
read packet by packet) every shard reads the whole file and skips the others' packets.

The merge numbers the flows again by their first packet (as one process does: tshark's
`tcp.stream` order), puts the events back in capture order and the handshakes in the order
they completed, so `testbed analyze --json` prints the same document with or without
`--jobs`. Each process holds only its own flows: memory per process follows its open flows
(the records handed on are sent a read buffer at a time).
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import signal
import socket
import struct
from array import array
from typing import Callable, Iterable, Iterator, Optional, Sequence

from .analyze import (DNS_PORTS, Analysis, Analyzer, ShardError, find_relay_legs,
                      time_scale_of)
from .packets import Segment, Share, decode, read_capture

_ENDS = struct.Struct("!IIHH").unpack_from      # IPv4 addresses and TCP ports, from 26
_IPINT: dict[str, int] = {}
BUCKETS = 16            # hash buckets per shard (`owners`)
WALK_BUCKETS = 3        # of them, what shard 0 gives up when it walks the file for all: the
#                         walk and the hand-off cost about what 3/16 of its flows' work does
#                         (bench/bench_analyze.py's captures, shards timed one by one)


def owners(shards: int, walker: bool = False) -> tuple[int, ...]:
    """The shard of each hash bucket (`Share.owners`): as many buckets each, or, when shard
    0 is the `walker` that reads the file for all, WALK_BUCKETS fewer for shard 0, its
    buckets spread evenly over the range."""
    n = BUCKETS * shards
    mine = BUCKETS - WALK_BUCKETS if walker and shards > 1 else BUCKETS
    table, others = [], 0
    for b in range(n):
        if (b * mine) % n < mine:
            table.append(0)
        else:
            table.append(1 + others % (shards - 1))
            others += 1
    return tuple(table)


def _address_int(text: str) -> int:
    n = _IPINT.get(text)
    if n is None:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        n = int.from_bytes(raw, "big")
        if len(_IPINT) < 1 << 16:
            _IPINT[text] = n
    return n


def shard_of(seg: Segment, table: Sequence[int]) -> int:
    """The shard (of `owners`' `table`) a TCP segment's flow belongs to: the same for both
    directions."""
    return table[(_address_int(seg.src) ^ _address_int(seg.dst) ^ seg.sport ^ seg.dport)
                 % len(table)]


class _Owned:
    """The packets of a capture one shard reads, counting all of them: iterated, or as
    `Capture.scan`'s `other` in front of an analyser's."""

    def __init__(self, packets: Iterable, shard: int, table: Sequence[int],
                 analyzer: Optional[Analyzer] = None) -> None:
        self.packets = packets
        self.shard = shard
        self.table = table
        self.count = 0
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None
        if analyzer is not None:
            self._decoded = analyzer._decoded

    def _ours(self, src: int, dst: int, sport: int, dport: int) -> bool:
        return self.table[(src ^ dst ^ sport ^ dport) % len(self.table)] == self.shard \
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
                or item.dport in DNS_PORTS or shard_of(item, self.table) == self.shard:
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
                        or item.dport in DNS_PORTS or shard_of(item, self.table) == self.shard:
                    yield pkt
        finally:
            self.count = count
            if pkt is not None:
                self.last_ts = pkt.ts


class _ShardGone(Exception):
    """A child stopped reading the records handed to it (it failed or died)."""

    def __init__(self, shard: int) -> None:
        super().__init__(shard)
        self.shard = shard


class _Hand:
    """Shard 0's side of the pipes the children's records go through (`Share.hand`)."""

    def __init__(self, conns: list) -> None:
        self.conns = conns                      # by shard, None at 0
        self.hand = [None if c is None else array("q") for c in conns]

    def flush(self) -> None:
        for k, (conn, records) in enumerate(zip(self.conns, self.hand)):
            if records:
                try:
                    conn.send_bytes(records)
                except (BrokenPipeError, ConnectionResetError):
                    raise _ShardGone(k) from None
                del records[:]

    def close(self) -> None:
        """Everything handed: the children's end."""
        self.flush()
        for k, conn in enumerate(self.conns):
            if conn is not None:
                try:
                    conn.send_bytes(b"")
                except (BrokenPipeError, ConnectionResetError):
                    raise _ShardGone(k) from None


def _handed(conn) -> Iterator[array]:
    """A child's records, as shard 0 sends them, to the end."""
    while True:
        data = conn.recv_bytes()
        if not data:
            return
        batch = array("q")
        batch.frombytes(data)
        yield batch


def _run_shard(path: str, shard: int, table: Sequence[int], options: dict,
               hand: Optional[_Hand] = None, handed: Optional[Iterable] = None) -> tuple:
    """Analyse one shard; its analysis and, by local flow id, each flow's first packet, the
    key of its end (the packet that ended it, or after every packet for the close) and its
    first client bytes. A relay's leg may be in another shard than the connection it
    copies: every shard keeps its legs, the merge finds them. `hand`: shard 0 walks the
    file for all; `handed`: the records it hands this shard, which reads only those (the
    count and times of the capture are then shard 0's alone)."""
    options = dict(options)
    assumed = options.pop("time_scale", None)
    options["all_legs"] = True
    cap = read_capture(path)
    meta = cap.meta if isinstance(cap.meta, dict) else None
    a = Analyzer(time_scale=time_scale_of(meta, assumed), **options)
    a.result.path = str(path)
    a.result.meta = meta
    a.result.assumed_time_scale = assumed
    owned = _Owned(cap, shard, table, a)
    if a.events:
        # the events need the number of every packet before the flow table sees it
        a.feed_packets(owned)
        seen = owned.count, owned.first_ts, owned.last_ts
    elif handed is not None:
        seen = cap.scan_handed(handed, owned.other, a.table.feed_frame), None, None
    else:
        share = Share(table, shard, DNS_PORTS, *((hand.hand, hand.flush) if hand else ()))
        seen = cap.scan(owned.other, a.table.feed_frame, share)
        if hand is not None:
            hand.close()                        # before this shard's own end: theirs sooner
    r = a.finish()
    r.packets, r.first_ts, r.last_ts = seen
    r.truncated, r.error, r.drops = cap.truncated, cap.error, dict(cap.drops or {})
    ended = a.ended()
    firsts = {id_: first for id_, first, _end, _head in ended}
    ends = {id_: (0, end) if end is not None else (1, first) for id_, first, end, _head in ended}
    return r, firsts, ends, {id_: head for id_, _first, _end, head in ended}


def _child(conn, path: str, shard: int, table: Sequence[int], options: dict,
           records=None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent stops its children
    try:
        handed = None if records is None else _handed(records)
        conn.send(("ok", _run_shard(path, shard, table, options, handed=handed)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
        if records is not None:
            records.close()


def _result(p, conn) -> tuple:
    """A child's result, or ShardError saying why there is none."""
    try:
        status, value = conn.recv()
    except EOFError:
        p.join(5)
        raise ShardError(f"analysis process {p.pid} died (exit {p.exitcode})") from None
    if status != "ok":
        raise ShardError(f"analysis process {p.pid} failed: {value}")
    return value


def analyze_sharded(path: str, jobs: int, *, all_legs: bool = False, **options) -> Analysis:
    """`analyze(path)` by `jobs` processes (see the module's docstring); the same result."""
    ctx = mp.get_context("fork")
    with read_capture(path) as cap:
        walker = cap.in_place and not options.get("keep_events", True)
    table = owners(jobs, walker)
    children = []                               # (process, its results, its records)
    try:
        for k in range(1, jobs):
            parent, child = ctx.Pipe(duplex=False)
            records = sender = None
            if walker:
                records, sender = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(child, path, k, table, options, records),
                            daemon=True)
            p.start()
            child.close()
            if records is not None:
                records.close()
            children.append((p, parent, sender))
        hand = _Hand([None] + [c[2] for c in children]) if walker else None
        try:
            results = [_run_shard(path, 0, table, options, hand=hand)]
        except _ShardGone as gone:
            p, conn, _sender = children[gone.shard - 1]
            _result(p, conn)                    # raises what the child said, or that it died
            raise ShardError(f"analysis process {p.pid} stopped reading") from None
        for p, conn, _sender in children:
            results.append(_result(p, conn))
            p.join()
    finally:
        for p, conn, sender in children:
            if p.is_alive():
                p.terminate()
                p.join()
            conn.close()
            if sender is not None:
                sender.close()
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
