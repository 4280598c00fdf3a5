"""`testbed record`: capture an interface (root), or a command in a namespace of its own."""

from __future__ import annotations


def record(args) -> int:
    """Capture until the duration, SIGINT or SIGTERM (or until the command ends)."""
    comment = {"time_scale": args.time_scale} if args.time_scale else None
    if args.run:
        from testbed.capture.isolated import record_command
        return record_command(args.out, args.run_command, bpf=args.filter,
                              comment=comment, as_json=args.json)
    if args.iface is None:
        args.usage_error("record needs --iface IF, or --run -- COMMAND")
    from testbed.capture.sniffer import record_main
    return record_main(args.iface, args.out, args.filter, args.duration, comment=comment,
                       as_json=args.json)
