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
