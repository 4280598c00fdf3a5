"""`testbed verify CAPTURE`: the storyboard's statements checked on a capture."""

from __future__ import annotations

from .output import open_analysis


def verify(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from testbed.verify import verify_storyboard

    console = Console(stderr=True)
    secrets = [s.encode() for s in args.secret]
    a = open_analysis(args.capture, console, needles=secrets)
    if a is None:
        return 2
    verdicts = verify_storyboard(a, secrets=secrets)
    failed = [v for v in verdicts if v.ok is False]
    if args.json:
        print(json.dumps({"capture": str(args.capture), "ok": not failed,
                          "verdicts": [v.to_dict() for v in verdicts]}, indent=2,
                         ensure_ascii=False))
    else:
        t = Table(title=f"storyboard verdicts for {args.capture}")
        t.add_column("#")
        t.add_column("statement")
        t.add_column("verdict")
        t.add_column("detail")
        for v in verdicts:
            verdict = {True: "[green]holds[/green]", False: "[red]FAILS[/red]",
                       None: f"[dim]n/a ({v.scope})[/dim]"}[v.ok]
            t.add_row(v.id, v.statement, verdict, v.detail)
        Console().print(t)
    return 1 if failed else 0


