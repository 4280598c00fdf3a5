"""Reading capture files (pcap and pcapng) and decoding their packets to TCP/UDP.

`read_capture(path)` streams a file and yields `Packet`s (or, by `Capture.scan`, hands each
frame to a callback from its read buffer, a `Packet` only for those the callback leaves);
it never reads the whole file into memory, never raises for damage inside the file (it
stops at the damage and says where in `Capture.error`, with `Capture.truncated` set when
the file simply ends early), and raises `CaptureError` only when the file is not a capture
at all (missing, empty, unknown magic).

Supported:
- pcap: both byte orders, microsecond (a1b2c3d4) and nanosecond (a1b23c4d) magic, the
  Kuznetzov/"modified" variant (a1b2cd34), any snaplen; files older than format 2.3, whose
  records hold the original length before the captured one (as libpcap reads them: always
  swapped before 2.3, and in 2.3 when the "captured" length is the larger);
- pcapng: several sections (either byte order each), Interface Description Blocks with
  if_tsresol (power of 10 or of 2) and if_tsoffset, Enhanced, Simple and obsolete Packet
  Blocks, Interface Statistics Blocks (isb_ifdrop -> `Capture.drops`), section comments
  (`Capture.comments`, and `Capture.meta` = the first one that is a JSON object); any other
  block is skipped.

A compressed capture (gzip, zstd, xz, bzip2, lz4) is refused with a `CaptureError` that
says so: decompress it first.

`decode(pkt)` turns a packet into a `Segment` (TCP), a `Datagram` (UDP) or None, for link
types Ethernet (with 802.1Q VLAN tags, stacked QinQ/802.1ad ones included, and PPPoE
session frames), Linux cooked (SLL, SLL2), raw IP, BSD null and OpenBSD loop, over IPv4
(options) and IPv6 (extension headers skipped). IP fragments are
skipped, the first one too: its transport header describes the whole datagram, and IP
reassembly is not done here. It is the hot path: struct.unpack_from on the frame, no
per-packet objects but the result tuple.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import struct
from typing import Callable, Container, Iterable, Iterator, NamedTuple, Optional, Sequence

__all__ = [
    "CaptureError", "Capture", "Packet", "Segment", "Datagram", "Interface",
    "read_capture", "decode",
    "FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR",
    "LINKTYPE_NULL", "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LOOP",
    "LINKTYPE_LINUX_SLL", "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL2",
]

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

CHUNK = 1 << 20                 # bytes read from the file at a time
MAX_RECORD = 64 << 20           # a record claiming more than this is damage, not data
STD_MAX_PACKET = 262144         # libpcap's/Wireshark's usual maximum packet size


class CaptureError(Exception):
    """The file is not a capture at all (missing, empty, unknown magic)."""


class Packet(NamedTuple):
    """One captured frame. `iface` indexes `Capture.interfaces` (always 0 for pcap)."""

    index: int          # 1-based frame number, as Wireshark counts
    ts: float           # seconds since the epoch
    linktype: int
    data: bytes         # the captured bytes (caplen)
    origlen: int        # the length of the frame on the wire
    iface: int


class Segment(NamedTuple):
    """A TCP segment. `seglen` is the length on the wire (from the IP header), which is
    what sequence numbers count; `payload` holds the captured part of it (shorter only when
    the frame was cut by the snaplen)."""

    index: int
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int          # the 9 TCP flag bits (NS CWR ECE URG ACK PSH RST SYN FIN)
    window: int         # the raw 16-bit window field (unscaled)
    payload: bytes
    seglen: int
    wscale: int = -1    # window scale option shift, -1 when absent
    mss: int = 0        # MSS option, 0 when absent
    sack_perm: bool = False
    sack: bool = False  # SACK blocks present
    tsval: Optional[int] = None
    tsecr: Optional[int] = None

    @property
    def options_ts(self) -> Optional[tuple[int, int]]:
        """(TSval, TSecr) of the timestamp option, or None."""
        return None if self.tsval is None else (self.tsval, self.tsecr)

    @property
    def flag_str(self) -> str:
        return "".join(c for c, b in (("S", SYN), ("A", ACK), ("F", FIN), ("R", RST),
                                      ("P", PSH), ("U", URG)) if self.flags & b)


class Datagram(NamedTuple):
    """A UDP datagram (payload bounded by the UDP length and the captured bytes)."""

    index: int
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


class Interface(NamedTuple):
    linktype: int
    snaplen: int
    tsresol: int        # units per second (10**6 for microseconds, 2**n for binary)
    name: str = ""
    tsoffset: int = 0   # seconds added to every timestamp (if_tsoffset)


_new = tuple.__new__


# ============================================================================= reading
def read_capture(path) -> "Capture":
    """Open a pcap or pcapng file. Raises CaptureError if it is missing or not a capture."""
    return Capture(path)


class Capture:
    """An opened capture file; iterate it for `Packet`s (streamed, bounded memory).

    Attributes, valid after (and growing while) iterating: `format` ("pcap"/"pcapng"),
    `truncated`, `error`, `comments` (every section comment), `meta` (the first one that is
    a JSON object), `os` and `userappl` (the section header's shb_os, shb_userappl),
    `interfaces`, `drops` (iface -> kernel drops from the last Interface Statistics Block),
    `stats` (iface -> all ISB counters), `packets_read`. The section header and the
    interfaces before the first packet are read on opening; statistics blocks usually come
    after the packets, so iterate to the end for `stats` and `drops`. Iterating again
    re-reads the file from the start.
    """

    def __init__(self, path) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(4)
        except FileNotFoundError:
            raise CaptureError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise CaptureError(f"{self.path}: is a directory") from None
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc}") from None
        if len(head) < 4:
            raise CaptureError(f"{self.path}: {'empty file' if not head else 'too short'}"
                               " (not a capture)")
        if head == b"\x0a\x0d\x0d\x0a":
            self.format = "pcapng"
        elif head in _PCAP_MAGIC:
            self.format = "pcap"
        elif _compression(head):
            tool = _compression(head)
            raise CaptureError(f"{self.path}: a {tool[0]}-compressed file: decompress it "
                               f"first ({tool[1]})")
        else:
            raise CaptureError(f"{self.path}: not a pcap or pcapng file "
                               f"(magic {head.hex()})")
        self._reset()
        # Read the file header now so that format details, interfaces (pcap) and the section
        # comments and meta (pcapng) are known before iterating.
        self._it = self._iterate()
        self._pending: Optional[Packet] = None
        self._primed = False
        self._prime()

    def _reset(self) -> None:
        self.truncated = False
        self.error: Optional[str] = None
        self.comments: list[str] = []
        self.meta: Optional[dict] = None
        self.os: Optional[str] = None
        self.userappl: Optional[str] = None
        self.interfaces: list[Interface] = []
        self.drops: dict[int, int] = {}
        self.stats: dict[int, dict[str, int]] = {}
        self.packets_read = 0
        self.sections = 0
        self.nanosecond = False
        self.byte_order = ""
        self.snaplen = 0
        self.version: Optional[tuple[int, int]] = None      # pcap format version
        self.linktype: Optional[int] = None
        self._last_ts = 0.0

    # -------------------------------------------------------------- iteration plumbing
    def _prime(self) -> None:
        """Run the reader up to its first packet (parses headers eagerly)."""
        if not self._primed:
            self._primed = True
            self._pending = next(self._it, None)

    def __iter__(self) -> Iterator[Packet]:
        if self._it is None:            # already consumed: read again from the start
            self._reset()
            self._it = self._iterate()
            self._primed = False
        self._prime()
        it, first = self._it, self._pending
        self._it = None
        self._pending = None
        if first is None:
            return iter(())
        # the reader itself, not a generator around it: one frame less per packet
        return itertools.chain((first,), it)

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        it = self._it
        if it is not None:
            it.close()

    @property
    def damaged(self) -> bool:
        return self.error is not None

    def __repr__(self) -> str:
        return (f"<Capture {self.path!r} {self.format} packets_read={self.packets_read}"
                f"{' truncated' if self.truncated else ''}"
                f"{' error=' + repr(self.error) if self.error else ''}>")

    def _fail(self, msg: str, truncated: bool = False) -> None:
        if self.error is None:
            self.error = msg
        if truncated:
            self.truncated = True

    def _iterate(self) -> Iterator[Packet]:
        try:
            f = open(self.path, "rb", buffering=0)
        except OSError as exc:
            self._fail(f"cannot open: {exc}")
            return iter(())
        return self._iter_pcap(f) if self.format == "pcap" else self._iter_pcapng(f)

    # -------------------------------------------------------------- pcap
    def _pcap_header(self, f: io.RawIOBase) -> Optional[tuple]:
        """Read the file header: how to read the records (`_PcapLayout`), or None when
        the header itself is cut short."""
        hdr = _read_exact(f, 24)
        if len(hdr) < 24:
            self._fail(f"truncated pcap file header ({len(hdr)} of 24 bytes)", True)
            return None
        endian, nano, modified = _PCAP_MAGIC[hdr[:4]]
        self.byte_order = "little" if endian == "<" else "big"
        self.nanosecond = nano
        vmaj, vmin, _zone, _sigfigs, snaplen, network = struct.unpack_from(
            endian + "HHiIII", hdr, 4)
        self.version = (vmaj, vmin)
        linktype = network & 0xFFFF
        self.snaplen = snaplen
        self.linktype = linktype
        self.interfaces.append(Interface(linktype, snaplen, 10 ** 9 if nano else 10 ** 6))
        # Before format 2.3 a record held the original length first: always swap them
        # back; 2.3 files were written both ways, so swap only where "captured" > "original".
        swapped = 2 if (vmaj, vmin) < (2, 3) else 1 if (vmaj, vmin) == (2, 3) else 0
        return _PcapLayout(_RECORD[endian], 24 if modified else 16, swapped, linktype,
                           max(STD_MAX_PACKET, snaplen if snaplen <= MAX_RECORD else 0),
                           1_000_000_000 if nano else 1_000_000)

    def _iter_pcap(self, f: io.RawIOBase, resume: Optional[tuple] = None) -> Iterator[Packet]:
        """The packets of a pcap file; `resume`: (file offset, packets before it, the
        file's layout) to go on from where `scan` stopped."""
        with f:     # closed at the end, or when the reader is closed
            if resume is None:
                layout = self._pcap_header(f)
                if layout is None:
                    return
                base, index = 24, 0          # base: the file offset of buf[0]
            else:
                base, index, layout = resume
                f.seek(base)
            unpack, rlen, swapped, linktype, limit, div = layout
            buf = b""
            pos = 0
            read = f.read
            new = _new
            P = Packet
            while True:
                n = len(buf)
                if pos + rlen > n:
                    more = read(CHUNK)
                    if not more:
                        if pos < n:
                            self._fail(f"truncated packet record header at byte {base + pos} "
                                       f"(packet {index + 1})", True)
                        break
                    buf = buf[pos:] + more
                    base += pos
                    pos = 0
                    continue
                sec, frac, caplen, origlen = unpack(buf, pos)
                if swapped and (swapped == 2 or caplen > origlen):
                    caplen, origlen = origlen, caplen
                if caplen > limit:
                    self._fail(f"corrupt packet record at byte {base + pos} (packet {index + 1}):"
                               f" captured length {caplen} exceeds the maximum {limit}")
                    break
                end = pos + rlen + caplen
                if end > n:
                    need = end - n
                    more = _read_exact(f, max(CHUNK, need))
                    if len(more) < need:
                        self._fail(f"truncated packet record at byte {base + pos} "
                                   f"(packet {index + 1}): {caplen} bytes announced, "
                                   f"{n - pos - rlen + len(more)} present", True)
                        break
                    buf = buf[pos:] + more
                    base += pos
                    pos = 0
                    end = rlen + caplen
                index += 1
                data = buf[pos + rlen:end]
                pos = end
                self.packets_read = index
                yield new(P, (index, sec + frac / div, linktype, data, origlen, 0))

    def scan(self, other: Callable[[Packet], object],
             take: Optional[Callable[..., bool]] = None,
             share: Optional["Share"] = None
             ) -> tuple[int, Optional[float], Optional[float]]:
        """Read every packet, as iterating does, to a callback: faster than iterating
        when most packets are of one kind that `take` handles from the file's bytes.

        `take(buf, at, caplen, origlen, ts, index)` is offered each Ethernet frame, as
        `caplen` bytes of `buf` from `at` (no `Packet` is made for it); it returns True
        when it took the frame, False to leave it to `other(packet)`, which gets every
        packet `take` did not take (all of them without `take`). The frames of a classic
        pcap file are offered from its read buffer; a pcapng file's or a pcap file's
        older than format 2.4 are read as iterating reads them, then offered.
        Returns (packets read, the first one's time, the last one's), None for no packet.
        Like iterating, it reads from the start and leaves `error`, `truncated`,
        `packets_read` and the rest set as iterating to the end does.

        `share`: this reader is one of several sharing out the TCP flows (`Share`); the
        plain frames (Ethernet/IPv4/TCP without IP options) of the others' flows are
        counted but offered to neither callback: skipped in the read loop itself, the
        cheapest a reader of others' flows can make them (and handed to them by their
        offsets where `share.hand` says so and the file is read `in_place`).
        """
        self.close()
        self._it = self._pending = None
        self._primed = True
        self._reset()
        if self.format == "pcap":
            try:
                f = open(self.path, "rb", buffering=0)
            except OSError as exc:
                self._fail(f"cannot open: {exc}")
                return 0, None, None
            with f:
                layout = self._pcap_header(f)
                if layout is None:
                    return 0, None, None
                if not layout.swapped:
                    return self._scan_pcap(f, layout, other, take, share)
                return self._scan_packets(self._iter_pcap(f, (24, 0, layout)), other, take,
                                          share)
        return self._scan_packets(self._iterate(), other, take, share)

    @staticmethod
    def _scan_packets(packets: Iterator[Packet], other, take, share=None, count: int = 0,
                      first: Optional[float] = None, last: Optional[float] = None
                      ) -> tuple[int, Optional[float], Optional[float]]:
        """`scan` by iterating: each Ethernet frame offered to `take` in its own bytes."""
        if share is not None:
            owners, me, ports = share.owners, share.me, share.ports
            buckets = len(owners)
        for pkt in packets:
            count += 1
            last = pkt.ts
            if first is None:
                first = last
            if pkt.linktype != 1:
                other(pkt)
                continue
            data = pkt.data
            if share is not None and len(data) >= 54:
                head, proto, a, b, sport, dport = _SHARED(data, 12)
                if head == _SHAREABLE and proto == 6 and sport not in ports \
                        and dport not in ports and owners[(a ^ b ^ sport ^ dport) % buckets] != me:
                    continue                        # another reader's flow
            if take is None or not take(data, 0, len(data), pkt.origlen, last, pkt.index):
                other(pkt)
        return count, first, last

    def _scan_pcap(self, f: io.RawIOBase, layout: "_PcapLayout", other, take, share=None
                   ) -> tuple[int, Optional[float], Optional[float]]:
        """`scan` of a pcap file whose records need no swapping, from its read buffer.
        Damage (a record too long, one cut short) is left to `_iter_pcap`, resumed at that
        record, which says so in `error` as iterating does."""
        unpack, rlen, _swapped, linktype, limit, div = layout
        if linktype != 1:
            take = share = None
        sharing = share is not None
        hand = flush = None
        if sharing:
            owners, me, ports = share.owners, share.me, share.ports
            buckets = len(owners)
            if share.hand is not None:
                flush = share.flush
                hand = [None if h is None else h.append for h in share.hand]
                everyone = [h for h in hand if h is not None]
        shared = _SHARED
        shareable = _SHAREABLE
        buf = b""
        n = pos = 0
        base = 24                            # file offset of buf[0]
        index = 0
        first = ts = None
        new = _new
        P = Packet
        while True:
            if pos + rlen <= n:
                sec, frac, caplen, origlen = unpack(buf, pos)
                end = pos + rlen + caplen
                if end <= n and caplen <= limit:
                    index += 1
                    at = pos + rlen
                    pos = end
                    ts = sec + frac / div
                    if first is None:
                        first = ts
                    if sharing:
                        owner = -1                            # every reader's
                        if caplen >= 54:
                            head, proto, a, b, sport, dport = shared(buf, at + 12)
                            if head == shareable and proto == 6 and sport not in ports \
                                    and dport not in ports:
                                owner = owners[(a ^ b ^ sport ^ dport) % buckets]
                        if owner >= 0:
                            if owner != me:
                                if hand is not None:          # another reader's flow
                                    give = hand[owner]
                                    give(base + at - rlen)
                                    give(index)
                                continue
                        elif hand is not None:
                            for give in everyone:
                                give(base + at - rlen)
                                give(index)
                    if take is None or not take(buf, at, caplen, origlen, ts, index):
                        other(new(P, (index, ts, linktype, buf[at:end], origlen, 0)))
                    continue
                if caplen > limit:
                    break
                need = end - n
            else:
                need = pos + rlen - n
            if flush is not None:
                flush()                              # what was handed from this buffer
            more = _read_exact(f, max(CHUNK, need))
            if len(more) < need:
                if not more and pos == n:            # the end, on a record's boundary
                    self.packets_read = index
                    return index, first, ts
                break
            buf = buf[pos:] + more
            n = len(buf)
            base += pos
            pos = 0
        # damage at `base + pos`: the general reader says what it is (and reads no further)
        self.packets_read = index
        return self._scan_packets(self._iter_pcap(open(self.path, "rb", buffering=0),
                                                  (base + pos, index, layout)),
                                  other, take, share, index, first, ts)

    @property
    def in_place(self) -> bool:
        """Whether `scan` reads the records from the file's bytes (a classic pcap file of
        format 2.4, Ethernet): where `Share.hand` and `scan_handed` apply."""
        return self.format == "pcap" and self.version is not None \
            and self.version > (2, 3) and self.linktype == 1

    def scan_handed(self, batches: Iterable[Sequence[int]], other: Callable[[Packet], object],
                    take: Callable[..., bool]) -> int:
        """`scan` of the records another reader's `Share.hand` handed this one (`in_place`
        files only): `batches` of (file offset, packet number) pairs, flattened, in file
        order. The file is read forward (the gaps between them longer than a read buffer
        skipped); returns the number of records read."""
        with open(self.path, "rb", buffering=0) as f:
            layout = self._pcap_header(f)
            if layout is None:
                return 0
            unpack, rlen, _swapped, linktype, _limit, div = layout
            buf = b""
            base = n = 0                         # file offset of buf[0], its length
            count = 0
            new = _new
            P = Packet
            for batch in batches:
                it = iter(batch)
                for offset, index in zip(it, it):
                    pos = offset - base
                    if pos + rlen > n:
                        buf, base, pos, n = self._forward(f, buf, base, offset, rlen)
                    sec, frac, caplen, origlen = unpack(buf, pos)
                    end = pos + rlen + caplen
                    if end > n:
                        buf, base, pos, n = self._forward(f, buf, base, offset, rlen + caplen)
                        end = pos + rlen + caplen
                    count += 1
                    at = pos + rlen
                    ts = sec + frac / div
                    if not take(buf, at, caplen, origlen, ts, index):
                        other(new(P, (index, ts, linktype, buf[at:end], origlen, 0)))
            return count

    @staticmethod
    def _forward(f, buf: bytes, base: int, offset: int, need: int) -> tuple:
        """The read buffer moved on to hold `need` bytes from file offset `offset`:
        (buffer, its file offset, `offset` in it, its length)."""
        end = base + len(buf)
        if offset < end:
            buf = buf[offset - base:]
        else:
            buf = b""
            f.seek(offset)
        more = _read_exact(f, max(CHUNK, need - len(buf)))
        buf += more
        if len(buf) < need:
            raise CaptureError(f"{f.name}: a record handed at byte {offset} is past the end")
        return buf, offset, 0, len(buf)

    # -------------------------------------------------------------- pcapng
    def _iter_pcapng(self, f: io.RawIOBase) -> Iterator[Packet]:
        with f:     # closed at the end, or when the reader is closed
            read = f.read
            buf = b""
            pos = 0
            base = 0
            index = 0
            endian = None
            u32 = None
            section_ifaces: list[int] = []      # section-local interface id -> global index
            new = _new
            P = Packet
            while True:
                n = len(buf)
                if pos + 12 > n:
                    more = read(CHUNK)
                    if not more:
                        if pos < n:
                            self._fail(f"truncated block header at byte {base + pos} "
                                       f"(after packet {index})", True)
                        break
                    buf = buf[pos:] + more
                    base += pos
                    pos = 0
                    continue
                btype_raw = buf[pos:pos + 4]
                if btype_raw == b"\x0a\x0d\x0d\x0a":
                    bom = buf[pos + 8:pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        self._fail(f"corrupt section header at byte {base + pos}: "
                                   f"byte-order magic {bom.hex()}")
                        break
                    u32 = struct.Struct(endian + "I").unpack_from
                    if not self.byte_order:
                        self.byte_order = "little" if endian == "<" else "big"
                elif endian is None:
                    self._fail(f"corrupt file at byte {base + pos}: no section header block")
                    break
                btype = u32(buf, pos)[0]
                blen = u32(buf, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_RECORD:
                    self._fail(f"corrupt block at byte {base + pos} (after packet {index}): "
                               f"block type 0x{btype:08x} claims length {blen}")
                    break
                end = pos + blen
                if end > n:
                    need = end - n
                    more = _read_exact(f, max(CHUNK, need))
                    if len(more) < need:
                        what = "packet" if btype in (2, 3, 6) else "block"
                        self._fail(f"truncated {what} block at byte {base + pos} "
                                   f"(packet {index + 1 if what == 'packet' else index}): "
                                   f"{blen} bytes announced, {n - pos + len(more)} present", True)
                        break
                    buf = buf[pos:] + more
                    base += pos
                    pos = 0
                    end = blen
                if u32(buf, end - 4)[0] != blen:
                    self._fail(f"corrupt block at byte {base + pos} (after packet {index}): "
                               f"trailing length {u32(buf, end - 4)[0]} != {blen}")
                    break
                start = pos
                pos = end
                if btype == 6:                                   # Enhanced Packet Block
                    if blen < 32:
                        self._fail(f"corrupt enhanced packet block at byte {base + start}")
                        break
                    iid, hi, lo, caplen, origlen = struct.unpack_from(endian + "IIIII", buf,
                                                                        start + 8)
                    if caplen > blen - 32:
                        self._fail(f"corrupt enhanced packet block at byte {base + start} "
                                   f"(packet {index + 1}): captured length {caplen} exceeds "
                                   f"the block")
                        break
                    if iid >= len(section_ifaces):
                        self._fail(f"corrupt enhanced packet block at byte {base + start} "
                                   f"(packet {index + 1}): unknown interface {iid}")
                        break
                    g = section_ifaces[iid]
                    iface = self.interfaces[g]
                    index += 1
                    self.packets_read = index
                    ts = ((hi << 32) | lo) / iface.tsresol + iface.tsoffset
                    yield new(P, (index, ts, iface.linktype, buf[start + 28:start + 28 + caplen],
                                  origlen, g))
                    self._last_ts = ts
                elif btype == 3:                                 # Simple Packet Block
                    if not section_ifaces:
                        self._fail(f"corrupt simple packet block at byte {base + start}: "
                                   "no interface")
                        break
                    origlen = u32(buf, start + 8)[0]
                    g = section_ifaces[0]
                    iface = self.interfaces[g]
                    caplen = min(origlen, blen - 16)
                    if iface.snaplen:
                        caplen = min(caplen, iface.snaplen)
                    index += 1
                    self.packets_read = index
                    yield new(P, (index, self._last_ts, iface.linktype,
                                  buf[start + 12:start + 12 + caplen], origlen, g))
                elif btype == 2:                                 # obsolete Packet Block
                    if blen < 32:
                        self._fail(f"corrupt packet block at byte {base + start}")
                        break
                    iid, _drops, hi, lo, caplen, origlen = struct.unpack_from(
                        endian + "HHIIII", buf, start + 8)
                    if caplen > blen - 32 or iid >= len(section_ifaces):
                        self._fail(f"corrupt packet block at byte {base + start} "
                                   f"(packet {index + 1})")
                        break
                    g = section_ifaces[iid]
                    iface = self.interfaces[g]
                    index += 1
                    self.packets_read = index
                    ts = ((hi << 32) | lo) / iface.tsresol + iface.tsoffset
                    yield new(P, (index, ts, iface.linktype, buf[start + 28:start + 28 + caplen],
                                  origlen, g))
                    self._last_ts = ts
                elif btype == 1:                                 # Interface Description Block
                    if blen < 20:
                        self._fail(f"corrupt interface description block at byte {base + start}")
                        break
                    linktype, _res, snaplen = struct.unpack_from(endian + "HHI", buf, start + 8)
                    tsresol, tsoffset, name = 10 ** 6, 0, ""
                    for code, val in _options(buf, start + 16, end - 4, endian):
                        if code == 9 and len(val) >= 1:
                            r = val[0]
                            tsresol = (2 ** (r & 0x7F)) if r & 0x80 else 10 ** r
                            if tsresol == 0 or r & 0x7F > 60:
                                tsresol = 10 ** 6
                        elif code == 14 and len(val) >= 8:
                            tsoffset = struct.unpack_from(endian + "q", val)[0]
                        elif code == 2:
                            name = val.decode("utf-8", "replace")
                    section_ifaces.append(len(self.interfaces))
                    self.interfaces.append(Interface(linktype, snaplen, tsresol, name, tsoffset))
                    if self.linktype is None:
                        self.linktype = linktype
                        self.snaplen = snaplen
                    if tsresol > 10 ** 6:
                        self.nanosecond = True
                elif btype == 0x0A0D0D0A:                        # Section Header Block
                    if blen < 28:
                        self._fail(f"corrupt section header at byte {base + start}")
                        break
                    self.sections += 1
                    section_ifaces = []
                    for code, val in _options(buf, start + 24, end - 4, endian):
                        if code == 1:
                            text = val.decode("utf-8", "replace").rstrip("\x00")
                            self.comments.append(text)
                            if self.meta is None:
                                try:
                                    doc = json.loads(text)
                                except ValueError:
                                    doc = None
                                if isinstance(doc, dict):
                                    self.meta = doc
                        elif code in (3, 4) and getattr(self, _SHB_TEXT[code]) is None:
                            setattr(self, _SHB_TEXT[code],
                                    val.decode("utf-8", "replace").rstrip("\x00"))
                elif btype == 5:                                 # Interface Statistics Block
                    if blen < 24:
                        self._fail(f"corrupt interface statistics block at byte {base + start}")
                        break
                    iid = u32(buf, start + 8)[0]
                    if iid < len(section_ifaces):
                        g = section_ifaces[iid]
                        st = self.stats.setdefault(g, {})
                        for code, val in _options(buf, start + 20, end - 4, endian):
                            name = _ISB_OPTS.get(code)
                            if name and len(val) >= 8:
                                st[name] = struct.unpack_from(endian + "Q", val)[0]
                        if "ifdrop" in st:
                            self.drops[g] = st["ifdrop"]
                # anything else (name resolution, decryption secrets, custom, ...): skipped


class Share(NamedTuple):
    """How one of several readers of a capture shares its TCP flows out with the others
    (`Capture.scan`; `shards.py`)."""

    owners: Sequence[int]       # the reader of each bucket: a flow's bucket is its addresses
    #                             and ports, as numbers XORed, modulo len(owners)
    me: int                     # this reader
    ports: Container[int]       # a flow with one of these ports is every reader's
    hand: Optional[list] = None  # by reader, an array('q') to extend with (file offset,
    #                             packet number) of each record of theirs (every reader's
    #                             too; None at `me`): they do not read the file themselves
    flush: Optional[Callable[[], None]] = None  # sends `hand` on: after each buffer


class _PcapLayout(NamedTuple):
    """How a pcap file's records are read (from its file header)."""

    unpack: Callable            # the record header: (seconds, fraction, caplen, origlen)
    rlen: int                   # bytes of a record header (24 in the "modified" format)
    swapped: int                # 0: lengths as written; 1: swapped where caplen > origlen; 2: always
    linktype: int
    limit: int                  # a captured length above this is damage
    div: int                    # fraction units per second


_RECORD = {e: struct.Struct(e + "IIII").unpack_from for e in "<>"}
# from an Ethernet frame's byte 12: the EtherType and the IPv4 version and header length,
# the IP protocol, the addresses and the TCP ports (`scan`'s `share`)
_SHARED = struct.Struct("!3s8xB2xIIHH").unpack_from
_SHAREABLE = b"\x08\x00\x45"               # IPv4 without options

_PCAP_MAGIC = {
    # magic bytes as found in the file -> (struct endian, nanosecond, modified record)
    b"\xd4\xc3\xb2\xa1": ("<", False, False),
    b"\xa1\xb2\xc3\xd4": (">", False, False),
    b"\x4d\x3c\xb2\xa1": ("<", True, False),
    b"\xa1\xb2\x3c\x4d": (">", True, False),
    b"\x34\xcd\xb2\xa1": ("<", False, True),
    b"\xa1\xb2\xcd\x34": (">", False, True),
}

# first bytes of compressed files -> (what, how to decompress)
_COMPRESSED = (
    (b"\x1f\x8b", ("gzip", "gunzip FILE")),
    (b"\x28\xb5\x2f\xfd", ("zstd", "zstd -d FILE")),
    (b"\xfd\x37\x7a\x58", ("xz", "unxz FILE")),
    (b"\x42\x5a\x68", ("bzip2", "bunzip2 FILE")),
    (b"\x04\x22\x4d\x18", ("lz4", "lz4 -d FILE")),
)


def _compression(head: bytes) -> Optional[tuple[str, str]]:
    for magic, what in _COMPRESSED:
        if head.startswith(magic):
            return what
    return None


_SHB_TEXT = {3: "os", 4: "userappl"}     # shb_os, shb_userappl: the first section's
_ISB_OPTS = {2: "starttime", 3: "endtime", 4: "ifrecv", 5: "ifdrop", 6: "filteraccept",
             7: "osdrop", 8: "usrdeliv"}


def _read_exact(f, n: int) -> bytes:
    """Up to n bytes; fewer only at the end of the file (raw files may return short reads)."""
    data = f.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _options(buf: bytes, pos: int, end: int, endian: str):
    """(code, value) of a pcapng option list between pos and end; stops at damage."""
    hh = struct.Struct(endian + "HH").unpack_from
    while pos + 4 <= end:
        code, length = hh(buf, pos)
        if code == 0:
            return
        vstart = pos + 4
        vend = vstart + length
        if vend > end:
            return
        yield code, buf[vstart:vend]
        pos = vstart + ((length + 3) & ~3)


# ============================================================================= decoding
_ntoa = socket.inet_ntoa
_A4: dict[bytes, str] = {}
_A6: dict[bytes, str] = {}


def _ip4(b: bytes) -> str:
    s = _A4.get(b)
    if s is None:
        s = _ntoa(b)
        if len(_A4) < 1 << 16:
            _A4[b] = s
    return s


def _ip6(b: bytes) -> str:
    s = _A6.get(b)
    if s is None:
        s = socket.inet_ntop(socket.AF_INET6, b)
        if len(_A6) < 1 << 16:
            _A6[b] = s
    return s


_FAST = struct.Struct("!HxxHxBxx4s4sHHIIBBH").unpack_from  # Ethernet/IPv4/TCP, from byte 16
_IP4 = struct.Struct("!BxHxxHBBxx4s4s").unpack_from      # ver_ihl, totlen, frag, ttl, proto,
_TCP = struct.Struct("!HHIIBBH").unpack_from             # sport dport seq ack off flags win
_UDP = struct.Struct("!HHH").unpack_from
_TSOPT = struct.Struct("!II").unpack_from
_H = struct.Struct("!H").unpack_from
_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
_V6EXT = (0, 43, 60, 135, 139, 140, 253, 254)


def decode(pkt, *, _fast=_FAST, _a4=_A4.get, _new=_new, _seg=Segment, _tsopt=_TSOPT
           ) -> "Segment | Datagram | None":
    """A TCP `Segment`, a UDP `Datagram`, or None for anything else or anything broken.

    (The keyword-only parameters are constants bound for speed; do not pass them.)
    """
    index, ts, lt, data, origlen, _iface = pkt
    if lt == 1:
        if data[12:15] == b"\x08\x00\x45" and len(data) >= 54:
            # The overwhelmingly common case, inlined: Ethernet II, IPv4 without options.
            totlen, frag, proto, src, dst, sport, dport, seq, ack, off, flags, win = \
                _fast(data, 16)
            if proto == 6 and not frag & 0x3FFF:
                avail = origlen - 14
                if totlen == 0 or totlen > avail:
                    totlen = avail
                hl = (off >> 4) << 2
                seglen = totlen - 20 - hl
                if hl < 20 or seglen < 0:
                    return None
                if off & 1:
                    flags |= 0x100
                a = _a4(src) or _ip4(src)
                b = _a4(dst) or _ip4(dst)
                if hl == 20:
                    return _new(_seg, (index, ts, a, sport, b, dport, seq, ack, flags, win,
                                       data[54:54 + seglen], seglen, -1, 0, False, False,
                                       None, None))
                if hl == 32 and data[54:58] == b"\x01\x01\x08\x0a" and len(data) >= 66:
                    tsval, tsecr = _tsopt(data, 58)
                    return _new(_seg, (index, ts, a, sport, b, dport, seq, ack, flags, win,
                                       data[66:66 + seglen], seglen, -1, 0, False, False,
                                       tsval, tsecr))
                return _tcp(index, ts, data, 34, totlen - 20, a, b)
            return _ipv4(index, ts, data, 14, origlen)
        if len(data) < 14:
            return None
        et = (data[12] << 8) | data[13]
        off = 14
        while et in _VLAN:
            if len(data) < off + 4:
                return None
            et = (data[off + 2] << 8) | data[off + 3]
            off += 4
        if et == 0x8864:                                  # PPPoE session: PPP inside
            et, off = _pppoe(data, off)
    elif lt == 113:                                       # Linux cooked (SLL)
        if len(data) < 16:
            return None
        et = (data[14] << 8) | data[15]
        off = 16
    elif lt == 276:                                       # Linux cooked v2 (SLL2)
        if len(data) < 20:
            return None
        et = (data[0] << 8) | data[1]
        off = 20
    elif lt in (101, 228, 229, 12, 14):                   # raw IP
        off = 0
        et = _version_to_ethertype(data, 0)
    elif lt in (0, 108):                                  # BSD null / OpenBSD loop
        off = 4
        et = _version_to_ethertype(data, 4)
    else:
        return None
    if et == 0x0800:
        return _ipv4(index, ts, data, off, origlen)
    if et == 0x86DD:
        return _ipv6(index, ts, data, off, origlen)
    return None


def _pppoe(data: bytes, off: int) -> tuple[int, int]:
    """(ethertype of the PPP payload, its offset) in a PPPoE session frame; 0 if not IP.

    RFC 2516: version/type 0x11, code 0, session id, length, then the PPP protocol field,
    two bytes, or one where it was compressed (an odd first byte): 0x21 IPv4, 0x57 IPv6.
    """
    if len(data) < off + 8 or data[off] != 0x11 or data[off + 1] != 0:
        return 0, off
    if data[off + 6] & 1:
        proto, off = data[off + 6], off + 7
    else:
        proto, off = (data[off + 6] << 8) | data[off + 7], off + 8
    return (0x0800 if proto == 0x21 else 0x86DD if proto == 0x57 else 0), off


def _version_to_ethertype(data: bytes, off: int) -> int:
    if len(data) <= off:
        return 0
    v = data[off] >> 4
    return 0x0800 if v == 4 else 0x86DD if v == 6 else 0


def _ipv4(index, ts, data, off, origlen):
    if len(data) < off + 20:
        return None
    vihl, totlen, frag, _ttl, proto, src, dst = _IP4(data, off)
    if vihl >> 4 != 4:
        return None
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        return None
    if frag & 0x3FFF:
        # A fragment. Non-first ones have no transport header; a first one has a header
        # whose lengths describe the whole datagram, not this piece (tshark reassembles
        # and dissects TCP in the last fragment). We do not reassemble IP: skip them all.
        return None
    avail = origlen - off                # bytes of the IP packet on the wire
    if totlen == 0 or totlen > avail:    # 0: TSO capture; larger: trust the frame
        totlen = avail
    if totlen < ihl:
        return None
    t = off + ihl
    if proto == 6:
        return _tcp(index, ts, data, t, totlen - ihl, _ip4(src), _ip4(dst))
    if proto == 17:
        return _udp(index, ts, data, t, totlen - ihl, _ip4(src), _ip4(dst))
    return None


def _ipv6(index, ts, data, off, origlen):
    if len(data) < off + 40 or data[off] >> 4 != 6:
        return None
    plen = _H(data, off + 4)[0]
    nh = data[off + 6]
    src = _ip6(data[off + 8:off + 24])
    dst = _ip6(data[off + 24:off + 40])
    avail = origlen - off - 40
    if plen == 0 or plen > avail:        # 0: jumbogram or TSO
        plen = avail
    p = off + 40
    end = p + plen
    while nh in _V6EXT or nh == 44 or nh == 51:
        if len(data) < p + 8:
            return None
        if nh == 44:                     # fragment header
            if _H(data, p + 2)[0] & 0xFFF9:
                return None              # a fragment (an atomic fragment header is fine)
            hl = 8
        elif nh == 51:                   # AH
            hl = (data[p + 1] + 2) << 2
        else:
            hl = (data[p + 1] + 1) << 3
        nh = data[p]
        p += hl
        if p > end:
            return None
    if nh == 6:
        return _tcp(index, ts, data, p, end - p, src, dst)
    if nh == 17:
        return _udp(index, ts, data, p, end - p, src, dst)
    return None


def _tcp(index, ts, data, t, length, src, dst):
    if len(data) < t + 20:
        return None
    sport, dport, seq, ack, off, flags, win = _TCP(data, t)
    hl = (off >> 4) << 2
    if hl < 20 or length < hl:
        return None                      # bogus header length / short segment
    flags |= (off & 1) << 8              # NS
    seglen = length - hl
    pstart = t + hl
    payload = data[pstart:pstart + seglen]
    if hl == 20:
        return _new(Segment, (index, ts, src, sport, dst, dport, seq, ack, flags, win,
                              payload, seglen, -1, 0, False, False, None, None))
    if hl == 32 and data[t + 20:t + 24] == b"\x01\x01\x08\x0a" and len(data) >= t + 32:
        tsval, tsecr = _TSOPT(data, t + 24)
        return _new(Segment, (index, ts, src, sport, dst, dport, seq, ack, flags, win,
                              payload, seglen, -1, 0, False, False, tsval, tsecr))
    wscale, mss, sack_perm, sack, tsval, tsecr = _tcp_options(data, t + 20,
                                                              min(t + hl, len(data)))
    return _new(Segment, (index, ts, src, sport, dst, dport, seq, ack, flags, win,
                          payload, seglen, wscale, mss, sack_perm, sack, tsval, tsecr))


def _tcp_options(data, p, end):
    wscale, mss, sack_perm, sack, tsval, tsecr = -1, 0, False, False, None, None
    while p < end:
        kind = data[p]
        if kind == 0:
            break
        if kind == 1:
            p += 1
            continue
        if p + 1 >= end:
            break
        olen = data[p + 1]
        if olen < 2 or p + olen > end:
            break
        if kind == 2 and olen == 4:
            mss = _H(data, p + 2)[0]
        elif kind == 3 and olen == 3:
            wscale = min(data[p + 2], 14)
        elif kind == 4:
            sack_perm = True
        elif kind == 5:
            sack = olen >= 10
        elif kind == 8 and olen == 10:
            tsval, tsecr = _TSOPT(data, p + 2)
        p += olen
    return wscale, mss, sack_perm, sack, tsval, tsecr


def _udp(index, ts, data, u, length, src, dst):
    if len(data) < u + 8 or length < 8:
        return None
    sport, dport, ulen = _UDP(data, u)
    if ulen < 8:
        ulen = length                    # 0 happens with jumbograms / offload
    end = u + min(ulen, length)
    return _new(Datagram, (index, ts, src, sport, dst, dport, data[u + 8:end]))
