"""The phones of a lab shared through its store (several `testbed emulate` processes or
containers, or the heartbeat study's phone hosts, against one lab of processes on Redis):
claiming users, posting a phone's result, reading every phone's back.

A phone claims the users it runs as in one atomic step in the store (so phones started
together never share an account), posts its result (a JSON object) under its name
(`HOST/PID`), and whoever gathers the results (`testbed lab results`, the recorder's
`--until-phones-done`, `testbed study heartbeat --collect`) reads them back with
`read_runs` or waits for all with `wait_phones_done`. `testbed.phones_cli` holds the
commands built on these.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

# a phone that starts after the others must claim within this long after the last result
# for the run to wait for it (phones of one `docker compose up` start within a second)
SETTLE_S = 2.0
POLL_S = 0.25


def phone_name() -> str:
    """This phone's owner name in the store: host name and PID, as the served counters
    name a server process (every container has a host name of its own)."""
    return f"{os.uname().nodename}/{os.getpid()}"


# ---------------------------------------------------------------------- claiming
async def claim(store_url: str, owner: str, count: int) -> list[str]:
    """Claim `count` users for `owner`; `ValueError` (bad URL, too few users) or
    `ConnectionError` (store unreachable) with a message for the user."""
    from mocks.state import make_store
    store = await make_store(store_url)
    try:
        if getattr(store, "namespace", None) is None:
            raise ValueError("--claim-users needs the lab's shared store: --store "
                             "redis://HOST:PORT/DB (or $TESTBED_STORE)")
        return await store.claim_users(owner, count)
    finally:
        await store.close()


async def post_result(store_url: str, owner: str, result: dict) -> None:
    from mocks.state import make_store
    store = await make_store(store_url)
    try:
        await store.put_result(owner, json.dumps(result, ensure_ascii=False))
    finally:
        await store.close()


def claimed_users(manifest_users: list[dict], names: list[str]) -> list[dict]:
    """The manifest's entries (with passwords) of the claimed names; `ValueError` if the
    manifest lacks one (it was written before the store was seeded)."""
    by_name = {u["username"]: u for u in manifest_users}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"the manifest does not list {', '.join(missing)}: write it after "
                         f"seeding (testbed lab manifest)")
    return [by_name[n] for n in names]


def posted(result, names: list[str]) -> dict:
    """A phone's result as it goes into the store: the scenario's, and the users it ran as."""
    return {**result.to_dict(), "users": list(names)}


# ---------------------------------------------------------------------- reading back
@dataclass
class PhoneRuns:
    """Every phone of a lab: who claimed which users, whose results are in."""

    claims: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    messages_stored: int = 0

    @property
    def running(self) -> list[str]:
        return sorted(o for o in self.claims if o not in self.results)

    @property
    def done(self) -> bool:
        return bool(self.results) and not self.running

    @property
    def ok(self) -> bool:
        return self.done and all(r.get("ok") for r in self.results.values())



async def read_runs(store) -> PhoneRuns:
    from mocks.stats import read_stats
    results = {}
    for owner, text in (await store.results()).items():
        try:
            results[owner] = json.loads(text)
        except ValueError:
            results[owner] = {"ok": False, "errors": [f"unreadable result: {text[:80]!r}"]}
    return PhoneRuns(await store.claims(), results, (await read_stats(store)).messages_stored)


async def wait_phones_done(store, stop: Optional[threading.Event] = None,
                           settle_s: float = SETTLE_S, new_only: bool = False
                           ) -> Optional[PhoneRuns]:
    """Wait until at least one phone has posted its result and every phone that claimed
    users has, with nothing new for `settle_s`; None if `stop` is set first. With
    `new_only`, results already there when it starts do not count (a recorder started again
    on a lab whose earlier phones are done waits for the phones it records)."""
    last, since = None, time.monotonic()
    before: Optional[set[str]] = None
    while stop is None or not stop.is_set():
        runs = await read_runs(store)
        if before is None:
            before = set(runs.results) if new_only else set()
        seen = (tuple(sorted(runs.claims)), tuple(sorted(runs.results)))
        if seen != last:
            last, since = seen, time.monotonic()
        elif runs.done and set(runs.results) - before \
                and time.monotonic() - since >= settle_s:
            return runs
        await asyncio.sleep(POLL_S)
    return None


async def read_shared(store_url: str, wait: bool = False) -> PhoneRuns:
    """Every phone's result in the lab's shared store at `store_url` (with `wait`, once all
    are in: `wait_phones_done`); `ValueError` for a store that is not shared."""
    from mocks.state import make_store
    store = await make_store(store_url)
    try:
        if getattr(store, "namespace", None) is None:
            raise ValueError("the phones' results are in the lab's shared store: --store "
                             "redis://HOST:PORT/DB")
        if wait:
            await wait_phones_done(store)
        return await read_runs(store)
    finally:
        await store.close()
