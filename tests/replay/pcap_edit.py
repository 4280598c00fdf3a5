"""Rewrite a capture: drop packets, or change bytes in one (checksums made right again)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import dpkt

from testbed.capture.packets import decode, read_capture
from testbed.capture.pcapng_writer import PcapngWriter


def copy_capture(src: Path, dst: Path, *, keep: Callable = lambda pkt, item: True,
                 edit: Optional[Callable[[int, bytes], bytes]] = None,
                 comment: Optional[dict] = None) -> Path:
    """Write `src`'s packets that `keep(packet, decoded)` to `dst`, each through
    `edit(frame, ethernet bytes)` when given; the section comment stays (or `comment`)."""
    with read_capture(src) as cap:
        meta = cap.meta
        packets = list(cap)
    with PcapngWriter(dst, comment=comment if comment is not None else meta,
                      tsresol_ns=True) as w:
        for pkt in packets:
            if not keep(pkt, decode(pkt)):
                continue
            data = pkt.data if edit is None else edit(pkt.index, pkt.data)
            w.write_ns(round(pkt.ts * 1e9), data)
    return dst


def with_checksums(frame: bytes) -> bytes:
    """An Ethernet/IPv4 frame with its IP and TCP/UDP checksums computed afresh."""
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    ip.sum = 0
    ip.data.sum = 0
    return bytes(eth)


def replace_in_frame(frame: bytes, old: bytes, new: bytes) -> bytes:
    """`old` -> `new` (the same length) in a frame's TCP payload, checksums made right."""
    assert len(old) == len(new) and old in frame
    return with_checksums(frame.replace(old, new, 1))


def move_addresses(src: Path, dst: Path, mapping: dict[str, str]) -> Path:
    """A copy of a capture whose IPv4 addresses are others (`mapping`, old -> new): in every
    IP header, every DNS A record, and the lab manifest its section comment records."""
    import ipaddress
    import json

    raw = {ipaddress.IPv4Address(a).packed: ipaddress.IPv4Address(b).packed
           for a, b in mapping.items()}

    def edit(_frame: int, data: bytes) -> bytes:
        eth = dpkt.ethernet.Ethernet(data)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP):
            return data
        ip.src, ip.dst = raw.get(ip.src, ip.src), raw.get(ip.dst, ip.dst)
        if isinstance(ip.data, dpkt.udp.UDP):
            payload = bytes(ip.data.data)
            for old, new in raw.items():   # an A record's data is the address itself
                payload = payload.replace(old, new)
            ip.data.data = payload
        return with_checksums(bytes(eth))

    with read_capture(src) as cap:
        meta = cap.meta
    text = json.dumps(meta)
    for old, new in mapping.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    return copy_capture(src, dst, edit=edit, comment=json.loads(text))


def first_reply_frame_with(path: Path, text: bytes) -> int:
    """The number of the first frame from a server (its port below the client's ephemeral
    one) whose payload holds `text`."""
    with read_capture(path) as cap:
        for pkt in cap:
            item = decode(pkt)
            if getattr(item, "sport", None) and item.sport < item.dport \
                    and text in pkt.data:
                return pkt.index
    raise LookupError(f"no reply in {path} holds {text!r}")


def alter_reply(src: Path, dst: Path, old: bytes, new: bytes) -> int:
    """A copy of `src` whose first reply holding `old` holds `new` instead (the same
    length); the frame number of that reply."""
    frame = first_reply_frame_with(src, old)
    copy_capture(src, dst, edit=lambda i, data: replace_in_frame(data, old, new)
                 if i == frame else data)
    return frame
