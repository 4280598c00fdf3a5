"""`testbed verify CAPTURE [--set NAME]`: an expectation set (the storyboard's statements)
checked on a capture."""

from __future__ import annotations

from rich.markup import escape

from .analyze import warn_incomplete
from .output import err_console, open_analysis, out_console, print_json

VERDICT_TEXT = {True: "[green]holds[/green]", False: "[red]FAILS[/red]"}
# `--set NAME`: the expectation sets, by name, and what each holds (named here, checked by
# `expectation_set`, so that building the parser imports no verifier)
EXPECTATION_SETS = {"storyboard": "the lab report's statements, one by one "
                                  "(docs/storyboard.md)"}


def expectation_set(name: str):
    """The function that checks the set `name`: `check(analysis, secrets=, phones=)`."""
    if name == "storyboard":
        from testbed.verify import verify_storyboard
        return verify_storyboard
    raise ValueError(f"unknown expectation set {name!r}; one of {', '.join(EXPECTATION_SETS)}")


def verify(args) -> int:
    """The verdicts (stdout, or `--json`); 1 if a statement fails. A truncated capture is
    said on stderr before them."""
    from rich.table import Table


    console = err_console()
    secrets = [s.encode() for s in args.secret]
    a = open_analysis(args.capture, console, needles=secrets, time_scale=args.time_scale,
                      all_legs=args.all_legs)
    if a is None:
        return 2
    warn_incomplete(console, a)
    verdicts = expectation_set(args.set)(a, secrets=secrets, phones=args.phones)
    failed = [v for v in verdicts if v.ok is False]
    if args.json:
        print_json({"capture": str(args.capture), "set": args.set, "ok": not failed,
                    "truncated": a.truncated, "error": a.error,
                    "time_scale": a.time_scale, "time_scale_from": a.time_scale_source,
                    "verdicts": [v.to_dict() for v in verdicts]})
    else:
        t = Table(title=f"{args.set} verdicts for {escape(str(args.capture))}",
                  caption=f"set {args.set}: {EXPECTATION_SETS[args.set]}")
        t.add_column("#")
        t.add_column("statement")
        t.add_column("verdict")
        t.add_column("detail")
        for v in verdicts:
            t.add_row(v.id, escape(v.statement),
                      VERDICT_TEXT.get(v.ok, f"[dim]n/a ({v.scope})[/dim]"), escape(v.detail))
        out_console().print(t)
    return 1 if failed else 0
