"""`testbed report CAPTURE`: the self-contained HTML report."""

from __future__ import annotations


def report(args) -> int:
    from testbed.report.command import report_main
    return report_main(str(args.capture), None if args.html is None else str(args.html),
                       args.secret, time_scale=args.time_scale,
                       all_legs=args.all_legs, phones=args.phones)
