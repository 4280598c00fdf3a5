"""A small pcapng writer (one section, one interface) that says how the capture was made.

Both recorders (the in-process tap and the AF_PACKET sniffer, DESIGN.md "The recorder") write
their packets through `PcapngWriter`, so the files they make differ only in what the section
header's comment says: the section header block carries `shb_comment` = a JSON object
(`capture_comment()`: how the capture was made, "tap" or "sniffer", the profile, the time
scale, the lab manifest without passwords, the fault plan and its seed, the testbed version
and the start time) and `shb_userappl` = "wechat-testbed".

Blocks written (pcapng, draft-ietf-opsawg-pcapng, little-endian):

* SHB (section header), once, first: shb_comment, shb_os, shb_userappl;
* IDB (interface description), once: link type (1, Ethernet), snap length, if_name,
  if_tsresol (6: microseconds, the default; 9 with `tsresol_ns=True`);
* EPB (enhanced packet) per packet: timestamp, captured and original length, the frame;
* ISB (interface statistics), when `write_stats()` is called: isb_ifrecv and isb_ifdrop, so
  a capture that lost packets says so (the sniffer writes the kernel's drop count there).

Built with `struct` rather than `dpkt.pcapng.Writer`: dpkt writes one comment per block but
takes the SHB/IDB as objects assembled by hand and cannot write an ISB with `isb_ifdrop`
through its writer API; forty lines of `struct` say exactly what is on disk.

What it wrote is read back by the one pcapng reader, `packets.read_capture` (section
comment as `meta`, `userappl`, `os`, interfaces, statistics).

The writer is bounded in memory: every block goes straight to the (buffered) file, and the
file is flushed at most `flush_interval` seconds after a packet, so a reader following a
live capture (or a crash) loses at most that much.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

__all__ = ["PcapngWriter", "capture_comment", "LINKTYPE_ETHERNET", "USERAPPL", "MAX_COMMENT"]

LINKTYPE_ETHERNET = 1
USERAPPL = "wechat-testbed"

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_ISB = 0x00000005
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D

_OPT_END = 0
_OPT_COMMENT = 1
_SHB_OS = 3
_SHB_USERAPPL = 4
_IF_NAME = 2
_IF_TSRESOL = 9
_ISB_STARTTIME = 2
_ISB_ENDTIME = 3
_ISB_IFRECV = 4
_ISB_IFDROP = 5
_ISB_OSDROP = 7

MAX_COMMENT = 0xFFFF - 3  # an option's value is at most 65535 bytes (we keep it 4-aligned)
_USERS_KEPT = 50          # users listed in a comment whose manifest would not fit


_EPB_HEAD = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")
_TAILS = (b"", b"\0", b"\0\0", b"\0\0\0")   # padding to 4 bytes, by how much is missing


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _option(code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"pcapng option {code} is {len(value)} bytes, over 65535")
    return struct.pack("<HH", code, len(value)) + value + b"\0" * _pad4(len(value))


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(c, v) for c, v in opts) + struct.pack("<HH", _OPT_END, 0)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def _redact(manifest: Any) -> Optional[dict]:
    """A manifest (object or dict) without passwords."""
    if manifest is None:
        return None
    if hasattr(manifest, "redacted"):
        return manifest.redacted()
    d = dict(manifest)
    if isinstance(d.get("users"), list):
        d["users"] = [{k: v for k, v in u.items() if k != "password"} if isinstance(u, dict)
                      else u for u in d["users"]]
    return d


def capture_comment(how: str, *, profile: Optional[str] = None,
                    time_scale: Optional[float] = None, manifest: Any = None,
                    fault_plan: Any = None, seed: Optional[int] = None,
                    started: Optional[float] = None, **extra: Any) -> dict:
    """The section comment of a capture (DESIGN.md "Captures say how they were made").

    `how` is "tap" (synthesised from transport events) or "sniffer" (a real interface).
    `manifest` is a `Manifest` or its dict; passwords are removed either way. Missing fields
    are recorded as null rather than left out, so a reader can tell "none" from "unknown
    version of the writer". `extra` keys are added as they are (JSON-serialisable values).
    """
    if how not in ("tap", "sniffer"):
        raise ValueError(f"how must be 'tap' or 'sniffer', not {how!r}")
    from testbed import __version__
    started = time.time() if started is None else float(started)
    m = _redact(manifest)
    if m is not None:
        profile = profile if profile is not None else m.get("profile")
        time_scale = time_scale if time_scale is not None else m.get("time_scale")
    d = {
        "how": how,
        "synthesised": how == "tap",
        "profile": profile,
        "time_scale": time_scale,
        "manifest": m,
        "fault_plan": fault_plan,
        "seed": seed,
        "testbed_version": __version__,
        "started": started,
        "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
        .isoformat(timespec="microseconds"),
    }
    d.update(extra)
    if m is not None and len(_dump(d)) > MAX_COMMENT and isinstance(m.get("users"), list):
        # `lab up --users 100000`: list the first users and count the rest
        users = m["users"]
        m = dict(m, users=users[:_USERS_KEPT], users_omitted=len(users) - _USERS_KEPT)
        d["manifest"] = m
    return d


def _dump(comment: Union[str, dict]) -> bytes:
    if isinstance(comment, str):
        return comment.encode("utf-8")
    return json.dumps(comment, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


class PcapngWriter:
    """Write one pcapng section with one interface.

    `comment` is a string, or a dict written as JSON (normally from `capture_comment()`).
    Timestamps are Unix seconds (float); `write_ns()` takes integer nanoseconds for exact
    stamps. Microsecond resolution unless `tsresol_ns=True`.
    """

    def __init__(self, path_or_file: Union[str, os.PathLike, BinaryIO], *,
                 comment: Union[str, dict], linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = 262144, if_name: str = "lab0", tsresol_ns: bool = False,
                 flush_interval: float = 1.0) -> None:
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen {snaplen} out of range")
        text = _dump(comment)
        if len(text) > MAX_COMMENT:
            raise ValueError(f"section comment is {len(text)} bytes, over {MAX_COMMENT}")
        if isinstance(path_or_file, (str, os.PathLike)):
            self.path: Optional[Path] = Path(path_or_file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f: BinaryIO = open(self.path, "wb", buffering=64 * 1024)
            self._owns = True
        else:
            self.path = None
            self._f = path_or_file
            self._owns = False
        self.comment = comment
        self.linktype = linktype
        self.snaplen = snaplen
        self.tsresol_ns = tsresol_ns
        self._units = 1_000_000_000 if tsresol_ns else 1_000_000
        self.flush_interval = flush_interval
        self._last_flush = time.monotonic()
        self.packets = 0
        self.bytes = 0
        self.closed = False
        shb_opts = [(_OPT_COMMENT, text),
                    (_SHB_OS, f"{platform.system()} {platform.release()}".encode()),
                    (_SHB_USERAPPL, USERAPPL.encode())]
        shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _options(shb_opts)
        idb_opts = [(_IF_NAME, if_name.encode()),
                    (_IF_TSRESOL, bytes([9 if tsresol_ns else 6]))]
        idb = struct.pack("<HHI", linktype, 0, snaplen) + _options(idb_opts)
        self._f.write(_block(_SHB, shb) + _block(_IDB, idb))

    # ------------------------------------------------------------------ packets
    def _units_of(self, ts: float) -> int:
        return round(ts * self._units)

    def write(self, ts: float, frame: bytes, origlen: Optional[int] = None) -> None:
        """One packet at Unix time `ts` (seconds)."""
        self._write_units(self._units_of(ts), frame, origlen)

    def write_ns(self, ts_ns: int, frame: bytes, origlen: Optional[int] = None) -> None:
        """One packet at Unix time `ts_ns` (integer nanoseconds, kept exact with ns stamps)."""
        units = ts_ns if self.tsresol_ns else (ts_ns + 500) // 1000
        self._write_units(units, frame, origlen)

    def write_units(self, units: int, *frames: bytes) -> None:
        """Whole packets stamped in the writer's own units (microseconds, or nanoseconds
        with `tsresol_ns`), the first at `units`, each next one unit later: the tap's path
        (a segment and its ACK), one buffered write for them all."""
        parts = []
        for frame in frames:
            n = len(frame)
            if n > self.snaplen or self.closed:
                self._write_units(units, frame, None)
                units += 1
                continue
            total = 32 + n + (-n & 3)
            parts += (_EPB_HEAD.pack(_EPB, total, 0, (units >> 32) & 0xFFFFFFFF,
                                     units & 0xFFFFFFFF, n, n), frame, _TAILS[-n & 3],
                      _U32.pack(total))
            self.packets += 1
            self.bytes += n
            units += 1
        self._f.write(b"".join(parts))
        if self.flush_interval is not None:
            now = time.monotonic()
            if now - self._last_flush >= self.flush_interval:
                self.flush()

    def _write_units(self, units: int, frame: bytes, origlen: Optional[int]) -> None:
        if self.closed:
            raise ValueError("write to a closed PcapngWriter")
        n = len(frame)
        if origlen is None:
            origlen = n
        if n > self.snaplen:
            frame = frame[:self.snaplen]
            n = self.snaplen
        total = 32 + n + (-n & 3)
        self._f.write(b"".join((_EPB_HEAD.pack(_EPB, total, 0, (units >> 32) & 0xFFFFFFFF,
                                               units & 0xFFFFFFFF, n, origlen),
                                frame, _TAILS[-n & 3], _U32.pack(total))))
        self.packets += 1
        self.bytes += origlen
        if self.flush_interval is not None:
            now = time.monotonic()
            if now - self._last_flush >= self.flush_interval:
                self.flush()

    # ------------------------------------------------------------------ statistics
    def write_stats(self, ifdrop: int, ifrecv: int, ts: Optional[float] = None, *,
                    starttime: Optional[float] = None, endtime: Optional[float] = None,
                    osdrop: Optional[int] = None) -> None:
        """An Interface Statistics Block: packets received and dropped on the interface
        (isb_ifrecv, isb_ifdrop), optionally dropped by the OS (isb_osdrop) and the
        capture's start and end times."""
        if self.closed:
            raise ValueError("write to a closed PcapngWriter")
        units = self._units_of(time.time() if ts is None else ts)

        def stamp(t: float) -> bytes:
            u = self._units_of(t)
            return struct.pack("<II", (u >> 32) & 0xFFFFFFFF, u & 0xFFFFFFFF)

        opts: list[tuple[int, bytes]] = []
        if starttime is not None:
            opts.append((_ISB_STARTTIME, stamp(starttime)))
        if endtime is not None:
            opts.append((_ISB_ENDTIME, stamp(endtime)))
        opts.append((_ISB_IFRECV, struct.pack("<Q", int(ifrecv))))
        opts.append((_ISB_IFDROP, struct.pack("<Q", int(ifdrop))))
        if osdrop is not None:
            opts.append((_ISB_OSDROP, struct.pack("<Q", int(osdrop))))
        body = struct.pack("<III", 0, (units >> 32) & 0xFFFFFFFF, units & 0xFFFFFFFF)
        self._f.write(_block(_ISB, body + _options(opts)))
        self.flush()

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        self._last_flush = time.monotonic()
        try:
            self._f.flush()
        except (ValueError, io.UnsupportedOperation):
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush()
        if self._owns:
            self._f.close()

    def __enter__(self) -> "PcapngWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
