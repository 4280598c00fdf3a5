"""Is a lab host up? `testbed serve ROLE ... --check`: one request in the host's own protocol
to every address it serves, as a container healthcheck asks (`probe(spec)`).

- `long`: a NOOP frame, answered by a NOOP reply;
- `short`: an HTTP request on each plain port, and a TLS handshake that verifies the lab
  CA's certificate for short.weixin.qq.com on each TLS port, then the same request;
- `mapabc`, `qlogo`, `qpic`: an HTTP request, answered with any status;
- `dns`: a query for long.weixin.qq.com over UDP, answered;
- `nat`: every relayed address accepts a connection, and so does its target.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from typing import Optional

from testbed.lab.addressing import LONG, SHORT
from testbed.wire.commands import NOOP_CMD
from testbed.wire.dns import build_query, parse_response
from testbed.wire.frames import HEADER, HEADER_LEN, encode_frame, reply_cmd

from .endpoints import Endpoint
from .hostspec import HostSpec

PROBE_TIMEOUT_S = 3.0
_HTTP_HOST = {"short": SHORT, "mapabc": "mapi.mapabc.com", "qlogo": "wx.qlogo.cn",
              "qpic": "mmsns.qpic.cn"}


async def _long(e: Endpoint) -> None:
    reader, writer = await asyncio.open_connection(e.host, e.port)
    try:
        writer.write(encode_frame(NOOP_CMD, 0))
        head = await reader.readexactly(HEADER_LEN)
        _, _, _, cmd, _ = HEADER.unpack(head)
        if cmd != reply_cmd(NOOP_CMD):
            raise ValueError(f"answered a NOOP with cmd {cmd}")
    finally:
        writer.close()


async def _http(e: Endpoint, host: str, tls: Optional[ssl.SSLContext] = None) -> None:
    reader, writer = await asyncio.open_connection(
        e.host, e.port, ssl=tls, server_hostname=SHORT if tls else None)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status = await reader.readline()
        if not status.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP answer: {status[:40]!r}")
    finally:
        writer.close()


class _DNSAnswer(asyncio.DatagramProtocol):
    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            answered = parse_response(data).id == self.qid
        except Exception:   # noqa: BLE001 - not our answer (malformed): keep waiting
            return
        if answered and not self.answer.done():
            self.answer.set_result(data)


async def _dns(e: Endpoint) -> None:
    qid = random.randrange(1, 1 << 16)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _DNSAnswer(qid), remote_addr=(e.host, e.port))
    try:
        transport.sendto(build_query(LONG, qid))
        await proto.answer
    finally:
        transport.close()


async def _accepts(e: Endpoint) -> None:
    _, writer = await asyncio.open_connection(e.host, e.port)
    writer.close()


def _checks(spec: HostSpec):
    role = spec.role
    if role == "long":
        return [(e, _long(e)) for e in spec.listen]
    if role == "dns":
        return [(e, _dns(e)) for e in spec.listen]
    if role == "nat":
        return [(e, _accepts(e)) for pair in spec.maps for e in pair]
    checks = [(e, _http(e, _HTTP_HOST[role])) for e in spec.listen]
    if spec.tls_listen:
        ctx = ssl.create_default_context(cafile=os.path.join(spec.ca_dir, "ca.pem"))
        checks += [(e, _http(e, SHORT, ctx)) for e in spec.tls_listen]
    return checks


async def probe(spec: HostSpec, timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """What does not answer as it should ("ADDR:PORT: why"); empty when the host is up."""
    if spec.tls_listen and not os.path.isfile(os.path.join(spec.ca_dir or "", "ca.pem")):
        return [f"no lab CA at {spec.ca_dir}/ca.pem yet"]
    checks = _checks(spec)
    outcomes = await asyncio.gather(*(asyncio.wait_for(c, timeout) for _, c in checks),
                                    return_exceptions=True)
    problems = []
    for (e, _), out in zip(checks, outcomes):
        if isinstance(out, BaseException):
            why = "no answer in time" if isinstance(out, asyncio.TimeoutError) else \
                (str(out) or type(out).__name__)
            problems.append(f"{e}: {why}")
    return problems
