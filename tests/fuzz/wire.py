"""Blocking clients for the fuzz suites (hypothesis runs sync tests; the lab runs in a thread
of its own): one long link, one HTTP exchange, one DNS query, each bounded in time."""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Optional

from testbed.lab.addressing import LONG, SHORT
from testbed.wire import BY_CGI, CGI_PREFIX, encode_frame, pb
from testbed.wire.frames import HEADER, Frame, FrameDecoder

TIMEOUT_S = 5.0
NOTIFY, PUSH_SEQ = 24, 0


class Closed(Exception):
    """The server closed the connection (or reset it)."""


class LongLinkClient:
    """One long link over a blocking socket: frames out, the reply to a seq back."""

    def __init__(self, manifest, index: int = 0) -> None:
        h = manifest.hosts[LONG]
        self.sock = socket.create_connection((h.addresses[index % len(h.addresses)], h.port),
                                             timeout=TIMEOUT_S)
        self._decoder = FrameDecoder()
        self._frames: list[Frame] = []
        self.seq = 0

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Closed(str(exc)) from None

    def request(self, cmd: int, body: bytes) -> Frame:
        """Send one request; its reply (NOTIFY pushes on the way are skipped). `Closed` if
        the server closes instead."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        self.send(encode_frame(cmd, self.seq, body))
        return self.reply(self.seq)

    def reply(self, seq: int) -> Frame:
        while True:
            while self._frames:
                frame = self._frames.pop(0)
                if frame.cmd == NOTIFY and frame.seq == PUSH_SEQ:
                    continue
                if frame.seq == seq:
                    return frame
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:
                raise Closed(str(exc)) from None
            if not data:
                raise Closed("EOF")
            self._frames += self._decoder.receive_data(data)

    def wait_closed(self) -> bool:
        """Read until the server closes; True if it did within the timeout."""
        try:
            while self.sock.recv(1 << 16):
                pass
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def tls_context(manifest) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=manifest.ca_cert)


def http(manifest, raw: bytes, *, tls: bool = False, index: int = 0,
         half_close: bool = False) -> bytes:
    """Send `raw` to the short link (its TLS port with `tls`) and return everything the
    server sent until it closed ("" if it only closed). With `half_close` our side ends
    after `raw` (plain HTTP only): a whole request is still answered, one cut short is
    closed at once, so it costs no deadline."""
    h = manifest.hosts[SHORT]
    sock = socket.create_connection((h.addresses[index % len(h.addresses)],
                                     h.tls_port if tls else h.port), timeout=TIMEOUT_S)
    if tls:
        sock = tls_context(manifest).wrap_socket(sock, server_hostname=SHORT)
    got = b""
    try:
        sock.sendall(raw)
        if half_close and not tls:
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        sock.close()
    return got


def post(cgi: str, body: bytes) -> bytes:
    return (f"POST {CGI_PREFIX}{cgi} HTTP/1.1\r\nHost: {SHORT}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"\r\n").encode() + body


def split_response(resp: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.x response."""
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def login(manifest, index: int) -> pb.BaseRequest:
    """Log lab user `index` in over TLS: the BaseRequest its later requests carry."""
    u = manifest.users[index]
    req = pb.ManualAuthRequest(username=u["username"], password=u["password"])
    status, body = split_response(http(manifest, post("manualauth", req.SerializeToString()),
                                       tls=True))
    resp = BY_CGI["manualauth"].response.FromString(body)
    assert status == 200 and resp.base.ret == 0, resp
    return pb.BaseRequest(uin=resp.uin, session_key=resp.session_key)


def dns_udp(manifest, data: bytes, timeout: float = 0.1) -> Optional[bytes]:
    """One datagram to the lab's resolver; its answer, or None if none came in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (manifest.dns_address, manifest.dns_port))
        try:
            return s.recv(65536)
        except socket.timeout:
            return None


def dns_tcp(manifest, data: bytes) -> list[bytes]:
    """`data` to the resolver's TCP side, our side ended: the messages it answered with
    (each unframed from its two-byte length)."""
    with socket.create_connection((manifest.dns_address, manifest.dns_port),
                                  timeout=TIMEOUT_S) as s:
        buf = b""
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                buf += chunk
        except (ConnectionError, OSError):
            pass
    out = []
    while len(buf) >= 2:
        (n,) = struct.unpack_from(">H", buf)
        if len(buf) < 2 + n:
            raise AssertionError(f"an answer cut short: {n} bytes announced, "
                                 f"{len(buf) - 2} sent")
        out.append(buf[2:2 + n])
        buf = buf[2 + n:]
    assert not buf, "a stray byte after the last answer"
    return out


HEADER_LEN = HEADER.size
