"""`testbed record`: capture an interface (root), or a command in a namespace of its own."""

from __future__ import annotations

import os
import sys


def record(args) -> int:
    """Capture until the duration, SIGINT or SIGTERM (or until the command ends, or, with
    --until-phones-done, until the lab's phones are)."""
    if args.run and (args.until_phones_done or args.ready_file):
        args.usage_error("--until-phones-done and --ready-file are for --iface")
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
    return _record_iface(args, comment)


def _record_iface(args, comment) -> int:
    import asyncio
    import threading

    from testbed.capture.sniffer import record_main

    if args.iface.startswith("route:"):
        from mocks.addresses import route_device
        try:
            args.iface = route_device(args.iface[len("route:"):])
        except (OSError, ValueError) as exc:
            print(f"error: --iface {args.iface}: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    if args.until_phones_done:
        from testbed.phones_cli import check_store, stop_when_phones_done
        problem = asyncio.run(check_store(args.store))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2

    def on_ready() -> None:
        if args.ready_file is not None:
            from mocks.serve import write_ready
            write_ready(args.ready_file, {"role": "recorder", "iface": args.iface,
                                          "out": str(args.out), "pid": os.getpid()})
        if args.until_phones_done:
            stop_when_phones_done(args.store, stop,
                                  lambda line: print(line, file=sys.stderr, flush=True))

    try:
        return record_main(args.iface, args.out, args.filter, args.duration, comment=comment,
                           as_json=args.json, stop=stop, on_ready=on_ready)
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
