"""Reading pcap/pcapng files of every variant, damaged files, fuzzing; decoding frames."""

from __future__ import annotations

import json
import os
import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.capture.flows import FlowTable
from testbed.capture.packets import (CaptureError, Datagram, Packet, Segment, decode,
                                     read_capture)

from ..fuzzing import EDITS, budget, damage
from .builders import (ACK, PSH, SYN, custom_block, epb, ether, idb, ipv4, ipv6, isb, pb,
                       pcap_bytes, pppoe, shb, spb, tcp_frame, tcp_header, udp_frame,
                       udp_header)

from .real import REAL, REAL_FILES

F1 = tcp_frame(seq=1, flags=SYN, ack=0)
F2 = tcp_frame(src="198.18.0.2", dst="198.18.0.1", sport=80, dport=40000, seq=7, ack=2,
               flags=SYN | ACK)
F3 = tcp_frame(seq=2, ack=8, flags=ACK | PSH, payload=b"GET / HTTP/1.0\r\n\r\n")
FRAMES = [(1700000000.000001, F1), (1700000000.5, F2), (1700000001.25, F3)]


def write(tmp_path: Path, data: bytes, name: str = "f.pcap") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read_all(path):
    cap = read_capture(path)
    return cap, list(cap)


# ============================================================================== pcap
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_variants(tmp_path, endian, nano):
    p = write(tmp_path, pcap_bytes(FRAMES, endian=endian, nano=nano, snaplen=96))
    cap, pkts = read_all(p)
    assert cap.format == "pcap" and cap.error is None and not cap.truncated
    assert cap.nanosecond is nano
    assert cap.byte_order == ("little" if endian == "<" else "big")
    assert cap.interfaces[0].linktype == 1 and cap.interfaces[0].snaplen == 96
    assert [pk.data for pk in pkts] == [f for _, f in FRAMES]
    assert [pk.index for pk in pkts] == [1, 2, 3]
    for pk, (ts, _) in zip(pkts, FRAMES):
        assert abs(pk.ts - ts) < 1e-6
        assert pk.origlen == len(pk.data) and pk.iface == 0 and pk.linktype == 1
    assert cap.packets_read == 3 and cap.comments == [] and cap.meta is None


def test_pcap_nanosecond_precision(tmp_path):
    p = write(tmp_path, pcap_bytes([(1.000000123, F1)], nano=True))
    (pk,) = read_capture(p)
    assert abs(pk.ts - 1.000000123) < 1e-12


def test_pcap_modified_magic_and_origlen(tmp_path):
    p = write(tmp_path, pcap_bytes([(5.0, F3[:40], len(F3))], modified=True))
    cap, pkts = read_all(p)
    assert cap.error is None
    assert pkts[0].data == F3[:40] and pkts[0].origlen == len(F3)


def test_pcap_snaplen_larger_than_usual(tmp_path):
    big = tcp_frame(payload=b"x" * 60_000) * 5          # a 300 kB frame (contents do not matter)
    p = write(tmp_path, pcap_bytes([(1.0, big)], snaplen=1 << 20))
    cap, pkts = read_all(p)
    assert cap.error is None and pkts[0].data == big


def test_pcap_streams_across_chunks(tmp_path):
    frames = [(1.0 + i, tcp_frame(seq=i, payload=bytes([i % 251]) * (i % 1500)))
              for i in range(3000)]        # ~2.2 MB: several 1 MiB reads
    p = write(tmp_path, pcap_bytes(frames))
    cap, pkts = read_all(p)
    assert cap.error is None and len(pkts) == 3000
    assert all(pk.data == fr for pk, (_, fr) in zip(pkts, frames))


def test_capture_can_be_iterated_again(tmp_path):
    p = write(tmp_path, pcap_bytes(FRAMES))
    cap = read_capture(p)
    assert len(list(cap)) == 3
    assert len(list(cap)) == 3 and cap.packets_read == 3


# ============================================================================== pcapng
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_two_interfaces_resolutions_comments_drops(tmp_path, endian):
    meta = {"how": "tap", "profile": "wechat-2013", "time_scale": 60, "seed": 7}
    data = (shb(endian, [json.dumps(meta), "second comment"])
            + idb(endian, linktype=1, snaplen=65535, name="veth0")           # default: us
            + idb(endian, linktype=101, tsresol=9, tsoffset=10)               # ns, raw IP
            + idb(endian, linktype=113, tsresol=0x80 | 10)                    # 2^-10 s
            + epb(endian, 0, 1_700_000_000_250_000, F1)
            + custom_block(endian)
            + epb(endian, 1, 1_500_000_000, F3[14:], comment="raw ip")
            + epb(endian, 2, 3 * 1024 + 512, b"\x00" * 14 + b"\x08\x00" + F3[14:])
            + isb(endian, 0, 0, ifdrop=17, ifrecv=100)
            + pb(endian, 0, 2_000_000, F2)
            + spb(endian, F2))
    p = write(tmp_path, data, "f.pcapng")
    cap, pkts = read_all(p)
    assert cap.format == "pcapng" and cap.error is None and not cap.truncated
    assert cap.comments == [json.dumps(meta), "second comment"]
    assert cap.meta == meta
    assert [i.linktype for i in cap.interfaces] == [1, 101, 113]
    assert [i.tsresol for i in cap.interfaces] == [10 ** 6, 10 ** 9, 1024]
    assert cap.interfaces[0].name == "veth0"
    assert cap.drops == {0: 17} and cap.stats[0]["ifrecv"] == 100
    assert [pk.iface for pk in pkts] == [0, 1, 2, 0, 0]
    assert [pk.linktype for pk in pkts] == [1, 101, 113, 1, 1]
    assert abs(pkts[0].ts - 1_700_000_000.25) < 1e-6
    assert abs(pkts[1].ts - 11.5) < 1e-9                 # 1.5 s + if_tsoffset 10 s
    assert pkts[2].ts == 3.5
    assert pkts[3].ts == 2.0 and pkts[3].data == F2        # obsolete Packet Block
    assert pkts[4].data == F2 and pkts[4].ts == 2.0        # SPB: no time, previous one kept
    for pk in pkts[:3]:
        seg = decode(pk)
        assert isinstance(seg, Segment), pk
    assert decode(pkts[2]).payload == b"GET / HTTP/1.0\r\n\r\n"


def test_pcapng_several_sections_reset_interfaces(tmp_path):
    data = (shb("<", ["one"]) + idb("<", 1) + epb("<", 0, 1_000_000, F1)
            + shb(">", ["two"]) + idb(">", 101, tsresol=3) + epb(">", 0, 2_000, F3[14:]))
    cap, pkts = read_all(write(tmp_path, data, "s.pcapng"))
    assert cap.error is None and cap.sections == 2
    assert cap.comments == ["one", "two"] and cap.meta is None
    assert [pk.iface for pk in pkts] == [0, 1] and [pk.linktype for pk in pkts] == [1, 101]
    assert pkts[1].ts == 2.0


def test_pcapng_non_json_comment_meta_none(tmp_path):
    data = shb("<", ["made by hand", '["a list"]']) + idb("<") + epb("<", 0, 5, F1)
    cap, pkts = read_all(write(tmp_path, data, "c.pcapng"))
    assert cap.meta is None and len(pkts) == 1


def test_pcapng_unknown_interface_is_damage(tmp_path):
    data = shb("<") + idb("<") + epb("<", 0, 5, F1) + epb("<", 3, 6, F1) + epb("<", 0, 7, F1)
    cap, pkts = read_all(write(tmp_path, data, "u.pcapng"))
    assert len(pkts) == 1 and "unknown interface 3" in cap.error and not cap.truncated


# ============================================================================== not captures
def test_not_a_capture(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        read_capture(tmp_path / "missing.pcap")
    with pytest.raises(CaptureError, match="empty"):
        read_capture(write(tmp_path, b"", "empty"))
    with pytest.raises(CaptureError, match="magic"):
        read_capture(write(tmp_path, b"GET / HTTP/1.1\r\n", "http"))
    with pytest.raises(CaptureError):
        read_capture(write(tmp_path, b"\xd4\xc3", "short"))
    with pytest.raises(CaptureError):
        read_capture(tmp_path)


@pytest.mark.parametrize("tool,compress", [
    ("gzip", lambda b: __import__("gzip").compress(b)),
    ("xz", lambda b: __import__("lzma").compress(b)),
    ("bzip2", lambda b: __import__("bz2").compress(b)),
    ("zstd", lambda b: b"\x28\xb5\x2f\xfd" + b"\x00" * 16),
    ("lz4", lambda b: b"\x04\x22\x4d\x18" + b"\x00" * 16),
])
def test_compressed_captures_are_refused_saying_so(tmp_path, tool, compress):
    p = write(tmp_path, compress(pcap_bytes(FRAMES)), f"f.pcap.{tool}")
    with pytest.raises(CaptureError, match=f"a {tool}-compressed file: decompress it first"):
        read_capture(p)


# ============================================================================== old pcap
@pytest.mark.parametrize("version", [(2, 0), (2, 1), (2, 2)])
def test_pcap_before_2_3_has_its_lengths_swapped_back(tmp_path, version):
    """Writers before format 2.3 put the original length first: read it the right way."""
    frames = [(1.0, F3[:40], len(F3)), (2.0, F1, len(F1))]
    p = write(tmp_path, pcap_bytes(frames, version=version, lengths_swapped=True, snaplen=40))
    cap, pkts = read_all(p)
    assert cap.error is None and cap.version == version
    assert [(pk.data, pk.origlen) for pk in pkts] == [(F3[:40], len(F3)), (F1, len(F1))]


def test_pcap_2_3_swaps_only_what_cannot_be_right(tmp_path):
    """2.3 files were written both ways: a record whose "captured" length exceeds the
    original one is swapped, the others are read as they are."""
    frames = [(1.0, F3[:40], len(F3))]
    swapped = write(tmp_path, pcap_bytes(frames, version=(2, 3), lengths_swapped=True),
                    "s.pcap")
    straight = write(tmp_path, pcap_bytes(frames, version=(2, 3)), "n.pcap")
    for p in (swapped, straight):
        cap, pkts = read_all(p)
        assert cap.error is None and [(pk.data, pk.origlen) for pk in pkts] == \
            [(F3[:40], len(F3))]
    # from 2.4 on the fields mean what they say (a 2.4 file with them swapped is damage)
    cap, pkts = read_all(write(tmp_path, pcap_bytes(frames, lengths_swapped=True), "b.pcap"))
    assert cap.version == (2, 4) and (cap.error or pkts[0].data != F3[:40])


# ============================================================================== damage
def _small_files():
    pcap = pcap_bytes(FRAMES)
    ng = shb("<", ['{"how": "test"}']) + idb("<") + b"".join(
        epb("<", 0, int(ts * 1e6), f) for ts, f in FRAMES) + isb("<", 0, 0, ifdrop=1)
    return {"pcap": pcap, "pcapng": ng}


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_truncated_at_every_cut_point(tmp_path, kind):
    data = _small_files()[kind]
    full = list(read_capture(write(tmp_path, data, "full")))
    p = tmp_path / "cut"
    boundaries = set()
    # record boundaries: where a cut leaves a clean (shorter) file
    if kind == "pcap":
        off = 24
        boundaries.add(off)
        for _, f in FRAMES:
            off += 16 + len(f)
            boundaries.add(off)
    for cut in range(len(data)):
        p.write_bytes(data[:cut])
        if cut < 4:
            with pytest.raises(CaptureError):
                read_capture(p)
            continue
        cap = read_capture(p)
        pkts = list(cap)                       # never raises
        assert len(pkts) <= len(full)
        assert [pk.data for pk in pkts] == [pk.data for pk in full[:len(pkts)]]
        if kind == "pcap":
            assert cap.truncated == (cut not in boundaries), cut
            expect = sum(1 for b in sorted(boundaries)[1:] if b <= cut)
            assert len(pkts) == expect
        if cap.truncated:
            assert cap.error and "byte" in cap.error, cap.error


def test_truncation_message_names_byte_and_packet(tmp_path):
    data = pcap_bytes(FRAMES)
    cut = len(data) - 5
    cap, pkts = read_all(write(tmp_path, data[:cut]))
    assert len(pkts) == 2 and cap.truncated
    start = 24 + 16 + len(FRAMES[0][1]) + 16 + len(FRAMES[1][1])
    assert cap.error.startswith(f"truncated packet record at byte {start} (packet 3)")


def test_huge_record_length_is_an_error_not_an_allocation(tmp_path):
    data = bytearray(pcap_bytes(FRAMES))
    struct.pack_into("<I", data, 24 + 8, 0xFFFFFFF0)        # first record caplen ~4 GB
    t = time.monotonic()
    cap, pkts = read_all(write(tmp_path, bytes(data)))
    assert pkts == [] and "exceeds the maximum" in cap.error and not cap.truncated
    ng = bytearray(_small_files()["pcapng"])
    first_epb = ng.index(struct.pack("<I", 6))
    struct.pack_into("<I", ng, first_epb + 4, 0xFFFFFFF0)
    cap, pkts = read_all(write(tmp_path, bytes(ng), "x.pcapng"))
    assert pkts == [] and "claims length" in cap.error
    assert time.monotonic() - t < 2


def test_pcapng_trailing_length_mismatch(tmp_path):
    ng = bytearray(_small_files()["pcapng"])
    first_epb = ng.index(struct.pack("<I", 6))
    blen = struct.unpack_from("<I", ng, first_epb + 4)[0]
    struct.pack_into("<I", ng, first_epb + blen - 4, blen + 4)
    cap, pkts = read_all(write(tmp_path, bytes(ng), "m.pcapng"))
    assert pkts == [] and "trailing length" in cap.error


# ============================================================================== fuzzing
# the capture reader's fuzz suite: HYPOTHESIS_PROFILE=deep for a long run (tests/fuzzing.py)
FUZZ = budget(1.2)


def _consume(path) -> int:
    """Read a file fully, decode every packet and feed the flow table; return packets."""
    try:
        cap = read_capture(path)
    except CaptureError:
        return -1
    table = FlowTable(on_data=lambda *a: None)
    n = 0
    for pk in cap:
        n += 1
        item = decode(pk)
        if item is not None:
            table.feed(item)
    table.close()
    assert cap.packets_read == n
    return n


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fz") / "r"
    p.write_bytes(blob)
    _consume(p)


@FUZZ
@given(magic=st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                              b"\x0a\x0d\x0d\x0a"]),
       rest=st.binary(max_size=4096))
def test_fuzz_valid_magic_random_rest(tmp_path_factory, magic, rest):
    p = tmp_path_factory.mktemp("fz") / "m"
    p.write_bytes(magic + rest)
    _consume(p)


_REAL_SEEDS = {p.name: p.read_bytes()[:60000] for p in REAL_FILES}
_SMALL = _small_files()
_SEEDS = {**_REAL_SEEDS, **{f"small.{k}": v for k, v in _SMALL.items()}}


@FUZZ
@given(name=st.sampled_from(sorted(_SEEDS)), edits=EDITS)
def test_fuzz_mutated_real_captures(tmp_path_factory, name, edits):
    p = tmp_path_factory.mktemp("fz") / name
    p.write_bytes(damage(_SEEDS[name], edits))
    _consume(p)


@budget(3)
@given(linktype=st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276, 147]),
       data=st.binary(max_size=200), origlen=st.integers(0, 70000))
def test_fuzz_decode_never_raises(linktype, data, origlen):
    item = decode(Packet(1, 0.0, linktype, data, origlen, 0))
    assert item is None or isinstance(item, (Segment, Datagram))


def test_fuzz_bitflips_of_every_real_capture(tmp_path):
    """A deterministic sweep besides hypothesis: 40 random corruptions of each real file."""
    rnd = random.Random(4)
    assert len(REAL_FILES) >= 4, REAL
    for path in REAL_FILES:
        raw = path.read_bytes()
        for _ in range(40):
            data = bytearray(raw)
            for _ in range(rnd.randrange(1, 20)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            p = tmp_path / path.name
            p.write_bytes(bytes(data))
            _consume(p)


# ============================================================================== decode
def _pkt(data, linktype=1, origlen=None):
    return Packet(1, 1.5, linktype, data, len(data) if origlen is None else origlen, 0)


TCP_IP = ipv4("198.18.0.1", "198.18.0.2", 6,
              tcp_header(40000, 443, 10, 20, ACK | PSH, 512) + b"hello")


@pytest.mark.parametrize("linktype,frame", [
    (1, ether(TCP_IP)),
    (1, ether(TCP_IP, vlans=[10])),
    (1, ether(TCP_IP, vlans=[10, 20])),
    (1, ether(TCP_IP, vlans=[(0x88A8, 100), (0x8100, 20)])),           # QinQ
    (1, ether(TCP_IP, vlans=[(0x9100, 7), (0x88A8, 100), 20])),
    (1, ether(pppoe(TCP_IP), 0x8864)),                                  # PPPoE session
    (1, ether(pppoe(TCP_IP, compressed=True), 0x8864)),                 # 1-byte protocol
    (1, ether(pppoe(TCP_IP), 0x8864, vlans=[(0x88A8, 100), 20])),       # PPPoE over QinQ
    (113, b"\x00\x00\x03\x04\x00\x06" + b"\x02\x00\x00\x00\x00\x01\x00\x00" + b"\x08\x00"
     + TCP_IP),
    (276, b"\x08\x00\x00\x00" + b"\x00\x00\x00\x02" + b"\x00\x01\x00\x06"
     + b"\x02\x00\x00\x00\x00\x01\x00\x00" + TCP_IP),
    (101, TCP_IP), (228, TCP_IP), (12, TCP_IP),
    (0, struct.pack("<I", 2) + TCP_IP), (0, struct.pack(">I", 2) + TCP_IP),
    (108, struct.pack(">I", 2) + TCP_IP),
])
def test_decode_link_types_ipv4(linktype, frame):
    seg = decode(_pkt(frame, linktype))
    assert isinstance(seg, Segment)
    assert (seg.src, seg.sport, seg.dst, seg.dport) == ("198.18.0.1", 40000, "198.18.0.2", 443)
    assert (seg.seq, seg.ack, seg.flags, seg.window) == (10, 20, ACK | PSH, 512)
    assert seg.payload == b"hello" and seg.seglen == 5 and seg.index == 1 and seg.ts == 1.5


def test_decode_pppoe_other_than_ip_is_nothing():
    assert decode(_pkt(ether(pppoe(TCP_IP, protocol=0xC021), 0x8864))) is None   # LCP
    assert decode(_pkt(ether(b"\x11\x09\x00\x00\x00\x00", 0x8863))) is None  # discovery
    assert decode(_pkt(ether(b"\x11\x00\x12", 0x8864))) is None                 # cut short
    ip6 = ipv6("2001:db8::1", "2001:db8::2", 6, tcp_header(40000, 443, 10, 20, ACK))
    seg = decode(_pkt(ether(pppoe(ip6), 0x8864)))
    assert isinstance(seg, Segment) and seg.src == "2001:db8::1"


def test_decode_ipv6_with_extension_headers_and_link_types():
    tcp = tcp_header(40000, 443, 10, 20, SYN, 512, options=b"\x02\x04\x05\xb4") + b""
    hop = bytes([0, 0]) + b"\x01\x04\x00\x00\x00\x00"            # hop-by-hop, PadN
    dst = bytes([0, 0]) + b"\x01\x04\x00\x00\x00\x00"            # destination options
    atomic = bytes([0, 0]) + struct.pack("!HI", 0x0000, 99)     # offset 0, no more fragments
    ip = ipv6("2001:db8::1", "2001:db8::2", 6, tcp, ext=[(0, hop), (60, dst), (44, atomic)])
    for lt, fr in [(1, ether(ip, 0x86DD)), (229, ip), (101, ip), (0, struct.pack("<I", 30) + ip),
                   (113, b"\x00" * 14 + b"\x86\xdd" + ip)]:
        seg = decode(_pkt(fr, lt))
        assert isinstance(seg, Segment), lt
        assert (seg.src, seg.dst, seg.flags, seg.mss) == ("2001:db8::1", "2001:db8::2", SYN, 1460)
    for fo in (0x0009, 0x0001):                                 # offset 1; first with M
        frag = bytes([0, 0]) + struct.pack("!HI", fo, 99)
        assert decode(_pkt(ipv6("2001:db8::1", "2001:db8::2", 6, tcp, ext=[(44, frag)]),
                           229)) is None
    udp = ipv6("2001:db8::1", "2001:db8::2", 17, udp_header(53, 5353, 3) + b"abc")
    d = decode(_pkt(udp, 229))
    assert isinstance(d, Datagram) and d.payload == b"abc" and d.sport == 53


def test_decode_ipv4_options_fragments_and_others():
    body = tcp_header(1, 2, 3, 4, ACK) + b"data"
    opt = decode(_pkt(ether(ipv4("198.18.0.1", "198.18.0.2", 6, body,
                                 options=b"\x94\x04\x00\x00"))))
    assert isinstance(opt, Segment) and opt.payload == b"data"
    df = decode(_pkt(ether(ipv4("198.18.0.1", "198.18.0.2", 6, body, frag=0x4000))))
    assert isinstance(df, Segment)                         # Don't Fragment: a whole packet
    # fragments, the first one too (its lengths are the datagram's, not the fragment's)
    assert decode(_pkt(ether(ipv4("198.18.0.1", "198.18.0.2", 6, body, frag=0x2000)))) is None
    assert decode(_pkt(ether(ipv4("198.18.0.1", "198.18.0.2", 6, body, frag=0x0003)))) is None
    assert decode(_pkt(ether(ipv4("198.18.0.1", "198.18.0.2", 1, b"\x08\x00" + b"\x00" * 6)))) \
        is None                                            # ICMP
    assert decode(_pkt(ether(b"\x00" * 28, ethertype=0x0806))) is None   # ARP
    assert decode(_pkt(b"\x00" * 10)) is None
    assert decode(_pkt(ether(TCP_IP)[:40])) is None        # cut inside the TCP header
    assert decode(_pkt(TCP_IP, linktype=147)) is None      # a link type we do not know
    d = decode(_pkt(udp_frame(payload=b"\x12\x34query")))
    assert isinstance(d, Datagram) and d.payload == b"\x12\x34query" and d.dport == 53


def test_decode_padding_and_snaplen():
    padded = tcp_frame(flags=ACK, pad_to=60)                 # Ethernet minimum frame
    seg = decode(_pkt(padded))
    assert seg.seglen == 0 and seg.payload == b""
    full = tcp_frame(payload=b"x" * 1000)
    cut = decode(_pkt(full[:100], origlen=len(full)))       # snaplen 100
    assert cut.seglen == 1000 and len(cut.payload) == 100 - 54
    bogus = ether(ipv4("198.18.0.1", "198.18.0.2", 6, tcp_header(1, 2, 3, 4, ACK)[:12]
                       + b"\x30" + tcp_header(1, 2, 3, 4, ACK)[13:]))   # data offset 12 bytes
    assert decode(_pkt(bogus)) is None


def test_decode_tcp_options():
    opts = (b"\x02\x04\x05\x78" + b"\x01\x03\x03\x07" + b"\x04\x02"
            + b"\x08\x0a\x00\x00\x00\x05\x00\x00\x00\x06" + b"\x00\x00")
    seg = decode(_pkt(tcp_frame(flags=SYN, options=opts)))
    assert (seg.mss, seg.wscale, seg.sack_perm, seg.tsval, seg.tsecr) == (1400, 7, True, 5, 6)
    assert seg.options_ts == (5, 6) and not seg.sack
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", 100, 200)
    seg = decode(_pkt(tcp_frame(options=sack)))
    assert seg.sack and seg.wscale == -1 and seg.options_ts is None
    ts_only = b"\x01\x01\x08\x0a" + struct.pack("!II", 77, 88)     # Linux's usual layout
    seg = decode(_pkt(tcp_frame(options=ts_only, payload=b"abc")))
    assert seg.options_ts == (77, 88) and seg.payload == b"abc"
    huge = decode(_pkt(tcp_frame(flags=SYN, options=b"\x03\x03\x1e\x00")))
    assert huge.wscale == 14                                       # RFC 7323: at most 14


def test_decode_real_captures_match_dpkt():
    dpkt = pytest.importorskip("dpkt")
    assert len(REAL_FILES) >= 4, REAL
    for path in REAL_FILES:
        for pk in read_capture(path):
            item = decode(pk)
            eth = dpkt.ethernet.Ethernet(pk.data)
            ip = eth.data
            l4 = getattr(ip, "data", None)
            if isinstance(l4, dpkt.tcp.TCP):
                assert isinstance(item, Segment)
                assert (item.sport, item.dport, item.seq, item.ack, item.flags & 0xFF,
                        item.window) == (l4.sport, l4.dport, l4.seq, l4.ack, l4.flags, l4.win)
                assert item.payload == bytes(l4.data)
            elif isinstance(l4, dpkt.udp.UDP):
                assert isinstance(item, Datagram) and item.payload == bytes(l4.data)
            else:
                assert item is None


def test_real_captures_read_cleanly():
    counts = {}
    for path in REAL_FILES:
        cap, pkts = read_all(path)
        assert cap.error is None and not cap.truncated, (path, cap.error)
        counts[path.name] = len(pkts)
    assert counts.get("citizenlab-wechat-android-2023.pcap") == 489
    assert counts.get("ndpi-wechat-web-2017.pcap") == 1672
    assert counts.get("dns-multiple-a.pcapng") == 22
    assert counts.get("http-get.pcapng") == 12


def test_read_is_streamed(tmp_path):
    """A 20 MB capture is read without holding it: the buffer stays near one chunk."""
    import tracemalloc
    frame = tcp_frame(payload=b"y" * 1400)
    p = tmp_path / "big.pcap"
    with open(p, "wb") as f:
        f.write(pcap_bytes([]))
        rec = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
        f.write(rec * 14000)
    assert os.path.getsize(p) > 20e6
    tracemalloc.start()
    n = sum(1 for _ in read_capture(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 14000 and peak < 8e6, peak


def test_reads_what_the_project_writer_writes(tmp_path):
    """The tap/sniffer writer's files: section comment as meta, ns stamps, ISB drops."""
    w = pytest.importorskip("testbed.capture.pcapng_writer")
    p = tmp_path / "w.pcapng"
    with w.PcapngWriter(p, comment={"how": "tap", "seed": 3}, tsresol_ns=True) as out:
        out.write_ns(1_700_000_000_123_456_789, F1)
        out.write(1_700_000_000.5, F3)
        out.write_stats(ifdrop=4, ifrecv=9)
    cap, pkts = read_all(p)
    assert cap.error is None and cap.meta["how"] == "tap" and cap.meta["seed"] == 3
    assert cap.drops == {0: 4} and cap.interfaces[0].tsresol == 10 ** 9
    assert [pk.data for pk in pkts] == [F1, F3]
    assert abs(pkts[0].ts - 1_700_000_000.123456789) < 1e-6
    assert decode(pkts[1]).payload == b"GET / HTTP/1.0\r\n\r\n"


# ============================================================================== scan
def _scanned(path, take_every: int = 0):
    """`Capture.scan` of a file: the packets `other` got and those `take` took (every
    `take_every`-th frame offered, rebuilt from the bytes it was offered), in order."""
    got = []

    def take(buf, at, caplen, origlen, ts, index):
        if not take_every or index % take_every:
            return False
        got.append(Packet(index, ts, 1, bytes(buf[at:at + caplen]), origlen, 0))
        return True

    cap = read_capture(path)
    n, first, last = cap.scan(got.append, take if take_every else None)
    assert n == len(got) == cap.packets_read
    assert (first, last) == ((got[0].ts, got[-1].ts) if got else (None, None))
    return cap, got


def _scan_cases(tmp_path):
    chunky = [(1.0 + i, tcp_frame(seq=i, payload=bytes([i % 251]) * (i % 1500)))
              for i in range(1600)]        # over 1 MiB: records across read chunks
    huge = bytearray(pcap_bytes(FRAMES))
    struct.pack_into("<I", huge, 24 + 16 + len(F1) + 8, 0xFFFFFFF0)   # 2nd record's caplen
    small = _small_files()
    cases = {"le": pcap_bytes(FRAMES), "be": pcap_bytes(FRAMES, endian=">"),
             "nano": pcap_bytes(FRAMES, nano=True),
             "modified": pcap_bytes([(5.0, F3[:40], len(F3)), (6.0, F1)], modified=True),
             "2.2": pcap_bytes([(1.0, F3[:40], len(F3)), (2.0, F1, len(F1))],
                               version=(2, 2), lengths_swapped=True, snaplen=40),
             "raw-ip": pcap_bytes([(1.0, F3[14:])], linktype=101),
             "chunks": pcap_bytes(chunky), "huge": bytes(huge), "pcapng": small["pcapng"],
             "empty": pcap_bytes([])}
    for cut in range(24, len(small["pcap"]), 7):
        cases[f"cut{cut}"] = small["pcap"][:cut]
    for cut in range(28, len(small["pcapng"]), 9):
        cases[f"ngcut{cut}"] = small["pcapng"][:cut]
    return {name: write(tmp_path, data, name) for name, data in cases.items()}


def test_scan_reads_what_iterating_reads(tmp_path):
    """Every packet once, in order, with the same bytes, lengths, times and numbers, and
    the same damage reported, whether `take` takes frames from the read buffer or not."""
    for name, path in _scan_cases(tmp_path).items():
        ref = read_capture(path)
        pkts = list(ref)
        for every in (0, 1, 2):
            cap, got = _scanned(path, every)
            assert got == pkts, (name, every)
            assert (cap.error, cap.truncated, cap.version, cap.interfaces) == \
                (ref.error, ref.truncated, ref.version, ref.interfaces), (name, every)
        assert len(list(cap)) == len(pkts), name          # and it can be iterated after


def test_scan_offers_only_ethernet_frames(tmp_path):
    p = write(tmp_path, pcap_bytes([(1.0, F3[14:])], linktype=101))
    offered = []
    cap = read_capture(p)
    cap.scan(lambda pkt: None, lambda *frame: offered.append(frame))
    assert offered == []
