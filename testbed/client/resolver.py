"""Ask the lab's DNS for a name, as the phone did first thing (STORYBOARD 1)."""

from __future__ import annotations

import asyncio
import random

from testbed.lab.addressing import is_lab_address
from testbed.wire import dns


class ResolveError(Exception):
    pass


class _Query(asyncio.DatagramProtocol):
    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            ans = dns.parse_response(data)
        except Exception:  # noqa: BLE001 - a bad datagram is ignored, like a real stub
            return
        if ans.id == self.qid and not self.answer.done():
            self.answer.set_result(ans)

    def error_received(self, exc) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class Resolver:
    """A stub resolver for the lab DNS; caches answers for their TTL is not needed in a lab,
    so each `resolve` asks again, which is what a capture should show."""

    def __init__(self, server: str, port: int, timeout: float = 2.0, tries: int = 3,
                 local_addr: str | None = None) -> None:
        if not is_lab_address(server):
            raise ValueError(f"refusing to query {server}: not a lab address")
        self.server, self.port, self.timeout, self.tries = server, port, timeout, tries
        self.local_addr = local_addr

    async def query(self, name: str, qtype: int = dns.TYPE_A) -> dns.Answer:
        """Ask once (retrying a lost datagram up to `tries` times) and return the answer
        whatever its rcode; `ResolveError` when no answer came."""
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for _ in range(self.tries):
            qid = random.randrange(1, 0xFFFF)
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Query(qid), remote_addr=(self.server, self.port),
                local_addr=(self.local_addr, 0) if self.local_addr else None)
            try:
                transport.sendto(dns.build_query(name, qid, qtype))
                return await asyncio.wait_for(proto.answer, self.timeout)
            except (asyncio.TimeoutError, OSError) as exc:
                last = exc
            finally:
                transport.close()
        raise ResolveError(f"{name}: no answer from {self.server}:{self.port} ({last!r})")

    async def resolve(self, name: str) -> list[str]:
        """The A records of `name`; `ResolveError` for NXDOMAIN, another rcode, no address
        or no answer."""
        ans = await self.query(name)
        if ans.rcode == dns.RCODE_NXDOMAIN:
            raise ResolveError(f"{name}: NXDOMAIN")
        if ans.rcode != dns.RCODE_NOERROR or not ans.addresses:
            raise ResolveError(f"{name}: rcode {ans.rcode}, {len(ans.addresses)} addresses")
        return list(ans.addresses)
