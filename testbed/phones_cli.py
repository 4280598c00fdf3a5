"""The phones of a lab shared through a store (several `testbed emulate` processes or
containers against one lab of processes on Redis).

- `testbed emulate SCENARIO --claim-users K` claims K users that no other phone holds (one
  atomic step in the store, so phones started together never share an account), runs the
  scenario with them and posts its result into the store under its name (`HOST/PID`).
- `testbed lab results` reads every phone's result back, merges them and sets them beside
  the lab's own counters (messages stored): delivery counts gathered through the store, not
  files.
- `testbed record --until-phones-done` stops recording once every phone that claimed users
  has posted its result (`wait_phones_done`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

ENV_STORE = "TESTBED_STORE"
# a phone that starts after the others must claim within this long after the last result
# for the run to wait for it (phones of one `docker compose up` start within a second)
SETTLE_S = 2.0
POLL_S = 0.25


def phone_name() -> str:
    """This phone's owner name in the store: host name and PID, as the served counters
    name a server process (every container has a host name of its own)."""
    return f"{os.uname().nodename}/{os.getpid()}"


def add_store_option(p: argparse.ArgumentParser, *, required: bool, text: str) -> None:
    p.add_argument("--store", default=os.environ.get(ENV_STORE), metavar="URL",
                   required=required and ENV_STORE not in os.environ,
                   help=f"{text}: redis://HOST:PORT/DB[?namespace=NAME] ($TESTBED_STORE)")


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


def failed_result(scenario: str, names: list[str], why: str) -> dict:
    """What a phone that claimed users but could not run posts (interrupted, a bad manifest),
    so that nothing waits for it."""
    from testbed.client.scenarios import ScenarioResult
    return posted(ScenarioResult(scenario, len(names), errors=[why]), names)


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

    def merged(self):
        from testbed.client.scenarios import ScenarioResult
        from testbed.client.swarm import merge
        return merge([ScenarioResult.from_dict(self.results[o]) for o in sorted(self.results)])

    def to_dict(self) -> dict:
        merged = self.merged().to_dict() if self.results else None
        return {"ok": self.ok, "running": self.running, "claims": self.claims,
                "phones": self.results, "merged": merged,
                "messages_stored": self.messages_stored}


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


async def check_store(store_url: Optional[str]) -> Optional[str]:
    """Why the lab's shared store cannot be used, or None."""
    from mocks.state import make_store
    if not store_url:
        return "--until-phones-done needs the lab's store: --store URL (or $TESTBED_STORE)"
    try:
        store = await make_store(store_url)
    except (ValueError, ConnectionError) as exc:
        return str(exc)
    shared = getattr(store, "namespace", None) is not None
    await store.close()
    return None if shared else "the phones post their results to a shared store: " \
                               "--store redis://HOST:PORT/DB"


def stop_when_phones_done(store_url: str, stop: threading.Event, say) -> threading.Thread:
    """A thread that sets `stop` once the lab's phones are done (`wait_phones_done`), or
    at once if the store cannot be used (saying why)."""
    def run() -> None:
        async def go() -> None:
            from mocks.state import make_store
            try:
                store = await make_store(store_url)
            except (ValueError, ConnectionError) as exc:
                say(f"error: {exc}")
                stop.set()
                return
            try:
                runs = await wait_phones_done(store, stop, new_only=True)
                if runs is not None:
                    say(f"every phone is done ({len(runs.results)} results in the store): "
                        f"stopping")
            finally:
                await store.close()
            stop.set()
        asyncio.run(go())

    t = threading.Thread(target=run, name="until-phones-done", daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------------- `lab results`
def add_results_parser(lab_sub) -> None:
    p = lab_sub.add_parser(
        "results", help="every phone's result, gathered through the lab's store",
        description="Print the result each phone (`testbed emulate --claim-users`) posted "
                    "into the store, merged, beside the messages the lab stored. Exit 0 "
                    "once every phone that claimed users is done and all passed.")
    add_store_option(p, required=True, text="the lab's store")
    p.add_argument("--wait", action="store_true",
                   help="wait until every phone that claimed users has posted its result")
    p.add_argument("--json", action="store_true", help="print them as JSON on stdout")
    p.set_defaults(serve_func=lab_results)


def lab_results(args) -> int:
    """`testbed lab results`: the phones' table (stdout), 0 once all are done and passed."""
    from rich.markup import escape
    from rich.table import Table

    from . import interrupt
    from .cli.output import err_console, metrics_table, out_console
    from .serve_cli import open_store

    console = err_console()

    async def run():
        store, failed = await open_store(args.store, console)
        if store is None:
            return failed
        try:
            return await (wait_phones_done(store) if args.wait else read_runs(store))
        finally:
            await store.close()

    runs = interrupt.run(run())
    if isinstance(runs, int):
        return runs
    if args.json:
        print(json.dumps(runs.to_dict(), indent=2, ensure_ascii=False))
        return 0 if runs.ok else 1
    scenarios = sorted({r.get("scenario", "?") for r in runs.results.values()})
    t = Table(title=f"phones of the lab: {len(runs.results)} done, {len(runs.running)} "
                    f"running" + (f" ({', '.join(scenarios)})" if scenarios else ""))
    for col in ("phone", "users", "verdict", "steps", "received", "twice", "wall s"):
        t.add_column(col)
    for owner in sorted(runs.claims.keys() | runs.results.keys()):
        r = runs.results.get(owner)
        users = " ".join(runs.claims.get(owner, []))
        if r is None:
            t.add_row(owner, users, "[yellow]running[/yellow]", "", "", "", "")
            continue
        steps = r.get("steps", [])
        m = r.get("metrics", {})
        t.add_row(owner, users, "[green]ok[/green]" if r.get("ok") else "[red]FAILED[/red]",
                  f"{sum(s['ok'] for s in steps)}/{len(steps)}",
                  f"{m.get('messages_received', 0):g}", f"{m.get('duplicates', 0):g}",
                  f"{r.get('wall_s', 0):.1f}")
    out = out_console()
    out.print(t)
    if runs.results:
        merged = runs.merged()
        failed = [s for s in merged.steps if not s.ok]
        for s in failed:
            out.print(f"[red]failed:[/red] {escape(s.name)}: {escape(s.detail)}")
        for e in merged.errors:
            out.print(f"[red]error:[/red] {escape(e)}")
        m = merged.metrics
        out.print(metrics_table(m, f"what the {len(runs.results)} phones did, merged"))
        out.print(f"delivery: the phones sent {m.get('messages_sent', 0):g} messages and the "
                  f"lab stored {runs.messages_stored}; {m.get('duplicates', 0):g} were "
                  f"received twice")
    else:
        print("no phone has posted a result yet", file=sys.stderr)
    return 0 if runs.ok else 1
