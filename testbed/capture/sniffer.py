"""The sniffer: real packets from a real interface, through an AF_PACKET socket (root).

The second way to see the wire (DESIGN.md "The recorder"): where the tap renders what the
lab's transports report, the sniffer reads what the kernel put on an interface (ARP, real
handshakes, retransmissions) and writes the same pcapng files, with `"how": "sniffer"` in
the section comment and the kernel's drop count in an Interface Statistics Block, never
hidden.

How it captures, as libpcap does on Linux:

* an `AF_PACKET`/`SOCK_RAW` socket opened with protocol 0 (it receives nothing yet), the
  kernel BPF filter attached (`SO_ATTACH_FILTER`, compiled by `tcpdump -ddd -i IFACE EXPR`
  into `struct sock_filter`s), and only then bound to the interface for `ETH_P_ALL`: no
  packet that the filter would reject can slip in before the filter is attached;
* on a loopback interface every frame is seen twice, once leaving (`PACKET_OUTGOING`) and
  once arriving: the outgoing copy is skipped; on other interfaces outgoing frames are kept
  (they are the host's own packets);
* promiscuous, as libpcap is by default (`PACKET_ADD_MEMBERSHIP`, dropped with the socket):
  on a bridge (a container network) that is what makes frames passing between two other
  ports reach the socket, not only those to and from the host itself;
* kernel receive timestamps (`SO_TIMESTAMPNS`), not the time Python got around to reading;
* `PACKET_STATISTICS` read once at the end: packets that passed the filter (on `lo` both
  copies count) and packets the kernel dropped because the socket buffer was full.

Link types: Ethernet and loopback interfaces (Linux frames loopback traffic with an Ethernet
header) are written as LINKTYPE_ETHERNET (1); interfaces without a link-layer header (tun,
WireGuard) as LINKTYPE_RAW (101).

`record_main()` is the body of `testbed record --iface IF --out FILE [--filter BPF]
[--duration S]`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .pcapng_writer import PcapngWriter, capture_comment

__all__ = ["sniff", "SnifferStats", "compile_bpf", "record_main", "NOT_ROOT_MESSAGE",
           "SnifferError"]

NOT_ROOT_MESSAGE = ("capturing needs root (CAP_NET_RAW); use the in-process tap: "
                    "testbed lab up --record FILE")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35           # also SCM_TIMESTAMPNS
SO_RCVBUFFORCE = 33
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_LINKTYPES = {ARPHRD_ETHER: LINKTYPE_ETHERNET, ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,
              ARPHRD_NONE: LINKTYPE_RAW}
_BUFSIZE = 262144
_RCVBUF = 8 << 20


class SnifferError(Exception):
    """A capture could not start: no such interface, a bad filter, no tcpdump."""


@dataclass
class SnifferStats:
    packets: int = 0          # frames written to the file
    bytes: int = 0            # their original lengths, summed
    kernel_drops: int = 0     # dropped by the kernel (socket buffer full)
    kernel_packets: int = 0   # passed the kernel filter (on lo: both copies of each frame)
    skipped_outgoing: int = 0  # loopback duplicates skipped


def _hatype(iface: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{iface}/type").read_text().strip())
    except FileNotFoundError:
        raise SnifferError(f"no such interface: {iface}") from None
    except (OSError, ValueError):
        return ARPHRD_ETHER


def compile_bpf(iface: str, expr: str) -> list[tuple[int, int, int, int]]:
    """`expr` compiled by tcpdump for `iface`'s link type: (code, jt, jf, k) instructions."""
    try:
        proc = subprocess.run(["tcpdump", "-ddd", "-i", iface, expr], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        raise SnifferError("a capture filter needs tcpdump to compile it "
                           "(apt-get install tcpdump)") from None
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()
        raise SnifferError(f"bad capture filter {expr!r}: {msg[-1] if msg else proc.returncode}")
    lines = [ln.split() for ln in proc.stdout.strip().splitlines() if ln.strip()]
    try:
        n = int(lines[0][0])
        prog = [tuple(int(x) for x in ln) for ln in lines[1:]]
    except (IndexError, ValueError):
        raise SnifferError(f"cannot parse tcpdump -ddd output: {proc.stdout[:200]!r}") from None
    if n != len(prog) or any(len(ins) != 4 for ins in prog):
        raise SnifferError("tcpdump -ddd output is inconsistent")
    return prog  # type: ignore[return-value]


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with a `struct sock_fprog` pointing at the instructions."""
    import ctypes
    insns = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _open(iface: str, bpf: Optional[str]) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing yet
    try:
        prog = compile_bpf(iface, bpf) if bpf else None
        if prog is not None:
            _attach(sock, prog)
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, _RCVBUF)
                break
            except OSError:
                continue
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.bind((iface, ETH_P_ALL))
        except OSError as exc:
            raise SnifferError(f"cannot capture on {iface}: {exc}") from None
        # struct packet_mreq {int ifindex; unsigned short type, alen; unsigned char addr[8]}
        mreq = struct.pack("iHH8s", socket.if_nametoindex(iface), PACKET_MR_PROMISC, 0, b"")
        try:
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError:   # an interface that cannot be promiscuous: its own traffic, then
            pass
        sock.setblocking(False)
        # counters start now: reading PACKET_STATISTICS resets them
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    except BaseException:
        sock.close()
        raise
    return sock


def sniff(iface: str, out: Union[str, os.PathLike], bpf: Optional[str] = None, *,
          stop: Optional[threading.Event] = None, duration: Optional[float] = None,
          comment: Optional[dict] = None, ready: Optional[threading.Event] = None,
          snaplen: int = _BUFSIZE, nanoseconds: bool = False) -> SnifferStats:
    """Capture on `iface` into the pcapng `out` until `stop` is set or `duration` seconds
    have passed (at least one of them should be given; otherwise until interrupted).

    `bpf` is a tcpdump filter expression, attached in the kernel. `comment` fields (profile,
    manifest, fault plan, seed, ...) go into the section comment with how="sniffer".
    `ready` is set once the socket is bound and filtered: traffic sent after that is seen.
    Raises PermissionError without CAP_NET_RAW, SnifferError for a bad interface or filter.
    """
    hatype = _hatype(iface)
    linktype = _LINKTYPES.get(hatype)
    if linktype is None:
        raise SnifferError(f"{iface}: unsupported link type (ARPHRD {hatype})")
    sock = _open(iface, bpf)
    started = time.time()
    fields = dict(comment or {})
    for k in ("how", "synthesised"):
        fields.pop(k, None)
    fields.setdefault("iface", iface)
    fields.setdefault("filter", bpf)
    fields.setdefault("started", started)
    info = capture_comment("sniffer", **fields)
    st = SnifferStats()
    deadline = None if duration is None else time.monotonic() + duration
    anc = socket.CMSG_SPACE(16)
    try:
        try:
            w = PcapngWriter(out, comment=info, linktype=linktype, snaplen=snaplen,
                             if_name=iface, tsresol_ns=nanoseconds)
        except OSError as exc:
            raise SnifferError(f"cannot write {out}: {exc}") from None
        with w:
            if ready is not None:
                ready.set()
            while True:
                if stop is not None and stop.is_set():
                    break
                wait = 0.1
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = min(wait, left)
                try:
                    r, _, _ = select.select([sock], [], [], wait)
                except InterruptedError:
                    continue
                if not r:
                    continue
                # drain what is queued, then look at stop/deadline again
                for _ in range(1024):
                    try:
                        data, ancdata, _flags, addr = sock.recvmsg(_BUFSIZE, anc)
                    except (BlockingIOError, InterruptedError):
                        break
                    if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                        st.skipped_outgoing += 1
                        continue
                    ts_ns = None
                    for level, typ, cdata in ancdata:
                        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS \
                                and len(cdata) >= 16:
                            sec, nsec = struct.unpack("qq", cdata[:16])
                            ts_ns = sec * 1_000_000_000 + nsec
                    if ts_ns is None:
                        ts_ns = time.time_ns()
                    w.write_ns(ts_ns, data)
                    st.packets += 1
                    st.bytes += len(data)
            tp_packets, tp_drops = struct.unpack(
                "II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            st.kernel_packets, st.kernel_drops = tp_packets, tp_drops
            w.write_stats(ifdrop=tp_drops, ifrecv=tp_packets, ts=time.time(),
                          starttime=started, endtime=time.time())
    finally:
        sock.close()
    return st


def record_main(iface: str, out: Union[str, os.PathLike], bpf: Optional[str] = None,
                duration: Optional[float] = None, *, comment: Optional[dict] = None,
                as_json: bool = False, stop: Optional[threading.Event] = None,
                on_ready=None) -> int:
    """`testbed record`: capture until SIGINT/SIGTERM, `duration` or `stop` is set; print
    the counts. `on_ready()` is called once capturing (from another thread). Exit status 0
    after `duration` or `stop`, 128 + the signal's number after SIGINT (130) or SIGTERM
    (143), the capture closed cleanly either way; 2 when capturing is impossible (not root,
    no interface, bad filter). The counts go to stdout, as JSON with `as_json`."""
    stop = stop or threading.Event()
    ready = threading.Event()
    previous = {}
    stopped_by: list[int] = []
    in_main = threading.current_thread() is threading.main_thread()

    def on_signal(signum: int, _frame) -> None:
        if not stopped_by:
            stopped_by.append(signum)
        stop.set()

    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    def announce() -> None:
        ready.wait()
        if not stop.is_set():
            print(f"listening on {iface}" + (f", filter {bpf!r}" if bpf else "") +
                  f", writing {out}", file=sys.stderr, flush=True)
            if on_ready is not None:
                on_ready()

    threading.Thread(target=announce, daemon=True).start()
    try:
        st = sniff(iface, out, bpf, stop=stop, duration=duration, comment=comment,
                   ready=ready)
    except PermissionError:
        print(f"error: {NOT_ROOT_MESSAGE}", file=sys.stderr)
        return 2
    except SnifferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        stop.set()      # before `ready`: the announcer stays quiet after a failure
        ready.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = 128 + stopped_by[0] if stopped_by else 0
    if as_json:
        import dataclasses
        import json
        print(json.dumps({"capture": str(out), **dataclasses.asdict(st),
                          "exit_status": status}, indent=2), flush=True)
    else:
        print(f"{st.packets} packets captured ({st.bytes} bytes), "
              f"{st.kernel_packets} received by filter, {st.kernel_drops} dropped by kernel",
              flush=True)
    return status
