"""A listening server that accepts every waiting connection at once.

uvloop (libuv) accepts one connection per listening socket per loop iteration: 2,000
connections queued on an idle uvloop took 1,577 iterations to accept, and on a busy loop
(the heartbeat study's lab iterates a few thousand times a second) a reconnect waited up to
seconds in the kernel's accept queue before the server saw it. `start_batch_server` keeps
the listening socket itself: on each readiness it calls `accept()` until the queue is empty
(at most `batch` at a time, then it lets the loop run) and hands each connection to
`loop.connect_accepted_socket`, so the loop's own transports and protocols serve it as
they would under `loop.create_server`. It works on asyncio's loop and on uvloop alike.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable, Optional

log = logging.getLogger(__name__)

# accept() errors that mean "out of descriptors or buffers": stop accepting for a while
# (the connections stay queued in the kernel) as asyncio's own accept loop does
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# errors of one connection that died in the queue: skip it, keep accepting
_CONN_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
RETRY_AFTER_S = 1.0     # wall seconds before accepting again after EMFILE (as asyncio)


class BatchServer:
    """One listening socket served by `start_batch_server`; `close()`, `wait_closed()`,
    `sockets` and `is_serving()` as `asyncio.Server`'s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], batch: int) -> None:
        self._loop = loop
        self._sock: Optional[socket.socket] = sock
        self._factory = protocol_factory
        self._batch = batch
        self._reading = False
        self._retry: Optional[asyncio.TimerHandle] = None
        self._pending: set[asyncio.Task] = set()    # connections being set up
        self._closed = loop.create_future()
        self.sockets: tuple[socket.socket, ...] = (sock,)

    def is_serving(self) -> bool:
        return self._sock is not None

    def _start_reading(self) -> None:
        self._retry = None
        if self._sock is not None and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    def _accept_ready(self) -> None:
        sock = self._sock
        for _ in range(self._batch):
            if sock is None or self._sock is None:
                return
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CONN_ERRNOS:
                    continue
                if exc.errno in _RESOURCE_ERRNOS:
                    log.warning("accept on %s: %s; accepting again in %.0f s",
                                sock.getsockname(), exc, RETRY_AFTER_S)
                    self._stop_reading()
                    self._retry = self._loop.call_later(RETRY_AFTER_S, self._start_reading)
                    return
                raise
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as exc:      # the peer went before its transport was made
            log.debug("accepted connection lost before it was served: %s", exc)
            conn.close()

    def close(self) -> None:
        """Stop listening and free the port (connections already accepted stay)."""
        if self._sock is None:
            return
        self._stop_reading()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._sock.close()
        self._sock = None
        self.sockets = ()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until closed and every connection accepted so far has its transport."""
        await asyncio.shield(self._closed)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


async def start_batch_server(protocol_factory: Callable[[], asyncio.BaseProtocol],
                             host: str, port: int, *, backlog: int = 100,
                             reuse_address: bool = True, batch: int = 1024) -> BatchServer:
    """Listen on host:port (0: any free port) over TCP and serve each connection with a
    protocol from `protocol_factory`, accepting up to `batch` waiting connections per
    readiness of the socket (see the module docstring). `host` is one IPv4 or IPv6 address."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    server = BatchServer(loop, sock, protocol_factory, batch)
    server._start_reading()
    return server
