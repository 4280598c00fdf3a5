"""`testbed emulate SCENARIO`: emulated phones against a running lab."""

from __future__ import annotations

from rich.markup import escape

from testbed.phones_cli import failed_result, posted

from .output import (err_console, error, metrics_table, note, open_manifest, out_console,
                     print_json)


def emulate(args) -> int:
    """Run the scenario (progress on stderr), then its steps and metrics (stdout)."""
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.table import Table

    from testbed import interrupt
    from testbed.client.scenarios import long_wait_notice
    from testbed.client.swarm import swarm

    console = err_console()
    manifest = open_manifest(args.manifest, console)
    if manifest is None:
        return 2
    clients = args.clients or args.claim_users or 2
    claimed = owner = names = None
    if args.claim_users is not None:
        claimed = _claim(args, console, manifest, clients)
        if isinstance(claimed, int):
            return claimed
        owner, names, claimed = claimed
    from .netns import enter_phone_namespace
    if (failed := enter_phone_namespace(manifest, console)) is not None:
        return failed
    users = len(manifest.users)
    if claimed is None and clients > users:
        note(console, f"{clients} phones on a lab of {users} users: they share the "
                      f"accounts, up to {-(-clients // users)} phones logged in as each "
                      f"user (a later login of a user takes its long link over); for a phone "
                      f"per account start the lab with `testbed lab up --users "
                      f"{clients}`")
    notice = long_wait_notice(args.scenario, manifest.heartbeat_s, manifest.time_scale,
                              args.duration)
    if notice:
        note(console, notice)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=args.json and not console.is_terminal) as progress:
        task = progress.add_task(f"{args.scenario} x{clients}", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"{args.scenario}: {text}")

        try:
            result = interrupt.run(swarm(args.scenario, str(args.manifest), clients,
                                         processes=args.processes, duration=args.duration,
                                         seed=args.seed, progress=on_progress,
                                         users=claimed, views=args.views))
        except BaseException as exc:   # the lab must not wait for this phone
            if owner is not None:
                why = ("interrupted" if isinstance(exc, interrupt.Interrupted)
                       else f"{type(exc).__name__}: {exc}")
                _post(args, console, owner, failed_result(args.scenario, names, why))
            raise
    if owner is not None and not _post(args, console, owner, posted(result, names)):
        return 1
    if args.json:
        print_json(result.to_dict())
        return 0 if result.ok else 1
    out = out_console()
    table = Table(title=f"{result.scenario}: {result.clients} phones against "
                        f"{manifest.profile} (k={manifest.time_scale:g}), "
                        f"{result.wall_s:.1f} s")
    table.add_column("step")
    table.add_column("verdict")
    table.add_column("detail")
    for s in result.steps:
        table.add_row(escape(s.name), "[green]ok[/green]" if s.ok else "[red]FAILED[/red]",
                      escape(s.detail))
    for e in result.errors:
        table.add_row("error", "[red]FAILED[/red]", escape(e))
    out.print(table)
    out.print(metrics_table(result.metrics))
    if args.views:
        v = Table(title="what each phone shows")
        for col in ("phone", "uin", "contacts", "messages", "nearby", "avatars"):
            v.add_column(col, justify="left" if col == "phone" else "right")
        for view in result.views:
            v.add_row(escape(view["username"]), str(view["uin"]), str(len(view["contacts"])),
                      str(len(view["messages"])), str(len(view["nearby"] or [])),
                      str(len(view["avatars"])))
        out.print(v)
    return 0 if result.ok else 1


def _claim(args, console, manifest, clients):
    """--claim-users: (this phone's name, the names it claimed, their manifest entries), or
    the exit status after saying why not."""
    import asyncio

    from testbed.phones_cli import claim, claimed_users, phone_name

    if args.store is None:
        error(console, "--claim-users needs the lab's store: --store redis://HOST:PORT/DB "
                       "(or $TESTBED_STORE)")
        return 2
    if clients > args.claim_users:
        error(console, f"--clients {clients} needs as many users: --claim-users {clients}")
        return 2
    owner = phone_name()
    try:
        names = asyncio.run(claim(args.store, owner, args.claim_users))
    except (ValueError, ConnectionError) as exc:
        error(console, str(exc))
        return 1
    note(console, f"phone {owner}: claimed {' '.join(names)}")
    try:
        return owner, names, claimed_users(manifest.users, names)
    except ValueError as exc:
        error(console, str(exc), args.manifest)
        _post(args, console, owner, failed_result(args.scenario, names, str(exc)))
        return 1


def _post(args, console, owner: str, doc: dict) -> bool:
    """Post this phone's result into the lab's store; False after saying why it could not."""
    import asyncio

    from testbed.phones_cli import post_result

    try:
        asyncio.run(post_result(args.store, owner, doc))
    except (ValueError, ConnectionError, OSError) as exc:
        error(console, f"cannot post the result: {exc}")
        return False
    note(console, f"phone {owner}: result posted to the store")
    return True
