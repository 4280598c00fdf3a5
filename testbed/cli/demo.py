"""`testbed demo`: the lab report's session recorded, verified and reported."""

from __future__ import annotations

import asyncio


def demo(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from testbed.demo import run_demo

    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("demo", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"demo: {text}")

        try:
            result = asyncio.run(run_demo(args.out, args.time_scale, on_progress))
        except OSError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    t = Table(title=f"the lab report's storyboard, verified on {result.capture}")
    t.add_column("#")
    t.add_column("statement")
    t.add_column("verdict")
    t.add_column("detail", overflow="fold")
    for v in result.verdicts:
        verdict = {True: "[green]holds[/green]", False: "[red]FAILS[/red]",
                   None: f"[dim]n/a on a loopback lab ({v.scope})[/dim]"}[v.ok]
        t.add_row(v.id, v.statement, verdict, v.detail)
    console.print(t)
    for step in result.scenario.steps:
        if not step.ok:
            console.print(f"[red]scenario step failed:[/red] {step.name}: {step.detail}")
    for err in result.scenario.errors:
        console.print(f"[red]scenario error:[/red] {err}")
    a = result.analysis
    console.print(f"capture: {result.capture} ({a.packets} packets, "
                  f"{len(a.flows)} TCP flows)")
    if result.report:
        console.print(f"report:  {result.report}")
    console.print(("[green]demo passed[/green]" if result.ok else "[red]demo FAILED[/red]")
                  + f" in {result.wall_s:.1f} s")
    return 0 if result.ok else 1


