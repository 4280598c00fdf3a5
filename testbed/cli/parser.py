"""The command line's options: one parser for every command, each handler set on its own
subparser (`args.handler`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from testbed import __version__
from testbed.argtypes import add_store_option, nonneg_float, positive_float, positive_int


TIME_SCALE_HELP = ("protocol seconds per wall second of the lab that was captured, used when "
                   "the capture does not record it (a tcpdump of `testbed demo`: 100)")
PHONES_HELP = ("the phones the storyboard ran with, used when the capture does not say (a "
               "tcpdump of `testbed demo`: 2): counts are checked against it")
ALL_LEGS_HELP = ("keep a relay's second copy of each connection (a sniffed lab that records "
                 "or has a NAT relays every connection to a server's internal port; left out "
                 "by default)")


# the commands registered by modules that import much (the mocks, aiohttp): only when
# they can be the one asked for
HEAVY_COMMANDS = ("lab", "serve", "study", "replay")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """Every command and its options; each command's handler is `args.handler(args) -> int`
    (`args.study_func` for `study`).

    `command`: the command about to be parsed, when known; the modules of the others in
    `HEAVY_COMMANDS` are then not imported (`testbed analyze` starts sooner), and the
    parser parses that command as the whole one would."""
    def wanted(name: str) -> bool:
        return command is None or command == name
    p = argparse.ArgumentParser(
        prog="testbed",
        description="A lab for the 2013 WeChat protocol: mock hosts, emulated phones, "
                    "capture, verification and reports. Start with `testbed demo`.")
    p.add_argument("--version", action="version", version=f"testbed {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # each command's module is imported only when its parser is built
    if wanted("lab") or wanted("serve"):
        _lab(sub, wanted)
    for name, add in (("emulate", _emulate), ("analyze", _analyze), ("verify", _verify),
                      ("demo", _demo), ("record", _record), ("report", _report)):
        if wanted(name):
            add(sub)
    register_study = None
    if wanted("study"):
        try:
            from testbed.study.heartbeat import register as register_study
        except ImportError:  # pragma: no cover - the study needs nothing optional to import
            pass
    if register_study is not None:
        register_study(sub)
    if wanted("replay"):
        from testbed.replay.command import register as register_replay
        register_replay(sub)

    if wanted("profiles"):
        _profiles(sub)
    return p


def _lab(sub, wanted):
    """`lab` and its actions (with `serve`, which its modules also register)."""
    from testbed.lab import NAT_UPSTREAMS

    from . import lab

    lab_p = sub.add_parser("lab", help="run the mock hosts")
    lab_sub = lab_p.add_subparsers(dest="lab_command", metavar="ACTION")
    up = lab_sub.add_parser("up", help="start every host until Ctrl-C: in one process, or "
                                       "with --store redis://... each in a process of its own")
    up.add_argument("--users", type=positive_int, default=10, help="lab users (default 10)")
    up.add_argument("--friends", choices=("all", "none"), default="all",
                    help="make every pair of users friends (default) or none")
    up.add_argument("--manifest", type=Path, default=Path("lab-manifest.json"),
                    help="where to write the lab manifest (default ./lab-manifest.json)")
    up.add_argument("--time-scale", type=positive_float, default=1.0,
                    help="protocol seconds per wall second (default 1)")
    up.add_argument("--profile", default="lab-report-2013",
                    help="profile name or JSON file (see `testbed profiles`)")
    up.add_argument("--subnet", default="127.0.0",
                    help="first three octets of the lab's loopback /24 (default 127.0.0)")
    up.add_argument("--privileged-ports", action="store_true",
                    help="bind the profile's real ports (80, 443, 53); needs root")
    up.add_argument("--nat-timeout", type=positive_float, default=None, metavar="SECONDS",
                    help="put a carrier NAT in front of every TCP host that forgets a "
                         "connection idle this many protocol seconds (e.g. 300)")
    up.add_argument("--nat-latency", type=nonneg_float, default=0.0, metavar="SECONDS",
                    help="fixed one-way latency the NAT adds (protocol seconds)")
    up.add_argument("--nat-upstream", choices=NAT_UPSTREAMS, default="socket",
                    help="how the one-process lab's NAT (or --fault relay) reaches the hosts "
                         "behind it: a loopback socket (default) or an in-memory transport "
                         "pair, cheaper per packet (docs/lab.md)")
    up.add_argument("--record", type=Path, default=None, metavar="FILE",
                    help="record everything with the in-process tap to this pcapng (with "
                         "--netns: sniff the phone's link)")
    up.add_argument("--uvloop", action="store_true", help="run on uvloop if installed")
    up.add_argument("--store", default="memory:", metavar="URL",
                    help="where the lab's state lives: memory: (default, this process) or "
                         "redis://HOST:PORT/DB[?namespace=NAME], which other processes can "
                         "share; the lab empties its namespace when it stops")
    up.add_argument("--reset-store", action="store_true",
                    help="empty the store's namespace first (keys left by a lab that was "
                         "killed)")
    up.add_argument("--workers", type=positive_int, default=None,
                    help="with a Redis store, where every host is a process of its own: "
                         "worker processes for the long and the short link each (default 2)")
    up.add_argument("--json", action="store_true",
                    help="print the host table as JSON on stdout (once every host is up)")
    up.add_argument("--replay", type=Path, default=None, metavar="CAPTURE",
                    help="server replay: answer a client under test with this capture's "
                         "recorded replies, matched by command and request fields "
                         "(docs/replay.md)")
    up.add_argument("--unmatched", choices=("fail", "forward", "error"), default=None,
                    help="with --replay, what a request the capture does not have gets: an "
                         "error reply (fail, the default), the lab's own service (forward), "
                         "or a closed connection (error)")
    up.add_argument("--mask", action="append", default=[], type=Path, metavar="PATH",
                    help="with --replay, a mask file (TOML or JSON) for the request fields "
                         "that may differ from the recorded ones (repeatable)")
    up.add_argument("--report", type=Path, default=None, metavar="PATH",
                    help="with --replay, write its report (JSON: never asked for, "
                         "unmatched) here when the lab stops")
    up.add_argument("--fault", action="append", default=[], metavar="SPEC",
                    help="a frame or connection fault on what the lab sends, seeded: "
                         "drop:NEWSYNC#2, delay:NOTIFY#1=30s, dup:NEWSENDMSG#1, "
                         "truncate:GETMSGIMG#1@100, split:NOOP#3@7, drop:short.NEWSYNC#1, "
                         "reset:long@120s, blackhole:long#1@300s, seed=N (repeatable; "
                         "docs/replay.md)")
    up.add_argument("-v", "--verbose", dest="log_requests", action="store_true",
                    help="a line on stderr per request served: time, host, client (and "
                         "user), command, CGI, path or DNS name, result, milliseconds")
    up.set_defaults(handler=lab.lab_up)
    st = lab_sub.add_parser("status", help="what of a running lab is up: each host probed")
    st.add_argument("--manifest", type=Path, default=Path("lab-manifest.json"),
                    help="the lab's manifest (default ./lab-manifest.json)")
    st.add_argument("--timeout", type=positive_float, default=2.0, metavar="SECONDS",
                    help="how long to wait for each host to answer (default 2)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(handler=lab.lab_status)

    if wanted("lab") or wanted("serve"):
        from .netns import add_netns_options
        add_netns_options(up)

        from testbed.serve_cli import add_lab_parsers, add_serve_parser
        from testbed.phones_cli import add_results_parser
        add_lab_parsers(lab_sub)
        add_results_parser(lab_sub)
        add_serve_parser(sub)


def _emulate(sub):
    from . import emulate

    em = sub.add_parser("emulate", help="run emulated phones against a lab")
    em.add_argument("scenario", choices=("login", "chat", "media", "nearby", "heartbeat",
                                         "storyboard"))
    em.add_argument("--manifest", type=Path, default=Path("lab-manifest.json"),
                    help="the lab's manifest (default ./lab-manifest.json)")
    em.add_argument("--clients", type=positive_int, default=None,
                    help="phones (default 2, or K with --claim-users K)")
    em.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                    help="protocol seconds for the heartbeat scenario (default: 3 beats)")
    em.add_argument("--processes", type=positive_int, default=None,
                    help="spread the phones over this many processes (default: 1 per "
                         "5,000 phones)")
    em.add_argument("--seed", type=int, default=None, help="random seed")
    em.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    em.add_argument("--views", action="store_true",
                    help="also give what each phone shows at the end (profile, contacts, "
                         "messages, people nearby, avatars): with --json under \"views\", "
                         "else a table of counts")
    em.add_argument("--claim-users", type=positive_int, default=None, metavar="K",
                    help="claim K of the lab's users that no other phone holds, from --store "
                         "(atomic: phones started together never share an account), run as "
                         "them and post the result into the store (`testbed lab results`)")
    add_store_option(em, required=False, text="with --claim-users, the lab's store")
    em.set_defaults(handler=emulate.emulate)


def _analyze(sub):
    from . import analyze

    an = sub.add_parser("analyze", help="flows, DNS and TCP analysis of a capture")
    an.add_argument("capture", type=Path)
    an.add_argument("--json", action="store_true", help="print the analysis as JSON")
    an.add_argument("--events", action="store_true",
                    help="also list every protocol event, bodies decoded (with --json: an "
                         "\"events\" array)")
    an.add_argument("--radio", action="append", default=[], metavar="PROFILE",
                    help="what each client's traffic costs a cellular radio on this profile "
                         "(repeatable; umts-2010, lte-2012, or a profile .json): wake-ups, "
                         "signalling, radio-on time, energy, battery share")
    an.add_argument("--time-scale", type=positive_float, default=None, metavar="K",
                    help=TIME_SCALE_HELP)
    an.add_argument("--all-legs", action="store_true", help=ALL_LEGS_HELP)
    an.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                    help="share the TCP flows out over N processes (default 1): the same "
                         "output, sooner on a big capture with many flows")
    an.set_defaults(handler=analyze.analyze)


def _verify(sub):
    from . import verify

    ve = sub.add_parser("verify", help="check a capture against expectations")
    ve.add_argument("capture", type=Path)
    ve.add_argument("--set", choices=sorted(verify.EXPECTATION_SETS), default="storyboard",
                    help="the expectation set to check: " + "; ".join(
                        f"{name}: {what}" for name, what in verify.EXPECTATION_SETS.items())
                    + " (the only set so far, and the default)")
    ve.add_argument("--storyboard", dest="set", action="store_const", const="storyboard",
                    help="the same as --set storyboard")
    ve.add_argument("--secret", action="append", default=[], metavar="TEXT",
                    help="a password that must never appear in clear (repeatable)")
    ve.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    ve.add_argument("--time-scale", type=positive_float, default=None, metavar="K",
                    help=TIME_SCALE_HELP)
    ve.add_argument("--all-legs", action="store_true", help=ALL_LEGS_HELP)
    ve.add_argument("--phones", type=positive_int, default=None, metavar="N",
                    help=PHONES_HELP)
    ve.set_defaults(handler=verify.verify)


def _demo(sub):
    from . import demo

    de = sub.add_parser("demo", help="run the lab report's session, record, verify, report")
    de.add_argument("--out", type=Path, default=Path("captures/demo"),
                    help="where demo.pcapng and report.html go (default ./captures/demo)")
    de.add_argument("--time-scale", type=positive_float, default=100.0,
                    help="protocol seconds per wall second (default 100: a 300 s "
                         "heartbeat every 3 s)")
    de.add_argument("--json", action="store_true",
                    help="print the verdicts, the scenario's steps and the files as JSON")
    de.set_defaults(handler=demo.demo)


def _record(sub):
    from . import record

    rec = sub.add_parser("record", help="capture from a network interface (root)")
    rec.add_argument("--iface", default=None,
                     help="interface, e.g. lo or a veth (root); route:ADDR for the one the "
                          "kernel sends to ADDR through (a container network's bridge)")
    rec.add_argument("--out", required=True, type=Path, help="pcapng file to write")
    rec.add_argument("--filter", default=None, metavar="BPF",
                     help="capture filter, e.g. 'tcp port 8080 or udp port 5353'")
    rec.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                     help="stop after this many seconds (default: at Ctrl-C)")
    rec.add_argument("--time-scale", type=positive_float, default=None,
                     help="the time scale of the lab being recorded, kept in the capture so "
                          "intervals read back in protocol time (default: the manifest's)")
    rec.add_argument("--manifest", type=Path, default=None,
                     help="the manifest of the lab being recorded, kept in the capture "
                          "(without passwords) for analyze, verify and report")
    rec.add_argument("--ready-file", type=Path, default=None, metavar="PATH",
                     help="with --iface: write this file once capturing (a container "
                          "healthcheck's `test -f PATH`); removed when recording stops")
    rec.add_argument("--until-phones-done", action="store_true",
                     help="with --iface: stop once every phone that claimed users of the lab "
                          "(emulate --claim-users) has posted its result to --store")
    add_store_option(rec, required=False, text="with --until-phones-done, the lab's store")
    rec.add_argument("--run", action="store_true",
                     help="instead of --iface: --run -- COMMAND ARGS... runs COMMAND in a "
                          "private network namespace and records its lo (no root needed "
                          "where user namespaces are allowed), e.g. --run -- testbed demo")
    rec.add_argument("--json", action="store_true",
                     help="print the capture's counts as JSON on stdout")
    rec.set_defaults(handler=record.record, usage_error=rec.error)


def _report(sub):
    from . import report

    rp = sub.add_parser("report", help="a self-contained HTML report of a capture")
    rp.add_argument("capture", type=Path)
    rp.add_argument("--html", type=Path, default=None, metavar="OUT",
                    help="where to write it (default: CAPTURE.html beside the capture)")
    rp.add_argument("--secret", action="append", default=[], metavar="TEXT",
                    help="a password that must never appear in clear (repeatable)")
    rp.add_argument("--time-scale", type=positive_float, default=None, metavar="K",
                    help=TIME_SCALE_HELP)
    rp.add_argument("--all-legs", action="store_true", help=ALL_LEGS_HELP)
    rp.add_argument("--phones", type=positive_int, default=None, metavar="N",
                    help=PHONES_HELP)
    rp.set_defaults(handler=report.report)


def _profiles(sub):
    from . import profiles

    pr = sub.add_parser("profiles", help="list the built-in profiles")
    pr.add_argument("--json", action="store_true", help="every field of every profile as JSON")
    pr.set_defaults(handler=profiles.profiles)


def command_of(argv: list[str]) -> Optional[str]:
    """The command `argv` asks for when it is a light one (not in `HEAVY_COMMANDS`), which
    `build_parser(command)` can then build alone; else None (the whole parser)."""
    for word in argv:
        if word in ("-v", "--verbose") or word.startswith("-v") and set(word[1:]) == {"v"}:
            continue
        if word.startswith("-") or word in HEAVY_COMMANDS:
            return None
        return word if word in LIGHT_COMMANDS else None
    return None


LIGHT_COMMANDS = ("emulate", "analyze", "verify", "report", "record", "demo", "profiles")


def split_run_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """`record ... --run [--] CMD ARGS`: (our options, the command to record). Everything
    after `--run [--]` is the command's, not ours."""
    if argv[:1] == ["record"] and "--run" in argv:
        cut = argv.index("--run") + 1
        command = argv[cut + 1:] if argv[cut:cut + 1] == ["--"] else argv[cut:]
        return argv[:cut], command
    return argv, []
