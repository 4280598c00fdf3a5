"""`testbed replay CAPTURE --manifest PATH`: its options, and the command that replays a
capture against a running lab and prints one row per exchange (stdout; `--json`), the
progress (stderr) and one-line errors."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from testbed.lab.faults import CLIENT, FaultError, FaultPlan

from .masks import MaskSet, load_mask_file
from .player import ClientReplay, Pace

PROGRESS_FROM = 40           # exchanges: a shorter replay shows no progress bar


def _arg_pace(text: str) -> Pace:
    try:
        return Pace.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_map(text: str) -> tuple[str, str]:
    recorded, sep, lab = text.partition("=")
    if not sep or not recorded or not lab:
        raise argparse.ArgumentTypeError(f"{text!r}: write RECORDED=LAB (a recorded user name "
                                         f"or uin, and a lab user name)")
    return recorded, lab


def register(subparsers) -> argparse.ArgumentParser:
    """Add `replay` to an argparse subparsers object; its handler is `args.handler`."""
    rp = subparsers.add_parser(
        "replay", help="send a capture's requests again to a lab and compare every reply",
        description="Replay the sessions of a capture against the lab a manifest names: "
                    "fresh logins with the lab's credentials, the recorded requests in the "
                    "recorded order with the values the lab hands out put in, pushes awaited "
                    "as events, every reply compared field by field (docs/replay.md). Exit "
                    "status 1 on any difference or missing reply.")
    rp.add_argument("capture", type=Path, help="a pcap or pcapng file")
    rp.add_argument("--manifest", type=Path, default=Path("lab-manifest.json"),
                    help="the lab's manifest (default ./lab-manifest.json); nothing is sent "
                         "anywhere else")
    rp.add_argument("--pace", type=_arg_pace, default=Pace(), metavar="asap|recorded|xK",
                    help="asap (default: no waits, heartbeats collapse), recorded (the "
                         "recorded protocol-time gaps on the lab's clock), or xK (K times "
                         "faster than recorded)")
    rp.add_argument("--mask", type=Path, action="append", default=[], metavar="PATH",
                    help="a mask file (TOML or JSON) adding masks to the defaults; repeatable")
    rp.add_argument("--map", type=_arg_map, action="append", default=[],
                    metavar="RECORDED=LAB",
                    help="replay a recorded user (name or uin) as this lab user; repeatable")
    rp.add_argument("--strict", action="store_true",
                    help="also fail when an exchange could not be replayed or the lab sent "
                         "something the capture does not have")
    rp.add_argument("--fault", action="append", default=[], metavar="SPEC",
                    help="a frame or connection fault on what the replay sends, seeded: "
                         "drop:NEWSYNC#2, delay:IDENTIFY#1=5s, dup:NEWSENDMSG#1, "
                         "truncate:UPLOADMSGIMG#1@100, split:NOOP#3@7, drop:short.NEWSYNC#1, "
                         "reset:long@120s, blackhole:long#2@300s, seed=N (repeatable; "
                         "docs/replay.md)")
    rp.add_argument("--json", action="store_true", help="print the result as JSON")
    rp.set_defaults(handler=replay_command)
    return rp


def replay_command(args) -> int:
    """Run `testbed replay`; its exit status."""
    from rich.console import Console
    from rich.markup import escape

    from testbed.capture.packets import CaptureError
    from testbed.console import table_width
    from testbed.lab.manifest import load_manifest

    from .result import render
    from .sessions import load_sessions

    err = Console(stderr=True)

    def fail(text: str, status: int = 2) -> int:
        err.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
        return status

    try:
        faults = FaultPlan.parse(args.fault, CLIENT) or None   # a seed alone faults nothing
    except FaultError as exc:
        return fail(f"--fault {exc}")
    try:
        manifest = load_manifest(args.manifest)
    except FileNotFoundError:
        return fail(f"no manifest at {args.manifest}: start a lab with `testbed lab up` or "
                    f"pass --manifest")
    except (ValueError, OSError) as exc:
        return fail(f"{args.manifest}: {exc}")
    try:
        masks = MaskSet([load_mask_file(p) for p in args.mask])
    except ValueError as exc:
        return fail(str(exc))
    try:
        sessions = load_sessions(str(args.capture))
    except (CaptureError, OSError) as exc:
        return fail(f"{exc}" if str(args.capture) in str(exc) else f"{args.capture}: {exc}")
    for problem in sessions.problems:
        err.print(f"[yellow]warning:[/yellow] {escape(problem)}", highlight=False,
                  soft_wrap=True)
    replayer = ClientReplay(sessions, manifest, pace=args.pace, masks=masks,
                            user_map=dict(args.map), faults=faults)
    result, signum = _run(replayer, len(sessions), err)
    if signum is not None:
        err.print(f"interrupted ({signal.Signals(signum).name})", highlight=False)
        return 128 + signum
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        render(result, Console(width=table_width()))   # tables fit 100 columns
    if not result.replayed and result.recorded:
        err.print("[red]error:[/red] nothing in this capture can be replayed (each row says "
                  "why)", highlight=False)
    return result.exit_status(args.strict)


def _run(replayer: ClientReplay, total: int, err):
    """(result, None) of the replay, with a progress bar on a terminal; (None, signal) when
    Ctrl-C or SIGTERM stopped it (its links aborted at once)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from testbed import interrupt

    show = err.is_terminal and total >= PROGRESS_FROM
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True, disable=not show) as bar:
        task = bar.add_task("replay", total=total)
        replayer.progress = lambda done, _total: bar.update(task, completed=done)

        try:
            return interrupt.run(replayer.run()), None
        except interrupt.Interrupted as exc:
            return None, exc.signum

