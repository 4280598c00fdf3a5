"""`testbed verify CAPTURE`: the storyboard's statements checked on a capture."""

from __future__ import annotations

from rich.markup import escape

from .analyze import warn_incomplete
from .output import err_console, open_analysis, out_console, print_json

VERDICT_TEXT = {True: "[green]holds[/green]", False: "[red]FAILS[/red]"}


def verify(args) -> int:
    """The verdicts (stdout, or `--json`); 1 if a statement fails. A truncated capture is
    said on stderr before them."""
    from rich.table import Table

    from testbed.verify import verify_storyboard

    console = err_console()
    secrets = [s.encode() for s in args.secret]
    a = open_analysis(args.capture, console, needles=secrets, time_scale=args.time_scale,
                      all_legs=args.all_legs)
    if a is None:
        return 2
    warn_incomplete(console, a)
    verdicts = verify_storyboard(a, secrets=secrets, phones=args.phones)
    failed = [v for v in verdicts if v.ok is False]
    if args.json:
        print_json({"capture": str(args.capture), "ok": not failed,
                    "truncated": a.truncated, "error": a.error,
                    "time_scale": a.time_scale, "time_scale_from": a.time_scale_source,
                    "verdicts": [v.to_dict() for v in verdicts]})
    else:
        t = Table(title=f"storyboard verdicts for {escape(str(args.capture))}")
        t.add_column("#")
        t.add_column("statement")
        t.add_column("verdict")
        t.add_column("detail")
        for v in verdicts:
            t.add_row(v.id, escape(v.statement),
                      VERDICT_TEXT.get(v.ok, f"[dim]n/a ({v.scope})[/dim]"), escape(v.detail))
        out_console().print(t)
    return 1 if failed else 0
