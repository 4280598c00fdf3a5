"""`testbed lab ...`: run the mock hosts."""

from __future__ import annotations

import asyncio
import signal


def lab_up(args) -> int:
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
