"""`testbed study heartbeat`: its options, and the command that runs the study and prints
the table (stdout), the timing line and warnings (stderr), `--json` and `--plot`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from testbed import interrupt
from testbed.argtypes import nonneg_float, positive_float, positive_int
from testbed.console import table_width
from testbed.fleet import WorkerFailed
from testbed.lab import NAT_UPSTREAMS
from testbed.eventloop import Loop, pick as pick_loop, run as run_on

from .config import WECHAT_USERS_2013, StudyConfig
from .orchestrate import run_study
from .render import TABLE_WIDTH, render_radio_tables, render_table, timing_summary, write_plot
from .results import StudyResult

log = logging.getLogger(__name__)


def _arg_count_or_auto(text: str) -> Optional[int]:
    """0 to 64, or auto (None): --processes and --shards."""
    if text == "auto":
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or auto: {text!r}")
    if not 0 <= v <= 64:
        raise argparse.ArgumentTypeError(f"must be 0 to 64: {text!r}")
    return v


def _arg_policy(text: str) -> str:
    from testbed.client.heartbeat import parse_policy

    try:
        parse_policy(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text.strip()


def register(subparsers) -> argparse.ArgumentParser:
    """Add `study heartbeat` to an argparse subparsers object. Dispatch with
    `args.study_func(args)`; `testbed study` alone prints help and returns 2."""
    study = subparsers.add_parser("study", help="experiments: real clients against a real lab")
    ssub = study.add_subparsers(dest="study_command", metavar="STUDY")

    def study_help(_args) -> int:
        study.print_help(sys.stderr)
        return 2

    study.set_defaults(study_func=study_help)
    hb = ssub.add_parser(
        "heartbeat", help="heartbeat policies behind a carrier NAT: wake-ups, deaths, delay",
        description="Run real phones through the carrier NAT of a real lab, one group per "
                    "heartbeat policy, for a protocol-time day; report heartbeats, silent "
                    "link deaths, reconnects, wake-ups and bytes per day and the delivery "
                    "delay of messages sent to them; with --radio, what that traffic costs "
                    "the phone's battery and the operator's signalling "
                    "(docs/heartbeat-study.md).")
    hb.add_argument("--nat-timeout", type=positive_float, default=None,
                    metavar="SECONDS", help="carrier NAT idle timeout (default 300)")
    hb.add_argument("--policy", dest="policies", action="append", type=_arg_policy,
                    metavar="SPEC", help="heartbeat policy, repeatable: fixed:<seconds>, mars "
                                         "(default: fixed:270 fixed:1680 mars)")
    hb.add_argument("--clients", type=positive_int, default=100,
                    help="phones per policy (default 100)")
    hb.add_argument("--hours", type=positive_float, default=24.0,
                    help="protocol hours each phone is measured (default 24)")
    hb.add_argument("--time-scale", type=positive_float, default=None,
                    help="protocol seconds per wall second (default 2000)")
    hb.add_argument("--messages-per-client-per-day", type=nonneg_float, default=4.0,
                    metavar="M", help="messages sent to each phone per day (default 4)")
    hb.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    hb.add_argument("--server-idle", type=positive_float, default=None,
                    metavar="SECONDS", help="server idle timeout (default: the profile's)")
    hb.add_argument("--online-per-s", type=nonneg_float, default=StudyConfig.online_per_s,
                    metavar="N", help="phones each phone process takes online per wall "
                    "second once all are logged in, evenly (default %(default)g; 0: all at "
                    "once, which stalls the loops and bunches the first heartbeats)")
    hb.add_argument("--radio", dest="radio", action="append", default=[], metavar="PROFILE",
                    help="what the phones' traffic costs a cellular radio on this profile "
                         "(umts-2010, lte-2012, or a profile .json; repeatable): wake-ups, "
                         "signalling, radio-on time, energy and battery share per phone per "
                         "day, and the operator's view (docs/radio.md)")
    hb.add_argument("--population", type=positive_float, default=WECHAT_USERS_2013,
                    metavar="USERS", help="users for the operator's view of --radio (default "
                                          "300e6: WeChat's registered users in January 2013)")
    hb.add_argument("--json", type=Path, default=None, metavar="OUT",
                    help="write the figures as JSON")
    hb.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                    help="draw wake-ups/day and silent deaths per policy, with --radio the "
                         "battery share and the operator's signalling (needs matplotlib)")
    hb.add_argument("--processes", type=_arg_count_or_auto, default=None, metavar="N",
                    help="run the phones in N processes of their own, the lab in this one; "
                         "0: everything in one process (default: 2 with 2 CPUs or more)")
    hb.add_argument("--shards", type=_arg_count_or_auto, default=None, metavar="N",
                    help="run the study as N labs, each in a process of its own with its "
                         "share of the phones in its loop, their long links reaching its NAT "
                         "in memory (no loopback TCP); the figures merged, each shard's loop "
                         "measured; 0: one lab, the phones by TCP (default: 2 with 2 CPUs or "
                         "more, unless --processes, --pin-cpus or --nat-upstream socket is "
                         "given; docs/heartbeat-study.md, 'Shards')")
    hb.add_argument("--pin-cpus", action="store_true",
                    help="run the lab's loop on a CPU of its own and each phone process on "
                         "another (needs 1 + --processes CPUs); the JSON's cpus_by_process "
                         "says where each ran")
    hb.add_argument("--nat-upstream", choices=NAT_UPSTREAMS, default=None,
                    help="how the lab's NAT reaches the long link behind it: an in-memory "
                         "transport pair (default: a quarter less of the lab's CPU, fewer "
                         "event-loop stalls) or a loopback socket (docs/performance.md); the "
                         "phones reach the NAT by TCP either way; recorded in the --json config")
    hb.add_argument("--loop", choices=list(Loop), default=Loop.AUTO,
                    help="event loop (default: uvloop if installed)")
    hb.add_argument("--quiet", action="store_true", help="no progress bar")
    shared = hb.add_argument_group(
        "on a running lab", "the study's phones on hosts of their own against a lab of "
        "processes on Redis (the container lab), its figures gathered through the store "
        "(docs/heartbeat-study.md, 'On the container lab')")
    shared.add_argument("--manifest", type=Path, default=None, metavar="FILE",
                        help="run this host's share of the study against the lab of this "
                             "manifest: --clients phones per policy and a sender, lab users "
                             "claimed from --store; the lab's time scale and NAT timeout; "
                             "its figures are posted to --store")
    shared.add_argument("--collect", action="store_true",
                        help="print (and --json, --plot) the figures of every share posted "
                             "to --store, merged: the whole study")
    shared.add_argument("--wait", action="store_true",
                        help="with --collect: first wait until every phone that claimed "
                             "users of the lab has posted its result")
    from testbed.argtypes import add_store_option
    add_store_option(shared, required=False, text="with --manifest or --collect, the lab's store")
    hb.set_defaults(study_func=main_heartbeat)
    return hb


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    nat, scale = getattr(args, "nat_timeout", None), getattr(args, "time_scale", None)
    return StudyConfig(nat_timeout_s=StudyConfig.nat_timeout_s if nat is None else nat,
                       policies=tuple(args.policies or StudyConfig.policies),
                       clients=args.clients, hours=args.hours,
                       time_scale=StudyConfig.time_scale if scale is None else scale,
                       messages_per_client_per_day=args.messages_per_client_per_day,
                       seed=args.seed, server_idle_s=args.server_idle,
                       online_per_s=getattr(args, "online_per_s", StudyConfig.online_per_s),
                       processes=getattr(args, "processes", None),
                       pin_cpus=getattr(args, "pin_cpus", False),
                       shards=getattr(args, "shards", None),
                       nat_upstream=getattr(args, "nat_upstream", None)
                       or StudyConfig.nat_upstream,
                       loop=getattr(args, "loop", "auto"),
                       radio=tuple(getattr(args, "radio", ())),
                       population=getattr(args, "population", WECHAT_USERS_2013))


def stall_advice(result: StudyResult) -> str:
    """What to do about the stalls: most of them the machine's (its processes waiting for a
    CPU) or not known to be."""
    n = result.stalls_waiting_for_cpu
    if n is not None and n * 2 >= result.stalls:
        return (f"{n} of them were mostly a wait for a CPU (the loops waited "
                f"{result.cpu_wait_s:.1f} s for one while phones ran): the run needs more "
                f"cores than it got; use fewer --clients or a lower --time-scale, or give "
                f"it the machine to itself.")
    return "A busy machine does this; rerun, or use a lower --time-scale."


def _shared_mode(args: argparse.Namespace) -> Optional[str]:
    """"manifest", "collect" or None (the one-process study); ValueError for options that
    do not go together."""
    manifest, collect = getattr(args, "manifest", None), getattr(args, "collect", False)
    if manifest is not None and collect:
        raise ValueError("--manifest runs a share, --collect merges the shares: one of them")
    if getattr(args, "wait", False) and not collect:
        raise ValueError("--wait is for --collect")
    if manifest is None and not collect:
        return None
    if not getattr(args, "store", None):
        raise ValueError(f"{'--manifest' if manifest else '--collect'} needs the lab's store: "
                         f"--store redis://HOST:PORT/DB (or $TESTBED_STORE)")
    if manifest is not None:
        given = [flag for flag, v in (("--nat-timeout", args.nat_timeout),
                                      ("--time-scale", args.time_scale),
                                      ("--server-idle", args.server_idle),
                                      ("--processes", getattr(args, "processes", None)),
                                      ("--pin-cpus", getattr(args, "pin_cpus", False) or None),
                                      ("--shards", getattr(args, "shards", None)),
                                      ("--nat-upstream", getattr(args, "nat_upstream", None)))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: with --manifest the running lab decides "
                             f"(its time scale and NAT, a process of its own; the phones run "
                             f"in this process)")
    return "manifest" if manifest is not None else "collect"


def main_heartbeat(args: argparse.Namespace) -> int:
    """`testbed study heartbeat`: 0 on success, 2 on bad arguments, 1 if the run failed."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    err = Console(stderr=True)
    manifest = None
    try:
        mode = _shared_mode(args)
        config = config_from_args(args)
        if mode == "manifest":
            from testbed.lab.manifest import load_manifest

            from .shared import share_config
            try:
                manifest = load_manifest(args.manifest)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{args.manifest}: {exc}") from None
            config = share_config(config, manifest)
        config.validate()
        loop = pick_loop(getattr(args, "loop", Loop.AUTO))
        for opt, target in (("--json", args.json), ("--plot", args.plot)):
            if target is not None and target.exists() and target.is_dir():
                raise ValueError(f"{opt} {target}: is a directory")
        if args.plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise ValueError("--plot needs matplotlib (pip install 'wechat-testbed[plot]')")
    except ValueError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2

    quiet = getattr(args, "quiet", False) or mode == "collect"
    progress = Progress(TextColumn("[bold]heartbeat study[/bold]"), BarColumn(),
                        TextColumn("{task.completed:>7.0f}/{task.total:.0f} protocol s"),
                        TextColumn("{task.description}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err, transient=True,
                        disable=quiet, refresh_per_second=4)

    async def go() -> StudyResult:
        if mode == "collect":
            return await _collect(args)
        with progress:
            task = progress.add_task("starting", total=config.window_s)

            def report(done: float, total: float, what: str) -> None:
                progress.update(task, completed=done, total=total, description=what)

            if mode == "manifest":
                from .shared import run_share
                owner, result = await run_share(
                    config, manifest, args.store, report,
                    on_claim=lambda o, names: err.print(f"phone {o}: claimed {' '.join(names)}",
                                                        soft_wrap=True))
                err.print(f"phone {owner}: its share of the study posted to the store")
                return result
            return await run_study(config, report)

    try:
        # SIGINT/SIGTERM: Interrupted, once the lab and the phone processes have stopped
        result = interrupt.run(go(), lambda main: run_on(main, loop))
    except WorkerFailed as exc:   # a phone process: its traceback is in the log
        log.error("heartbeat study failed: %s", exc)
        err.print(f"[red]study failed:[/red] {exc.name}: {exc.detail.strip().splitlines()[-1]}")
        return 1
    except (ValueError, ConnectionError) as exc:   # the store: unreachable, or nothing in it
        if mode is None:
            log.exception("heartbeat study failed")
        err.print(f"[red]study failed:[/red] {escape(str(exc))}", soft_wrap=True)
        return 1
    except Exception as exc:
        log.exception("heartbeat study failed")
        err.print(f"[red]study failed:[/red] {exc!r}")
        return 1
    _show(result, args, err)
    return 0


async def _collect(args: argparse.Namespace) -> StudyResult:
    from mocks.lab_phones import read_shared

    from .shared import collect
    return collect(await read_shared(args.store, wait=args.wait))


def _show(result: StudyResult, args: argparse.Namespace, err) -> None:
    """The tables (stdout), the timing line and warnings (stderr), --json and --plot."""
    from rich.console import Console

    # tables fit 100 columns (the figures file has every value): the one-row-per-policy
    # table needs TABLE_WIDTH, so narrower consoles get it turned, one row per figure
    out = Console(width=table_width())
    out.print(render_table(result, vertical=out.width < TABLE_WIDTH))
    for table in render_radio_tables(result, vertical=out.width < TABLE_WIDTH):
        out.print(table)
    err.print(timing_summary(result), soft_wrap=True)
    if result.stalls:
        err.print(f"[yellow]warning:[/yellow] an event loop stalled {result.stalls} time(s) "
                  f"for {result.stall_threshold_s:g} protocol s or more (half the "
                  f"{result.timing_margin_s:g} s slack of the tightest policy under the NAT "
                  f"timeout): some silent deaths of policies that should survive, and some "
                  f"late messages, may be the testbed's doing, not the policy's. "
                  f"{stall_advice(result)}", soft_wrap=True)
    late = [(p.policy, f) for p in result.policies for f in p.radio.values()
            if f.late_wakeups > 0.01 * f.wakeups]
    if late:
        worst = max(late, key=lambda pf: pf[1].late_wakeups / pf[1].wakeups)
        err.print(f"[yellow]warning:[/yellow] the server woke the radio more often than "
                  f"pushes and closes can explain ({worst[0]} on {worst[1].profile}: "
                  f"{worst[1].late_wakeups} of {worst[1].wakeups} wake-ups): replies came so "
                  f"late, at this time scale on a busy machine, that the radio had gone idle, "
                  f"so the radio figures overstate. Rerun, or use a lower --time-scale "
                  f"(docs/heartbeat-study.md).", soft_wrap=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        err.print(f"figures: {args.json}")
    if args.plot is not None:
        write_plot(result, args.plot)
        err.print(f"plot: {args.plot}")


def _main(argv=None) -> int:
    """`python -m testbed.study.heartbeat ...`: the same as `testbed study heartbeat ...`."""
    parser = argparse.ArgumentParser(prog="python -m testbed.study.heartbeat")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "heartbeat", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING)
    return interrupt.run_command(args.study_func, args)
