"""`testbed …`: the command line. `main(argv) -> int` so tests call it directly.

One module per command group (`lab`, `emulate`, `analyze`, `verify`, `report`, `record`,
`demo`, `profiles`; `study` lives in `testbed.study`), the options of all of them in
`parser`, what several commands print the same way in `output`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

#: commands whose process skips its last garbage collection (`main`)
LEAVE_TO_THE_OS = ("analyze",)


def build_parser():
    """The argparse parser of every command (`testbed.cli.parser.build_parser`)."""
    from .parser import build_parser as build
    return build()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one `testbed` command; returns its exit status (128 + the signal's number when
    SIGINT or SIGTERM stopped it: 130, 143)."""
    from testbed.interrupt import run_command

    try:
        return run_command(_dispatch, argv)
    except BrokenPipeError:   # `testbed ... | head`: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _dispatch(argv: Optional[Sequence[str]]) -> int:
    from .parser import build_parser, command_of, split_run_command

    process = argv is None          # the process's own command line: it ends with us
    argv, command = split_run_command(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    if process and args.command in LEAVE_TO_THE_OS:
        try:
            return _run(parser, args, command)
        finally:
            # An analysis leaves its flows' state in reference cycles (a flow and its
            # dissector's callbacks), which only the interpreter's collection at exit would
            # walk and free: 50-100 ms after a capture of thousands of flows. Frozen, they are
            # not walked; the memory goes back to the system with the process. Nothing in
            # them holds a file open for writing or a clean-up the exit must run.
            import gc
            gc.freeze()
    return _run(parser, args, command)


def _run(parser, args, command: list[str]) -> int:
    args.run_command = command
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if getattr(args, "serve_func", None) is not None:
        return args.serve_func(args)
    if getattr(args, "study_func", None) is not None:
        return args.study_func(args)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    parser.print_help(sys.stderr)
    return 2
