"""Ask the lab's DNS for a name, as the phone did first thing (STORYBOARD 1)."""

from __future__ import annotations

import asyncio
import random
import socket

from testbed.lab.addressing import is_lab_address
from testbed.wire import dns


MAX_ANSWER = 4096   # read per datagram: the lab's answers fit 512 bytes, an EDNS-sized one 4096


class ResolveError(Exception):
    pass


def _read(sock: socket.socket, qid: int, answer: asyncio.Future) -> None:
    """The socket is readable: the first datagram that parses and carries our id answers;
    an ICMP error (port unreachable) fails the try."""
    while not answer.done():
        try:
            data = sock.recv(MAX_ANSWER)
        except BlockingIOError:
            return
        except OSError as exc:
            answer.set_exception(exc)
            return
        try:
            ans = dns.parse_response(data)
        except Exception:  # noqa: BLE001 - a bad datagram is ignored, like a real stub
            continue
        if ans.id == qid:
            answer.set_result(ans)


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
            # a socket of its own for each try, as a stub resolver's random source port:
            # a bare non-blocking socket (a datagram endpoint cost more than the query)
            qid = random.randrange(1, 0xFFFF)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                if self.local_addr:
                    sock.bind((self.local_addr, 0))
                sock.connect((self.server, self.port))
                answer = loop.create_future()
                loop.add_reader(sock.fileno(), _read, sock, qid, answer)
                try:
                    sock.send(dns.build_query(name, qid, qtype))
                    return await asyncio.wait_for(answer, self.timeout)
                finally:
                    loop.remove_reader(sock.fileno())
            except (asyncio.TimeoutError, OSError) as exc:
                last = exc
            finally:
                sock.close()
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
