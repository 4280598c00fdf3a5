"""Hand-made frames, pcap and pcapng files (struct only), and Segment builders for tests."""

from __future__ import annotations

import ipaddress
import struct
from typing import Iterable, Optional, Sequence

from testbed.capture.packets import Datagram, Segment

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


# ----------------------------------------------------------------------------- headers
def tcp_header(sport: int, dport: int, seq: int, ack: int, flags: int, win: int = 65535,
               options: bytes = b"") -> bytes:
    options += b"\x00" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       (off << 4) | ((flags >> 8) & 1), flags & 0xFF, win, 0, 0) + options


def udp_header(sport: int, dport: int, payload_len: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + payload_len, 0)


def ipv4(src: str, dst: str, proto: int, body: bytes, options: bytes = b"",
         frag: int = 0, total: Optional[int] = None, ident: int = 0) -> bytes:
    options += b"\x00" * (-len(options) % 4)
    ihl = (20 + len(options)) // 4
    tot = total if total is not None else 20 + len(options) + len(body)
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed) + options + body


def ipv6(src: str, dst: str, nh: int, body: bytes, ext: Sequence[tuple[int, bytes]] = ()
         ) -> bytes:
    """`ext`: (header type, header bytes without the next-header field's value filled)."""
    chain = b""
    types = [t for t, _ in ext] + [nh]
    for i, (_t, h) in enumerate(ext):
        chain += bytes([types[i + 1]]) + h[1:]
    first = types[0]
    plen = len(chain) + len(body)
    return struct.pack("!IHBB16s16s", 0x60000000, plen, first, 64,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + chain + body


def ether(ip: bytes, ethertype: int = 0x0800, vlans: Sequence = ()) -> bytes:
    """An Ethernet II frame; `vlans`: tags outermost first, each a VLAN id (802.1Q, TPID
    0x8100) or a (TPID, VLAN id) pair (0x88a8 for an 802.1ad service tag)."""
    tags = b"".join(struct.pack("!HH", *(v if isinstance(v, tuple) else (0x8100, v)))
                    for v in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + ip


def pppoe(ip: bytes, session: int = 0x1234, protocol: Optional[int] = None,
          compressed: bool = False) -> bytes:
    """A PPPoE session payload (RFC 2516) carrying an IP packet, for ethertype 0x8864."""
    if protocol is None:
        protocol = 0x21 if ip[0] >> 4 == 4 else 0x57
    field = bytes([protocol]) if compressed else struct.pack("!H", protocol)
    return struct.pack("!BBHH", 0x11, 0, session, len(field) + len(ip)) + field + ip


def tcp_frame(src="198.18.0.1", dst="198.18.0.2", sport=40000, dport=80, seq=1000, ack=0,
              flags=ACK, payload=b"", win=65535, options=b"", pad_to: int = 0) -> bytes:
    ip = ipv4(src, dst, 6, tcp_header(sport, dport, seq, ack, flags, win, options) + payload)
    f = ether(ip)
    if len(f) < pad_to:
        f += b"\x00" * (pad_to - len(f))
    return f


def udp_frame(src="198.18.0.1", dst="198.18.0.2", sport=5353, dport=53, payload=b"q") -> bytes:
    return ether(ipv4(src, dst, 17, udp_header(sport, dport, len(payload)) + payload))


# ----------------------------------------------------------------------------- files
def pcap_bytes(frames: Iterable, *, endian: str = "<", nano: bool = False, linktype: int = 1,
               snaplen: int = 262144, modified: bool = False, version=(2, 4),
               lengths_swapped: bool = False) -> bytes:
    """frames: (ts, data) or (ts, data, origlen). `lengths_swapped` writes each record's
    original length before its captured one (as writers before format 2.3 did)."""
    magic = 0xA1B23C4D if nano else (0xA1B2CD34 if modified else 0xA1B2C3D4)
    out = bytearray(struct.pack(endian + "IHHiIII", magic, *version, 0, 0, snaplen, linktype))
    for fr in frames:
        ts, data = fr[0], fr[1]
        orig = fr[2] if len(fr) > 2 else len(data)
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        lengths = (orig, len(data)) if lengths_swapped else (len(data), orig)
        out += struct.pack(endian + "IIII", sec, frac, *lengths)
        if modified:
            out += struct.pack(endian + "IHBx", 0, 0, 0)
        out += data
    return bytes(out)


def _opts(endian: str, opts: Sequence[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, val in opts:
        out += struct.pack(endian + "HH", code, len(val)) + val + b"\x00" * (-len(val) % 4)
    if opts:
        out += struct.pack(endian + "HH", 0, 0)
    return out


def block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def shb(endian: str = "<", comments: Sequence[str] = ()) -> bytes:
    body = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    body += _opts(endian, [(1, c.encode()) for c in comments])
    return block(endian, 0x0A0D0D0A, body)


def idb(endian: str = "<", linktype: int = 1, snaplen: int = 0, tsresol: Optional[int] = None,
        tsoffset: Optional[int] = None, name: str = "") -> bytes:
    opts = []
    if name:
        opts.append((2, name.encode()))
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(endian + "q", tsoffset)))
    return block(endian, 1, struct.pack(endian + "HHI", linktype, 0, snaplen) +
                 _opts(endian, opts))


def epb(endian: str, iface: int, units: int, data: bytes, origlen: Optional[int] = None,
        comment: str = "") -> bytes:
    body = struct.pack(endian + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data),
                       len(data) if origlen is None else origlen)
    body += data + b"\x00" * (-len(data) % 4)
    if comment:
        body += _opts(endian, [(1, comment.encode())])
    return block(endian, 6, body)


def spb(endian: str, data: bytes, origlen: Optional[int] = None) -> bytes:
    return block(endian, 3, struct.pack(endian + "I", len(data) if origlen is None else origlen)
                 + data)


def pb(endian: str, iface: int, units: int, data: bytes) -> bytes:
    body = struct.pack(endian + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data),
                       len(data)) + data
    return block(endian, 2, body)


def isb(endian: str, iface: int, units: int, ifdrop: Optional[int] = None,
        ifrecv: Optional[int] = None) -> bytes:
    opts = []
    if ifrecv is not None:
        opts.append((4, struct.pack(endian + "Q", ifrecv)))
    if ifdrop is not None:
        opts.append((5, struct.pack(endian + "Q", ifdrop)))
    return block(endian, 5, struct.pack(endian + "III", iface, units >> 32, units & 0xFFFFFFFF)
                 + _opts(endian, opts))


def custom_block(endian: str = "<") -> bytes:
    return block(endian, 0x40000BAD, struct.pack(endian + "I", 32473) + b"whatever")


# ----------------------------------------------------------------------------- segments
class Conn:
    """Builds Segments of one connection by hand: `c(...)` client->server, `s(...)` back.

    Timestamps advance by `step` per segment unless `ts` is given; seq/ack are explicit
    where a test needs them, otherwise they follow the byte counters.
    """

    def __init__(self, client=("198.18.0.1", 40000), server=("198.18.0.2", 80),
                 cisn=1000, sisn=5000, t0=100.0, step=0.010) -> None:
        self.client, self.server = client, server
        self.cseq, self.sseq = cisn, sisn
        self.ts = t0
        self.step = step
        self.index = 0

    def _seg(self, src, dst, seq, ack, flags, payload, ts, win, wscale, seglen):
        self.index += 1
        if ts is None:
            self.ts += self.step
            ts = self.ts
        else:
            self.ts = ts
        return Segment(self.index, ts, src[0], src[1], dst[0], dst[1], seq & 0xFFFFFFFF,
                       ack & 0xFFFFFFFF, flags, win, payload,
                       len(payload) if seglen is None else seglen, wscale)

    def c(self, payload=b"", flags=ACK | PSH, seq=None, ack=None, ts=None, win=1000,
          wscale=-1, advance=True, seglen=None):
        if not payload and flags == ACK | PSH:
            flags = ACK
        seq = self.cseq if seq is None else seq
        ack = self.sseq if ack is None else ack
        s = self._seg(self.client, self.server, seq, ack, flags, payload, ts, win, wscale,
                      seglen)
        if advance and seq == self.cseq:
            self.cseq = (self.cseq + s.seglen + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return s

    def s(self, payload=b"", flags=ACK | PSH, seq=None, ack=None, ts=None, win=1000,
          wscale=-1, advance=True, seglen=None):
        if not payload and flags == ACK | PSH:
            flags = ACK
        seq = self.sseq if seq is None else seq
        ack = self.cseq if ack is None else ack
        s = self._seg(self.server, self.client, seq, ack, flags, payload, ts, win, wscale,
                      seglen)
        if advance and seq == self.sseq:
            self.sseq = (self.sseq + s.seglen + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return s

    def handshake(self):
        return [self.c(flags=SYN, ack=0), self.s(flags=SYN | ACK), self.c()]


def segment_ip(s: Segment) -> bytes:
    """The IPv4 packet of a Segment."""
    opts = b""
    if s.wscale >= 0:
        opts = b"\x01\x03\x03" + bytes([s.wscale])
    return ipv4(s.src, s.dst, 6,
                tcp_header(s.sport, s.dport, s.seq, s.ack, s.flags, s.window, opts) + s.payload)


def segment_to_frame(s: Segment) -> bytes:
    """An Ethernet/IPv4 frame for a Segment (for writing hand-made sequences to pcap)."""
    return ether(segment_ip(s))


def segments_pcap(segments: Iterable, frame=segment_to_frame, snaplen: int = 0,
                  **pcap_options) -> bytes:
    """A pcap of Segments, each made a frame by `frame` (cut to `snaplen` when given)."""
    out = []
    for s in segments:
        f = frame(s)
        out.append((s.ts, f[:snaplen], len(f)) if snaplen else (s.ts, f))
    if snaplen:
        pcap_options["snaplen"] = snaplen
    return pcap_bytes(out, **pcap_options)


def datagram(index=1, ts=1.0, src="198.18.0.1", sport=5353, dst="198.18.0.2", dport=53,
             payload=b"x") -> Datagram:
    return Datagram(index, ts, src, sport, dst, dport, payload)
