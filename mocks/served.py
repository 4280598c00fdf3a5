"""What a lab served, request by request: `testbed lab up -v` prints a line for each.

Each server of a one-process lab tells an observer (`RequestObserver`, given to `Lab`) about
every request it answered: the long and short links through the service (`Service.observer`;
heartbeat NOOPs are answered on the long link's fast path, without it, and only counted), the
HTTP hosts through a middleware (`observing_middleware`), the resolver per query. A request
whose client went away before the answer is still told, with what the server decided.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from testbed.lab.addressing import LONG, SHORT
from testbed.wire import Door

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One request a lab host answered."""

    host: str        # the lab host: long.weixin.qq.com, ..., or "dns" for the resolver
    client: str      # "address:port" as the server saw it (the relay's, behind the relay)
    what: str        # the long-link command, the CGI, the HTTP path, or the DNS name
    result: str      # "ok", "ret -3 (session invalid ...)", "fault", "404", "nxdomain"...
    ms: float        # wall milliseconds from the request to its answer
    user: str = ""   # the account it came from, where the server knows it


RequestObserver = Callable[[Served], None]


def tell(observer: RequestObserver, served: Served) -> None:
    """Give `served` to `observer`; an observer that fails (a closed stderr, say) is logged,
    never the request's failure."""
    try:
        observer(served)
    except Exception:  # noqa: BLE001 - the request was answered; only its log line is lost
        log.exception("request observer failed")


def line(s: Served) -> str:
    """`lab up -v`'s line for one request: time, host, client (and user), what, result."""
    who = f"{s.client} ({s.user})" if s.user else s.client
    return (f"{time.strftime('%H:%M:%S')} {s.host} {who} {s.what} -> {s.result} "
            f"{s.ms:.1f} ms")


class ServedCounts:
    """What a lab served, counted by host and by what was asked: the summary on stop."""

    def __init__(self) -> None:
        self.by_host: Counter = Counter()
        self.by_what: Counter = Counter()      # (host, what) -> requests
        self.failed: Counter = Counter()       # host -> requests not answered "ok"

    def add(self, s: Served) -> None:
        self.by_host[s.host] += 1
        self.by_what[(s.host, s.what)] += 1
        if s.result not in ("ok", "answered", "200"):
            self.failed[s.host] += 1

    def rows(self) -> list[dict]:
        """A row per host: requests, how many did not succeed, the three most asked."""
        out = []
        for host, n in sorted(self.by_host.items()):
            top = sorted(((c, w) for (h, w), c in self.by_what.items() if h == host),
                         key=lambda t: (-t[0], t[1]))
            out.append({"host": host, "requests": n, "failed": self.failed[host],
                        "most": {w: c for c, w in top[:3]}})
        return out


def endpoint(peer) -> str:
    """A peer as "address:port" ((address, port) from a socket, or an address alone)."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def served(command, request, ctx, result: str, ms: float) -> Served:
    """A request the service answered (`Service.handle`), as the log tells it: the long
    link's command by name, the short link's CGI (over TLS said so)."""
    if ctx.door is Door.LONG or ctx.door is None:
        host, what = LONG, command.name
    else:
        host, what = SHORT, command.cgi or command.name
        if ctx.door is Door.TLS:
            what += " (TLS)"
    user = ctx.session.username if ctx.session is not None else ""
    if not user:
        user = str(getattr(request, "username", "") or "")
    return Served(host, endpoint(ctx.peer), what, result, ms, user)
