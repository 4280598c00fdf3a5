"""`testbed record`: capture an interface (root), or a command in a namespace of its own."""

from __future__ import annotations

import sys


def record(args) -> int:
    """Capture until the duration, SIGINT or SIGTERM (or until the command ends)."""
    comment = {"time_scale": args.time_scale} if args.time_scale else {}
    if args.manifest is not None:
        from testbed.lab.manifest import load_manifest
        try:
            comment["manifest"] = load_manifest(args.manifest).redacted()
        except (OSError, ValueError) as exc:
            print(f"error: {args.manifest}: {exc}", file=sys.stderr)
            return 2
    comment = comment or None
    if args.run:
        from testbed.capture.isolated import record_command
        return record_command(args.out, args.run_command, bpf=args.filter,
                              comment=comment, as_json=args.json)
    if args.iface is None:
        args.usage_error("record needs --iface IF, or --run -- COMMAND")
    from testbed.capture.sniffer import record_main
    return record_main(args.iface, args.out, args.filter, args.duration, comment=comment,
                       as_json=args.json)
