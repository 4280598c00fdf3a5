"""`testbed demo`: the lab report's session recorded, verified and reported."""

from __future__ import annotations

from rich.markup import escape

from .output import err_console, error, note, os_error_text, out_console, print_json

VERDICT_TEXT = {True: "[green]holds[/green]", False: "[red]FAILS[/red]"}


def demo_doc(result) -> dict:
    """`demo --json`: the verdicts, the scenario's steps and where the files are."""
    a = result.analysis
    return {"ok": result.ok, "wall_s": result.wall_s, "capture": str(result.capture),
            "report": None if result.report is None else str(result.report),
            "packets": a.packets, "tcp_flows": len(a.flows),
            "verdicts": [v.to_dict() for v in result.verdicts],
            "scenario": result.scenario.to_dict()}


def demo(args) -> int:
    """Run the demo (progress on stderr), then the verdict table and the files (stdout)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from testbed import interrupt
    from testbed.client.scenarios import long_wait_notice
    from testbed.demo import run_demo
    from testbed.lab.profiles import DEFAULT_PROFILE, load_profile

    console = err_console()
    notice = long_wait_notice("storyboard", load_profile(DEFAULT_PROFILE).heartbeat_s,
                              args.time_scale, option="`testbed demo --time-scale {k}`")
    if notice:
        note(console, notice)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("demo", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"demo: {text}")

        try:
            result = interrupt.run(run_demo(args.out, args.time_scale, on_progress))
        except OSError as exc:
            error(console, os_error_text(exc))
            return 1
        except interrupt.Interrupted:
            capture = args.out / "demo.pcapng"
            if capture.exists():
                note(console, f"the capture so far: {capture}")
            raise
    for step in result.scenario.steps:
        if not step.ok:
            console.print(f"[red]scenario step failed:[/red] {escape(step.name)}: "
                          f"{escape(step.detail)}")
    for err in result.scenario.errors:
        console.print(f"[red]scenario error:[/red] {escape(err)}")
    if args.json:
        print_json(demo_doc(result))
        return 0 if result.ok else 1
    out = out_console()
    t = Table(title=f"the lab report's storyboard, verified on {escape(str(result.capture))}")
    t.add_column("#")
    t.add_column("statement")
    t.add_column("verdict")
    t.add_column("detail", overflow="fold")
    for v in result.verdicts:
        verdict = VERDICT_TEXT.get(v.ok, f"[dim]n/a on a loopback lab ({v.scope})[/dim]")
        t.add_row(v.id, escape(v.statement), verdict, escape(v.detail))
    out.print(t)
    a = result.analysis
    out.print(f"capture: {escape(str(result.capture))} ({a.packets} packets, "
              f"{len(a.flows)} TCP flows)",
              highlight=False, soft_wrap=True)
    if result.report:
        out.print(f"report:  {escape(str(result.report))}", highlight=False, soft_wrap=True)
    out.print(("[green]demo passed[/green]" if result.ok else "[red]demo FAILED[/red]")
              + f" in {result.wall_s:.1f} s")
    return 0 if result.ok else 1
