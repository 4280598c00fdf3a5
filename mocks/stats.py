"""The lab's statistics, kept as named counters in the store so that every process of a lab
(long-link and short-link workers alike) adds to the same ones.

The doors count the requests that came through them (`count_request`), and the hosts of a
lab of processes also which process served each (`served`); the service counts
what it decided (errors by command and ret, messages stored, behaviour-log items by report
kind). `read_stats` gathers them into one `LabStats`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from testbed.wire import Door

from .state import Store

MESSAGES_STORED = "messages_stored"
_REQUESTS, _ERRORS, _REPORTS, _SERVED = "requests", "errors", "reports", "served"


def request_key(door: Door | str, command: str) -> str:
    """A request for `command` ("NEWSYNC") that came through `door` (a `Door`, or its name)."""
    return f"{_REQUESTS} {door} {command}"


def error_key(command: str, ret: int) -> str:
    return f"{_ERRORS} {command} {ret}"


def report_key(kind: str) -> str:
    """Behaviour-log items of one report kind ("statreport", "kvreport")."""
    return f"{_REPORTS} {kind}"


def served_key(door: Door | str, process: str) -> str:
    """Requests through `door` served by one process ("HOST/PID" of a `testbed serve`)."""
    return f"{_SERVED} {door} {process}"


def process_name() -> str:
    """This process, as the served counters name it: host name and PID (containers all
    have PID 1, hosts of their own names)."""
    return f"{os.uname().nodename}/{os.getpid()}"


async def count_request(store: Store, door: Door | str, command: str,
                        process: Optional[str] = None) -> None:
    """Count a request by door and command and, if `process` is named, by serving process
    (how the load spreads over the workers of a host)."""
    if process is None:
        await store.count({request_key(door, command): 1})
    else:
        await store.count({request_key(door, command): 1, served_key(door, process): 1})


@dataclass
class LabStats:
    """What the servers of a lab saw, summed over its processes."""

    requests: Counter = field(default_factory=Counter)   # (Door, command) -> count
    errors: Counter = field(default_factory=Counter)     # (command, ret) -> count
    reports: Counter = field(default_factory=Counter)    # report kind -> items
    served: Counter = field(default_factory=Counter)     # (Door, "HOST/PID") -> requests
    messages_stored: int = 0

    @classmethod
    def from_counters(cls, counters: dict[str, int]) -> "LabStats":
        stats = cls()
        for name, n in counters.items():
            kind, _, rest = name.partition(" ")
            if kind == _REQUESTS:
                door, _, command = rest.partition(" ")
                stats.requests[(Door(door), command)] += n
            elif kind == _ERRORS:
                command, _, ret = rest.rpartition(" ")
                stats.errors[(command, int(ret))] += n
            elif kind == _REPORTS:
                stats.reports[rest] += n
            elif kind == _SERVED:
                door, _, process = rest.partition(" ")
                stats.served[(Door(door), process)] += n
            elif name == MESSAGES_STORED:
                stats.messages_stored += n
        return stats

    def to_dict(self) -> dict:
        """Plain values: requests, errors and served keyed by (door, command), (command,
        ret) and (door, process)."""
        return {"requests": dict(self.requests), "errors": dict(self.errors),
                "reports": dict(self.reports), "served": dict(self.served),
                "messages_stored": self.messages_stored}


async def read_stats(store: Store) -> LabStats:
    return LabStats.from_counters(await store.counters())
