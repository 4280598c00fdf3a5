"""`testbed emulate SCENARIO`: emulated phones against a running lab."""

from __future__ import annotations

from rich.markup import escape

from .output import err_console, note, open_manifest, out_console, print_json


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
    from .netns import enter_phone_namespace
    if (failed := enter_phone_namespace(manifest, console)) is not None:
        return failed
    users = len(manifest.users)
    if args.clients > users:
        note(console, f"{args.clients} phones on a lab of {users} users: they share the "
                      f"accounts, up to {-(-args.clients // users)} phones logged in as each "
                      f"user (a later login of a user takes its long link over); for a phone "
                      f"per account start the lab with `testbed lab up --users "
                      f"{args.clients}`")
    notice = long_wait_notice(args.scenario, manifest.heartbeat_s, manifest.time_scale,
                              args.duration)
    if notice:
        note(console, notice)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=args.json and not console.is_terminal) as progress:
        task = progress.add_task(f"{args.scenario} x{args.clients}", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"{args.scenario}: {text}")

        result = interrupt.run(swarm(args.scenario, str(args.manifest), args.clients,
                                     processes=args.processes, duration=args.duration,
                                     seed=args.seed, progress=on_progress,
                                     views=args.views))
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
    m = Table(title="what the phones did")
    m.add_column("metric")
    m.add_column("value", justify="right")
    for k, v in result.metrics.items():
        m.add_row(k, f"{v:g}")
    out.print(m)
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
