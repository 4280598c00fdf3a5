"""`testbed serve ROLE`, `testbed lab seed`, `testbed lab manifest`: a lab as separate hosts.

Every option of a host can also come from the environment where a container is easier to
configure that way: `TESTBED_STORE`, `TESTBED_PROFILE`, `TESTBED_TIME_SCALE` (the flag wins).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from .argtypes import nonneg_float, positive_float, positive_int

ENV_STORE, ENV_PROFILE, ENV_TIME_SCALE = "TESTBED_STORE", "TESTBED_PROFILE", "TESTBED_TIME_SCALE"
# set by a supervisor (`lab up` on Redis) in the environment of the `serve` it starts: that
# serve dies with it and leaves Ctrl-C to it
ENV_PARENT = "TESTBED_PARENT_PID"
DEFAULT_CA_DIR = "lab-ca"

ROLE_HELP = {
    "long": "the long link (binary frames, pushes)",
    "short": "the short link: CGI over HTTP and TLS",
    "mapabc": "mapi.mapabc.com, the location service",
    "qlogo": "wx.qlogo.cn, the avatar CDN",
    "qpic": "mmsns.qpic.cn, the image CDN",
    "dns": "the lab's resolver (UDP and TCP)",
    "nat": "a carrier NAT: a TCP relay in front of given targets",
}


def _endpoint(text: str):
    from mocks.endpoints import parse_endpoint
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hosts_port(text: str):
    from mocks.endpoints import parse_hosts_port
    try:
        return parse_hosts_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mapping(text: str):
    listen, sep, target = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not LISTEN=TARGET (ADDR:PORT=ADDR:PORT)")
    return _endpoint(listen), _endpoint(target)


def _record(text: str):
    from mocks.endpoints import parse_endpoint
    name, sep, addrs = text.partition("=")
    if not sep or not name or not addrs:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=ADDR[,ADDR...]")
    try:
        return name, tuple(parse_endpoint(f"{a}:0").host for a in addrs.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def time_scale_of(args) -> float:
    """--time-scale, else $TESTBED_TIME_SCALE, else 1 (ValueError for a bad variable)."""
    if args.time_scale is not None:
        return args.time_scale
    raw = os.environ.get(ENV_TIME_SCALE)
    if raw is None:
        return 1.0
    try:
        return positive_float(raw)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"${ENV_TIME_SCALE}: {exc}") from None


def _add_common(p: argparse.ArgumentParser, role: str) -> None:
    from mocks.hostspec import STORE_ROLES, WORKER_ROLES
    p.add_argument("--listen", action="append", type=_endpoint, default=None,
                   metavar="ADDR:PORT",
                   help="where to listen (repeatable; default: this host's addresses in "
                        "--subnet with the profile's ports, as `lab up` places it)"
                   if role != "nat" else argparse.SUPPRESS)
    p.add_argument("--subnet", default="127.0.0",
                   help="the loopback /24 the default addresses are in (default 127.0.0)")
    p.add_argument("--privileged-ports", action="store_true",
                   help="default to the profile's real ports (80, 443, 53); needs root")
    p.add_argument("--profile", default=os.environ.get(ENV_PROFILE, "lab-report-2013"),
                   help="profile name or JSON file (default lab-report-2013; $TESTBED_PROFILE)")
    p.add_argument("--time-scale", type=positive_float, default=None,
                   help="protocol seconds per wall second (default 1; $TESTBED_TIME_SCALE)")
    p.add_argument("--epoch", type=nonneg_float, default=None, metavar="UNIX_TIME",
                   help="the wall time at which protocol time 0 was, so that hosts started "
                        "apart share one time line (default: now)")
    p.add_argument("--ready-file", type=Path, default=None, metavar="PATH",
                   help="write what was bound here (JSON) once ready; removed on exit")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop if installed")
    p.add_argument("--check", action="store_true",
                   help="instead of serving: ask the host these options describe whether it "
                        "is up (one request in its protocol to every address it serves); "
                        "exit 0 if it answers, 1 if not (a container healthcheck)")
    if role in STORE_ROLES:
        p.add_argument("--store", default=os.environ.get(ENV_STORE, "memory:"), metavar="URL",
                       help="the lab's state: memory: (default, this process only) or "
                            "redis://HOST:PORT/DB[?namespace=NAME] ($TESTBED_STORE)")
        p.add_argument("--seed-users", type=positive_int, default=0, metavar="N",
                       help="make sure the store holds user0001... userN before serving "
                            "(idempotent; any number of hosts may seed at once)")
        p.add_argument("--friends", choices=("all", "none"), default="all",
                       help="with --seed-users: every pair friends (default) or none")
    if role in WORKER_ROLES:
        p.add_argument("--workers", type=positive_int, default=1,
                       help="worker processes sharing the port with SO_REUSEPORT (default "
                            "1: serve in this process; more need a Redis store)")
        p.add_argument("--behind-relay", action="store_true",
                       help="every client comes through a relay (serve nat): count nothing "
                            "per client address here (the relay caps connections)")


def add_serve_parser(sub) -> None:
    """`testbed serve ROLE ...`: one lab host per process."""
    serve = sub.add_parser(
        "serve", help="run one lab host (for a lab of separate processes or containers)",
        description="Run one lab host until Ctrl-C or SIGTERM (exit 130 / 143). It prints a "
                    "`ready` line on stderr (and writes --ready-file) once it listens.")
    roles = serve.add_subparsers(dest="role", metavar="ROLE", required=True)
    for role, text in ROLE_HELP.items():
        p = roles.add_parser(role, help=text, description=f"testbed serve {role}: {text}.")
        _add_common(p, role)
        if role == "long":
            p.add_argument("--idle-timeout", type=positive_float, default=None,
                           metavar="SECONDS", help="close a link silent this many protocol "
                                                   "seconds (default: the profile's, 660)")
            p.add_argument("--max-packet-len", type=positive_int, default=None,
                           metavar="BYTES", help="refuse larger frames (default: profile)")
        elif role == "short":
            p.add_argument("--tls-listen", action="append", type=_endpoint, default=None,
                           metavar="ADDR:PORT", help="where to serve TLS (repeatable; "
                                                     "default: the addresses with the "
                                                     "profile's TLS port)")
            p.add_argument("--no-tls", action="store_true", help="serve plain HTTP only")
            p.add_argument("--ca", type=Path, default=Path(DEFAULT_CA_DIR), metavar="DIR",
                           help="the lab CA's directory: made there the first time, loaded "
                                "after (default ./lab-ca; clients trust DIR/ca.pem)")
        elif role == "dns":
            p.add_argument("--record", action="append", type=_record, default=None,
                           metavar="NAME=ADDR[,ADDR]",
                           help="an A record (repeatable; default: every lab host at its "
                                "address in --subnet)")
            p.add_argument("--ttl", type=int, default=600, help="answers' TTL (default 600)")
        elif role == "nat":
            p.add_argument("--map", action="append", type=_mapping, required=True,
                           metavar="LISTEN=TARGET",
                           help="relay connections to LISTEN (ADDR:PORT) to TARGET "
                                "(ADDR:PORT); repeatable")
            p.add_argument("--idle-timeout", type=positive_float, default=None,
                           metavar="SECONDS",
                           help="forget a connection idle this many protocol seconds, "
                                "silently (default: never)")
            p.add_argument("--latency", type=nonneg_float, default=0.0, metavar="SECONDS",
                           help="fixed one-way latency (protocol seconds)")
            p.add_argument("--add-addresses", action="store_true",
                           help="a LISTEN address this host lacks (in 198.18.0.0/15) is added "
                                "to the interface routing to it, and removed on exit: how one "
                                "container fronts every host's address (needs CAP_NET_ADMIN)")
        p.set_defaults(serve_func=serve_main)


def host_spec(args):
    """The `HostSpec` that `testbed serve ROLE` flags describe (ValueError: a bad value)."""
    from mocks.endpoints import Endpoint
    from mocks.hostspec import HostSpec
    from testbed.lab.addressing import HOST_NAMES, AddressPlan
    from testbed.lab.profiles import load_profile

    from mocks.hostspec import HOST_OF_ROLE

    role = args.role
    profile = load_profile(args.profile)
    plan = AddressPlan(args.subnet)
    ports = profile.port_plan(args.privileged_ports)

    def default(name, *port_keys):
        return tuple(Endpoint(a, ports[k]) for k in port_keys if k in ports
                     for a in plan.addresses(name))

    kwargs = {}
    if role in ("long", "short", "mapabc", "qlogo", "qpic"):
        name = HOST_OF_ROLE[role]
        keys = {"long": ("long", "long_fallback"), "short": ("short",)}.get(role, ("http",))
        listen = tuple(args.listen) if args.listen else default(name, *keys)
    elif role == "dns":
        listen = tuple(args.listen) if args.listen else (Endpoint(plan.dns, ports["dns"]),)
        records = args.record or [(n, tuple(plan.addresses(n))) for n in HOST_NAMES]
        kwargs.update(records=tuple(records), ttl=args.ttl)
    else:
        listen = ()
        kwargs.update(maps=tuple(args.map), nat_timeout_s=args.idle_timeout,
                      nat_latency_s=args.latency, add_addresses=args.add_addresses)
    if role == "long":
        kwargs.update(idle_timeout_s=args.idle_timeout, max_packet_len=args.max_packet_len)
    if role == "short" and not args.no_tls:
        from testbed.lab.addressing import SHORT
        kwargs.update(tls_listen=tuple(args.tls_listen) if args.tls_listen
                      else default(SHORT, "tls"), ca_dir=str(args.ca))
    return HostSpec(role=role, listen=listen, store=getattr(args, "store", "memory:"),
                    profile=args.profile, time_scale=time_scale_of(args), epoch=args.epoch,
                    behind_relay=getattr(args, "behind_relay", False), **kwargs)


def _console():
    from rich.console import Console
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(coro, use_uvloop: bool):
    # through interrupt.run: a SIGTERM that comes while the loop is being made (a lab
    # stopping its hosts as one fails to start) is noted there, not raised inside the loop's
    # constructor, which left a half-made loop whose __del__ printed a traceback
    from testbed import eventloop, interrupt

    loop = eventloop.from_flag(use_uvloop, _say)
    return interrupt.run(coro, lambda main: eventloop.run(main, loop))


async def open_store(url: str, console):
    """`(store, None)`, or `(None, exit code)` once the reason is printed: 2 for a URL that
    cannot be used, 1 for a store that does not answer."""
    from mocks.state import make_store
    try:
        return await make_store(url), None
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return None, 2
    except ConnectionError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return None, 1


def check_main(args) -> int:
    """`testbed serve ROLE ... --check`: 0 if the host answers everywhere it serves."""
    from mocks.probe import probe
    try:
        spec = host_spec(args)
    except ValueError as exc:
        _say(f"error: {exc}")
        return 2
    problems = asyncio.run(probe(spec))
    for line in problems:
        _say(f"serve {args.role}: {line}")
    return 1 if problems else 0


def serve_main(args) -> int:
    if args.check:
        return check_main(args)
    from mocks.serve import HostError, HostProcess, ServeOptions
    from testbed.fleet import die_with_parent

    console = _console()
    try:
        spec = host_spec(args)
        opts = ServeOptions(spec, workers=getattr(args, "workers", 1),
                            ready_file=args.ready_file,
                            loop="uvloop" if args.uvloop else "asyncio",
                            seed_users=getattr(args, "seed_users", 0),
                            friends=getattr(args, "friends", "all"))
        parent = os.environ.get(ENV_PARENT)
        if parent:
            die_with_parent(int(parent))
            opts.handle_sigint = False
        host = HostProcess(opts, _say)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2

    async def run() -> int:
        try:
            return await host.run()
        except HostError as exc:
            console.print(f"[red]error:[/red] serve {args.role}: {exc}")
        except OSError as exc:
            console.print(f"[red]error:[/red] serve {args.role}: cannot bind: {exc}")
        except ValueError as exc:
            console.print(f"[red]error:[/red] serve {args.role}: {exc}")
        return 1

    code = _run(run(), args.uvloop)
    if parent:
        # the host has closed what it holds; a supervisor waits for each of its hosts to
        # exit, and the interpreter's own teardown (0.1-0.3 s of CPU with aiohttp and redis
        # loaded, seven hosts at once on a busy machine) is most of a lab's stop
        import logging
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# ---------------------------------------------------------------------------- lab seed
def add_lab_parsers(lab_sub) -> None:
    """`testbed lab seed` and `testbed lab manifest`."""
    seed = lab_sub.add_parser("seed", help="put the lab's users into a store (idempotent)",
                              description="Make sure the store holds user0001... userN "
                                          "(passwords pass0001...). Users already there are "
                                          "kept; any number of seeders may run at once.")
    seed.add_argument("--store", default=os.environ.get(ENV_STORE), metavar="URL",
                      required=ENV_STORE not in os.environ,
                      help="redis://HOST:PORT/DB[?namespace=NAME] ($TESTBED_STORE)")
    seed.add_argument("--users", type=positive_int, required=True, help="how many")
    seed.add_argument("--friends", choices=("all", "none"), default="all",
                      help="make every pair of users friends (default) or none")
    seed.set_defaults(serve_func=lab_seed)

    man = lab_sub.add_parser(
        "manifest", help="write a lab manifest from where separate hosts listen",
        description="Write the manifest clients read (testbed emulate, outside clients) for "
                    "a lab whose hosts run separately. Each host is ADDR[,ADDR]:PORT, or "
                    "comes from its ready file (--ready); the users come from the store.")
    man.add_argument("--out", type=Path, required=True, help="the manifest to write")
    man.add_argument("--ready", action="append", type=Path, default=[], metavar="FILE",
                     help="a host's --ready-file (repeatable); flags below override it")
    man.add_argument("--dns", type=_endpoint, metavar="ADDR:PORT")
    for name in ("long", "short", "mapabc", "qlogo", "qpic"):
        man.add_argument(f"--{name}", type=_hosts_port, metavar="ADDRS:PORT")
    man.add_argument("--long-fallback-port", type=positive_int, metavar="PORT")
    man.add_argument("--tls-port", type=positive_int, metavar="PORT",
                     help="the short link's TLS port")
    man.add_argument("--ca", type=Path, metavar="PEM", help="the CA certificate clients "
                                                            "trust (the short host's DIR/ca.pem)")
    man.add_argument("--store", default=os.environ.get(ENV_STORE), metavar="URL",
                     required=ENV_STORE not in os.environ, help="where the users are")
    man.add_argument("--profile", default=os.environ.get(ENV_PROFILE, "lab-report-2013"))
    man.add_argument("--time-scale", type=positive_float, default=None,
                     help="protocol seconds per wall second (default 1; $TESTBED_TIME_SCALE)")
    man.add_argument("--server-idle", type=positive_float, metavar="SECONDS",
                     help="the long link's idle timeout (default: the long host's, else the "
                          "profile's)")
    man.add_argument("--nat-timeout", type=positive_float, default=None, metavar="SECONDS",
                     help="the hosts are reached through a carrier NAT (testbed serve nat) "
                          "that forgets a connection idle this many protocol seconds: say so "
                          "in the manifest, so clients expect silent deaths")
    man.add_argument("--nat-latency", type=nonneg_float, default=0.0, metavar="SECONDS",
                     help="with --nat-timeout: the NAT's one-way latency")
    man.set_defaults(serve_func=lab_manifest)


def lab_seed(args) -> int:
    from mocks.service import Service
    from mocks.state import redact_url

    console = _console()

    async def run() -> int:
        store, failed = await open_store(args.store, console)
        if store is None:
            return failed
        try:
            before = await store.user_count()
            users = await Service(store).seed_users(args.users, args.friends)
            after = await store.user_count()
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
        finally:
            await store.close()
        _say(f"lab seed: {redact_url(args.store)} holds {after} users; {after - before} "
             f"new, {len(users) - (after - before)} were there")
        return 0

    return asyncio.run(run())


def lab_manifest(args) -> int:
    import json

    from mocks.endpoints import Endpoint
    from mocks.lab_manifest import LabParts, manifest_from_parts
    from testbed.lab.addressing import LONG, MAPABC, QLOGO, QPIC, SHORT
    from testbed.lab.manifest import HostEntry

    console = _console()
    parts = LabParts()
    for path in args.ready:
        try:
            parts.add_ready(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            console.print(f"[red]error:[/red] {path}: not a ready file ({exc})")
            return 2
    for flag, name in (("long", LONG), ("short", SHORT), ("mapabc", MAPABC),
                       ("qlogo", QLOGO), ("qpic", QPIC)):
        value = getattr(args, flag)
        if value is not None:
            old = parts.hosts.get(name)
            parts.hosts[name] = HostEntry(value[0], value[1],
                                          old.tls_port if old else None,
                                          old.fallback_port if old else None)
    if args.long_fallback_port and LONG in parts.hosts:
        parts.hosts[LONG].fallback_port = args.long_fallback_port
    if args.tls_port and SHORT in parts.hosts:
        parts.hosts[SHORT].tls_port = args.tls_port
    if args.dns is not None:
        parts.dns = Endpoint(args.dns.host, args.dns.port)
    if args.ca is not None:
        if not args.ca.is_file():
            console.print(f"[red]error:[/red] no CA certificate at {args.ca}")
            return 2
        parts.ca_cert = str(args.ca.resolve())
    if args.server_idle:
        parts.server_idle_s = args.server_idle
    if args.nat_timeout is not None:
        from testbed.lab.addressing import HOST_NAMES
        parts.extra["nat"] = {"idle_timeout_s": args.nat_timeout,
                              "latency_s": args.nat_latency, "hosts": sorted(HOST_NAMES)}

    try:
        time_scale = time_scale_of(args)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2

    async def run() -> int:
        store, failed = await open_store(args.store, console)
        if store is None:
            return failed
        try:
            manifest = await manifest_from_parts(parts, store, args.profile, time_scale)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
        finally:
            await store.close()
        path = manifest.write(args.out)
        _say(f"lab manifest: {path.resolve()} ({len(manifest.users)} users)")
        return 0

    return asyncio.run(run())
