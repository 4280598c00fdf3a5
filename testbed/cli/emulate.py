"""`testbed emulate SCENARIO`: emulated phones against a running lab."""

from __future__ import annotations


def emulate(args) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from testbed.client.swarm import run_swarm
    from testbed.lab.manifest import load_manifest

    console = Console(stderr=True)
    try:
        manifest = load_manifest(args.manifest)
    except FileNotFoundError:
        console.print(f"[red]error:[/red] no manifest at {args.manifest}: start a lab with "
                      f"`testbed lab up` or pass --manifest")
        return 2
    except ValueError as exc:
        console.print(f"[red]error:[/red] {args.manifest}: {exc}")
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=args.json and not console.is_terminal) as progress:
        task = progress.add_task(f"{args.scenario} x{args.clients}", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"{args.scenario}: {text}")

        try:
            result = run_swarm(args.scenario, str(args.manifest), args.clients,
                               processes=args.processes, duration=args.duration,
                               seed=args.seed, progress=on_progress)
        except KeyboardInterrupt:   # the phone processes are stopped already
            console.print("[yellow]interrupted[/yellow]")
            return 130
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        table = Table(title=f"{result.scenario}: {result.clients} phones against "
                            f"{manifest.profile} (k={manifest.time_scale:g}), "
                            f"{result.wall_s:.1f} s")
        table.add_column("step")
        table.add_column("verdict")
        table.add_column("detail")
        for s in result.steps:
            table.add_row(s.name, "[green]ok[/green]" if s.ok else "[red]FAILED[/red]", s.detail)
        for e in result.errors:
            table.add_row("error", "[red]FAILED[/red]", e)
        console.print(table)
        m = Table(title="what the phones did")
        m.add_column("metric")
        m.add_column("value", justify="right")
        for k, v in result.metrics.items():
            m.add_row(k, f"{v:g}")
        console.print(m)
    return 0 if result.ok else 1


