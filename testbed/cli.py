"""`testbed …`: the command line. `main(argv) -> int` so tests call it directly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .argtypes import nonneg_float, positive_float, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="testbed",
        description="A lab for the 2013 WeChat protocol: mock hosts, emulated phones, "
                    "capture, verification and reports. Start with `testbed demo`.")
    p.add_argument("--version", action="version", version=f"testbed {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    lab = sub.add_parser("lab", help="run the mock hosts")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
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
    up.add_argument("--record", type=Path, default=None, metavar="FILE",
                    help="record everything with the in-process tap to this pcapng")
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

    from .serve_cli import add_lab_parsers, add_serve_parser
    add_lab_parsers(lab_sub)
    add_serve_parser(sub)

    em = sub.add_parser("emulate", help="run emulated phones against a lab")
    em.add_argument("scenario", choices=("login", "chat", "media", "nearby", "heartbeat",
                                         "storyboard"))
    em.add_argument("--manifest", type=Path, default=Path("lab-manifest.json"),
                    help="the lab's manifest (default ./lab-manifest.json)")
    em.add_argument("--clients", type=positive_int, default=2, help="phones (default 2)")
    em.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                    help="protocol seconds for the heartbeat scenario (default: 3 beats)")
    em.add_argument("--processes", type=positive_int, default=None,
                    help="spread the phones over this many processes (default: 1 per "
                         "5,000 phones)")
    em.add_argument("--seed", type=int, default=None, help="random seed")
    em.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

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

    ve = sub.add_parser("verify", help="check a capture against expectations")
    ve.add_argument("capture", type=Path)
    ve.add_argument("--storyboard", action="store_true",
                    help="the lab report's statements (the default expectation set)")
    ve.add_argument("--secret", action="append", default=[], metavar="TEXT",
                    help="a password that must never appear in clear (repeatable)")
    ve.add_argument("--json", action="store_true", help="print the verdicts as JSON")

    de = sub.add_parser("demo", help="run the lab report's session, record, verify, report")
    de.add_argument("--out", type=Path, default=Path("captures/demo"),
                    help="where demo.pcapng and report.html go (default ./captures/demo)")
    de.add_argument("--time-scale", type=positive_float, default=100.0,
                    help="protocol seconds per wall second (default 100: a 300 s "
                         "heartbeat every 3 s)")

    rec = sub.add_parser("record", help="capture from a network interface (root)")
    rec.add_argument("--iface", default=None, help="interface, e.g. lo or a veth (root)")
    rec.add_argument("--out", required=True, type=Path, help="pcapng file to write")
    rec.add_argument("--filter", default=None, metavar="BPF",
                     help="capture filter, e.g. 'tcp port 8080 or udp port 5353'")
    rec.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                     help="stop after this many seconds (default: at Ctrl-C)")
    rec.add_argument("--time-scale", type=positive_float, default=None,
                     help="the time scale of the lab being recorded, kept in the capture so "
                          "intervals read back in protocol time")
    rec.add_argument("--run", action="store_true",
                     help="instead of --iface: --run -- COMMAND ARGS... runs COMMAND in a "
                          "private network namespace and records its lo (no root needed "
                          "where user namespaces are allowed), e.g. --run -- testbed demo")

    rp = sub.add_parser("report", help="a self-contained HTML report of a capture")
    rp.add_argument("capture", type=Path)
    rp.add_argument("--html", type=Path, default=None, metavar="OUT",
                    help="where to write it (default: CAPTURE.html beside the capture)")
    rp.add_argument("--secret", action="append", default=[], metavar="TEXT",
                    help="a password that must never appear in clear (repeatable)")

    try:
        from testbed.study.heartbeat import register as register_study
    except ImportError:  # pragma: no cover - the study needs nothing optional to import
        register_study = None
    if register_study is not None:
        register_study(sub)
    from testbed.replay.command import register as register_replay
    register_replay(sub)

    sub.add_parser("profiles", help="list the built-in profiles")
    return p


def _lab_up(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mocks.lab_manifest import HOST_OF_ROLE
    from mocks.runner import Lab, LabConfig
    from mocks.state import redact_url
    from testbed.serve_cli import open_store
    from testbed.lab.addressing import AddressPlan
    from testbed.lab.profiles import load_profile

    console = Console(stderr=True)
    try:
        load_profile(args.profile)
        plan = AddressPlan(args.subnet)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if args.workers is not None and not args.store.startswith(("redis", "unix")):
        console.print("[red]error:[/red] --workers needs a store the workers share: "
                      "--store redis://HOST:PORT/DB")
        return 2
    if args.record is not None and args.store.startswith(("redis", "unix")):
        console.print("[red]error:[/red] --record needs the one-process lab (the in-process "
                      "tap); on Redis every host is a process: record with `testbed record "
                      "--iface lo`")
        return 2
    cfg = LabConfig(users=args.users, friends=args.friends, profile=args.profile,
                    time_scale=args.time_scale, plan=plan,
                    privileged_ports=args.privileged_ports, manifest_path=args.manifest,
                    nat_timeout_s=args.nat_timeout, nat_latency_s=args.nat_latency,
                    record=args.record)

    async def run() -> int:
        store, failed = await open_store(args.store, console)
        if store is None:
            return failed
        try:
            if args.reset_store:
                await store.clear()
            elif (held := await store.user_count()) > 0:
                console.print(f"[red]error:[/red] the store {args.store} already holds a lab "
                              f"({held} users): another lab uses that namespace, or one was "
                              f"killed before it could empty it. Choose another with "
                              f"?namespace=NAME, or pass --reset-store")
                return 1
            try:
                return await serve(store)
            finally:
                await store.clear()     # a lab leaves nothing behind in a shared Redis
        finally:
            await store.close()

    async def serve(store) -> int:
        from mocks.process_lab import HostFailed, ProcessLab

        processes = getattr(store, "namespace", None) is not None
        if processes:
            lab = ProcessLab(cfg, store, args.store, workers=args.workers or 2,
                             uvloop=args.uvloop)
        else:
            lab = Lab(cfg, store=store)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(lab.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():     # Ctrl-C while the hosts start
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await lab.stop()
            return 0
        try:
            manifest = starting.result()
        except OSError as exc:
            console.print(f"[red]error:[/red] cannot bind the lab: {exc}. Is another lab "
                          f"running on {plan.prefix}.x? Try --subnet 127.0.1")
            await lab.stop()
            return 1
        except HostFailed as exc:
            console.print(f"[red]error:[/red] {exc}")
            await lab.stop()
            return 1
        table = Table(title=f"lab up: profile {manifest.profile}, time scale "
                            f"{manifest.time_scale:g}, {args.users} users")
        table.add_column("host")
        table.add_column("addresses")
        table.add_column("port")
        if processes:
            table.add_column("processes")
            pids = {HOST_OF_ROLE.get(c.role, c.role): " ".join(map(str, c.pids))
                    for c in lab.children}
        for name, h in manifest.hosts.items():
            port = str(h.port) + (f", TLS {h.tls_port}" if h.tls_port else "")
            table.add_row(name, " ".join(h.addresses), port,
                          *([pids[name]] if processes else []))
        table.add_row("lab resolver (DNS)", manifest.dns_address, str(manifest.dns_port),
                      *([pids["dns"]] if processes else []))
        console.print(table)
        if getattr(lab, "record_path", None) is not None:
            console.print(f"recording to {lab.record_path} (closed when the lab stops)")
        if args.nat_timeout is not None:
            console.print(f"carrier NAT in front of every TCP host: idle timeout "
                          f"{args.nat_timeout:g} s, latency {args.nat_latency:g} s"
                          + (f" (pid {pids['nat']})" if processes else ""))
        if processes:
            console.print(f"state: Redis {redact_url(store.url)}, namespace "
                          f"{store.namespace}; every host a `testbed serve` process, "
                          f"{args.workers or 2} workers each for the long and short links")
        console.print(f"event loop: {on}")
        console.print(f"manifest: {lab.manifest_path.resolve()}   (Ctrl-C to stop)")
        ended = asyncio.ensure_future(lab.wait()) if processes else None
        await asyncio.wait({stopped, *([ended] if ended else [])},
                           return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if ended is not None:
            if ended.done():
                console.print(f"[red]error:[/red] {ended.result()}: stopping the lab")
                code = 1
            else:
                ended.cancel()
        console.print("stopping")
        await lab.stop()
        return code

    from testbed.eventloop import Loop, have_uvloop
    from testbed.eventloop import run as run_on

    on = Loop.ASYNCIO
    if args.uvloop and have_uvloop():
        on = Loop.UVLOOP
    elif args.uvloop:
        console.print("[yellow]uvloop not installed; using asyncio[/yellow]")
    return run_on(run(), on)


def _emulate(args) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from testbed.client.swarm import run_swarm
    from testbed.lab.manifest import load_manifest

    console = Console(stderr=True)
    try:
        manifest = load_manifest(args.manifest)
    except FileNotFoundError:
        console.print(f"[red]error:[/red] no manifest at {args.manifest}: start a lab with "
                      f"`testbed lab up` or pass --manifest")
        return 2
    except ValueError as exc:
        console.print(f"[red]error:[/red] {args.manifest}: {exc}")
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=args.json and not console.is_terminal) as progress:
        task = progress.add_task(f"{args.scenario} x{args.clients}", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"{args.scenario}: {text}")

        try:
            result = run_swarm(args.scenario, str(args.manifest), args.clients,
                               processes=args.processes, duration=args.duration,
                               seed=args.seed, progress=on_progress)
        except KeyboardInterrupt:   # the phone processes are stopped already
            console.print("[yellow]interrupted[/yellow]")
            return 130
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        table = Table(title=f"{result.scenario}: {result.clients} phones against "
                            f"{manifest.profile} (k={manifest.time_scale:g}), "
                            f"{result.wall_s:.1f} s")
        table.add_column("step")
        table.add_column("verdict")
        table.add_column("detail")
        for s in result.steps:
            table.add_row(s.name, "[green]ok[/green]" if s.ok else "[red]FAILED[/red]", s.detail)
        for e in result.errors:
            table.add_row("error", "[red]FAILED[/red]", e)
        console.print(table)
        m = Table(title="what the phones did")
        m.add_column("metric")
        m.add_column("value", justify="right")
        for k, v in result.metrics.items():
            m.add_row(k, f"{v:g}")
        console.print(m)
    return 0 if result.ok else 1


def _open_analysis(path: Path, console, needles=()):
    from testbed.capture.analyze import analyze
    from testbed.capture.packets import CaptureError

    try:
        return analyze(str(path), needles=needles)
    except (CaptureError, OSError) as exc:
        console.print(f"[red]error:[/red] {path}: {exc}")
        return None


def doc_start(a) -> float:
    return a.first_ts or 0.0


def _analyze(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    radios = []
    for name in args.radio:
        from testbed.radio import load_radio_profile
        try:
            radios.append(load_radio_profile(name))
        except (ValueError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            return 2
    a = _open_analysis(args.capture, console)
    if a is None:
        return 2
    doc = a.summary()
    if args.events:
        doc["events"] = [e.to_dict() for e in a.events]
    if radios:
        from testbed.radio.report import radio_section
        doc["radio"] = radio_section(str(args.capture), a, radios)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    else:
        out = Console()
        out.print(f"{args.capture}: {doc['packets']} packets, {doc['duration_s']:.3f} s"
                  + (f" (time scale {a.time_scale:g})" if a.time_scale != 1 else "")
                  + (f", made by the {doc['made_by']}" if doc["made_by"] else ""))
        if a.truncated:
            out.print(f"[yellow]truncated:[/yellow] {a.error}")
        for iface, n in (a.drops or {}).items():
            if n:
                out.print(f"[yellow]kernel dropped {n} packets on interface {iface}[/yellow]")
        if doc["dns"]:
            t = Table(title="DNS")
            t.add_column("name")
            t.add_column("answers")
            for name, addrs in doc["dns"].items():
                t.add_row(name, " ".join(addrs))
            out.print(t)
        t = Table(title="flows")
        for col in ("client", "server", "host", "app", "kind", "requests", "closed_by",
                    "packets", "bytes c>s", "bytes s>c", "heartbeat_s"):
            t.add_column(col)
        for f in doc["flows"]:
            t.add_row(f["client"], f["server"], f["host"], f["app"], f["kind"],
                      str(f["requests"]), str(f["closed_by"] or ""),
                      f"{f['packets_c2s']}/{f['packets_s2c']}", str(f["bytes_c2s"]),
                      str(f["bytes_s2c"]),
                      "" if f["heartbeat_s"] is None else f"{f['heartbeat_s']:g}")
        out.print(t)
        if args.events:
            for e in doc["events"]:
                msg = e["fields"].get("message")
                t = (e["ts"] - doc_start(a)) * a.time_scale   # protocol seconds
                out.print(f"{t:10.3f} {e['src']:>21} -> {e['dst']:<21} "
                          f"{e['label']}" + (f"  {json.dumps(msg, ensure_ascii=False)[:200]}"
                                             if msg else ""), markup=False, highlight=False)
        out.print("tcp: " + (", ".join(f"{k} {v}" for k, v in doc["tcp"].items() if v)
                             or "no retransmissions, duplicate ACKs or other analysis flags"))
        if radios:
            from testbed.radio.report import print_radio
            print_radio(out, doc["radio"])
    return 0


def _verify(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from testbed.verify import verify_storyboard

    console = Console(stderr=True)
    secrets = [s.encode() for s in args.secret]
    a = _open_analysis(args.capture, console, needles=secrets)
    if a is None:
        return 2
    verdicts = verify_storyboard(a, secrets=secrets)
    failed = [v for v in verdicts if v.ok is False]
    if args.json:
        print(json.dumps({"capture": str(args.capture), "ok": not failed,
                          "verdicts": [v.to_dict() for v in verdicts]}, indent=2,
                         ensure_ascii=False))
    else:
        t = Table(title=f"storyboard verdicts for {args.capture}")
        t.add_column("#")
        t.add_column("statement")
        t.add_column("verdict")
        t.add_column("detail")
        for v in verdicts:
            verdict = {True: "[green]holds[/green]", False: "[red]FAILS[/red]",
                       None: f"[dim]n/a ({v.scope})[/dim]"}[v.ok]
            t.add_row(v.id, v.statement, verdict, v.detail)
        Console().print(t)
    return 1 if failed else 0


def _demo(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from testbed.demo import run_demo

    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("demo", total=1.0)

        def on_progress(frac: float, text: str) -> None:
            progress.update(task, completed=frac, description=f"demo: {text}")

        try:
            result = asyncio.run(run_demo(args.out, args.time_scale, on_progress))
        except OSError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    t = Table(title=f"the lab report's storyboard, verified on {result.capture}")
    t.add_column("#")
    t.add_column("statement")
    t.add_column("verdict")
    t.add_column("detail", overflow="fold")
    for v in result.verdicts:
        verdict = {True: "[green]holds[/green]", False: "[red]FAILS[/red]",
                   None: f"[dim]n/a on a loopback lab ({v.scope})[/dim]"}[v.ok]
        t.add_row(v.id, v.statement, verdict, v.detail)
    console.print(t)
    for step in result.scenario.steps:
        if not step.ok:
            console.print(f"[red]scenario step failed:[/red] {step.name}: {step.detail}")
    for err in result.scenario.errors:
        console.print(f"[red]scenario error:[/red] {err}")
    a = result.analysis
    console.print(f"capture: {result.capture} ({a.packets} packets, "
                  f"{len(a.flows)} TCP flows)")
    if result.report:
        console.print(f"report:  {result.report}")
    console.print(("[green]demo passed[/green]" if result.ok else "[red]demo FAILED[/red]")
                  + f" in {result.wall_s:.1f} s")
    return 0 if result.ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["record"] and "--run" in argv:
        # everything after `--run [--]` is the command to record, not our options
        cut = argv.index("--run") + 1
        command = argv[cut + 1:] if argv[cut:cut + 1] == ["--"] else argv[cut:]
        argv = argv[:cut]
    args = parser.parse_args(argv)
    args.run_command = command
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "lab" and args.lab_command == "up":
        return _lab_up(args)
    if getattr(args, "serve_func", None) is not None:
        return args.serve_func(args)
    if args.command == "emulate":
        return _emulate(args)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "report":
        from testbed.report.command import report_main
        return report_main(str(args.capture), None if args.html is None else str(args.html),
                           args.secret)
    if getattr(args, "study_func", None) is not None:
        return args.study_func(args)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    if args.command == "record":
        comment = {"time_scale": args.time_scale} if args.time_scale else None
        if args.run:
            from testbed.capture.isolated import record_command
            return record_command(args.out, args.run_command, bpf=args.filter,
                                  comment=comment)
        if args.iface is None:
            parser.error("record needs --iface IF, or --run -- COMMAND")
        from testbed.capture.sniffer import record_main
        return record_main(args.iface, args.out, args.filter, args.duration, comment=comment)
    if args.command == "verify":
        return _verify(args)
    if args.command == "profiles":
        from testbed.lab.profiles import load_profile, profile_names
        for name in profile_names():
            print(f"{name:20} {load_profile(name).description}")
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
