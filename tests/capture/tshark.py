"""Running tshark (Wireshark 4.0) to get the reference answers the capture tests compare to."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional

from testbed.capture.flows import FlowTable
from testbed.capture.packets import Segment, decode, read_capture
from testbed.capture.tcp_analysis import FILTERS, filter_names

TSHARK = shutil.which("tshark")

# The seven filters the brief names, then the rest of what we implement.
REQUIRED = ["retransmission", "fast_retransmission", "duplicate_ack", "zero_window",
            "keep_alive", "out_of_order", "lost_segment"]
ALL = REQUIRED + [f for f in FILTERS if f not in REQUIRED]

# Expert info messages tshark 4.0 prints -> the filter each one makes match.
MESSAGES = {
    "This frame is a (suspected) retransmission": "retransmission",
    "This frame is a (suspected) fast retransmission": "fast_retransmission",
    "This frame is a (suspected) spurious retransmission": "spurious_retransmission",
    "This frame is a (suspected) out-of-order segment": "out_of_order",
    "A new tcp session is started with the same ports as an earlier session in this trace":
        "reused_ports",
    "Previous segment(s) not captured (common at capture start)": "lost_segment",
    "ACKed segment that wasn't captured (common at capture start)": "ack_lost_segment",
    "TCP window update": "window_update",
    "TCP window specified by the receiver is now completely full": "window_full",
    "TCP keep-alive segment": "keep_alive",
    "ACK to a TCP keep-alive segment": "keep_alive_ack",
    "TCP Zero Window Probe": "zero_window_probe",
    "TCP Zero Window segment": "zero_window",
    "ACK to a TCP Zero Window Probe": "zero_window_probe_ack",
}


def run(args: list[str], timeout: float = 300) -> str:
    proc = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"tshark {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def filter_frames(path, name: str) -> set[int]:
    """Frames `tshark -r FILE -Y tcp.analysis.<name>` shows."""
    out = run(["-r", str(path), "-Y", f"tcp.analysis.{name}", "-T", "fields",
               "-e", "frame.number"])
    return {int(x) for x in out.split()}


class Reference:
    """One tshark pass: per-packet analysis flags, TCP conversations, optionally streams."""

    def __init__(self, path, follow: int = 0) -> None:
        args = ["-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|",
                "-e", "frame.number", "-e", "tcp.stream", "-e", "_ws.expert.message",
                "-z", "conv,tcp"]
        for i in range(follow):
            args += ["-z", f"follow,tcp,raw,{i}"]
        out = run(args)
        self.flags: dict[int, set[str]] = {}
        self.streams: dict[int, int] = {}            # frame -> tcp.stream
        self.conversations: list[tuple] = []
        self.follow: dict[int, dict] = {}
        lines = out.splitlines()
        i = 0
        while i < len(lines) and not lines[i].startswith("====="):
            parts = lines[i].split("\t")
            i += 1
            if not parts[0].isdigit():
                continue
            frame = int(parts[0])
            if len(parts) > 1 and parts[1].isdigit():
                self.streams[frame] = int(parts[1])
            names = set()
            for msg in (parts[2].split("|") if len(parts) > 2 and parts[2] else []):
                if msg.startswith("Duplicate ACK (#"):
                    names.add("duplicate_ack")
                elif msg in MESSAGES:
                    names.add(MESSAGES[msg])
            if names:
                self.flags[frame] = names
        self._parse_stats(lines[i:])

    def _parse_stats(self, lines: list[str]) -> None:
        section = None
        cur = None
        for line in lines:
            if line.startswith("TCP Conversations"):
                section = "conv"
                continue
            if line.startswith("Follow: tcp,raw"):
                section = "follow"
                cur = {"nodes": [], "chunks": []}
                continue
            if section == "conv" and "<->" in line:
                t = line.split()
                a, b = t[0].rsplit(":", 1), t[2].rsplit(":", 1)
                self.conversations.append(((a[0], int(a[1])), (b[0], int(b[1])),
                                           int(t[6]), int(t[3])))   # frames a->b, b->a
            elif section == "follow":
                if line.startswith("Filter: tcp.stream eq "):
                    cur["stream"] = int(line.split()[-1])
                elif line.startswith("Node "):
                    cur["nodes"].append(line.split(": ", 1)[1].strip())
                elif line.startswith("====="):
                    if "stream" in cur and cur["nodes"] and cur["nodes"][0] != ":0" \
                            and cur["stream"] not in self.follow:
                        self.follow[cur["stream"]] = cur
                elif line.strip():
                    cur["chunks"].append((1 if line.startswith("\t") else 0,
                                          bytes.fromhex(line.strip())))

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for names in self.flags.values():
            for n in names:
                c[n] = c.get(n, 0) + 1
        return c

    def follow_bytes(self, stream: int, node: int) -> bytes:
        return b"".join(b for n, b in self.follow[stream]["chunks"] if n == node)


class Ours:
    """Our answer for the same file: per-packet flags, flows, reassembled streams."""

    def __init__(self, path, keep_data: bool = False) -> None:
        self.flags: dict[int, set[str]] = {}
        self.data: dict[tuple[int, str], bytearray] = {}
        self.flow_of: dict[int, int] = {}

        def on_analysis(flow, seg, fl):
            n = set(filter_names(fl))
            if n:
                self.flags[seg.index] = n

        def on_data(flow, d, ts, b):
            self.data.setdefault((flow.id, d), bytearray()).extend(b)

        def on_gap(flow, d, ts, n):
            self.data.setdefault((flow.id, d), bytearray()).extend(
                b"[%d bytes missing in capture file]" % n)

        self.table = FlowTable(on_data=on_data if keep_data else None,
                               on_gap=on_gap if keep_data else None,
                               on_analysis=on_analysis)
        self.capture = read_capture(path)
        for pk in self.capture:
            item = decode(pk)
            if item is not None:
                self.table.feed(item)
                if type(item) is Segment:
                    self.flow_of[pk.index] = self.table._map[
                        (item.src, item.sport, item.dst, item.dport)][0].id
        self.table.close()

    def counts(self) -> dict[str, int]:
        return self.table.totals()

    def conversations(self) -> list[tuple]:
        return sorted((tuple(sorted([f.client, f.server])), f.total_packets)
                      for f in self.table.flows)


def diff_flags(ref: dict[int, set[str]], ours: dict[int, set[str]],
               names: Iterable[str] = ALL) -> dict[str, tuple[list[int], list[int]]]:
    """filter -> (frames only tshark flags, frames only we flag); empty when equal."""
    out = {}
    for n in names:
        a = {f for f, s in ref.items() if n in s}
        b = {f for f, s in ours.items() if n in s}
        if a != b:
            out[n] = (sorted(a - b)[:10], sorted(b - a)[:10])
    return out


def ref_conversations(ref: Reference) -> list[tuple]:
    return sorted((tuple(sorted([a, b])), ab + ba) for a, b, ab, ba in ref.conversations)


def per_direction(rows) -> dict:
    """(sender, receiver) -> packets, from analyze's flow rows."""
    out = {}
    for r in rows:
        out[(r["client"], r["server"])] = r["packets_c2s"]
        out[(r["server"], r["client"])] = r["packets_s2c"]
    return out


def tshark_per_direction(ref) -> dict:
    """(sender, receiver) -> frames, from `tshark -z conv,tcp`."""
    out = {}
    for (a_ip, a_port), (b_ip, b_port), ab, ba in ref.conversations:
        out[(f"{a_ip}:{a_port}", f"{b_ip}:{b_port}")] = ab
        out[(f"{b_ip}:{b_port}", f"{a_ip}:{a_port}")] = ba
    return out


_MARKER = re.compile(rb"\[(\d+) bytes missing in capture file\]\x00?")


def strip_markers(b: bytes) -> bytes:
    """Stream bytes without tshark's "[N bytes missing in capture file]" (NUL-terminated)."""
    return _MARKER.sub(b"", b)


def markers(b: bytes) -> list[int]:
    return [int(m) for m in _MARKER.findall(b)]


def count_table(rows: dict[str, dict[str, Optional[int]]]) -> str:
    """A small text table for failure messages and the report."""
    head = f"{'filter':26s} {'tshark':>8s} {'ours':>8s}"
    lines = [head]
    for name, r in rows.items():
        lines.append(f"{name:26s} {r['tshark']!s:>8s} {r['ours']!s:>8s}")
    return "\n".join(lines)


def available() -> bool:
    return TSHARK is not None and Path(TSHARK).exists()


def check_against_tshark(path, *, follow: int = 0, literal_filters: bool = False) -> dict:
    """Assert per-frame flags, counts, flows (and streams) agree; return the count table."""
    ref = Reference(path, follow=follow)
    ours = Ours(path, keep_data=bool(follow))
    assert ours.capture.error is None, ours.capture.error
    diff = diff_flags(ref.flags, ours.flags)
    rows = {n: {"tshark": ref.counts().get(n, 0), "ours": ours.counts().get(n, 0)} for n in ALL}
    assert not diff, f"{path}: frames differ (only tshark, only ours): {diff}\n" \
                     f"{count_table(rows)}"
    if literal_filters:
        # exactly what the brief asks: `tshark -Y tcp.analysis.<name>` counts
        for n in REQUIRED:
            frames = filter_frames(path, n)
            assert len(frames) == ours.counts().get(n, 0), (path, n)
            assert frames == {f for f, s in ours.flags.items() if n in s}, (path, n)
    # flows: the same conversations with the same packet counts, frame by frame
    assert ours.conversations() == ref_conversations(ref)
    assert len(ours.table.flows) == len(ref.conversations)
    # every segment in the same flow as tshark's tcp.stream (ICMP errors quoting a TCP
    # header get a tcp.stream from tshark, but are not part of the conversation)
    mapping = {}
    for frame, flow_id in ours.flow_of.items():
        mapping.setdefault(ref.streams.get(frame), set()).add(flow_id)
    assert None not in mapping
    assert all(v == {k} for k, v in mapping.items()), mapping
    for sid in range(follow):
        if sid not in ref.follow:
            continue
        flow = ours.table.flows[sid]
        node0 = ref.follow[sid]["nodes"][0]
        first_is_client = node0 == f"{flow.client[0]}:{flow.client[1]}"
        for node, d in ((0, "c2s" if first_is_client else "s2c"),
                        (1, "s2c" if first_is_client else "c2s")):
            theirs = ref.follow_bytes(sid, node)
            mine = bytes(ours.data.get((sid, d), b""))
            if strip_markers(theirs) == strip_markers(mine):
                assert markers(theirs) == markers(mine), (path, sid, d)
                continue
            # tshark's follow never passes data that waits behind a hole it never sees filled
            # (also the one between a pure ACK and the first data when a capture starts
            # mid-connection); we go on past it. Then theirs is a prefix of ours.
            assert strip_markers(mine).startswith(strip_markers(theirs)), (path, sid, d)
            assert not flow.syn_seen or flow.gaps > 0, (path, sid, d)
    return rows
