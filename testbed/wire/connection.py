"""One long-link connection without I/O (PROTOCOL.md section 2), in the manner of h11.

Bytes go in with `receive_data(data)`, which returns events (frozen dataclasses); the `send_*`
methods return the bytes to write. Nothing here reads a socket or a clock: time is passed in
as protocol seconds (`now`), and the owner asks `get_timer()` when to call
`handle_timer(now)` (aioquic's habit), so the same object runs on the lab clock, on a test's
manual clock or over a capture being replayed.

Two roles, one rule book:

* `ServerConnection` checks each request in the contract's order (a command that is not a
  request in the table: -1; anything but NOOP and IDENTIFY before the link is identified:
  -13; a body that does not decode: -2), answers NOOPs and those errors itself (their bytes
  wait in `data_to_send()`, as h2 answers a PING), hands every other request over as a
  `Request` event, and keeps the idle timeout.
* `ClientConnection` numbers requests, matches each reply to its request by seq and checks
  the reply's cmd, hands NOTIFY pushes over as `Push` events and times requests out.

Bad bytes from the peer raise `RemoteProtocolError` (and nothing else); asking to send what
the contract forbids raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

from google.protobuf.message import Message

from .commands import (BY_CMD, IDENTIFY_CMD, NOOP_CMD, NOTIFY_CMD, PUSH_SEQ, Command,
                       decode_request, error_body, is_push, notify_body, parse_notify)
from .errors import LocalProtocolError, RemoteProtocolError, Ret
from .frames import (DEFAULT_MAX_PACKET_LEN, HEADER, REPLY_OFFSET, Frame, FrameDecoder,
                     encode_frame, is_reply, reply_cmd)

_NOOP_REPLY = reply_cmd(NOOP_CMD)
# the largest cmd whose reply cmd (+ 1000000000) fits the header's 32 bits
MAX_REQUEST_CMD = 0xFFFFFFFF - REPLY_OFFSET
_pack_header = HEADER.pack


class ConnectionState(enum.Enum):
    """Where a connection is. `ERROR` follows a violation by the peer: the owner closes."""

    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


_CLOSED = ConnectionState.CLOSED


# ---------------------------------------------------------------------- server events
@dataclass(frozen=True, slots=True)
class Request:
    """A request that passed every check: answer it with `send_reply(command, seq, body)`."""

    command: Command
    seq: int
    message: Optional[Message]   # the decoded request body
    size: int = 0                # the body's bytes on the wire (what holding it costs)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request answered at once with an error reply (already in `data_to_send()`)."""

    cmd: int
    seq: int
    ret: Ret
    reason: str


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """Nothing arrived for the idle timeout: the connection is closed; close the socket."""

    idle_s: float


@dataclass(frozen=True, slots=True)
class FrameTimeout:
    """A frame begun `held_s` ago (`buffered` bytes of it held) was not complete by the
    frame deadline: the connection is closed; close the socket."""

    held_s: float
    buffered: int


# ---------------------------------------------------------------------- client events
@dataclass(frozen=True, slots=True)
class Reply:
    """The reply to a pending request; `cmd` is the request's command id."""

    cmd: int
    seq: int
    body: bytes

    @property
    def command(self) -> Optional[Command]:
        return BY_CMD.get(self.cmd)


@dataclass(frozen=True, slots=True)
class WrongReply:
    """A reply with a pending request's seq but another command: that request failed."""

    seq: int
    expected: int   # the reply cmd the request called for
    got: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Push:
    """A NOTIFY from the server: run newsync for the logs in `selector`."""

    selector: int


@dataclass(frozen=True, slots=True)
class TimedOut:
    """A pending request whose deadline passed with no reply; a late reply becomes `Stray`."""

    cmd: int
    seq: int


@dataclass(frozen=True, slots=True)
class Stray:
    """A well-framed frame that answers nothing: a reply to no pending request (a late one,
    say), a request from the server, or a NOTIFY whose body is not 4 bytes."""

    frame: Frame
    reason: str


ServerEvent = Union[Request, Rejected, IdleTimeout, FrameTimeout]
ClientEvent = Union[Reply, WrongReply, Push, TimedOut, Stray]


class _Connection:
    """What both roles share: the frame decoder, the state, the counters."""

    __slots__ = ("_decoder", "_error", "state", "frames_received", "frames_sent")

    def __init__(self, max_packet_len: int) -> None:
        self._decoder = FrameDecoder(max_packet_len)
        self._error: Optional[RemoteProtocolError] = None   # a violation past the framing
        self.state = ConnectionState.OPEN
        self.frames_received = 0
        self.frames_sent = 0

    @property
    def max_packet_len(self) -> int:
        return self._decoder.max_packet_len

    @property
    def error(self) -> Optional[RemoteProtocolError]:
        """The peer's violation, once one was seen (the state is then `ERROR`)."""
        return self._error or self._decoder.error

    def _frames(self, data: bytes) -> list[Frame]:
        """Decode; a violation with no good frame before it raises at once, one after good
        frames lets those through first (and the next call raises)."""
        if self.state is ConnectionState.ERROR:
            raise self.error
        try:
            frames = self._decoder.receive_data(data)
        except RemoteProtocolError:
            self.state = ConnectionState.ERROR
            raise
        if self._decoder.error is not None:
            self.state = ConnectionState.ERROR
        self.frames_received += len(frames)
        return frames

    def _encode(self, cmd: int, seq: int, body: bytes) -> bytes:
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send on a connection that is {self.state.value}")
        data = encode_frame(cmd, seq, body, self._decoder.max_packet_len)
        self.frames_sent += 1
        return data

    def close(self) -> None:
        """The socket is gone (or going): nothing more is sent; bytes still fed are dropped."""
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.CLOSED


class ServerConnection(_Connection):
    """The server's side of one long link (the mock server; a replayer's server side)."""

    __slots__ = ("identified", "idle_timeout", "frame_timeout", "last_rx", "frame_started",
                 "_out")

    def __init__(self, *, max_packet_len: int = DEFAULT_MAX_PACKET_LEN,
                 idle_timeout: Optional[float] = None, frame_timeout: Optional[float] = None,
                 now: float = 0.0) -> None:
        super().__init__(max_packet_len)
        self.identified = False         # an IDENTIFY succeeded (set by `identify()`)
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.last_rx = now              # protocol time bytes last arrived
        self.frame_started: Optional[float] = None   # when the partial frame held began
        self._out: Optional[list[bytes]] = None   # made when needed: 10,000s of idle links

    @property
    def at_frame_boundary(self) -> bool:
        """No partial frame is held and no violation seen: the next byte fed starts a frame.
        Only then may an owner read frame headers itself (the NOOP fast path)."""
        dec = self._decoder
        return not dec._buf and dec._error is None and self._error is None

    @property
    def bytes_needed(self) -> int:
        """Bytes that would finish the partial frame held (or, while fewer than 16 are held,
        its header); 0 at a frame boundary. An owner that feeds just these can take the
        fast path again on what follows."""
        return self._decoder.needed

    def noops_answered(self, count: int, now: float) -> None:
        """The owner answered `count` body-less NOOPs straight from the bytes, at a frame
        boundary: keep the idle clock and the counters as if they had been fed here."""
        self.last_rx = now
        self.frames_received += count
        self.frames_sent += count

    def receive_data(self, data: bytes, now: float) -> list[ServerEvent]:
        """Feed bytes that arrived at protocol time `now`; the events they complete."""
        if self.state is _CLOSED:
            return []
        self.last_rx = now
        events: list[ServerEvent] = []
        out = self._out
        if out is None:
            out = self._out = []
        continued = self.frame_started is not None
        frames = self._frames(data)
        if not self._decoder.buffered:
            self.frame_started = None
        elif frames or not continued:   # the bytes held begin a frame that began just now
            self.frame_started = now
        pack, noop, noop_reply = _pack_header, NOOP_CMD, _NOOP_REPLY
        for index, (cmd, seq, body) in enumerate(frames):
            if cmd == noop and not body:   # the heartbeat, answered here
                out.append(pack(16, 16, 1, noop_reply, seq))
                continue
            if cmd > MAX_REQUEST_CMD:
                # no reply can carry cmd + 1000000000 in 32 bits: the peer broke the
                # framing's rules as surely as with a bad header (the frames before are
                # answered, as there)
                self._error = RemoteProtocolError(
                    f"cmd {cmd}: its reply cmd {reply_cmd(cmd)} does not fit 32 bits")
                self.state = ConnectionState.ERROR
                self.frame_started = None
                self.frames_sent += index - len(events)
                return events
            command = BY_CMD.get(cmd)
            if command is None or command.push_only:
                self._reject(events, cmd, seq, Ret.SERVER_FAULT, f"unknown command {cmd}")
            elif not self.identified and cmd != IDENTIFY_CMD and cmd != NOOP_CMD:
                self._reject(events, cmd, seq, Ret.SESSION_INVALID, "link not identified")
            else:
                try:
                    message = decode_request(command, body)
                except RemoteProtocolError as exc:
                    self._reject(events, cmd, seq, Ret.BAD_ARGUMENT, str(exc))
                else:
                    events.append(Request(command, seq, message, len(body)))
        self.frames_sent += len(frames) - len(events)   # the NOOPs: every other frame is an event
        return events

    def _reject(self, events: list, cmd: int, seq: int, ret: Ret, reason: str) -> None:
        # like every reply, cmd + 1000000000: a reply cmd sent as a request too
        self._out.append(encode_frame(reply_cmd(cmd), seq, error_body(ret, reason)))
        self.frames_sent += 1
        events.append(Rejected(cmd, seq, ret, reason))

    def data_to_send(self) -> bytes:
        """The replies `receive_data` made by itself (NOOPs, errors), in request order."""
        out = self._out
        self._out = None
        if not out:
            return b""
        if self.state is ConnectionState.CLOSED:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def identify(self) -> None:
        """An IDENTIFY on this link succeeded: every command is allowed from now on."""
        self.identified = True

    def unidentify(self) -> None:
        """The session ended: back to NOOP and IDENTIFY only."""
        self.identified = False

    def send_reply(self, command: Command, seq: int, body: bytes = b"") -> bytes:
        """The reply to the `Request` for `command` with `seq`."""
        rcmd = command.reply_cmd
        if rcmd is None:
            raise LocalProtocolError(f"{command.name} is not a long-link request")
        return self._encode(rcmd, seq, body)

    def send_push(self, selector: int) -> bytes:
        """A NOTIFY (seq 0) telling the client to sync the logs in `selector`."""
        if not self.identified:
            raise LocalProtocolError("NOTIFY to a link that has not identified")
        return self._encode(NOTIFY_CMD, PUSH_SEQ, notify_body(selector))

    def restart_frame_deadline(self, now: float) -> None:
        """The owner stopped reading for a while (its own backlog, not the peer's doing):
        the frame held, if any, gets its whole deadline again from `now`."""
        if self.frame_started is not None:
            self.frame_started = now

    def get_timer(self) -> Optional[float]:
        """Protocol time of the next deadline (idle, or the frame held), or None (none
        set, or closed)."""
        if self.state is not ConnectionState.OPEN:
            return None
        due = None if self.idle_timeout is None else self.last_rx + self.idle_timeout
        if self.frame_started is not None and self.frame_timeout is not None:
            frame_due = self.frame_started + self.frame_timeout
            if due is None or frame_due < due:
                return frame_due
        return due

    def handle_timer(self, now: float) -> list[ServerEvent]:
        """`[FrameTimeout]` or `[IdleTimeout]` (and the state is `CLOSED`) if that deadline
        has passed, else []."""
        if self.state is not ConnectionState.OPEN:
            return []
        started = self.frame_started
        if started is not None and self.frame_timeout is not None \
                and now >= started + self.frame_timeout:
            self.state = ConnectionState.CLOSED
            return [FrameTimeout(now - started, self._decoder.buffered)]
        if self.idle_timeout is None or now < self.last_rx + self.idle_timeout:
            return []
        self.state = ConnectionState.CLOSED
        return [IdleTimeout(now - self.last_rx)]


class ClientConnection(_Connection):
    """The client's side of one long link (the emulator; a replayer's client side)."""

    __slots__ = ("_seq", "_pending")

    def __init__(self, *, max_packet_len: int = DEFAULT_MAX_PACKET_LEN,
                 first_seq: int = 1) -> None:
        super().__init__(max_packet_len)
        self._seq = first_seq & 0xFFFFFFFF
        # seq -> (request cmd, deadline or None)
        self._pending: dict[int, tuple[int, Optional[float]]] = {}

    @property
    def pending(self) -> dict[int, int]:
        """seq -> request cmd of every request still waiting for its reply (a copy)."""
        return {seq: cmd for seq, (cmd, _) in self._pending.items()}

    def next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFFFFFF
        return seq

    def send_request(self, cmd: int, body: bytes = b"", *, seq: Optional[int] = None,
                     deadline: Optional[float] = None) -> tuple[int, bytes]:
        """(seq, bytes) of a request; it waits for its reply until `deadline` (protocol
        time; None: no deadline). Any cmd below the reply range may be sent: the server
        answers one it does not know with -1."""
        if is_reply(cmd):
            raise LocalProtocolError(f"cmd {cmd} is a reply, not a request")
        if seq is None:
            seq = self.next_seq()
        if seq in self._pending:
            raise LocalProtocolError(f"a request with seq {seq} is already pending")
        data = self._encode(cmd, seq, body)
        self._pending[seq] = (cmd, deadline)
        return seq, data

    def forget(self, seq: int) -> None:
        """Stop waiting for `seq` (its caller gave up); a late reply becomes `Stray`."""
        self._pending.pop(seq, None)

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the server; the events they complete."""
        if self.state is ConnectionState.CLOSED:
            return []
        events: list[ClientEvent] = []
        pending = self._pending
        for frame in self._frames(data):
            cmd, seq, body = frame
            # replies first, the tests inlined: a heartbeat's answer is most of what comes
            if cmd >= REPLY_OFFSET:
                entry = pending.pop(seq, None)
                if entry is None:
                    events.append(Stray(frame, f"no request pending with seq {seq}"))
                elif cmd - REPLY_OFFSET != entry[0]:
                    events.append(WrongReply(seq, reply_cmd(entry[0]), cmd, body))
                else:
                    events.append(Reply(entry[0], seq, body))
            elif is_push(cmd, seq):
                try:
                    events.append(Push(parse_notify(body)))
                except RemoteProtocolError as exc:
                    events.append(Stray(frame, str(exc)))
            else:
                events.append(Stray(frame, f"the server sent request cmd {cmd}"))
        return events

    def get_timer(self) -> Optional[float]:
        """Protocol time of the earliest request deadline, or None."""
        deadlines = [d for _, d in self._pending.values() if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[ClientEvent]:
        """`TimedOut` for every pending request whose deadline is `now` or earlier."""
        late = sorted((d, seq, cmd) for seq, (cmd, d) in self._pending.items()
                      if d is not None and d <= now)
        for _, seq, _ in late:
            del self._pending[seq]
        return [TimedOut(cmd, seq) for _, seq, cmd in late]

    def close(self) -> list[int]:
        """The socket is gone: the seqs that will never be answered (now forgotten)."""
        super().close()
        abandoned = list(self._pending)
        self._pending.clear()
        return abandoned
