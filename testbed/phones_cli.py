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

The store's side of it (claiming, posting, reading back) is `mocks.lab_phones`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Optional

from mocks.lab_phones import (PhoneRuns, claim, claimed_users, phone_name,  # noqa: F401
                              post_result, posted, read_runs, wait_phones_done)
from testbed.argtypes import ENV_STORE, add_store_option  # noqa: F401


def failed_result(scenario: str, names: list[str], why: str) -> dict:
    """What a phone that claimed users but could not run posts (interrupted, a bad manifest),
    so that nothing waits for it."""
    from testbed.client.scenarios import ScenarioResult
    return posted(ScenarioResult(scenario, len(names), errors=[why]), names)


# ---------------------------------------------------------------------- reading back
def merged(runs: PhoneRuns):
    """Every posted result as one `ScenarioResult` (`testbed.client.swarm.merge`)."""
    from testbed.client.scenarios import ScenarioResult
    from testbed.client.swarm import merge
    return merge([ScenarioResult.from_dict(runs.results[o]) for o in sorted(runs.results)])


def runs_dict(runs: PhoneRuns) -> dict:
    """`testbed lab results --json`: every phone's result, merged, and the lab's count."""
    return {"ok": runs.ok, "running": runs.running, "claims": runs.claims,
            "phones": runs.results, "merged": merged(runs).to_dict() if runs.results else None,
            "messages_stored": runs.messages_stored}


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
        print(json.dumps(runs_dict(runs), indent=2, ensure_ascii=False))
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
        together = merged(runs)
        failed = [s for s in together.steps if not s.ok]
        for s in failed:
            out.print(f"[red]failed:[/red] {escape(s.name)}: {escape(s.detail)}")
        for e in together.errors:
            out.print(f"[red]error:[/red] {escape(e)}")
        m = together.metrics
        out.print(metrics_table(m, f"what the {len(runs.results)} phones did, merged"))
        out.print(f"delivery: the phones sent {m.get('messages_sent', 0):g} messages and the "
                  f"lab stored {runs.messages_stored}; {m.get('duplicates', 0):g} were "
                  f"received twice")
    else:
        print("no phone has posted a result yet", file=sys.stderr)
    return 0 if runs.ok else 1
