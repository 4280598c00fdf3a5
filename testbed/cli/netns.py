"""`testbed lab up --netns` (root): the namespace lab's options, its checks and what it prints.
The lab itself is `mocks.netns.NetnsLab`; `testbed emulate` enters its phone's namespace
(`enter_phone_namespace`)."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any, Callable, Optional

from rich.markup import escape

from testbed.argtypes import nonneg_float, nonneg_int, positive_int

from .output import err_console, error, out_console, print_json

# the tools the namespace lab runs, and the Debian package of each
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables", "ethtool": "ethtool",
         "sysctl": "procps", "redis-server": "redis-server"}


def _checked(field: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: `convert`, then the `Impairment` field's own check."""
    def parse(text: str) -> Any:
        from mocks.netns.network import Impairment
        value = convert(text)
        try:
            Impairment(**{field: value})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return parse


def _rate(text: str) -> int:
    from mocks.netns.network import parse_rate
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_netns_options(up: argparse.ArgumentParser) -> None:
    """`lab up`'s options for the namespace lab."""
    from mocks.netns.network import DEFAULT_MSS
    g = up.add_argument_group(
        "namespace lab (root)",
        "--netns runs every host in a network namespace of its own and the phone in another, "
        "behind a hotspot that is the carrier NAT, over real links (docs/lab.md)")
    g.add_argument("--netns", action="store_true",
                   help="run the lab in network namespaces (root); --record then sniffs the "
                        "phone's link at the hotspot")
    g.add_argument("--loss", type=_checked("loss_pct", nonneg_float), default=None,
                   metavar="PCT",
                   help="with --netns: lose PCT%% of the packets each way on the phone's link")
    g.add_argument("--fade", type=_checked("fade_ms", nonneg_int), default=None,
                   metavar="MS",
                   help="with --loss: each loss starts MS milliseconds in which that "
                        "direction loses everything, as a radio fades (default 0: losses "
                        "independent); 300 makes TCP's timer back off, as in the report")
    g.add_argument("--rate", type=_rate, default=None, metavar="RATE",
                   help="with --netns: at most RATE each way on the phone's link (tbf; "
                        "8mbit, 512kbit)")
    g.add_argument("--mss", type=_checked("mss", positive_int), default=None,
                   metavar="BYTES",
                   help=f"with --netns: the MSS the hotspot clamps TCP SYNs to (default "
                        f"{DEFAULT_MSS}: a 96-px avatar then spans two segments, as in the "
                        f"report; 1460: no clamp)")


def not_netns_error(args) -> Optional[str]:
    """The error for namespace-lab options given without --netns, else None."""
    given = [f"--{name}" for name in ("loss", "fade", "rate", "mss")
             if getattr(args, name) is not None]
    if given and not args.netns:
        return f"{', '.join(given)}: for the namespace lab's phone link; add --netns"
    return None


def _refusal(args) -> Optional[str]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the namespace lab needs root (network namespaces, nftables, AF_PACKET): " \
               "sudo testbed lab up --netns ..."
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"the namespace lab needs {tool}: apt-get install {package}"
    if args.store not in ("memory", "memory:"):
        return "--netns runs a redis-server of its own in the lab's store namespace; " \
               "leave out --store"
    if args.nat_latency:
        return "--nat-latency needs a delaying relay, and the namespace lab's NAT is the " \
               "kernel's (there is no netem here): leave it out, or use the lab without " \
               "--netns"
    if args.subnet != "127.0.0":
        return "--subnet places a loopback lab; the namespace lab's addresses are fixed " \
               "(198.18.137.0/24 and 198.19.0.0/24, docs/lab.md)"
    return None


def lab_up_netns(args) -> int:
    """`testbed lab up --netns ...`: until Ctrl-C (130) or SIGTERM (143); 1 when the lab
    cannot start, a process of it ends, or it could not remove what it made; 2 for a usage
    mistake."""
    from mocks.netns.lab import NetnsLab, wall_timeout_note
    from mocks.netns.network import DEFAULT_MSS, Impairment
    from mocks.runner import LabConfig
    from testbed import interrupt
    from testbed.eventloop import from_flag
    from testbed.eventloop import run as run_on
    from testbed.lab.profiles import load_profile

    console = err_console()
    problem = _refusal(args)
    try:
        load_profile(args.profile)
        if args.fade and not args.loss:
            raise ValueError("--fade MS lengthens each loss: give --loss PCT too")
        impairment = Impairment(args.loss or 0.0, args.fade or 0, args.rate,
                                DEFAULT_MSS if args.mss is None else args.mss)
    except ValueError as exc:
        problem = problem or str(exc)
    if problem:
        error(console, problem)
        return 2
    cfg = LabConfig(users=args.users, friends=args.friends, profile=args.profile,
                    time_scale=args.time_scale, manifest_path=args.manifest,
                    nat_timeout_s=args.nat_timeout)
    if args.nat_timeout is not None:
        note = wall_timeout_note(args.nat_timeout, args.time_scale)
        if note:
            console.print(f"[yellow]{escape(note)}[/yellow]")
    lab = NetnsLab(cfg, impairment=impairment, record=args.record,
                   workers=args.workers or 2, uvloop=args.uvloop)
    left_behind: list[str] = []     # what stopping could not remove

    async def run() -> int:
        from mocks.netns.namespaces import NetnsError
        from mocks.process_lab import HostFailed

        try:
            try:
                manifest = await lab.start()
            except (NetnsError, HostFailed, OSError, ConnectionError, ValueError) as exc:
                error(console, f"the namespace lab did not start: {exc}")
                return 1
            _print_lab(console, lab, manifest, args)
            # until a process of the lab ends, or a signal cancels this task
            error(console, f"{await lab.wait()}: stopping the lab")
            return 1
        finally:
            if lab.manifest is not None:
                console.print("stopping")
            with interrupt.cleaning_up():
                try:
                    await lab.stop()
                except NetnsError as exc:
                    left_behind.append(str(exc))
                    error(console, f"the namespace lab could not remove all it made: {exc}")

    on = from_flag(args.uvloop, lambda text: console.print(f"[yellow]{text}[/yellow]"))
    try:
        code = interrupt.run(run(), lambda main: run_on(main, on))
    except interrupt.Interrupted:
        if left_behind:
            return 1
        raise
    return 1 if left_behind else code


def netns_doc(lab, users: int) -> dict:
    """`lab up --netns --json`: `lab up --json`'s document, with where everything is: the
    namespace of every role, the phone's link, the recorder and redis-server."""
    from mocks.netns.network import HOTSPOT_IF

    from .lab import host_pids, lab_doc

    doc = lab_doc(lab, users, None, host_pids(lab))
    net = lab.network
    doc["netns"] = {
        "namespaces": dict(lab.namespaces.made),
        "phone": {"address": net.phone, "hotspot": net.hotspot, "gateway": net.gateway},
        "impairment": lab.impairment.to_dict(),
        "recorder": ({"iface": HOTSPOT_IF, "pid": lab.recorder.pid}
                     if lab.recorder is not None else None),
        "redis": {"pid": lab.redis.proc.pid if lab.redis and lab.redis.proc else None},
        "swept": list(lab.swept),
    }
    return doc


def _print_lab(console, lab, manifest, args) -> None:
    from rich.table import Table

    from mocks.lab_manifest import HOST_OF_ROLE
    from mocks.netns.network import GATEWAY, HOTSPOT_IF, PHONE, STORE

    if args.json:
        print_json(netns_doc(lab, len(manifest.users)))
    else:
        ns = lab.namespaces
        plan = lab.network
        table = Table(title=f"lab up --netns: profile {manifest.profile}, time scale "
                            f"{manifest.time_scale:g}, {len(manifest.users)} users")
        table.add_column("host", overflow="fold")
        table.add_column("namespace", no_wrap=True)
        table.add_column("addresses", no_wrap=True)
        table.add_column("port")
        table.add_column("processes")
        table.add_row("the phone", ns[PHONE], plan.phone, "", "")
        table.add_row("hotspot, carrier NAT", ns[GATEWAY], f"{plan.hotspot} {plan.gateway}",
                      "", str(lab.recorder.pid) if lab.recorder else "")
        pids = {c.role: " ".join(map(str, c.pids)) for c in lab.children}
        for role, name in HOST_OF_ROLE.items():
            h = manifest.hosts[name]
            port = str(h.port) + (f", TLS {h.tls_port}" if h.tls_port else "")
            table.add_row(name, ns[role], " ".join(h.addresses), port, pids.get(role, ""))
        table.add_row("lab resolver (DNS)", ns["dns"], manifest.dns_address,
                      str(manifest.dns_port), pids.get("dns", ""))
        table.add_row("store (Redis)", ns[STORE], "", "",
                      str(lab.redis.proc.pid) if lab.redis and lab.redis.proc else "")
        out = out_console()
        out.print(table)
        out.file.flush()
    imp = lab.impairment
    link = [f"MTU 1500, MSS clamped to {imp.mss}" if imp.mss else "MTU 1500, MSS not clamped"]
    if imp.loss_pct:
        link.append(f"{imp.loss_pct:g} % loss each way"
                    + (f", each the start of a {imp.fade_ms} ms fade" if imp.fade_ms else ""))
    if imp.rate_bps:
        link.append(f"{imp.rate_bps / 1e6:g} Mbit/s each way")
    console.print(f"phone's link: {', '.join(link)}", soft_wrap=True)
    nat = manifest.extra.get("nat")
    console.print("carrier NAT: the kernel's (masquerade), "
                  + (f"forgets a connection idle {nat['idle_timeout_s']:g} s "
                     f"({nat['wall_timeout_s']} wall s), silently" if nat else
                     "no idle timeout (--nat-timeout S for one)"), soft_wrap=True)
    if lab.swept:
        console.print(f"removed {len(lab.swept)} namespaces left by labs that were killed")
    if lab.record_path is not None:
        console.print(f"recording the phone's link ({HOTSPOT_IF} at the hotspot) to "
                      f"{escape(str(lab.record_path))} (closed when the lab stops)")
    console.print(f"manifest: {escape(str(lab.manifest_path.resolve()))}   (Ctrl-C to stop)",
                  soft_wrap=True)
    phone = lab.namespaces[PHONE]
    console.print(f"a phone:  sudo testbed emulate storyboard --manifest "
                  f"{escape(str(args.manifest))} (it runs in {phone}); any other client: "
                  f"sudo ip netns exec {phone} COMMAND", soft_wrap=True)


def enter_phone_namespace(manifest, console) -> Optional[int]:
    """Move this process into the namespace lab's phone namespace if the manifest names one:
    None when done (or there is none), else the exit code after saying why not."""
    name = (manifest.extra.get("netns") or {}).get("namespaces", {}).get("phone")
    if not name:
        return None
    from mocks.netns.namespaces import enter
    try:
        enter(name)
    except FileNotFoundError:
        error(console, f"the lab's phone namespace {name} is gone: is the lab (testbed lab "
                       f"up --netns) still running?")
        return 1
    except PermissionError:
        error(console, f"the lab's phone is in the network namespace {name}: entering it "
                       f"needs root (sudo)")
        return 2
    except OSError as exc:
        error(console, str(exc))
        return 1
    console.print(f"in the lab's phone namespace {name}")
    return None
